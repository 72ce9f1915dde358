"""JWT authentication through the HTTP layer (CDS Hooks 2.0, SPEC §3; issue 6).

The app runs with ``auth=True`` and a trusted-issuers file naming a loopback JWKS server
(tests/jwks_server.py) that serves an ES384 key generated here. The audience is the configured public
base URL plus the called path, as it would be behind a reverse proxy. Verifier internals (every way a
token can be wrong) are tested in test_auth.py; here: which endpoints need a token, what a refusal
looks like on the wire, and that the token never reaches the logs.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import jwt
import pytest
from conftest import REQUESTS_DIR, RULES_DIR, SERVICE_URL, UNAUTHORIZED_BODY
from cryptography.hazmat.primitives.asymmetric import ec, rsa

try:
    from jwks_server import JwksServer
except ImportError:  # pragma: no cover - when tests/ is a package
    from tests.jwks_server import JwksServer

ISS = "https://ehr.example.org"
PUBLIC_BASE = "https://cds.example.org/lbp"  # behind a reverse proxy, under a path prefix
FEEDBACK_URL = SERVICE_URL + "/feedback"
JWKS_PATH = "/ehr/jwks.json"
KID = "ehr-es384-1"
RSA_KID = "ehr-rs384-1"


def _public_jwk(private_key, kid: str, alg: str) -> dict[str, Any]:
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private_key.public_key()))
    else:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private_key.public_key()))
    jwk.update({"kid": kid, "alg": alg, "use": "sig"})
    return jwk


@pytest.fixture(scope="module")
def keys():
    return {
        "es384": ec.generate_private_key(ec.SECP384R1()),
        "rs384": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "stranger": ec.generate_private_key(ec.SECP384R1()),
    }


@pytest.fixture(scope="module")
def jwks(keys):
    with JwksServer() as server:
        server.set_jwks(
            JWKS_PATH,
            {"keys": [_public_jwk(keys["es384"], KID, "ES384"), _public_jwk(keys["rs384"], RSA_KID, "RS384")]},
        )
        yield server


@pytest.fixture(scope="module")
def auth_app(tmp_path_factory, jwks):
    from cds.config import load_settings
    from cds.http import create_app

    tmp = tmp_path_factory.mktemp("auth-http")
    issuers = tmp / "issuers.json"
    issuers.write_text(json.dumps({"issuers": [{"iss": ISS, "jwks_url": jwks.url(JWKS_PATH)}]}))
    settings = load_settings(
        {},
        development=True,
        rules_dir=RULES_DIR,
        rules_poll_seconds=0,
        database_url=f"sqlite:///{tmp / 'db.sqlite3'}",
        auth=True,
        trusted_issuers=issuers,
        public_base_url=PUBLIC_BASE + "/",
    )
    assert settings.auth
    return create_app(settings)


@pytest.fixture
def client(auth_app):
    return auth_app.test_client()


def token(keys, path: str, *, key: str = "es384", alg: str = "ES384", kid: str = KID, **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": ISS, "aud": PUBLIC_BASE + path, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, keys[key], algorithm=alg, headers={"kid": kid, "typ": "JWT"})


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


def hook_request() -> dict[str, Any]:
    return json.loads((REQUESTS_DIR / "bird-dog-12-14.json").read_text())


def feedback_request() -> dict[str, Any]:
    return {
        "feedback": [
            {"card": str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": "2026-11-20T10:00:00Z"}
        ]
    }


def assert_refused(response) -> None:
    assert response.status_code == 401, response.get_data(as_text=True)[:300]
    assert response.headers.get("WWW-Authenticate", "").startswith("Bearer")
    assert response.get_json() == UNAUTHORIZED_BODY


# ---- accepted ------------------------------------------------------------------------------------


def test_valid_es384_token_is_accepted_on_discovery(client, keys):
    response = client.get("/cds-services", headers=bearer(token(keys, "/cds-services")))
    assert response.status_code == 200
    assert response.get_json()["services"][0]["id"] == "lbp-exercise-progression"


def test_valid_es384_token_is_accepted_on_the_hook_call(client, keys):
    response = client.post(SERVICE_URL, json=hook_request(), headers=bearer(token(keys, SERVICE_URL)))
    assert response.status_code == 200
    assert response.get_json()["cards"]


def test_valid_es384_token_is_accepted_on_feedback(client, keys):
    response = client.post(FEEDBACK_URL, json=feedback_request(), headers=bearer(token(keys, FEEDBACK_URL)))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["received"] == 1


def test_valid_rs384_token_is_accepted(client, keys):
    tok = token(keys, SERVICE_URL, key="rs384", alg="RS384", kid=RSA_KID)
    assert client.post(SERVICE_URL, json=hook_request(), headers=bearer(tok)).status_code == 200


def test_authenticated_but_invalid_request_is_still_400(client, keys):
    response = client.post(SERVICE_URL, json={"hook": 5}, headers=bearer(token(keys, SERVICE_URL)))
    assert response.status_code == 400


# ---- refused -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,path,body",
    [("get", "/cds-services", None), ("post", SERVICE_URL, "hook"), ("post", FEEDBACK_URL, "feedback")],
)
def test_no_token_is_401_on_every_cds_endpoint(client, method, path, body):
    payload = {"hook": hook_request(), "feedback": feedback_request(), None: None}[body]
    response = getattr(client, method)(path, json=payload) if payload else getattr(client, method)(path)
    assert_refused(response)


BAD_HEADERS = [
    "",
    "Bearer",
    "Bearer ",
    "Basic dXNlcjpwYXNz",
    "Bearer not-a-jwt",
    "Bearer a.b.c",
    "Bearer eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJpc3MiOiJodHRwczovL2Voci5leGFtcGxlLm9yZyJ9.",
    "Bearer " + "A" * 20_000,
]


@pytest.mark.parametrize("header", BAD_HEADERS, ids=range(len(BAD_HEADERS)))
def test_bad_authorization_header_is_401_with_a_generic_body(client, header):
    assert_refused(client.post(SERVICE_URL, json=hook_request(), headers={"Authorization": header}))


def test_token_signed_by_an_unknown_key_is_401(client, keys):
    tok = token(keys, SERVICE_URL, key="stranger")
    assert_refused(client.post(SERVICE_URL, json=hook_request(), headers=bearer(tok)))


def test_tampered_token_is_401(client, keys):
    head, payload, sig = token(keys, SERVICE_URL).split(".")
    claims = json.loads(jwt.utils.base64url_decode(payload))
    claims["iss"] = ISS
    claims["sub"] = "someone-else"
    forged = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
    assert_refused(client.post(SERVICE_URL, json=hook_request(), headers=bearer(f"{head}.{forged}.{sig}")))


def test_expired_token_is_401(client, keys):
    now = int(time.time())
    tok = token(keys, SERVICE_URL, iat=now - 3600, exp=now - 1800)
    assert_refused(client.post(SERVICE_URL, json=hook_request(), headers=bearer(tok)))


def test_untrusted_issuer_is_401(client, keys, jwks):
    before = jwks.request_count()
    tok = token(keys, SERVICE_URL, iss="https://evil.example.org")
    assert_refused(client.post(SERVICE_URL, json=hook_request(), headers=bearer(tok)))
    assert jwks.request_count() == before  # nothing fetched for a stranger


@pytest.mark.parametrize(
    "aud_path,called",
    [
        ("/cds-services", SERVICE_URL),  # a discovery token used on the service
        (FEEDBACK_URL, SERVICE_URL),  # a feedback token used on the hook call
        (SERVICE_URL, FEEDBACK_URL),
        (SERVICE_URL, "/cds-services"),
    ],
)
def test_token_for_another_endpoint_is_401(client, keys, aud_path, called):
    tok = token(keys, aud_path)
    if called == "/cds-services":
        response = client.get(called, headers=bearer(tok))
    else:
        body = feedback_request() if called == FEEDBACK_URL else hook_request()
        response = client.post(called, json=body, headers=bearer(tok))
    assert_refused(response)


@pytest.mark.parametrize(
    "aud",
    [
        "http://testserver" + SERVICE_URL,  # the Host the request came in on, not the public URL
        "https://cds.example.org" + SERVICE_URL,  # without the proxy prefix
        PUBLIC_BASE + SERVICE_URL + "/",
        PUBLIC_BASE.upper() + SERVICE_URL,
    ],
)
def test_audience_must_be_the_configured_public_url(client, keys, aud):
    now = int(time.time())
    payload = {"iss": ISS, "aud": aud, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    tok = jwt.encode(payload, keys["es384"], algorithm="ES384", headers={"kid": KID})
    assert_refused(client.post(SERVICE_URL, json=hook_request(), headers=bearer(tok)))


def test_replayed_token_is_401(client, keys):
    tok = token(keys, SERVICE_URL)
    assert client.post(SERVICE_URL, json=hook_request(), headers=bearer(tok)).status_code == 200
    assert_refused(client.post(SERVICE_URL, json=hook_request(), headers=bearer(tok)))


def test_a_refused_token_does_not_consume_its_jti(client, keys):
    jti = str(uuid.uuid4())
    wrong_aud = token(keys, FEEDBACK_URL, jti=jti)
    assert_refused(client.post(SERVICE_URL, json=hook_request(), headers=bearer(wrong_aud)))
    right = token(keys, SERVICE_URL, jti=jti)
    assert client.post(SERVICE_URL, json=hook_request(), headers=bearer(right)).status_code == 200


def test_401_comes_before_body_checks(client):
    """An unauthenticated caller learns nothing about the body: no 400/413/415 before the 401."""
    assert_refused(client.post(SERVICE_URL, data="{", content_type="application/json"))
    assert_refused(client.post(SERVICE_URL, data="x", content_type="text/plain"))
    assert_refused(client.post("/cds-services/no-such-service", json={}))


# ---- open endpoints ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/openapi.json"])
def test_operations_endpoints_need_no_token(client, path):
    response = client.get(path)
    assert response.status_code == 200, (path, response.status_code)
    assert "WWW-Authenticate" not in response.headers


def test_openapi_declares_the_bearer_scheme_when_auth_is_on(client):
    doc = client.get("/openapi.json").get_json()
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert doc["paths"]["/cds-services/{service_id}"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in doc["paths"]["/healthz"]["get"]
    assert doc["servers"] == [{"url": PUBLIC_BASE}]


@pytest.mark.parametrize("path", ["/cds-services", SERVICE_URL, FEEDBACK_URL])
def test_cors_preflight_needs_no_token(client, path):
    response = client.options(
        path,
        headers={
            "Origin": "https://sandbox.cds-hooks.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert response.status_code == 200
    assert response.headers.get("Access-Control-Allow-Origin") in ("*", "https://sandbox.cds-hooks.org")
    allowed = response.headers.get("Access-Control-Allow-Headers", "").lower()
    assert "authorization" in allowed and "content-type" in allowed


def test_refused_responses_still_carry_cors_headers(client):
    """A browser EHR must be able to read the 401."""
    response = client.post(SERVICE_URL, json=hook_request(), headers={"Origin": "https://sandbox.cds-hooks.org"})
    assert_refused(response)
    assert response.headers.get("Access-Control-Allow-Origin")


# ---- logs ----------------------------------------------------------------------------------------


def test_token_never_in_logs(client, keys, caplog):
    good = token(keys, SERVICE_URL)
    expired = token(keys, SERVICE_URL, iat=int(time.time()) - 3600, exp=int(time.time()) - 1800)
    other_aud = token(keys, FEEDBACK_URL)
    stranger = token(keys, SERVICE_URL, key="stranger")
    with caplog.at_level(logging.DEBUG):
        client.post(SERVICE_URL, json=hook_request(), headers=bearer(good))
        client.post(SERVICE_URL, json=hook_request(), headers=bearer(good))  # replay
        for tok in (expired, other_aud, stranger):
            client.post(SERVICE_URL, json=hook_request(), headers=bearer(tok))
        client.post(SERVICE_URL, json=hook_request(), headers={"Authorization": "Bearer secret-looking.but-not.ajwt"})
    text = "\n".join(r.getMessage() + repr(getattr(r, "__dict__", {})) for r in caplog.records)
    assert caplog.records, "the refusals are logged"
    for tok in (good, expired, other_aud, stranger):
        for part in tok.split("."):
            assert part not in text
    assert "secret-looking" not in text
    refusals = [r for r in caplog.records if r.name == "cds.auth" and r.levelno >= logging.WARNING]
    assert len(refusals) >= 5
