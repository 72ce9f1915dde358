"""Epic-, Oracle-Health- and sandbox-shaped calls, end to end through the app (issue 11 points 2, 4, 7).

Real signed JWTs (keys generated here, public keys served by the loopback JWKS server), shaped as each
EHR's public documentation shows them:

* **Epic**: RS384, a ``jku`` header to the organisation's key set, a base64 ``kid``; ``iss`` is the
  organisation's FHIR endpoint; ``aud`` typed in by hand by the health system (not the endpoint URL);
  ``sub`` the client id; ``nbf`` five minutes before ``iat``. Requests carry ``userId: Practitioner/x``,
  ``com.epic.cdshooks.request.criteria-id`` and ``...cds-hooks-specification-version: "1.0"``
  extensions; feedback carries an ``overrideReasons`` list, extensions and fields beyond CDS Hooks 2.0.
  Epic supports only ``selectionBehavior: "any"``.
* **Oracle Health**: patient-view with ``fhirServer`` + ``fhirAuthorization`` (the service fetches), a
  tenant claim; no ``appContext`` on links (unit-tested in test_ehr_profiles.py).
* **CDS Hooks sandbox**: ES384 with ``jku: https://sandbox.cds-hooks.org/.well-known/jwks.json``, ``aud`` the
  endpoint URL; feedback reasons without ``display``. Loaded from ``docs/issuers/sandbox.json``; the
  sandbox's key-set URL is answered by an in-process transport (the only way to test that exact URL
  offline).
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from conftest import (
    REQUESTS_DIR,
    ROOT,
    RULES_DIR,
    SERVICE_URL,
    UNAUTHORIZED_BODY,
    error_expression,
    error_issue,
)
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import select

from cds.auth import JwtVerifier, load_trusted_issuers
from cds.ehr_profiles import SANDBOX_JKU

try:
    from fhir_server import FhirData, FhirTestServer
    from jwks_server import JwksServer
except ImportError:  # pragma: no cover - when tests/ is a package
    from tests.fhir_server import FhirData, FhirTestServer
    from tests.jwks_server import JwksServer

PUBLIC_BASE = "https://cds.example-health.org/lbp"
FEEDBACK_URL = SERVICE_URL + "/feedback"
AUDIT_KEY = "test-audit-key-0123456789abcdef"
REQUEST_FILE = REQUESTS_DIR / "bird-dog-12-14.json"

EPIC_ISS = "https://fhir.example-health.org/interconnect-fhir-oauth/api/FHIR/R4"
EPIC_AUD = "https://cds.example-health.org/lbp/cds-services"  # typed in by the health system
EPIC_KID = "d3bmo5HzW61TUgikHZH+A8Tx4UOXz2iOs4KvVU4eLY0="
EPIC_JKU_PATH = "/interconnect-fhir-oauth/api/epic/2019/Security/Open/PublicKeys/530013/530013"
EPIC_CRITERIA = "com.epic.cdshooks.request.criteria-id"

ORACLE_ISS = "https://cds.oracle-health.example.org/tenants/ec2458f2"
ORACLE_TENANT = "ec2458f2"
ORACLE_KID = "oracle-rs384-2026"
ORACLE_JWKS_PATH = "/oracle/jwks.json"

SANDBOX_ISS = "https://sandbox.cds-hooks.org"
SANDBOX_KID = "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"
SANDBOX_FHIR = "https://launch.smarthealthit.org/v/r4/fhir"


def _public_jwk(private_key, kid: str, alg: str) -> dict[str, Any]:
    algorithm = jwt.algorithms.ECAlgorithm if isinstance(private_key, ec.EllipticCurvePrivateKey) else jwt.algorithms.RSAAlgorithm
    jwk = json.loads(algorithm.to_jwk(private_key.public_key()))
    jwk.update({"kid": kid, "alg": alg, "use": "sig"})
    return jwk


@pytest.fixture(scope="module")
def keys():
    return {
        "epic": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "oracle": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "sandbox": ec.generate_private_key(ec.SECP384R1()),
    }


@pytest.fixture(scope="module")
def jwks(keys):
    with JwksServer() as server:
        server.set_jwks(EPIC_JKU_PATH, {"keys": [_public_jwk(keys["epic"], EPIC_KID, "RS384")]})
        server.set_jwks(ORACLE_JWKS_PATH, {"keys": [_public_jwk(keys["oracle"], ORACLE_KID, "RS384")]})
        yield server


@pytest.fixture(scope="module")
def fhir():
    with FhirTestServer(FhirData.from_hook_request(REQUEST_FILE)) as server:
        yield server


@pytest.fixture(scope="module")
def issuers_file(tmp_path_factory, jwks, fhir) -> Path:
    path = tmp_path_factory.mktemp("ehr-issuers") / "issuers.json"
    path.write_text(json.dumps({"issuers": [
        {"iss": EPIC_ISS, "profile": "epic", "jku": [jwks.url(EPIC_JKU_PATH)], "aud": [EPIC_AUD],
         "fhir_servers": [fhir.base_url]},
        {"iss": ORACLE_ISS, "profile": "oracle", "jwks_url": jwks.url(ORACLE_JWKS_PATH), "tenants": [ORACLE_TENANT],
         "fhir_servers": [fhir.base_url + "/"]},
        {"iss": SANDBOX_ISS, "profile": "sandbox", "fhir_servers": [SANDBOX_FHIR]},
    ]}))
    return path


def _sandbox_transport(keys) -> httpx.MockTransport:
    body = json.dumps({"keys": [_public_jwk(keys["sandbox"], SANDBOX_KID, "ES384")]}).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        if str(request.url) == SANDBOX_JKU:
            return httpx.Response(200, content=body, headers={"Content-Type": "application/json"})
        return httpx.Response(404)

    return httpx.MockTransport(handler)


def _app(tmp_path: Path, issuers: Path, keys, *, sandbox_keys: bool = False):
    from cds.config import load_settings
    from cds.http import create_app

    settings = load_settings(
        {}, development=True, rules_dir=RULES_DIR, rules_poll_seconds=0, auth=True, trusted_issuers=issuers,
        database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}", audit_key=AUDIT_KEY, public_base_url=PUBLIC_BASE,
    )
    app = create_app(settings)
    if sandbox_keys:  # the same issuers, the sandbox's real key-set URL answered in-process
        state = app.extensions["lbp_cds"]
        state.verifier = JwtVerifier(load_trusted_issuers(issuers), http_client=httpx.Client(transport=_sandbox_transport(keys)))
    return app


@pytest.fixture
def ehr_app(tmp_path, issuers_file, keys):
    app = _app(tmp_path, issuers_file, keys)
    yield app
    state = app.extensions["lbp_cds"]
    state.audit.writer.close()
    state.store.close()


# ---- tokens, as each EHR's documentation shows them ------------------------------------------------


def epic_token(keys, jwks, **claims: Any) -> str:
    now = int(time.time())
    payload = {"aud": EPIC_AUD, "exp": now + 300, "iat": now, "iss": EPIC_ISS, "jti": str(uuid.uuid4()),
               "nbf": now - 300, "sub": "d45049c3-3441-40ef-ab4d-b9cd86a17225"}
    payload.update(claims)
    return jwt.encode(payload, keys["epic"], algorithm="RS384",
                      headers={"jku": jwks.url(EPIC_JKU_PATH), "kid": EPIC_KID, "typ": "JWT"})


def oracle_token(keys, path: str, **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": ORACLE_ISS, "aud": PUBLIC_BASE + path, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4()),
               "tenant": ORACLE_TENANT}
    payload.update(claims)
    return jwt.encode(payload, keys["oracle"], algorithm="RS384", headers={"kid": ORACLE_KID, "typ": "JWT"})


def sandbox_token(keys, path: str) -> str:
    now = int(time.time())
    payload = {"iss": SANDBOX_ISS, "aud": PUBLIC_BASE + path, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())}
    return jwt.encode(payload, keys["sandbox"], algorithm="ES384",
                      headers={"kid": SANDBOX_KID, "typ": "JWT", "jku": SANDBOX_JKU})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def hook_request() -> dict[str, Any]:
    return json.loads(REQUEST_FILE.read_text())


def epic_request(fhir_server: str, criteria: Any = "1234567") -> dict[str, Any]:
    body = hook_request()
    body["hookInstance"] = str(uuid.uuid4())
    body["context"]["userId"] = "Practitioner/eAB3mDIBBcyUKviyzrxsnAw3"
    body["fhirServer"] = fhir_server
    body["fhirAuthorization"] = {"access_token": "epic-access-token", "token_type": "Bearer", "expires_in": 300,
                                 "scope": "patient/Observation.read patient/Condition.read", "subject": "client-id"}
    body["extension"] = {EPIC_CRITERIA: criteria, "com.epic.cdshooks.request.cds-hooks-specification-version": "1.0",
                         "com.epic.cdshooks.request.fhir-version": "R4"}
    return body


def audit_criteria_ids(app) -> list[str | None]:
    from cds.storage.models import audit_evaluation

    state = app.extensions["lbp_cds"]
    assert state.audit.flush(timeout=30)
    with state.store.engine.connect() as conn:
        return [row[0] for row in conn.execute(select(audit_evaluation.c.criteria_id).order_by(audit_evaluation.c.id))]


# ---- Epic ----------------------------------------------------------------------------------------------


def test_epic_call_with_hand_set_aud_extensions_and_practitioner_user(ehr_app, keys, jwks, fhir):
    client = ehr_app.test_client()
    response = client.post(SERVICE_URL, json=epic_request(fhir.base_url), headers=bearer(epic_token(keys, jwks)))
    assert response.status_code == 200, response.get_json()
    cards = response.get_json()["cards"]
    with_suggestions = [c for c in cards if c.get("suggestions")]
    assert with_suggestions, "the example must give a card with a suggestion"
    assert {c["selectionBehavior"] for c in with_suggestions} == {"any"}  # Epic supports only "any"
    assert audit_criteria_ids(ehr_app) == ["1234567"]
    # the discovery and the feedback endpoints take the same hand-set aud
    assert client.get("/cds-services", headers=bearer(epic_token(keys, jwks))).status_code == 200


def test_epic_criteria_id_is_kept_only_as_a_plain_bounded_token(ehr_app, keys, jwks, fhir):
    client = ehr_app.test_client()
    for criteria in (98765, "x" * 65, "Jane Doe, DOB 1970-01-01", {"id": 1}):
        response = client.post(SERVICE_URL, json=epic_request(fhir.base_url, criteria), headers=bearer(epic_token(keys, jwks)))
        assert response.status_code == 200, response.get_json()
    assert audit_criteria_ids(ehr_app) == ["98765", None, None, None]


def test_epic_token_with_the_endpoint_url_as_aud_is_refused(ehr_app, keys, jwks, fhir):
    """The issuer's aud list replaces the endpoint URL: only what the health system configured counts."""
    token = epic_token(keys, jwks, aud=PUBLIC_BASE + SERVICE_URL)
    response = ehr_app.test_client().post(SERVICE_URL, json=epic_request(fhir.base_url), headers=bearer(token))
    assert response.status_code == 401
    assert response.get_json() == UNAUTHORIZED_BODY


