"""Tests in a real browser (Debian's chromium driven by Playwright; fixtures in ``tests/browser_support.py``).

The card as the CDS Hooks sandbox shows it, and the SMART app at ``/app/`` (EHR and standalone launch
against the loopback SMART authorization and FHIR servers, the history chart, recording a session, the
next hook call deciding from it, demo mode, accessibility). Skipped when ``/usr/bin/chromium`` is missing.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from browser_support import (  # noqa: F401 - fixtures
    ACCESS_TOKEN,
    CLIENT_ID,
    PATIENT_EXAMPLE,
    auth,
    axe_script,
    browser,
    example_request,
    fhir,
    marked_script,
    page,
    patient_data,
    patient_id,
    requires_browser,
    serious_violations,
    service,
    shoot,
    smart,
    watch_errors,
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
    errors = watch_errors(page)
    images = render_cards(page, marked_script, cards)
    assert errors == []

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


# --------------------------------------------------------------------------------------------------
# The SMART app

OBS = "https://lbp-cds.org/fhir/CodeSystem/observation"
EXERCISE = "https://lbp-cds.org/fhir/CodeSystem/exercise"
LOINC_PAIN = ("http://loinc.org", "72514-3")
EHR_SCOPE = "launch patient/Observation.rs patient/Observation.c patient/Condition.rs"
STANDALONE_SCOPE = "launch/patient patient/Observation.rs patient/Observation.c patient/Condition.rs"
#: the day the recorded sessions are dated: the tests' fixed evaluation date (the app's "today")
TODAY = "2026-11-20"
#: every input of the record form, in the order a keyboard user tabs through them (then the submit button)
FORM_INPUTS = ["exercise", "session-date", "reps-1", "reps-2", "pain-during", "pain-after"]


def coding(concept: dict) -> tuple[str | None, str | None]:
    c = concept["coding"][0]
    return c.get("system"), c.get("code")


def sessions_on_server(fhir) -> set[tuple[str, str]]:
    """(date, exercise) of every session the FHIR server holds for the patient: what the chart must show."""
    out = set()
    for obs in fhir.data.of_type("Observation"):
        if coding(obs["code"]) != (OBS, "reps-to-technical-failure") or obs.get("status") not in ("final", "amended", "corrected"):
            continue
        if obs["subject"]["reference"] != f"Patient/{patient_id()}":
            continue
        exercise = next(coding(c["valueCodeableConcept"])[1] for c in obs["component"] if coding(c["code"]) == (OBS, "exercise"))
        out.add((obs["effectiveDateTime"][:10], exercise))
    return out


def ehr_launch(pg, service, fhir, auth, app_context: dict | None = None) -> str:
    """Open the app as an EHR does (``/app/launch?iss=..&launch=..``) and wait for the launched page;
    the launch token."""
    launch = auth.new_launch(patient_id(), app_context=app_context)
    pg.goto(f"{service}/app/launch?" + str(httpx.QueryParams({"iss": fhir.base_url, "launch": launch})))
    pg.wait_for_url(f"{service}/app/")
    pg.locator("#history-chart").wait_for()
    return launch


def hook_call(service, fhir) -> dict:
    """The patient-view hook as an EHR sends it without prefetch: the service fetches from the FHIR server."""
    request = example_request(PATIENT_EXAMPLE)
    del request["prefetch"]
    request["fhirServer"] = fhir.base_url
    request["fhirAuthorization"] = {"access_token": ACCESS_TOKEN, "token_type": "Bearer", "expires_in": 300,
                                    "scope": "patient/Observation.rs patient/Condition.rs patient/Patient.rs",
                                    "subject": CLIENT_ID}
    response = httpx.post(service + PATIENT_VIEW, json=request, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def recommendation(card: dict) -> dict:
    return card["extension"]["org.lbp-cds.recommendation"]


def test_ehr_launch_shows_the_history_and_the_recommendation(page, service, smart, auth):
    errors = watch_errors(page)
    launch = ehr_launch(page, service, smart, auth)
    # the page loaded whole under its own CSP: its stylesheet applied, nothing refused, no script error
    assert errors == []
    assert page.evaluate("document.styleSheets.length") >= 1

    # the launch went through the authorization server with PKCE and the EHR launch's scope
    authorize = next(r for r in auth.requests if r.path == "/authorize")
    assert authorize.params["response_type"] == "code" and authorize.params["client_id"] == CLIENT_ID
    assert authorize.params["launch"] == launch and authorize.params["state"]
    assert authorize.params["scope"] == EHR_SCOPE
    assert authorize.params["code_challenge_method"] == "S256" and authorize.params["code_challenge"]
    assert authorize.params["aud"] == smart.base_url
    assert authorize.params["redirect_uri"] == service + "/app/callback"
    assert any(r.path == "/token" for r in auth.requests) and not auth.token_errors
    # ... and the app read the patient's data with the user's token
    assert any(r.path.endswith("/Observation") and r.authorization == f"Bearer {ACCESS_TOKEN}" for r in smart.requests)

    sessions = sessions_on_server(smart)
    assert len(sessions) == 3
    chart = page.locator("svg#history-chart")
    assert chart.get_attribute("role") == "img"
    assert chart.get_attribute("data-sessions") == str(len(sessions))
    assert chart.locator("circle.session-point").count() == len(sessions)
    assert chart.locator("title").count() >= 1 and chart.locator("title").first.text_content().strip()
    assert chart.locator("path.rung-line").count() == 1
    assert chart.locator("rect.band-target").count() == 1
    assert chart.locator("rect.band-pain").count() == 1
    assert chart.locator("line.onset-mark").count() == 1  # the example's LBP condition has an onset
    assert page.locator("#history-table tbody tr").count() == len(sessions)
    table_dates = [row.locator("td, th").first.inner_text().strip() for row in page.locator("#history-table tbody tr").all()]
    assert sorted(table_dates) == sorted(d for d, _ in sessions)

    # the recommendation is the one the service gives for the same data
    cards = hook_call(service, smart)["cards"]
    summaries = page.locator("#recommendation h3.card-summary").all_inner_texts()
    assert summaries == [c["summary"] for c in cards]
    # the user's token is in neither the page nor, readable, a cookie
    assert ACCESS_TOKEN not in page.content()
    cookies = page.context.cookies()
    assert cookies and all(ACCESS_TOKEN not in c["value"] for c in cookies)
    assert all(c["httpOnly"] for c in cookies)
    shoot(page, "app-history")


def test_standalone_launch(page, service, smart, auth):
    page.goto(f"{service}/app/launch?" + str(httpx.QueryParams({"iss": smart.base_url})))
    page.wait_for_url(f"{service}/app/")
    assert page.locator("svg#history-chart circle.session-point").count() == len(sessions_on_server(smart))
    authorize = next(r for r in auth.requests if r.path == "/authorize")
    assert authorize.params["scope"] == STANDALONE_SCOPE
    assert "launch" not in authorize.params


def test_launch_with_an_approval_page(page, service, smart, auth):
    """The authorization server asks the user first (an "Allow" button): the app is reached after the click."""
    auth.approve_page = True
    launch = auth.new_launch(patient_id())
    page.goto(f"{service}/app/launch?" + str(httpx.QueryParams({"iss": smart.base_url, "launch": launch})))
    page.locator("#allow").click()
    page.wait_for_url(f"{service}/app/")
    assert page.locator("svg#history-chart circle.session-point").count() == 3


def tab_order(pg, start: str, last: str, limit: int = 40) -> list[str]:
    """The ids focused, in order, pressing Tab from ``#start`` until ``#last`` (consecutive repeats merged:
    Tab moves through a date input's fields)."""
    pg.focus(f"#{start}")
    seen = [start]
    for _ in range(limit):
        pg.keyboard.press("Tab")
        focused = pg.evaluate("document.activeElement && document.activeElement.id")
        if focused and focused != seen[-1]:
            seen.append(focused)
        if focused == last:
            break
    return seen


