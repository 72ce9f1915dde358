"""The SMART on FHIR app at /app/ (issue 14), end to end against a real loopback SMART authorization server
(tests/smart_auth_server.py) and the loopback FHIR server (tests/fhir_server.py): no mocks.

The app runs in the Flask test client (its cookie jar is the browser's); the authorization server and the
FHIR server are real HTTP servers the app talks to over loopback, and the test follows the redirects.
"""

from __future__ import annotations

import html
import json
import logging
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from conftest import REQUESTS_DIR, build_app
from fhir.resources.R4B.observation import Observation

try:
    from fhir_server import FhirData, FhirTestServer
    from smart_auth_server import SmartAuthServer, s256
except ImportError:  # pragma: no cover - run as a package
    from tests.fhir_server import FhirData, FhirTestServer
    from tests.smart_auth_server import SmartAuthServer, s256

TOKEN = "smart-app-tok-Zq81-SECRET-never-shown"
PUBLIC = "http://127.0.0.1:8080"  # the test settings' public base URL: the registered redirect_uri's origin
CLIENT_ID = "lbp-cds-app"
PATIENT = "lbp-bird-dog-28-27"  # bird-dog 28, 27 on 2026-11-18: step up to single-leg reverse hyper
EXAMPLE = REQUESTS_DIR / "bird-dog-28-27.json"
OBS = "https://lbp-cds.org/fhir/CodeSystem/observation"


@pytest.fixture
def fhir():
    with FhirTestServer(FhirData.from_hook_request(EXAMPLE)) as server:
        server.required_token = TOKEN
        yield server


@pytest.fixture
def auth(fhir):
    with SmartAuthServer(client_id=CLIENT_ID, redirect_uri=PUBLIC + "/app/callback", access_token=TOKEN,
                         fhir_base=fhir.base_url, standalone_patient=PATIENT) as server:
        fhir.smart_configuration = server.configuration()
        yield server


@pytest.fixture
def app(fhir):
    return build_app(app_fhir_servers=(fhir.base_url,), app_frame_ancestors=("https://ehr.example",))


@pytest.fixture
def client(app):
    return app.test_client()


def launch(client, fhir, auth, *, launch_token: str | None = None, tamper=None) -> tuple[Any, dict[str, str]]:
    """Run a launch to the callback's answer: (the callback response, the authorization request's params).
    ``tamper(params)`` may change the authorization request before it reaches the authorization server."""
    query = {"iss": fhir.base_url}
    if launch_token is not None:
        query["launch"] = launch_token
    started = client.get("/app/launch", query_string=query)
    assert started.status_code == 302, started.get_data(as_text=True)
    target = urlsplit(started.headers["Location"])
    assert f"{target.scheme}://{target.netloc}{target.path}" == auth.origin + "/authorize"
    params = {k: v[-1] for k, v in parse_qs(target.query).items()}
    sent = dict(params)
    if tamper is not None:
        tamper(sent)
    answer = httpx.get(auth.origin + "/authorize", params=sent, follow_redirects=False)
    assert answer.status_code == 302, answer.text
    back = urlsplit(answer.headers["Location"])
    assert f"{back.scheme}://{back.netloc}{back.path}" == PUBLIC + "/app/callback"
    return client.get("/app/callback?" + back.query), params


def launched(client, fhir, auth, **kwargs: Any) -> str:
    """Launch and open the app: the page's HTML."""
    callback, _ = launch(client, fhir, auth, **kwargs)
    assert callback.status_code == 302 and callback.headers["Location"] == "/app/"
    page = client.get("/app/")
    assert page.status_code == 200, page.get_data(as_text=True)
    return page.get_data(as_text=True)


def sessions_shown(page: str) -> int:
    n = int(re.search(r'<svg id="history-chart" role="img" data-sessions="(\d+)"', page)[1])
    assert page.count('<circle class="session-point') == n
    tbody = re.search(r'<table id="history-table">.*?<tbody>(.*?)</tbody>', page, re.S)[1]
    assert tbody.count("<tr>") == n
    return n


def csrf(page: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page)[1]