def test_epic_feedback_with_override_reasons_list_and_extra_fields(ehr_app, keys, jwks, fhir):
    client = ehr_app.test_client()
    cards = client.post(SERVICE_URL, json=epic_request(fhir.base_url), headers=bearer(epic_token(keys, jwks))).get_json()["cards"]
    card = next(c for c in cards if c.get("overrideReasons"))
    item = {
        "card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-20T15:04:05Z",
        "overrideReasons": [{"reason": card["overrideReasons"][0], "userComment": "discussed with patient"}],
        "extension": {"com.epic.cdshooks.feedback.user-role": "physician"},
        "ehrSessionId": "abc",  # beyond CDS Hooks 2.0
    }
    response = client.post(FEEDBACK_URL, json={"feedback": [item]}, headers=bearer(epic_token(keys, jwks)))
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"received": 1, "stored": 1}
    report = {row.rule_id: row for row in ehr_app.extensions["lbp_cds"].store.report()}
    assert sum(row.overridden for row in report.values()) == 1


def test_epic_fhir_server_off_the_allow_list_is_412_and_never_contacted(ehr_app, keys, jwks, fhir):
    fhir.reset()
    body = epic_request("https://elsewhere.example.org/fhir")
    del body["prefetch"]["painScores"]
    response = ehr_app.test_client().post(SERVICE_URL, json=body, headers=bearer(epic_token(keys, jwks)))
    assert response.status_code == 412
    issue = error_issue(response)
    assert issue["code"] == "forbidden" and issue["expression"] == ["fhirServer"]
    assert "elsewhere" not in issue["diagnostics"]
    assert fhir.requests == []