def test_record_a_session_with_the_keyboard(page, service, smart, auth):
    ehr_launch(page, service, smart, auth)
    order = tab_order(page, "exercise", "record")
    assert [i for i in order if i in FORM_INPUTS + ["record"]] == FORM_INPUTS + ["record"], order

    # keyboard only: choose the exercise by typing, type the values, submit with Enter
    page.focus("#exercise")
    page.keyboard.type("Bird")
    assert page.locator("#exercise").input_value() == "bird-dog"
    page.focus("#session-date")
    page.keyboard.type("11202026")  # en-US: mm dd yyyy
    assert page.locator("#session-date").input_value() == TODAY
    for field, value in (("reps-1", "28"), ("reps-2", "27"), ("pain-during", "1"), ("pain-after", "0")):
        page.focus(f"#{field}")
        page.keyboard.press("Control+A")
        page.keyboard.type(value)
    page.keyboard.press("Enter")
    page.locator("#written").wait_for()

    check_recorded(page, service, smart, reps=[28, 27], pain=[1, 0])


def check_recorded(page, service, fhir, *, reps: list[int], pain: list[int]) -> None:
    """The Observations the app created on the FHIR server (SPEC section 2), the written list, and the
    next hook call deciding from them."""
    created = fhir.created
    rounds = [o for o in created if coding(o["code"]) == (OBS, "reps-to-technical-failure")]
    pains = [o for o in created if coding(o["code"]) == LOINC_PAIN]
    assert len(rounds) + len(pains) == len(created)
    assert [o["valueQuantity"]["value"] for o in rounds] == reps
    for n, obs in enumerate(rounds, start=1):
        assert obs["status"] == "final"
        assert obs["subject"]["reference"] == f"Patient/{patient_id()}"
        assert obs["effectiveDateTime"].startswith(TODAY)
        components = {coding(c["code"]): c for c in obs["component"]}
        assert coding(components[(OBS, "exercise")]["valueCodeableConcept"]) == (EXERCISE, "bird-dog")
        assert components[(OBS, "round")]["valueInteger"] == n
    assert sorted(o.get("valueInteger", o.get("valueQuantity", {}).get("value")) for o in pains) == sorted(pain)
    round_refs = {f"Observation/{o['id']}" for o in rounds}
    for obs in pains:
        assert {d["reference"] for d in obs["derivedFrom"]} == round_refs
        assert obs["subject"]["reference"] == f"Patient/{patient_id()}"
    # every write carried the user's token
    posts = [r for r in fhir.requests if r.method == "POST"]
    assert len(posts) == len(created) and all(r.authorization == f"Bearer {ACCESS_TOKEN}" for r in posts)

    written = page.locator("#written li.written-resource")
    assert written.count() == len(created)
    listed = written.all_inner_texts()
    for obs, text in zip(created, listed, strict=True):
        assert f"Observation/{obs['id']}" in text

    # the next hook call (no prefetch: the service fetches) decides from the recorded session
    card = hook_call(service, fhir)["cards"][0]
    facts = recommendation(card)["facts"]
    assert recommendation(card)["decision"] == "step-up"  # the example's own latest session says "continue"
    assert facts["sessionDate"] == TODAY
    assert facts["reps"] == reps
    assert facts["maxPain"] == max(pain)
    # ... and so does the app's refreshed recommendation, and its chart has one more session
    assert page.locator("#recommendation h3.card-summary").first.inner_text() == card["summary"]
    assert page.locator("svg#history-chart circle.session-point").count() == len(sessions_on_server(fhir))