def summaries(page: str) -> list[str]:
    return [html.unescape(s) for s in re.findall(r'<h3 class="card-summary">(.*?)</h3>', page)]


# -- launch ---------------------------------------------------------------------------------------

def test_ehr_launch_sends_the_smart_authorization_request_and_opens_the_patients_history(client, fhir, auth):
    token = auth.new_launch(PATIENT, app_context={"rung": "single-leg-reverse-hyper", "ruleSetSha256": "ab" * 32})
    callback, params = launch(client, fhir, auth, launch_token=token)
    assert params["response_type"] == "code" and params["client_id"] == CLIENT_ID
    assert params["redirect_uri"] == PUBLIC + "/app/callback"
    assert params["scope"] == "launch patient/Observation.rs patient/Observation.c patient/Condition.rs"
    assert params["aud"] == fhir.base_url and params["launch"] == token
    assert params["code_challenge_method"] == "S256" and len(params["code_challenge"]) == 43 and params["state"]
    assert callback.status_code == 302 and callback.headers["Location"] == "/app/"
    page = client.get("/app/").get_data(as_text=True)
    assert '<html lang="en">' in page
    assert sessions_shown(page) == 3  # hip abduction 19/18 and 23/22, then bird-dog 28/27
    assert any("step up" in s.lower() or "single-leg" in s.lower() for s in summaries(page)), summaries(page)
    assert '<path class="rung-line"' in page and '<rect class="band-target"' in page and '<rect class="band-pain"' in page
    assert '<line class="onset-mark"' in page  # the example's condition has an onset
    # the card's appContext: which rung it recommended, and that its rule set is not this one
    assert "Opened from the card recommending Single-leg reverse hyper." in page
    assert 'id="ruleset-differs"' in page and "abababababab" in page
    # the data was read with the user's token, through the service's prefetch templates
    searched = [r for r in fhir.requests if r.method == "GET" and r.path.endswith("/Observation")]
    assert searched and all(r.authorization == f"Bearer {TOKEN}" for r in searched)
    assert {tuple(r.query.get("patient", [])) for r in searched} == {(PATIENT,)}


def test_the_rule_set_of_the_card_is_not_flagged_when_it_is_the_active_one(client, fhir, auth, app):
    sha = app.extensions["lbp_cds"].rules.current().ruleset.identity.sha256
    page = launched(client, fhir, auth, launch_token=auth.new_launch(PATIENT, app_context={"rung": "bird-dog",
                                                                                           "ruleSetSha256": sha}))
    assert "Opened from the card recommending Bird-dog." in page and 'id="ruleset-differs"' not in page


def test_standalone_launch_asks_for_launch_patient_and_uses_the_patient_chosen(client, fhir, auth):
    callback, params = launch(client, fhir, auth)
    assert params["scope"] == "launch/patient patient/Observation.rs patient/Observation.c patient/Condition.rs"
    assert "launch" not in params and params["aud"] == fhir.base_url
    page = client.get("/app/").get_data(as_text=True)
    assert sessions_shown(page) == 3 and 'id="opened-from"' not in page


def test_a_wrong_or_missing_state_is_a_400_and_opens_nothing(client, fhir, auth):
    def wrong_state(params: dict[str, str]) -> None:
        params["state"] = "forged"

    callback, _ = launch(client, fhir, auth, launch_token=auth.new_launch(PATIENT), tamper=wrong_state)
    assert callback.status_code == 400 and "state" in callback.get_data(as_text=True)
    assert not [r for r in auth.requests if r.path == "/token"]  # no code was exchanged
    assert client.get("/app/").status_code == 401
    # a callback without any launch in this browser
    fresh = client.application.test_client()
    assert fresh.get("/app/callback?code=x&state=y").status_code == 400


def test_an_iss_not_allowed_is_a_400_naming_iss_and_nothing_is_contacted(client, fhir, auth):
    answer = client.get("/app/launch", query_string={"iss": "https://evil.example/fhir", "launch": "x"})
    assert answer.status_code == 400 and "iss" in answer.get_data(as_text=True)
    assert client.get("/app/launch").status_code == 400
    assert not fhir.requests and not auth.requests


