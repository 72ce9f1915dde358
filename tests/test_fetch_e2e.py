"""End to end through the Flask app: every fhir_examples request gives the same cards whether its data is
prefetched, partly prefetched, or all fetched from a real FHIR server on loopback (tests/fhir_server.py);
and the fetch failures give a 412 naming the key, within the time budget, without leaking the token.
The loopback server behaves like HAPI FHIR on Tomcat (strict RFC 3986 request targets, ``_getpages``
paging); one test also makes it slow (0.6 s per search) and close idle connections after 1 s, on the
service's DEFAULT fetch configuration. The prefetch keys and the service come from the app's discovery
document and the request files, never from a list here.
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
TOKEN = "e2e-tok-7Hq2-SECRET-do-not-log"
BUDGET = 2.5  # the app's default fetch_total_timeout (CDS_FETCH_TOTAL_TIMEOUT)
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


def variants(keys: list[str]) -> dict[str, list[str]]:
    """Ways of splitting the prefetch: which keys the EHR sends (the rest is fetched)."""
    half = len(keys) // 2
    return {
        "all-fetched": [],
        "first-half-prefetched": keys[:half],
        "second-half-prefetched": keys[half:],
        "only-the-last-fetched": keys[:-1],
    }


def _app(**overrides: Any):
    settings = load_settings({}, development=True, database_url="", rules_dir=RULES_DIR, rules_poll_seconds=0,
                             evaluation_date="2026-11-20", allow_http_fhir=True, auth=False, **overrides)
    return create_app(settings).test_client()


@pytest.fixture(scope="module")
def client():
    """The default fetch configuration (0.5 s connect, 2.5 s total): what a deployment gets."""
    return _app()


@pytest.fixture(scope="module")
def discovery(client) -> dict[str, Any]:
    """The service as the app describes it: its id, hook and prefetch templates."""
    services = client.get("/cds-services").get_json()["services"]
    assert len(services) == 1, "these tests drive the one service of the fixture rule set"
    return services[0]


@pytest.fixture(scope="module")
def service_url(discovery) -> str:
    return f"/cds-services/{discovery['id']}"


@pytest.fixture(scope="module")
def keys(discovery) -> list[str]:
    return list(discovery["prefetch"])


@pytest.fixture(scope="module")
def conditions_key(discovery) -> str:
    return next(k for k, t in discovery["prefetch"].items() if t.startswith("Condition"))


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


def _post(client, url: str, body: dict[str, Any]):
    started = time.monotonic()
    response = client.post(url, json=body)
    return response, time.monotonic() - started


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _with_server(request: dict[str, Any], server: FhirTestServer, keep: list[str]) -> dict[str, Any]:
    body = copy.deepcopy(request)
    body["prefetch"] = {k: v for k, v in request.get("prefetch", {}).items() if k in keep}
    if not body["prefetch"]:
        del body["prefetch"]
    body["fhirServer"] = server.base_url
    body["fhirAuthorization"] = {
        "access_token": TOKEN, "token_type": "Bearer", "expires_in": 300,
        "scope": "patient/Patient.read patient/Condition.read patient/Observation.read",
        "subject": "lbp-cds",
    }
    return body


def _reference(client, url: str, request: dict[str, Any], server: FhirTestServer) -> Any:
    """The cards for the request as sent (fully prefetched): what every fetched variant must give."""
    response, _ = _post(client, url, request)
    assert response.status_code == 200, response.get_json()
    assert server.requests == [], "a fully prefetched request must not call the FHIR server"
    return _strip_uuids(response.get_json())


@pytest.mark.parametrize("path", REQUESTS, ids=[p.stem for p in REQUESTS])
def test_every_example_decided_identically_through_a_realistic_server_on_the_default_configuration(
    client, discovery, service_url, keys, server, path: Path
) -> None:
    """Issue 11: the loopback server answers each search after 0.6 s, closes idle keep-alive connections
    after 1 s, pages HAPI-style (at most 4 resources a page: the larger examples take several pages) and
    answers 400 to a raw '|' like Tomcat. With the prefetch removed, the app on its default configuration fetches every
    key through it and decides exactly as with the prefetch."""
    request = _load(path)
    assert request["hook"] == discovery["hook"]
    assert set(request["prefetch"]) <= set(keys), "the example sends keys the service does not declare"
    server.data = FhirData.from_prefetch(request["prefetch"])
    server.search_delay, server.idle_timeout, server.max_count = 0.6, 1.0, 4
    expected = _reference(client, service_url, request, server)

    response, elapsed = _post(client, service_url, _with_server(request, server, []))
    assert response.status_code == 200, response.get_json()
    assert _strip_uuids(response.get_json()) == expected
    answered = [s for s in server.requests if s.answered]
    assert len(answered) >= len(keys)  # one request per key, more if the server paged
    assert all("|" not in s.raw for s in server.requests)  # nothing a strict server refuses
    assert all(s.authorization == f"Bearer {TOKEN}" for s in server.requests)
    assert elapsed < BUDGET, f"{elapsed:.3f}s"


@pytest.mark.parametrize("path", REQUESTS, ids=[p.stem for p in REQUESTS])
def test_same_cards_prefetched_partly_prefetched_or_fetched(roomy_client, service_url, keys, server, path: Path) -> None:
    client = roomy_client
    request = _load(path)
    server.data = FhirData.from_prefetch(request["prefetch"])
    expected = _reference(client, service_url, request, server)

    for name, keep in variants(keys).items():
        server.requests.clear()
        response, _ = _post(client, service_url, _with_server(request, server, keep))
        assert response.status_code == 200, (name, response.get_json())
        assert _strip_uuids(response.get_json()) == expected, name
        fetched = len(keys) - len(keep)
        assert len(server.requests) == fetched, name
        assert all(s.authorization == f"Bearer {TOKEN}" for s in server.requests)


@pytest.mark.parametrize("path", REQUESTS[:3], ids=[p.stem for p in REQUESTS[:3]])
def test_same_cards_when_the_server_pages_its_results(roomy_client, service_url, keys, server, path: Path) -> None:
    """The FHIR server caps pages at 1 resource: HAPI-style next links ([base]?_getpages=...) are
    followed and the cards do not change."""
    client = roomy_client
    request = _load(path)
    server.data = FhirData.from_prefetch(request["prefetch"])
    expected = _reference(client, service_url, request, server)
    server.max_count = 1
    bundles = [v for v in request["prefetch"].values() if isinstance(v, dict) and v.get("resourceType") == "Bundle"]
    pages = max(len(b.get("entry", [])) for b in bundles)
    assert pages <= 10, "example too large for the default page limit with page size 1"
    response, _ = _post(client, service_url, _with_server(request, server, []))
    assert response.status_code == 200, response.get_json()
    assert _strip_uuids(response.get_json()) == expected
    assert any(s.query.get("_getpages") for s in server.requests) == (pages > 1)


def test_null_prefetch_means_no_data_and_is_not_fetched(roomy_client, service_url, keys, conditions_key, server) -> None:
    request = _load(REQUESTS[0])
    server.data = FhirData.from_prefetch(request["prefetch"])
    body = _with_server(request, server, keys)
    body["prefetch"][conditions_key] = None
    response, _ = _post(roomy_client, service_url, body)
    assert response.status_code == 200, response.get_json()
    assert server.requests == []


def test_calls_after_the_server_closed_its_idle_connections_still_succeed(client, service_url, server) -> None:
    """Idle connections closed by the server after 1 s, and one request dropped on a reused connection
    (the race of an idle close): the app's pooled client retries once and the cards do not change."""
    request = _load(REQUESTS[0])
    server.data = FhirData.from_prefetch(request["prefetch"])
    expected = _reference(client, service_url, request, server)
    server.idle_timeout, server.max_count = 1.0, 2
    first, _ = _post(client, service_url, _with_server(request, server, []))
    assert first.status_code == 200 and _strip_uuids(first.get_json()) == expected
    time.sleep(1.3)
    opened = server.connections
    second, _ = _post(client, service_url, _with_server(request, server, []))
    assert second.status_code == 200 and _strip_uuids(second.get_json()) == expected
    assert server.connections > opened
    server.drop_next = 1
    third, _ = _post(client, service_url, _with_server(request, server, []))
    assert third.status_code == 200 and _strip_uuids(third.get_json()) == expected
    assert server.drop_next == 0 and sum(not s.answered for s in server.requests) == 1