# ---- Oracle Health -------------------------------------------------------------------------------------


def test_oracle_patient_view_fetches_from_its_allowed_fhir_server(ehr_app, keys, fhir):
    fhir.reset()
    body = hook_request()
    body.pop("prefetch")
    body["fhirServer"] = fhir.base_url
    body["fhirAuthorization"] = {"access_token": "oracle-token", "token_type": "Bearer", "expires_in": 570,
                                 "scope": "patient/Patient.read patient/Observation.read patient/Condition.read",
                                 "subject": "lbp-cds"}
    response = ehr_app.test_client().post(SERVICE_URL, json=body, headers=bearer(oracle_token(keys, SERVICE_URL)))
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["cards"]
    assert fhir.requests and {r.authorization for r in fhir.requests} == {"Bearer oracle-token"}
    # Oracle keeps the rules' selectionBehavior (its profile only drops appContext)
    suggestions = [c for c in response.get_json()["cards"] if c.get("suggestions")]
    assert all(c["selectionBehavior"] == "at-most-one" for c in suggestions)


def test_oracle_token_for_another_tenant_is_refused(ehr_app, keys):
    token = oracle_token(keys, SERVICE_URL, tenant="someone-else")
    assert ehr_app.test_client().post(SERVICE_URL, json=hook_request(), headers=bearer(token)).status_code == 401


