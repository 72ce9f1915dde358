"""Tests in a real browser (Debian's chromium driven by Playwright; fixtures in ``tests/browser_support.py``).

The card as the CDS Hooks sandbox shows it, and the SMART app at ``/app/`` (EHR and standalone launch
against the loopback SMART authorization and FHIR servers, the history chart, recording a session, the
next hook call deciding from it, demo mode, accessibility). Skipped when ``/usr/bin/chromium`` is missing.
"""

from __future__ import annotations

from pathlib import Path

import httpx
from browser_support import (  # noqa: F401 - fixtures
    browser,
    example_request,
    fhir,
    marked_script,
    page,
    requires_browser,
    service,
    shoot,
)

pytestmark = requires_browser

CARD_PAGE = Path(__file__).parent / "browser" / "card_sandbox.html"
PATIENT_VIEW = "/cds-services/lbp-exercise-progression"


def render_cards(pg, marked_script: Path, cards: list[dict]) -> list[dict]:
    """Show ``cards`` on the sandbox stand-in page; the images of their details once loaded."""
    pg.set_content(CARD_PAGE.read_text(encoding="utf-8"))
    pg.add_script_tag(path=str(marked_script))
    return pg.evaluate("cards => renderCards(cards)", cards)


def test_progression_card_as_the_sandbox_shows_it(page, service, marked_script):
    response = httpx.post(service + PATIENT_VIEW, json=example_request("bird-dog-28-27"), timeout=30)
    assert response.status_code == 200, response.text
    cards = response.json()["cards"]
    assert len(cards) == 1
    images = render_cards(page, marked_script, cards)

    card = page.locator("article.card")
    assert card.count() == 1
    assert page.locator(".card-summary").inner_text() == cards[0]["summary"]
    # the markdown detail is rendered (GFM table, bold next step), not shown as source text
    facts = page.locator(".card-detail table").first
    assert facts.locator("th").first.inner_text() == "Fact"
    assert "|---|" not in page.locator(".card-detail").inner_text()
    assert page.locator(".card-detail strong", has_text="Single-leg reverse hyper").count() == 1
    assert page.locator("button.suggestion").all_inner_texts() == [s["label"] for s in cards[0]["suggestions"]]

    # the trend: a table of the recent sessions (one row each, oldest first) and the chart image the
    # service draws, loaded by the browser from a URL with numbers and dates only
    trend_table = page.locator(".card-detail table").nth(1)
    rows = trend_table.locator("tbody tr")
    assert rows.count() == 3
    assert rows.nth(2).locator("td").all_inner_texts()[0] == "2026-11-18"
    assert rows.nth(2).locator("td").all_inner_texts()[3] == "28, 27"
    assert len(images) == 1
    chart = images[0]
    assert chart["src"].startswith(service + "/charts/trend.svg?"), chart
    assert chart["width"] > 0, "the chart image did not load"
    assert chart["alt"]
    assert "lbp-" not in chart["src"] and "Patient" not in chart["src"]
    # the SMART link to the app, with the recommended rung in its appContext
    smart = page.locator("a.link-smart")
    assert smart.count() == 1
    assert smart.get_attribute("href") == service + "/app/launch"
    assert '"rung":"single-leg-reverse-hyper"' in (smart.get_attribute("data-app-context") or "")
    shoot(page, "card-trend", selector="article.card")