def test_record_a_session_with_clicks_and_an_added_round(page, service, smart, auth):
    ehr_launch(page, service, smart, auth)
    assert page.locator("#reps-3").count() == 0  # the rule set prescribes 2 rounds
    page.locator("#add-round").click()
    page.locator("#reps-3").wait_for()
    assert page.locator("label[for=reps-3]").inner_text().startswith("Round 3")
    assert smart.created == []  # adding a round writes nothing

    page.locator("#exercise").select_option("bird-dog")
    page.locator("#session-date").fill(TODAY)
    page.locator("#reps-1").fill("28")
    page.locator("#reps-2").fill("27")
    page.locator("#reps-3").fill("26")
    page.locator("#pain-during").fill("1")
    page.locator("#pain-after").fill("1")
    page.locator("#record").click()
    page.locator("#written").wait_for()
    check_recorded(page, service, smart, reps=[28, 27, 26], pain=[1, 1])
    shoot(page, "app-recorded")


def test_every_form_input_has_a_visible_label(page, service, smart, auth):
    ehr_launch(page, service, smart, auth)
    form = page.locator("form#record-session")
    assert form.get_attribute("method") == "post" and form.get_attribute("action") == "/app/record"
    assert form.locator("input[type=hidden][name=csrf_token]").get_attribute("value")
    options = page.locator("#exercise option")
    assert [options.nth(i).get_attribute("value") for i in range(options.count())] == [
        "hip-abduction", "bird-dog", "single-leg-reverse-hyper", "reverse-hyper"]
    assert page.locator("#session-date").get_attribute("type") == "date"
    assert page.locator("#session-date").input_value() == TODAY  # default: today (the service's clock)
    for n in (1, 2):
        assert page.locator(f"#reps-{n}").get_attribute("type") == "number"
        assert page.locator(f"label[for=reps-{n}]").inner_text().startswith(f"Round {n}")
    for field in form.locator("input:not([type=hidden]), select").all():
        field_id = field.get_attribute("id")
        label = page.locator(f"label[for='{field_id}']")
        assert label.count() == 1, field_id
        assert label.is_visible() and label.inner_text().strip(), field_id
    assert page.locator("button#record[type=submit]").is_visible()