# ---- the CDS Hooks sandbox ------------------------------------------------------------------------------


@pytest.fixture
def sandbox_app(tmp_path, keys):
    app = _app(tmp_path, ROOT / "docs" / "issuers" / "sandbox.json", keys, sandbox_keys=True)
    yield app
    state = app.extensions["lbp_cds"]
    state.audit.writer.close()
    state.store.close()


def test_sandbox_call_and_feedback_with_the_docs_issuer_file(sandbox_app, keys):
    client = sandbox_app.test_client()
    body = hook_request()
    body["fhirServer"] = SANDBOX_FHIR  # everything is prefetched: nothing is fetched
    response = client.post(SERVICE_URL, json=body, headers=bearer(sandbox_token(keys, SERVICE_URL)))
    assert response.status_code == 200, response.get_json()
    card = next(c for c in response.get_json()["cards"] if c.get("overrideReasons"))
    reason = {k: v for k, v in card["overrideReasons"][0].items() if k != "display"}  # the sandbox sends no display
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-20T15:04:05.123Z",
            "overrideReason": {"reason": reason, "userComment": "not now"}}
    response = client.post(FEEDBACK_URL, json={"feedback": [item]}, headers=bearer(sandbox_token(keys, FEEDBACK_URL)))
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"received": 1, "stored": 1}


def test_sandbox_without_its_jku_on_the_issuer_entry_is_401(tmp_path, keys):
    """The finding behind the sandbox profile: an entry for the sandbox's iss without its jku refuses it."""
    issuers = tmp_path / "issuers.json"
    issuers.write_text(json.dumps({"issuers": [{"iss": SANDBOX_ISS, "jwks_url": "https://keys.example.org/jwks.json"}]}))
    app = _app(tmp_path, issuers, keys, sandbox_keys=True)
    try:
        response = app.test_client().post(SERVICE_URL, json=hook_request(), headers=bearer(sandbox_token(keys, SERVICE_URL)))
        assert response.status_code == 401
    finally:
        app.extensions["lbp_cds"].audit.writer.close()
        app.extensions["lbp_cds"].store.close()


def test_sandbox_fhir_server_other_than_the_configured_one_is_412(sandbox_app, keys):
    body = hook_request()
    body["fhirServer"] = "https://r4.smarthealthit.org"
    response = sandbox_app.test_client().post(SERVICE_URL, json=body, headers=bearer(sandbox_token(keys, SERVICE_URL)))
    assert response.status_code == 412
    assert error_expression(response) == ["fhirServer"]


# ---- the example issuer files in docs/ stay valid -----------------------------------------------------------


@pytest.mark.parametrize("name", ["sandbox", "epic", "oracle"])
def test_the_example_issuer_files_load_with_their_profile(name):
    (issuer,) = load_trusted_issuers(ROOT / "docs" / "issuers" / f"{name}.json")
    assert issuer.profile == name
    assert issuer.fhir_servers
    expected = {
        "sandbox": lambda i: i.jku == (SANDBOX_JKU,) and i.selection_behavior is None and i.app_context,
        "epic": lambda i: i.selection_behavior == "any" and i.aud and i.jku,
        "oracle": lambda i: not i.app_context and i.tenants and i.jwks_url,
    }[name]
    assert expected(issuer), issuer
    JwtVerifier([issuer]).close()


def test_without_authentication_the_profile_is_generic(client):
    """Development (auth off): no issuer, so no shaping and no fhirServer allow-list."""
    body = copy.deepcopy(hook_request())
    body["fhirServer"] = "https://anywhere.example.org/fhir"
    response = client.post(SERVICE_URL, json=body)
    assert response.status_code == 200
    suggestions = [c for c in response.get_json()["cards"] if c.get("suggestions")]
    assert suggestions and all(c["selectionBehavior"] == "at-most-one" for c in suggestions)