def test_the_pkce_verifier_is_checked_by_the_token_exchange(client, fhir, auth):
    """The verifier the app sends at /token must hash (S256) to the challenge it sent to /authorize: with the
    challenge replaced in transit, the authorization server refuses and the app opens nothing."""
    def other_challenge(params: dict[str, str]) -> None:
        params["code_challenge"] = s256("a-verifier-the-app-never-had-0123456789-abcdefgh")

    callback, _ = launch(client, fhir, auth, launch_token=auth.new_launch(PATIENT), tamper=other_challenge)
    assert callback.status_code == 502
    assert auth.token_errors == ["PKCE code_verifier does not match the code_challenge"]
    assert client.get("/app/").status_code == 401
    # and the same launch untouched succeeds: the verifier sent is the challenge's
    callback, _ = launch(client, fhir, auth, launch_token=auth.new_launch(PATIENT))
    assert callback.status_code == 302
    (exchange,) = [r for r in auth.requests if r.path == "/token" and r.params.get("code_verifier")][-1:]
    assert exchange.params["client_id"] == CLIENT_ID and exchange.params["redirect_uri"] == PUBLIC + "/app/callback"


def test_a_confidential_client_authenticates_with_its_secret(fhir):
    with SmartAuthServer(client_id="conf", client_secret="s3cret-s3cret", redirect_uri=PUBLIC + "/app/callback",
                         access_token=TOKEN, fhir_base=fhir.base_url, standalone_patient=PATIENT) as auth:
        fhir.smart_configuration = auth.configuration()
        client = build_app(app_fhir_servers=(fhir.base_url,), app_client_id="conf",
                           app_client_secret="s3cret-s3cret").test_client()
        assert sessions_shown(launched(client, fhir, auth)) == 3


def test_the_token_never_reaches_html_urls_cookies_or_logs(client, fhir, auth, caplog):
    caplog.set_level(logging.DEBUG)
    callback, params = launch(client, fhir, auth, launch_token=auth.new_launch(PATIENT))
    page = client.get("/app/")
    form = {"csrf_token": csrf(page.get_data(as_text=True)), "exercise": "bird-dog", "date": "2026-11-20",
            "reps-1": "20", "reps-2": "x", "pain_during": "1", "pain_after": "1"}
    bad = client.post("/app/record", data=form)
    good = client.post("/app/record", data={**form, "reps-2": "19"})
    assert good.status_code == 200
    for response in (callback, page, bad, good):
        assert TOKEN not in response.get_data(as_text=True)
        assert all(TOKEN not in v for _, v in response.headers.items())
    assert TOKEN not in json.dumps(params)
    cookie = client.get_cookie("lbp_app", path="/app")
    assert cookie is not None and TOKEN not in cookie.value and PATIENT not in cookie.value
    # framed by https://ehr.example (CDS_APP_FRAME_ANCESTORS): a third-party cookie, sent from its iframe
    assert cookie.http_only and cookie.same_site == "None" and cookie.secure
    assert "Partitioned" in client.get("/app/launch", query_string={"iss": fhir.base_url}).headers["Set-Cookie"]
    logged = caplog.text + " ".join(str(r.args) for r in caplog.records)
    assert TOKEN not in logged and PATIENT not in logged


def test_an_app_nobody_else_frames_keeps_a_lax_cookie(fhir, auth):
    client = build_app(app_fhir_servers=(fhir.base_url,)).test_client()  # frame-ancestors 'self'
    launched(client, fhir, auth)
    cookie = client.get_cookie("lbp_app", path="/app")
    assert cookie is not None and cookie.http_only and cookie.same_site == "Lax"
    assert not cookie.secure  # plain http public URL (development): Secure would make the browser drop it
    assert "Partitioned" not in client.get("/app/launch", query_string={"iss": fhir.base_url}).headers["Set-Cookie"]