def test_invalid_input_shows_field_errors_and_writes_nothing(page, service, smart, auth, axe_script):
    ehr_launch(page, service, smart, auth)
    page.locator("#exercise").select_option("bird-dog")
    page.locator("#session-date").fill(TODAY)
    page.locator("#reps-1").fill("-3")
    page.locator("#reps-2").fill("27")
    page.locator("#pain-during").fill("11")
    page.locator("#pain-after").fill("1")
    with page.expect_response(lambda r: r.url == service + "/app/record") as answer:
        page.locator("#record").click()
    assert answer.value.status == 400
    page.locator(".field-error").first.wait_for()

    wrong = {e.get_attribute("id") for e in page.locator("p.field-error").all()}
    assert wrong == {"error-reps-1", "error-pain-during"}
    for field in ("reps-1", "pain-during"):
        assert page.locator(f"#{field}").get_attribute("aria-invalid") == "true"
        assert page.locator(f"#{field}").get_attribute("aria-describedby") == f"error-{field}"
        assert page.locator(f"#error-{field}").is_visible()
    assert page.locator("#reps-2").get_attribute("aria-invalid") is None
    # the form is re-filled with what was typed
    assert page.locator("#reps-1").input_value() == "-3"
    assert page.locator("#reps-2").input_value() == "27"
    assert page.locator("#pain-during").input_value() == "11"
    assert page.locator("#exercise").input_value() == "bird-dog"
    # nothing written
    assert smart.created == []
    assert not [r for r in smart.requests if r.method == "POST"]
    assert page.locator("#written").count() == 0
    assert serious_violations(page, axe_script) == []
    shoot(page, "app-record-error", selector="#record-section")


def test_a_failed_write_says_what_was_written_and_keeps_the_form(page, service, smart, auth):
    ehr_launch(page, service, smart, auth)
    smart.fail_posts_after = 1  # the first round is created, the second answers 500
    page.locator("#exercise").select_option("bird-dog")
    page.locator("#session-date").fill(TODAY)
    page.locator("#reps-1").fill("28")
    page.locator("#reps-2").fill("27")
    page.locator("#pain-during").fill("1")
    page.locator("#pain-after").fill("0")
    page.locator("#record").click()
    alert = page.locator("#write-error[role=alert]")
    alert.wait_for()
    assert len(smart.created) == 1
    assert alert.locator(".written-resource").count() == 1
    assert f"Observation/{smart.created[0]['id']}" in alert.locator(".written-resource").inner_text()
    assert alert.locator(".not-written-resource").count() >= 1
    assert page.locator("#reps-2").input_value() == "27"
    assert page.locator("#pain-after").input_value() == "0"


def test_the_app_pages_have_no_serious_accessibility_violations(page, service, smart, auth, axe_script):
    ehr_launch(page, service, smart, auth)
    assert page.locator("html").get_attribute("lang") == "en"
    assert serious_violations(page, axe_script) == []
    page.goto(service + "/app/demo")
    assert serious_violations(page, axe_script) == []
    page.goto(service + "/app/?demo=bird-dog-28-27")
    assert serious_violations(page, axe_script) == []


