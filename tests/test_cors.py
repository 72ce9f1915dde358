"""CORS for browser-based EHRs and the CDS Hooks sandbox (SPEC §3, issue 6).

Preflights for ``POST`` with ``Authorization`` and ``Content-Type`` are answered on every CDS Hooks
endpoint; origins are configurable (``cors_origins`` / ``CDS_CORS_ORIGINS``) and default to any origin.
A refused origin gets no ``Access-Control-Allow-Origin`` at all.
"""

from __future__ import annotations

import pytest
from conftest import SERVICE_URL

SANDBOX = "https://sandbox.cds-hooks.org"
FEEDBACK_URL = SERVICE_URL + "/feedback"
CDS_PATHS = ["/cds-services", SERVICE_URL, FEEDBACK_URL]


def preflight(client, path: str, origin: str, method: str = "POST", headers: str = "authorization, content-type"):
    return client.options(
        path,
        headers={"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers},
    )


def allowed_origin(response) -> str | None:
    return response.headers.get("Access-Control-Allow-Origin")


@pytest.fixture(scope="module")
def open_app(make_app):
    return make_app()  # the default: cors_origins=("*",)


@pytest.fixture(scope="module")
def sandbox_app(make_app):
    return make_app(cors_origins=(SANDBOX,))


@pytest.mark.parametrize("path", CDS_PATHS)
def test_preflight_allows_post_with_authorization_and_content_type(open_app, path):
    response = preflight(open_app.test_client(), path, SANDBOX)
    assert response.status_code == 200
    assert allowed_origin(response) in ("*", SANDBOX)
    headers = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type"} <= headers
    methods = {m.strip().upper() for m in response.headers["Access-Control-Allow-Methods"].split(",")}
    assert {"GET", "POST"} <= methods
    assert int(response.headers.get("Access-Control-Max-Age", "0")) > 0


def test_preflight_answers_only_the_headers_it_allows(open_app):
    response = preflight(open_app.test_client(), SERVICE_URL, SANDBOX, headers="authorization, x-evil")
    headers = {h.strip().lower() for h in response.headers.get("Access-Control-Allow-Headers", "").split(",") if h}
    assert "x-evil" not in headers


def test_default_allows_any_origin(open_app):
    client = open_app.test_client()
    for origin in (SANDBOX, "https://ehr.example.org", "http://localhost:3000"):
        response = preflight(client, SERVICE_URL, origin)
        assert allowed_origin(response) in ("*", origin)
        if allowed_origin(response) == origin:
            assert "Origin" in response.headers.get("Vary", "")  # caches must not mix origins


def test_actual_request_gets_cors_headers(open_app):
    client = open_app.test_client()
    response = client.get("/cds-services", headers={"Origin": SANDBOX})
    assert response.status_code == 200
    assert allowed_origin(response) in ("*", SANDBOX)


def test_configured_origin_is_allowed(sandbox_app):
    client = sandbox_app.test_client()
    for path in CDS_PATHS:
        response = preflight(client, path, SANDBOX)
        assert response.status_code == 200
        assert allowed_origin(response) == SANDBOX
        headers = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
        assert {"authorization", "content-type"} <= headers
    response = client.get("/cds-services", headers={"Origin": SANDBOX})
    assert allowed_origin(response) == SANDBOX


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example.org",
        "http://sandbox.cds-hooks.org",  # another scheme is another origin
        "https://sandbox.cds-hooks.org.evil.example",  # prefix match must not pass
        "https://sandboxxcds-hooks.org",  # '.' is not a wildcard
        "https://evil.sandbox.cds-hooks.org",
        "null",
    ],
)
def test_other_origins_are_refused(sandbox_app, origin):
    client = sandbox_app.test_client()
    response = preflight(client, SERVICE_URL, origin)
    assert allowed_origin(response) is None
    assert "Access-Control-Allow-Headers" not in response.headers
    response = client.get("/cds-services", headers={"Origin": origin})
    assert allowed_origin(response) is None


def test_no_configured_origin_allows_none(make_app):
    client = make_app(cors_origins=()).test_client()
    assert allowed_origin(preflight(client, SERVICE_URL, SANDBOX)) is None


def test_several_configured_origins(make_app):
    other = "https://ehr.example.org"
    client = make_app(cors_origins=(other, SANDBOX)).test_client()
    for origin in (other, SANDBOX):
        response = preflight(client, SERVICE_URL, origin)
        assert allowed_origin(response) == origin
        assert "Origin" in response.headers.get("Vary", "")
    assert allowed_origin(preflight(client, SERVICE_URL, "https://evil.example.org")) is None


def test_origins_from_the_environment():
    from cds.config import load_settings

    settings = load_settings({"CDS_CORS_ORIGINS": f"{SANDBOX}, https://ehr.example.org"}, development=True)
    assert settings.cors_origins == (SANDBOX, "https://ehr.example.org")
    assert load_settings({}, development=True).cors_origins == ("*",)


def test_error_responses_carry_cors_headers(sandbox_app):
    """A browser must be able to read a 400 or 404 to show the clinician what went wrong."""
    client = sandbox_app.test_client()
    response = client.post(SERVICE_URL, data="{", content_type="application/json", headers={"Origin": SANDBOX})
    assert response.status_code == 400
    assert allowed_origin(response) == SANDBOX
    response = client.post("/cds-services/unknown", json={}, headers={"Origin": SANDBOX})
    assert response.status_code == 404
    assert allowed_origin(response) == SANDBOX
