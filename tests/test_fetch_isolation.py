"""Fetch isolation (issue 12, point 3): a tarpit fhirServer starves only itself, the deadline closes the
socket, per-key entry caps, and 412 texts never carry what the FHIR server sent."""

from __future__ import annotations

import copy
import json
import threading
import time
from typing import Any

import pytest

from cds.fhir_client import FetchSettings, PrefetchUnavailable, complete_prefetch

try:
    from fhir_server import FhirData, FhirTestServer, Override
except ImportError:  # pragma: no cover - run as a package
    from tests.fhir_server import FhirData, FhirTestServer, Override

try:
    from test_fhir_client import EXAMPLE, SEARCH_KEYS, TEMPLATES, TOKEN, _fallback_request
except ImportError:  # pragma: no cover - run as a package
    from tests.test_fhir_client import EXAMPLE, SEARCH_KEYS, TEMPLATES, TOKEN, _fallback_request

DEV = FetchSettings(allow_http=True, total_timeout=0.5, connect_timeout=0.2)
MARKER = "ZZ-internal-secret-marker-42"


@pytest.fixture(scope="module")
def hook_request() -> dict[str, Any]:
    if EXAMPLE.exists():
        return json.loads(EXAMPLE.read_text(encoding="utf-8"))
    return _fallback_request()


def _call(hook_request: dict[str, Any], base_url: str, *, keep: list[str] | None = None,
          settings: FetchSettings = DEV) -> dict[str, Any]:
    prefetch = {k: copy.deepcopy(v) for k, v in hook_request["prefetch"].items() if k in (keep or [])}
    return complete_prefetch(
        templates=TEMPLATES, prefetch=prefetch, context=hook_request["context"],
        patient_id=hook_request["context"]["patientId"], fhir_server=base_url, access_token=TOKEN,
        settings=settings,
    )


def _fails(hook_request: dict[str, Any], base_url: str, **kwargs: Any) -> PrefetchUnavailable:
    with pytest.raises(PrefetchUnavailable) as info:
        _call(hook_request, base_url, **kwargs)
    return info.value


def test_a_tarpit_does_not_starve_an_honest_server(hook_request) -> None:
    data = FhirData.from_prefetch(hook_request["prefetch"])
    with FhirTestServer(data) as honest, FhirTestServer(data) as tarpit:
        honest.required_token = TOKEN
        tarpit.overrides["*"] = Override(tarpit=0.2)  # a header byte every 0.2 s
        failures: list[PrefetchUnavailable] = []
        durations: list[float] = []

        def tarpit_call() -> None:
            started = time.monotonic()
            try:
                _call(hook_request, tarpit.base_url)
            except PrefetchUnavailable as exc:
                failures.append(exc)
            durations.append(time.monotonic() - started)

        threads = [threading.Thread(target=tarpit_call) for _ in range(10)]
        for t in threads:
            t.start()
        time.sleep(0.1)
        during = _call(hook_request, honest.base_url)  # while the tarpit holds its connections
        for t in threads:
            t.join(5)
        after = _call(hook_request, honest.base_url)  # right after
        assert len(failures) == 10 and all("timed out" in str(e) for e in failures)
        assert max(durations) < DEV.total_timeout + 0.5
        for result in (during, after):
            assert set(result) == set(TEMPLATES)
            assert result["patient"]["resourceType"] == "Patient"
        # the deadline shut the tarpit's sockets: every connection it accepted was closed by the client
        end = time.monotonic() + 10  # generous: the server notices each close on its next dribbled byte
        # (a connection the watchdog shut before its request went out ends without a request: closed_unused)
        while tarpit.tarpit_closed + tarpit.closed_unused < tarpit.connections and time.monotonic() < end:
            time.sleep(0.02)
        assert tarpit.connections >= 1 and tarpit.tarpit_closed + tarpit.closed_unused == tarpit.connections
        # 10 calls x 4 keys, but the tarpit's pool is bounded: the rest waited for a slot and timed out
        assert tarpit.connections < 10 * len(TEMPLATES)
        assert any("waiting for a free connection" in str(e) for e in failures)


def test_the_deadline_shuts_a_reused_keep_alive_connection_too(hook_request) -> None:
    """A server that answers once, then turns into a tarpit on the SAME keep-alive connections: the
    fetch is 412 at the deadline and the watchdog shuts those reused sockets too (the tarpit dribbles a
    byte every 0.1 s, so a read timeout alone would never end the workers)."""
    data = FhirData.from_prefetch(hook_request["prefetch"])
    with FhirTestServer(data) as server:
        _call(hook_request, server.base_url)  # every key fetched: the connections stay in the pool
        opened = server.connections
        server.overrides["*"] = Override(tarpit=0.1)
        started = time.monotonic()
        exc = _fails(hook_request, server.base_url)
        assert time.monotonic() - started < DEV.total_timeout + 0.3
        assert "timed out" in exc.reason
        end = time.monotonic() + 2.0
        while server.tarpit_closed < len(TEMPLATES) and time.monotonic() < end:
            time.sleep(0.02)
        assert server.connections - opened < len(TEMPLATES), "the second call must reuse pooled connections"
        assert server.tarpit_closed == len(TEMPLATES)  # each reused socket shut by the client
        while any(t.name.startswith("cds-prefetch") for t in threading.enumerate()) and time.monotonic() < end:
            time.sleep(0.02)
        assert not any(t.name.startswith("cds-prefetch") for t in threading.enumerate())


def test_more_entries_than_the_cap_is_412_naming_the_key(hook_request) -> None:
    pid = hook_request["context"]["patientId"]
    page = {"resourceType": "Bundle", "type": "searchset", "entry": [
        {"resource": {"resourceType": "Condition", "id": f"c{i}", "subject": {"reference": f"Patient/{pid}"}}}
        for i in range(5)
    ]}
    data = FhirData.from_prefetch(hook_request["prefetch"])
    with FhirTestServer(data) as server:
        server.overrides["Condition"] = Override(json_body=page)
        keep = ["patient", "painScores", "exerciseRounds"]
        exc = _fails(hook_request, server.base_url, keep=keep,
                     settings=FetchSettings(allow_http=True, max_entries=4))
        assert exc.key == "conditions" and "more than 4 entries" in exc.reason
        ok = _call(hook_request, server.base_url, keep=keep, settings=FetchSettings(allow_http=True, max_entries=5))
        assert len(ok["conditions"]["entry"]) == 5


@pytest.mark.parametrize("override, reason", [
    (Override(status=503), "HTTP 503"),
    (Override(status=401), "HTTP 401"),
    (Override(raw=MARKER.encode(), content_type=f"text/{MARKER}"), "invalid (not JSON)"),
    (Override(json_body={"resourceType": MARKER}), "invalid (not a searchset Bundle)"),
    (Override(json_body={"resourceType": "Bundle", "type": "searchset", "entry": MARKER}), "invalid"),
])
def test_412_texts_never_echo_the_server(hook_request, override, reason) -> None:
    data = FhirData.from_prefetch(hook_request["prefetch"])
    with FhirTestServer(data) as server:
        server.overrides["Condition"] = override
        exc = _fails(hook_request, server.base_url, keep=["patient", "painScores", "exerciseRounds"])
    assert exc.key == "conditions" and reason in exc.reason
    for text in (str(exc), repr(exc), exc.reason):
        assert MARKER not in text


def test_an_unreachable_server_is_a_generic_412(hook_request) -> None:
    exc = _fails(hook_request, "http://127.0.0.1:9/fhir", keep=SEARCH_KEYS)
    assert exc.key == "patient" and "could not be reached" in exc.reason