def test_app_pages_carry_the_security_headers_and_no_inline_script(client, fhir, auth):
    page = launched(client, fhir, auth)
    answer = client.get("/app/")
    csp = answer.headers["Content-Security-Policy"]
    assert "frame-ancestors https://ehr.example" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp and "script-src" not in csp  # no script at all (default-src 'none')
    assert answer.headers["X-Content-Type-Options"] == "nosniff" and answer.headers["Cache-Control"] == "no-store"
    assert "<script" not in page and " style=" not in page
    assert not re.search(r"<[^>]+\son[a-z]+=", page)  # no inline event handlers
    error = client.get("/app/launch", query_string={"iss": "https://x.example"})
    assert error.headers["Content-Security-Policy"] == csp


def test_an_expired_token_needs_a_new_launch(client, fhir, auth):
    auth.expires_in = 0
    callback, _ = launch(client, fhir, auth)
    assert callback.status_code == 302
    answer = client.get("/app/")
    assert answer.status_code == 401 and "launch" in answer.get_data(as_text=True)


# -- record a session -------------------------------------------------------------------------------

def test_the_form_offers_the_ladder_and_the_prescribed_rounds(client, fhir, auth):
    page = launched(client, fhir, auth)
    form = re.search(r'<form id="record-session" method="post" action="/app/record".*?</form>', page, re.S)[0]
    assert re.findall(r'<option value="([^"]+)"', form) == ["hip-abduction", "bird-dog", "single-leg-reverse-hyper",
                                                           "reverse-hyper"]
    assert 'type="date" id="session-date" name="date" value="2026-11-20"' in form
    assert re.findall(r'<input id="(reps-\d+)" name="reps-\d+" type="number"', form) == ["reps-1", "reps-2"]
    assert 'id="pain-during" name="pain_during"' in form and 'id="pain-after" name="pain_after"' in form
    assert 'id="record"' in form and 'id="add-round" name="action" value="add-round"' in form
    for input_id in re.findall(r'<(?:input|select) (?:type="date" )?id="([^"]+)"', form):
        assert f'<label for="{input_id}">' in form, input_id
    assert ">Round 1 " in form and ">Round 2 " in form


def test_add_round_adds_an_input_and_writes_nothing(client, fhir, auth):
    page = launched(client, fhir, auth)
    answer = client.post("/app/record", data={"csrf_token": csrf(page), "action": "add-round", "exercise": "bird-dog",
                                             "date": "2026-11-20", "reps-1": "20", "reps-2": "21"})
    assert answer.status_code == 200
    text = answer.get_data(as_text=True)
    assert 'id="reps-3"' in text and 'value="21"' in text
    assert not fhir.created and not [r for r in fhir.requests if r.method == "POST"]


def test_recording_a_session_creates_the_spec_observations_and_refreshes_the_recommendation(client, fhir, auth):
    page = launched(client, fhir, auth, launch_token=auth.new_launch(PATIENT))
    before = summaries(page)
    answer = client.post("/app/record", data={
        "csrf_token": csrf(page), "action": "record", "exercise": "single-leg-reverse-hyper", "date": "2026-11-20",
        "reps-1": "20", "reps-2": "18", "pain_during": "1", "pain_after": "2"})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    text = answer.get_data(as_text=True)
    rounds, pains = fhir.created[:2], fhir.created[2:]
    assert len(fhir.created) == 4
    for resource in fhir.created:
        Observation.model_validate(resource)  # valid FHIR
        assert resource["subject"] == {"reference": f"Patient/{PATIENT}"} and resource["status"] == "final"
        assert resource["effectiveDateTime"] == "2026-11-20"
    assert [r["valueQuantity"]["value"] for r in rounds] == [20, 18]
    assert [r["code"]["coding"][0]["code"] for r in rounds] == ["reps-to-technical-failure"] * 2
    assert [[c.get("valueInteger") for c in r["component"]] for r in rounds] == [[None, 1], [None, 2]]
    assert {r["component"][0]["valueCodeableConcept"]["coding"][0]["code"] for r in rounds} == {"single-leg-reverse-hyper"}
    round_refs = [{"reference": f"Observation/{r['id']}"} for r in rounds]
    assert [(p["code"]["coding"][0]["code"], p["valueInteger"], p["derivedFrom"]) for p in pains] == [
        ("72514-3", 1, round_refs), ("72514-3", 2, round_refs)]
    # rounds first, then the pain scores
    posts = [r for r in fhir.requests if r.method == "POST"]
    assert len(posts) == 4 and all(r.authorization == f"Bearer {TOKEN}" for r in posts)
    # what was written, then the recommendation re-read from the FHIR server
    section = re.search(r'<section id="written".*?</section>', text, re.S)[0]
    written = re.findall(r'<li class="written-resource"><code>(Observation/[^<]+)</code>', section)
    assert written == [f"Observation/{r['id']}" for r in fhir.created]
    assert sessions_shown(text) == 4
    after = summaries(text)
    assert after != before and any("single-leg reverse hyper" in s.lower() for s in after), after
    assert "<td>20, 18</td>" in text