def test_demo_mode(page, service, smart):
    errors = watch_errors(page)
    page.goto(service + "/app/demo")
    links = page.locator("a[href^='/app/?demo=']")
    assert links.count() == len(list((Path(__file__).parents[1] / "fhir_examples" / "requests").glob("*.json")))
    page.locator("a[href='/app/?demo=bird-dog-28-27']").click()
    page.wait_for_url(service + "/app/?demo=bird-dog-28-27")
    assert page.locator("#demo-banner[role=status]").is_visible()
    assert page.locator("#record-session fieldset").get_attribute("disabled") is not None
    assert page.locator("#reps-1").is_disabled()
    assert page.locator("#record").is_disabled()
    example_sessions = {
        (e["resource"]["effectiveDateTime"][:10], e["resource"]["component"][0]["valueCodeableConcept"]["coding"][0]["code"])
        for e in example_request("bird-dog-28-27")["prefetch"]["exerciseRounds"]["entry"]
    }
    chart = page.locator("svg#history-chart")
    assert chart.get_attribute("data-sessions") == str(len(example_sessions))
    assert chart.locator("circle.session-point").count() == len(example_sessions)
    assert page.locator("#recommendation h3.card-summary").first.inner_text().startswith("Bird-dog too easy")
    assert smart.requests == []  # no FHIR server in demo mode
    assert errors == []
    shoot(page, "app-demo")

    answer = page.goto(service + "/app/?demo=no-such-example")
    assert answer is not None and answer.status == 404
    assert "no-such-example" in page.locator("body").inner_text()


def test_a_fhir_server_not_allowed_is_refused(page, service, smart, auth):
    answer = page.goto(f"{service}/app/launch?" + str(httpx.QueryParams({"iss": "http://127.0.0.1:9/fhir", "launch": "x"})))
    assert answer is not None and answer.status == 400
    assert "iss" in page.locator("body").inner_text()
    assert not auth.requests


def test_the_card_link_launches_the_app_with_its_app_context(page, service, smart, auth, marked_script):
    """The SMART link of a progression card, launched as an EHR does (adding iss and launch; the EHR
    hands the link's appContext to the authorization server): the app says which card it was opened from."""
    request = example_request("bird-dog-28-27")
    cards = httpx.post(service + PATIENT_VIEW, json=request, timeout=30).json()["cards"]
    render_cards(page, marked_script, cards)
    link = page.locator("a.link-smart")
    app_context = json.loads(link.get_attribute("data-app-context") or "")
    launch = auth.new_launch(patient_id(), app_context=app_context)
    page.goto(f"{link.get_attribute('href')}?" + str(httpx.QueryParams({"iss": smart.base_url, "launch": launch})))
    page.wait_for_url(f"{service}/app/")
    assert "Single-leg reverse hyper" in page.locator("#opened-from").inner_text()
    assert page.locator("#ruleset-differs").count() == 0  # the card's rule set is the active one


def test_the_accessibility_check_finds_serious_violations(page, axe_script):
    """axe-core really runs: an input without a label and grey-on-white text are reported as serious."""
    page.set_content('<!doctype html><html lang="en"><head><title>t</title></head><body><main>'
                     '<p style="color:#ccc;background:#fff">faint text</p><input type="text"></main></body></html>')
    found = serious_violations(page, axe_script)
    assert any(v.startswith("label ") for v in found), found
    assert any(v.startswith("color-contrast ") for v in found), found


def test_a_callback_with_a_wrong_state_is_refused(page, service, smart, auth):
    """An authorization answer this browser did not ask for (wrong state) is a 400 page, and no token is fetched."""
    answer = page.goto(f"{service}/app/callback?code=stolen&state=forged")
    assert answer is not None and answer.status == 400
    assert "state" in page.locator("body").inner_text()
    assert not [r for r in auth.requests if r.path == "/token"]


# -- embedded in an EHR on another site ------------------------------------------------------------


