"""End to end through the Flask app: every fhir_examples request gives the same cards whether its data is
prefetched, partly prefetched, or all fetched from a real FHIR server on loopback (tests/fhir_server.py);
and the fetch failures give a 412 naming the key, within the time budget, without leaking the token.
Mechanics only, on the fixture rule set (tests/fixtures/rules): the cards are compared with each other,
never with what the shipped rules should answer (that is rules/tests' job).
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

try:
    from fhir_server import FhirData, FhirTestServer, Override
except ImportError:  # pragma: no cover - run as a package
    from tests.fhir_server import FhirData, FhirTestServer, Override

from conftest import REQUESTS_DIR, RULES_DIR

REQUESTS = sorted(REQUESTS_DIR.glob("*.json"))
SERVICE_URL = "/cds-services/lbp-exercise-progression"
KEYS = ["patient", "conditions", "painScores", "exerciseRounds"]
TOKEN = "e2e-tok-7Hq2-SECRET-do-not-log"
BUDGET = 0.4  # the app's default fetch_total_timeout, used by the failure tests
SLACK = 0.35  # Flask test client + evaluation on top of the fetch budget (generous: CI machines are busy)

try:
    from cds.config import load_settings
    from cds.http.app import create_app

    _APP_IMPORT_ERROR = None
except ImportError as e:  # pragma: no cover - the HTTP layer not there yet
    _APP_IMPORT_ERROR = e

pytestmark = [
    pytest.mark.skipif(_APP_IMPORT_ERROR is not None, reason=f"cds.http.app.create_app unavailable: {_APP_IMPORT_ERROR}"),
    pytest.mark.skipif(not REQUESTS, reason="no fhir_examples/requests/*.json"),
]

# Ways of splitting the prefetch: which keys the EHR sends (the rest is fetched).
VARIANTS = {
    "all-fetched": [],
    "patient+conditions-prefetched": ["patient", "conditions"],
    "observations-prefetched": ["painScores", "exerciseRounds"],
    "only-rounds-fetched": ["patient", "conditions", "painScores"],
}


def _app(**overrides: Any):
    settings = load_settings({}, development=True, database_url="", rules_dir=RULES_DIR, rules_poll_seconds=0,
                             evaluation_date="2026-11-20", allow_http_fhir=True, auth=False, **overrides)
    return create_app(settings).test_client()


@pytest.fixture(scope="module")
def client():
    """Default fetch budget (0.4 s): for the failure cases, which must answer 412 within it."""
    return _app()


@pytest.fixture(scope="module")
def roomy_client():
    """Same app with a 5 s fetch budget: the equivalence tests compare cards, not speed, and must not
    turn into 412s on a busy machine."""
    return _app(fetch_total_timeout=5.0, fetch_connect_timeout=2.0)


@pytest.fixture(scope="module")
def _server():
    with FhirTestServer() as server:
        yield server


@pytest.fixture
def server(_server: FhirTestServer) -> FhirTestServer:
    end = time.monotonic() + 3.0  # let workers abandoned by a previous 412 finish before resetting
    while time.monotonic() < end and any(t.name.startswith("cds-prefetch") for t in threading.enumerate()):
        time.sleep(0.01)
    _server.reset()
    _server.required_token = TOKEN
    return _server


@pytest.fixture(autouse=True)
def no_token_in_logs(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "cds", "werkzeug"):
        caplog.set_level(logging.DEBUG, logger=name)
    yield
    for record in caplog.records:
        assert TOKEN not in logging.Formatter("%(message)s").format(record), f"token in a {record.name} log record"
    assert TOKEN not in caplog.text


def _strip_uuids(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_uuids(v) for k, v in value.items() if k != "uuid"}
    if isinstance(value, list):
        return [_strip_uuids(v) for v in value]
    return value


def _post(client, body: dict[str, Any]):
    started = time.monotonic()
    response = client.post(SERVICE_URL, json=body)
    return response, time.monotonic() - started


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _with_server(request: dict[str, Any], server: FhirTestServer, keep: list[str]) -> dict[str, Any]:
    body = copy.deepcopy(request)
    body["prefetch"] = {k: v for k, v in request["prefetch"].items() if k in keep}
    if not body["prefetch"]:
        del body["prefetch"]
    body["fhirServer"] = server.base_url
    body["fhirAuthorization"] = {
        "access_token": TOKEN, "token_type": "Bearer", "expires_in": 300,
        "scope": "patient/Patient.read patient/Condition.read patient/Observation.read",
        "subject": "lbp-cds",
    }
    return body


@pytest.mark.parametrize("path", REQUESTS, ids=[p.stem for p in REQUESTS])
def test_same_cards_prefetched_partly_prefetched_or_fetched(roomy_client, server, path: Path) -> None:
    client = roomy_client
    request = _load(path)
    assert set(request["prefetch"]) == set(KEYS)
    server.data = FhirData.from_prefetch(request["prefetch"])

    reference, _ = _post(client, request)
    assert reference.status_code == 200, reference.get_json()
    expected = _strip_uuids(reference.get_json())
    assert server.requests == [], "a fully prefetched request must not call the FHIR server"

    for name, keep in VARIANTS.items():
        server.requests.clear()
        response, _ = _post(client, _with_server(request, server, keep))
        assert response.status_code == 200, (name, response.get_json())
        assert _strip_uuids(response.get_json()) == expected, name
        fetched = len(KEYS) - len(keep)
        assert len(server.requests) == fetched, name
        assert all(s.authorization == f"Bearer {TOKEN}" for s in server.requests)


@pytest.mark.parametrize("path", REQUESTS[:3], ids=[p.stem for p in REQUESTS[:3]])
def test_same_cards_when_the_server_pages_its_results(roomy_client, server, path: Path) -> None:
    client = roomy_client
    """The FHIR server caps pages at 1 resource: next links are followed and the cards do not change."""
    request = _load(path)
    server.data = FhirData.from_prefetch(request["prefetch"])
    expected = _strip_uuids(client.post(SERVICE_URL, json=request).get_json())
    server.max_count = 1
    pages = max(len(request["prefetch"][k].get("entry", [])) for k in KEYS[1:])
    assert pages <= 10, "example too large for the default page limit with page size 1"
    response, _ = _post(client, _with_server(request, server, []))
    assert response.status_code == 200, response.get_json()
    assert _strip_uuids(response.get_json()) == expected
    assert any(s.query.get("_offset") for s in server.requests) == (pages > 1)


def test_null_prefetch_means_no_data_and_is_not_fetched(roomy_client, server) -> None:
    client = roomy_client
    request = _load(REQUESTS[0])
    server.data = FhirData.from_prefetch(request["prefetch"])
    body = _with_server(request, server, KEYS)
    body["prefetch"]["conditions"] = None
    response, _ = _post(client, body)
    assert response.status_code == 200, response.get_json()
    assert server.requests == []


# --------------------------------------------------------------------------------------------------
# Failures through the HTTP layer: 412 naming the key, within the budget, no token in the body.


def _assert_412(response, elapsed: float, key: str | None = None) -> dict[str, Any]:
    assert response.status_code == 412, response.get_data(as_text=True)
    assert elapsed < BUDGET + SLACK, f"412 after {elapsed:.3f}s"
    text = response.get_data(as_text=True)
    assert TOKEN not in text
    body = response.get_json()
    if key is not None:
        assert key in text
    return body


def _split_request(server: FhirTestServer) -> tuple[dict[str, Any], dict[str, Any]]:
    request = _load(REQUESTS[0])
    server.data = FhirData.from_prefetch(request["prefetch"])
    return request, _with_server(request, server, ["patient", "painScores", "exerciseRounds"])


@pytest.mark.parametrize("status", [401, 403, 404, 500, 503])
def test_fhir_server_error_status_gives_412(client, server, status: int) -> None:
    _, body = _split_request(server)
    server.overrides["Condition"] = Override(status=status)
    response, elapsed = _post(client, body)
    _assert_412(response, elapsed, "conditions")
    assert f"HTTP {status}" in response.get_data(as_text=True)


def test_slow_fhir_server_gives_412_within_budget(client, server) -> None:
    _, body = _split_request(server)
    server.overrides["Condition"] = Override(delay=3.0)
    response, elapsed = _post(client, body)
    _assert_412(response, elapsed, "conditions")


@pytest.mark.parametrize("override", [
    Override(raw=b"not json at all", content_type="text/plain"),
    Override(json_body={"resourceType": "Patient", "id": "x"}),
], ids=["not-json", "not-a-bundle"])
def test_garbled_fhir_server_gives_412(client, server, override: Override) -> None:
    _, body = _split_request(server)
    server.overrides["Condition"] = override
    response, elapsed = _post(client, body)
    _assert_412(response, elapsed, "conditions")


def test_wrong_patient_resources_from_the_server_are_dropped(roomy_client, server) -> None:
    client = roomy_client
    request, body = _split_request(server)
    expected = _strip_uuids(client.post(SERVICE_URL, json=request).get_json())
    server.foreign_patient = "someone-else"
    server.operation_outcome = True
    response, _ = _post(client, _with_server(request, server, []))
    assert response.status_code == 200
    assert _strip_uuids(response.get_json()) == expected


def test_missing_token_or_server_gives_412(client, server) -> None:
    request, body = _split_request(server)
    no_auth = {k: v for k, v in body.items() if k != "fhirAuthorization"}
    response, elapsed = _post(client, no_auth)
    _assert_412(response, elapsed, "conditions")
    no_server = {k: v for k, v in body.items() if k not in ("fhirAuthorization", "fhirServer")}
    response, elapsed = _post(client, no_server)
    _assert_412(response, elapsed, "conditions")
    assert server.requests == []