def test_a_hook_call_afterwards_decides_from_the_recorded_session(client, fhir, auth):
    page = launched(client, fhir, auth)
    client.post("/app/record", data={"csrf_token": csrf(page), "exercise": "single-leg-reverse-hyper",
                                     "date": "2026-11-20", "reps-1": "12", "reps-2": "13", "pain_during": "0",
                                     "pain_after": "1"})
    assert len(fhir.created) == 4
    answer = client.post("/cds-services/lbp-exercise-progression", json={
        "hook": "patient-view", "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "fhirServer": fhir.base_url, "fhirAuthorization": {"access_token": TOKEN, "token_type": "Bearer",
                                                           "expires_in": 300, "scope": "patient/*.read",
                                                           "subject": "cds"},
        "context": {"userId": "Practitioner/example", "patientId": PATIENT}})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    extensions = [c["extension"]["org.lbp-cds.recommendation"] for c in answer.get_json()["cards"]]
    progression = [e for e in extensions if e.get("currentExercise")]
    assert progression and progression[-1]["currentExercise"] == "single-leg-reverse-hyper"
    assert progression[-1]["facts"]["reps"] == [12, 13] and progression[-1]["decision"] == "step-back"


def test_invalid_input_is_a_400_with_a_message_per_field_and_nothing_written(client, fhir, auth):
    page = launched(client, fhir, auth)
    answer = client.post("/app/record", data={
        "csrf_token": csrf(page), "exercise": "sit-ups", "date": "2026-11-21", "reps-1": "abc", "reps-2": "20",
        "pain_during": "11", "pain_after": ""})
    assert answer.status_code == 400
    text = answer.get_data(as_text=True)
    for input_id in ("exercise", "session-date", "reps-1", "pain-during", "pain-after"):
        assert f'<p class="field-error" id="error-{input_id}">' in text, input_id
        tag = re.search(rf'<(?:input|select)[^>]*id="{input_id}"[^>]*>', text)[0]
        assert 'aria-invalid="true"' in tag and f'aria-describedby="error-{input_id}"' in tag
    assert 'id="error-reps-2"' not in text
    assert 'value="abc"' in text and 'value="11"' in text and 'value="2026-11-21"' in text  # the form re-filled
    assert "Choose one of the programme&#39;s exercises." in text
    assert not fhir.created and not [r for r in fhir.requests if r.method == "POST"]


def test_a_failed_write_says_what_was_written_and_keeps_the_form(client, fhir, auth):
    page = launched(client, fhir, auth)
    fhir.fail_posts_after = 1
    answer = client.post("/app/record", data={
        "csrf_token": csrf(page), "exercise": "bird-dog", "date": "2026-11-20", "reps-1": "24", "reps-2": "23",
        "pain_during": "1", "pain_after": "1"})
    assert answer.status_code == 502
    text = answer.get_data(as_text=True)
    alert = re.search(r'<div id="write-error" role="alert">.*?</div>', text, re.S)[0]
    (first,) = fhir.created
    assert f"<code>Observation/{first['id']}</code>" in alert
    assert alert.count('class="not-written-resource"') == 3  # round 2 and both pain scores
    assert 'id="written"' not in text
    assert 'value="24"' in text and 'value="23"' in text  # the form kept filled