def test_a_next_link_leaving_the_base_path_is_412_and_the_token_stays_inside(client, service_url, keys, server) -> None:
    request = _load(REQUESTS[0])
    server.data = FhirData.from_prefetch(request["prefetch"])
    server.max_count = 1
    server.next_base = server.base_url + "/../other"
    response, elapsed = _post(client, service_url, _with_server(request, server, []))
    _assert_412(response, elapsed)
    assert "outside fhirServer" in response.get_data(as_text=True)
    assert server.requests and all(s.path.startswith(server.base_path + "/") for s in server.requests)
    assert not any(s.query.get("_getpages") for s in server.requests)


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


@pytest.fixture
def split(server, keys, conditions_key) -> tuple[dict[str, Any], dict[str, Any]]:
    """An example, and the same request with only the conditions key left to fetch."""
    request = _load(REQUESTS[0])
    server.data = FhirData.from_prefetch(request["prefetch"])
    return request, _with_server(request, server, [k for k in keys if k != conditions_key])


@pytest.mark.parametrize("status", [401, 403, 404, 500, 503])
def test_fhir_server_error_status_gives_412(client, service_url, conditions_key, server, split, status: int) -> None:
    _, body = split
    server.overrides["Condition"] = Override(status=status)
    response, elapsed = _post(client, service_url, body)
    _assert_412(response, elapsed, conditions_key)
    assert f"HTTP {status}" in response.get_data(as_text=True)