def _ehr_page(environ, start_response):
    """The EHR's page: its chart with the app in an iframe (``?src=`` the app's launch URL)."""
    from urllib.parse import parse_qs

    from markupsafe import escape

    src = parse_qs(environ.get("QUERY_STRING", "")).get("src", [""])[0]
    body = (f'<!doctype html><title>EHR</title><h1>Patient chart</h1>'
            f'<iframe id="app" title="lbp-cds" src="{escape(src)}" width="1000" height="900"></iframe>').encode()
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]


@pytest.fixture(scope="module")
def embedding(fhir):
    """An EHR page on another site than the app (``localhost`` framing ``127.0.0.1``: another site for
    the browser, as ``ehr.example.org`` framing ``cds.example.org`` is), a service whose
    ``CDS_APP_FRAME_ANCESTORS`` names that EHR, and its own SMART authorization server."""
    from browser_support import LateApp, service_overrides
    from conftest import build_app
    from loopback import serve_wsgi
    from smart_auth_server import SmartAuthServer

    with serve_wsgi(_ehr_page, name="browser-test-ehr") as ehr_base:
        ehr = ehr_base.replace("127.0.0.1", "localhost")
        late = LateApp()
        with serve_wsgi(late, name="browser-test-embedded-service") as base_url:
            late.app = build_app(public_base_url=base_url, app_frame_ancestors=(ehr,), **service_overrides(fhir.base_url))
            server = SmartAuthServer(client_id=CLIENT_ID, redirect_uri=base_url + "/app/callback",
                                     access_token=ACCESS_TOKEN, fhir_base=fhir.base_url, standalone_patient=patient_id())
            with server:
                yield ehr, base_url, late.app, server


def launch_in_ehr_iframe(pg, embedding, fhir):
    ehr, service, _, auth_server = embedding
    fhir.smart_configuration = auth_server.configuration()
    launch = auth_server.new_launch(patient_id())
    app_url = f"{service}/app/launch?" + str(httpx.QueryParams({"iss": fhir.base_url, "launch": launch}))
    pg.goto(f"{ehr}/?" + str(httpx.QueryParams({"src": app_url})))
    return pg.frame_locator("#app")


def test_an_ehr_on_another_site_launches_the_app_in_its_iframe(page, smart, embedding):
    ehr, service, _, auth_server = embedding
    frame = launch_in_ehr_iframe(page, embedding, smart)
    frame.locator("svg#history-chart").wait_for()
    assert frame.locator("svg#history-chart circle.session-point").count() == len(sessions_on_server(smart))
    assert any(r.path == "/token" for r in auth_server.requests) and not auth_server.token_errors
    # the session cookie is a third-party cookie here: SameSite=None, Secure, HttpOnly, and only the app's path
    [cookie] = [c for c in page.context.cookies(service + "/app/") if c["name"] == "lbp_app"]
    assert (cookie["sameSite"], cookie["secure"], cookie["httpOnly"], cookie["path"]) == ("None", True, True, "/app")
    ehr_site = ehr.rsplit(":", 1)[0]  # scheme and host: a site has no port
    assert cookie.get("partitionKey", ehr_site) == ehr_site  # Partitioned: kept for this embedding site only

    # recording a session from inside the iframe: the form's POST carries the cookie and its CSRF token
    frame.locator("#exercise").select_option("bird-dog")
    frame.locator("#session-date").fill(TODAY)
    for field, value in (("reps-1", "28"), ("reps-2", "27"), ("pain-during", "1"), ("pain-after", "0")):
        frame.locator(f"#{field}").fill(value)
    frame.locator("#record").click()
    frame.locator("#written").wait_for()
    assert frame.locator("#written li.written-resource").count() == len(smart.created) == 4  # 2 rounds, 2 pain scores


def test_with_a_lax_cookie_the_framed_launch_fails_at_its_callback(page, smart, embedding):
    """The control: the same launch with the cookie the app sets when nobody frames it (SameSite=Lax)
    never gets its session back inside the cross-site iframe."""
    _, _, app, _ = embedding
    state = app.extensions["lbp_cds_app"]
    state.embedded = False
    try:
        frame = launch_in_ehr_iframe(page, embedding, smart)
        frame.locator("text=wrong or expired state").wait_for()
        assert frame.locator("svg#history-chart").count() == 0
    finally:
        state.embedded = True