def test_the_same_form_sent_twice_is_written_once(client, fhir, auth):
    """A reload of the page a write answered sends the form again: its CSRF token was used, so it is refused."""
    page = launched(client, fhir, auth)
    form = {"csrf_token": csrf(page), "exercise": "bird-dog", "date": "2026-11-20", "reps-1": "20", "reps-2": "20",
            "pain_during": "1", "pain_after": "1"}
    first = client.post("/app/record", data=form)
    assert first.status_code == 200 and len(fhir.created) == 4
    assert client.post("/app/record", data=form).status_code == 403
    assert len(fhir.created) == 4
    # the page the write answered carries the next token
    again = client.post("/app/record", data={**form, "csrf_token": csrf(first.get_data(as_text=True))})
    assert again.status_code == 200 and len(fhir.created) == 8


def test_a_form_without_the_sessions_csrf_token_writes_nothing(client, fhir, auth):
    launched(client, fhir, auth)
    form = {"exercise": "bird-dog", "date": "2026-11-20", "reps-1": "20", "reps-2": "20", "pain_during": "1",
            "pain_after": "1"}
    assert client.post("/app/record", data=form).status_code == 403
    assert client.post("/app/record", data={**form, "csrf_token": "forged"}).status_code == 403
    fresh = build_app(app_fhir_servers=(fhir.base_url,)).test_client()
    assert fresh.post("/app/record", data=form).status_code == 401
    assert not fhir.created


# -- demo mode --------------------------------------------------------------------------------------

def test_demo_mode_shows_a_bundled_example_without_a_fhir_server_and_disables_writing(client, fhir):
    answer = client.get("/app/", query_string={"demo": "bird-dog-28-27"})
    assert answer.status_code == 200
    text = answer.get_data(as_text=True)
    assert '<div id="demo-banner" role="status">' in text and "bird-dog-28-27" in text
    assert re.search(r"<fieldset disabled", text)
    assert sessions_shown(text) == 3 and summaries(text)
    assert not fhir.requests
    listing = client.get("/app/demo").get_data(as_text=True)
    assert '<a href="/app/?demo=bird-dog-28-27">' in listing and '<a href="/app/?demo=no-sessions">' in listing
    empty = client.get("/app/?demo=no-sessions").get_data(as_text=True)
    assert sessions_shown(empty) == 0


@pytest.mark.parametrize("name", sorted(p.stem for p in REQUESTS_DIR.glob("*.json")))
def test_every_bundled_example_opens_in_demo_mode(client, name):
    answer = client.get("/app/", query_string={"demo": name})
    assert answer.status_code == 200, name
    text = answer.get_data(as_text=True)
    assert '<div id="demo-banner" role="status">' in text and sessions_shown(text) >= 0


@pytest.mark.parametrize("name", ["no-such-example", "../config", "order-sign", "bird-dog-28-27.json"])
def test_an_unknown_demo_example_is_a_404_naming_it(client, name):
    answer = client.get("/app/", query_string={"demo": name})
    assert answer.status_code == 404 and html.escape(name) in answer.get_data(as_text=True)


def test_the_app_is_off_in_production_unless_configured():
    from conftest import RULES_DIR

    from cds.config import ConfigError, load_settings

    base = {"CDS_AUDIT_KEY": "k" * 16, "CDS_RULES_DIR": str(RULES_DIR)}
    assert load_settings(base).app is False
    with pytest.raises(ConfigError, match="CDS_APP_SECRET"):
        load_settings({**base, "CDS_APP": "on"})
    settings = load_settings({**base, "CDS_APP": "on", "CDS_APP_SECRET": "s" * 32,
                              "CDS_APP_FHIR_SERVERS": "https://ehr.example/fhir/, https://b.example/r4"})
    assert settings.app_fhir_servers == ("https://ehr.example/fhir", "https://b.example/r4")
    assert settings.app_demo is False
    off = build_app(app=False)
    assert off.test_client().get("/app/").status_code == 404
