"""The SMART app over real HTTP: the service on a loopback server (its public base URL its own address), a
real HTTP client with a cookie jar following every redirect, through the authorization server's approve
page, as a browser without JavaScript would (tests/smart_stack.py)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import httpx

try:
    from smart_stack import TOKEN, smart_stack
except ImportError:  # pragma: no cover - run as a package
    from tests.smart_stack import TOKEN, smart_stack


def _form_fields(page: str) -> dict[str, str]:
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page))


def test_an_ehr_launch_approved_on_the_authorization_page_then_a_recorded_session():
    with smart_stack(approve_page=True) as stack, httpx.Client(follow_redirects=True, timeout=10) as browser:
        approve = browser.get(stack.launch_url(app_context={"rung": "bird-dog"}))
        assert approve.status_code == 200 and 'id="allow"' in approve.text
        assert urlsplit(str(approve.url)).netloc == urlsplit(stack.auth.origin).netloc
        page = browser.post(stack.auth.origin + "/authorize", data=_form_fields(approve.text))
        assert page.status_code == 200 and str(page.url) == stack.public + "/app/"
        assert 'data-sessions="3"' in page.text and "Opened from the card recommending Bird-dog." in page.text
        assert browser.cookies.get("lbp_app", path="/app") and TOKEN not in page.text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)[1]
        written = browser.post(stack.public + "/app/record", data={
            "csrf_token": csrf, "action": "record", "exercise": "single-leg-reverse-hyper", "date": "2026-11-20",
            "reps-1": "22", "reps-2": "21", "pain_during": "0", "pain_after": "1"})
        assert written.status_code == 200 and 'data-sessions="4"' in written.text
        assert written.text.count('class="written-resource"') == 4 and len(stack.fhir.created) == 4
        assert written.headers["Content-Security-Policy"].startswith("default-src 'none'")