def test_slow_fhir_server_gives_412_within_the_default_budget(client, service_url, conditions_key, server, split) -> None:
    _, body = split
    server.overrides["Condition"] = Override(delay=BUDGET + 1.0)
    response, elapsed = _post(client, service_url, body)
    _assert_412(response, elapsed, conditions_key)
    assert elapsed >= BUDGET - 0.05  # it waited for the whole budget, not less


@pytest.mark.parametrize("override", [
    Override(raw=b"not json at all", content_type="text/plain"),
    Override(json_body={"resourceType": "Patient", "id": "x"}),
], ids=["not-json", "not-a-bundle"])
def test_garbled_fhir_server_gives_412(client, service_url, conditions_key, server, split, override: Override) -> None:
    _, body = split
    server.overrides["Condition"] = override
    response, elapsed = _post(client, service_url, body)
    _assert_412(response, elapsed, conditions_key)


def test_wrong_patient_resources_from_the_server_are_dropped(roomy_client, service_url, server, split) -> None:
    request, _ = split
    expected = _strip_uuids(roomy_client.post(service_url, json=request).get_json())
    server.foreign_patient = "someone-else"
    server.operation_outcome = True
    response, _ = _post(roomy_client, service_url, _with_server(request, server, []))
    assert response.status_code == 200
    assert _strip_uuids(response.get_json()) == expected


def test_missing_token_or_server_gives_412(client, service_url, conditions_key, server, split) -> None:
    _, body = split
    no_auth = {k: v for k, v in body.items() if k != "fhirAuthorization"}
    response, elapsed = _post(client, service_url, no_auth)
    _assert_412(response, elapsed, conditions_key)
    no_server = {k: v for k, v in body.items() if k not in ("fhirAuthorization", "fhirServer")}
    response, elapsed = _post(client, service_url, no_server)
    _assert_412(response, elapsed, conditions_key)
    assert server.requests == []


def test_a_fetch_failure_is_logged_once_with_key_host_and_reason(client, service_url, conditions_key, server, split,
                                                                  caplog) -> None:
    _, body = split
    server.overrides["Condition"] = Override(status=503)
    response, elapsed = _post(client, service_url, body)
    _assert_412(response, elapsed, conditions_key)
    lines = [r.getMessage() for r in caplog.records if r.name == "cds.fhir_client" and r.levelno >= logging.WARNING]
    assert len(lines) == 1, lines
    assert conditions_key in lines[0] and f"127.0.0.1:{server.port}" in lines[0] and "HTTP 503" in lines[0]
    assert _load(REQUESTS[0])["context"]["patientId"] not in caplog.text
