"""cds.fhir_client against a real FHIR server on loopback (tests/fhir_server.py); httpx is never mocked.

Every test runs with all log output captured at DEBUG (root, httpx, httpcore, cds.fhir_client), and an
autouse check asserts afterwards that the access token appears in no log record.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cds import fhir_client
from cds.fhir_client import FetchSettings, PrefetchUnavailable, complete_prefetch, render_template
from cds.templates import TemplateError

try:
    from fhir_server import FhirData, FhirTestServer, Override
except ImportError:  # pragma: no cover - run as a package
    from tests.fhir_server import FhirData, FhirTestServer, Override

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "fhir_examples" / "requests" / "bird-dog-28-27.json"

TOKEN = "tok-3xq9-SECRET-never-log-me"

CLINICAL_STATUSES = "active,recurrence,relapse"
TEMPLATES = {  # SPEC section 2.1
    "patient": "Patient/{{context.patientId}}",
    "conditions": "Condition?patient={{context.patientId}}&clinical-status=" + CLINICAL_STATUSES,
    "painScores": "Observation?patient={{context.patientId}}&code=http://loinc.org|72514-3&_sort=-date&_count=100",
    "exerciseRounds": "Observation?patient={{context.patientId}}"
    "&code=https://lbp-cds.org/fhir/CodeSystem/observation|reps-to-technical-failure&_sort=-date&_count=100",
}
SEARCH_KEYS = ["conditions", "painScores", "exerciseRounds"]

# A tight budget for the failure tests (they must 412 quickly); DEFAULT is what a deployment gets.
DEV = FetchSettings(allow_http=True, total_timeout=0.4, connect_timeout=0.1)
DEFAULT = FetchSettings(allow_http=True)
SLACK = 0.3  # seconds allowed past total_timeout (generous: CI machines are busy)


# --------------------------------------------------------------------------------------------------
# Data and fixtures


def _fallback_request() -> dict[str, Any]:
    """Used only if the generated examples are missing: a small patient with the same shape."""
    pid = "lbp-fallback"
    obs = "https://lbp-cds.org/fhir/CodeSystem/observation"

    def rnd(i: int, day: str, reps: int) -> dict[str, Any]:
        return {"resourceType": "Observation", "id": f"round-{day}-{i}", "status": "final",
                "code": {"coding": [{"system": obs, "code": "reps-to-technical-failure"}]},
                "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": f"2026-11-{day}T10:00:00-05:00",
                "valueQuantity": {"value": reps},
                "component": [{"code": {"coding": [{"system": obs, "code": "exercise"}]},
                               "valueCodeableConcept": {"coding": [{"system": "https://lbp-cds.org/fhir/CodeSystem/exercise",
                                                                    "code": "bird-dog"}]}}]}

    def bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}

    return {
        "hook": "patient-view", "hookInstance": "0b9a6c3e-2f4d-4a51-9c7e-5d8f1e2a3b4c", "context": {"userId": "Practitioner/example", "patientId": pid},
        "prefetch": {
            "patient": {"resourceType": "Patient", "id": pid},
            "conditions": bundle([{"resourceType": "Condition", "id": "c1", "subject": {"reference": f"Patient/{pid}"},
                                      "code": {"coding": [{"system": "http://snomed.info/sct", "code": "279039007"}]},
                                      "onsetDateTime": "2026-01-10"}]),
            "painScores": bundle([{"resourceType": "Observation", "id": "p1", "status": "final",
                                   "code": {"coding": [{"system": "http://loinc.org", "code": "72514-3"}]},
                                   "subject": {"reference": f"Patient/{pid}"},
                                   "effectiveDateTime": "2026-11-18T10:00:00-05:00", "valueInteger": 1}]),
            "exerciseRounds": bundle([rnd(1, "18", 28), rnd(2, "18", 27), rnd(1, "11", 20), rnd(2, "11", 21)]),
        },
    }


@pytest.fixture(scope="module")
def hook_request() -> dict[str, Any]:
    if EXAMPLE.exists():
        return json.loads(EXAMPLE.read_text(encoding="utf-8"))
    return _fallback_request()


@pytest.fixture(scope="module")
def _server(hook_request: dict[str, Any]):
    with FhirTestServer(FhirData.from_prefetch(hook_request["prefetch"])) as server:
        yield server


def wait_for_abandoned_workers(timeout: float = 3.0) -> None:
    """A 412 returns at once; workers still finishing a request of the previous test must not reach the
    server after it was reset (they end by themselves within the budget)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not any(t.name.startswith("cds-prefetch") for t in threading.enumerate()):
            return
        time.sleep(0.01)


@pytest.fixture
def server(_server: FhirTestServer) -> FhirTestServer:
    wait_for_abandoned_workers()
    _server.reset()
    _server.required_token = TOKEN
    return _server


@pytest.fixture(autouse=True)
def all_logs(caplog: pytest.LogCaptureFixture):
    """Capture everything, then assert the token was never logged (every test, failures included)."""
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "cds.fhir_client", "urllib3"):
        caplog.set_level(logging.DEBUG, logger=name)
    yield caplog
    _assert_no_token_in_logs(caplog)


def _assert_no_token_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    for record in caplog.records:
        text = formatter.format(record)
        assert TOKEN not in text, f"token leaked in a log record of {record.name}"
        assert TOKEN not in repr(record.args)
    assert TOKEN not in caplog.text


def pid_of(hook_request: dict[str, Any]) -> str:
    return hook_request["context"]["patientId"]


def call(hook_request: dict[str, Any], server: FhirTestServer | None, *, prefetch: dict[str, Any] | None = None,
         settings: FetchSettings = DEFAULT, templates: dict[str, str] = TEMPLATES, token: str | None = TOKEN,
         fhir_server: str | None = None) -> dict[str, Any]:
    """The fetch with a deployment's budget (a success must not depend on a busy machine's timing);
    :func:`fails` uses the tight :data:`DEV` budget unless told otherwise."""
    return complete_prefetch(
        templates=templates,
        prefetch=prefetch,
        context=hook_request["context"],
        patient_id=pid_of(hook_request),
        fhir_server=fhir_server if fhir_server is not None else (server.base_url if server else None),
        access_token=token,
        settings=settings,
    )


def fails(hook_request: dict[str, Any], server: FhirTestServer | None, **kwargs: Any) -> PrefetchUnavailable:
    settings = kwargs.setdefault("settings", DEV)
    started = time.monotonic()
    with pytest.raises(PrefetchUnavailable) as info:
        call(hook_request, server, **kwargs)
    elapsed = time.monotonic() - started
    assert elapsed < settings.total_timeout + SLACK, f"412 took {elapsed:.3f}s"
    exc = info.value
    assert TOKEN not in str(exc) and TOKEN not in repr(exc) and TOKEN not in str(exc.args)
    assert pid_of(hook_request) not in str(exc), "a 412 message must not carry the patient id"
    return exc


def ids(value: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in value.get("entry", [])]


def partial(prefetch: dict[str, Any], keep: list[str]) -> dict[str, Any]:
    return {k: copy.deepcopy(v) for k, v in prefetch.items() if k in keep}


# --------------------------------------------------------------------------------------------------
# Templates


def test_render_template_fills_and_encodes() -> None:
    ctx = {"patientId": "a b/c", "userId": "Practitioner/p-1", "encounterId": "e1"}
    assert render_template("Patient/{{context.patientId}}", ctx) == "Patient/a%20b%2Fc"
    assert render_template("Encounter/{{ context.encounterId }}", ctx) == "Encounter/e1"
    assert render_template("Practitioner/{{userPractitionerId}}", ctx) == "Practitioner/p-1"
    assert render_template(TEMPLATES["painScores"], {"patientId": "123"}) == (
        "Observation?patient=123&code=http://loinc.org|72514-3&_sort=-date&_count=100")
    with pytest.raises(ValueError, match="context.encounterId"):
        render_template("Encounter/{{context.encounterId}}", {"patientId": "1"})
    with pytest.raises(ValueError, match="userPatientId"):
        render_template("Patient/{{userPatientId}}", ctx)


def test_a_prefetch_template_error_is_the_one_template_error_of_card_texts() -> None:
    with pytest.raises(TemplateError, match=r"template token \{\{context.encounterId\}\} cannot be filled"):
        render_template("Encounter/{{context.encounterId}}", {"patientId": "1"})
    assert not any(isinstance(v, type) and v.__name__ == "TemplateError" for v in vars(fhir_client).values()
                   if getattr(v, "__module__", None) == "cds.fhir_client")


def test_template_that_cannot_be_filled_is_412(hook_request, server) -> None:
    exc = fails(hook_request, server, templates={"enc": "Encounter/{{context.encounterId}}"})
    assert exc.key == "enc"
    assert server.requests == []


# --------------------------------------------------------------------------------------------------
# Full, partial, none


def test_full_prefetch_makes_no_http_call(hook_request, server) -> None:
    prefetch = copy.deepcopy(hook_request["prefetch"])
    out = call(hook_request, server, prefetch=prefetch)
    assert out == hook_request["prefetch"]
    assert server.requests == []


def test_full_prefetch_needs_neither_server_nor_token(hook_request) -> None:
    out = call(hook_request, None, prefetch=copy.deepcopy(hook_request["prefetch"]), token=None)
    assert out == hook_request["prefetch"]


def test_null_values_are_kept_and_not_fetched(hook_request, server) -> None:
    prefetch = {k: None for k in TEMPLATES}
    out = call(hook_request, server, prefetch=prefetch)
    assert out == prefetch
    assert server.requests == []


def test_nothing_prefetched_fetches_every_key(hook_request, server) -> None:
    out = call(hook_request, server, prefetch=None)
    assert set(out) == set(TEMPLATES)
    assert out["patient"] == hook_request["prefetch"]["patient"]
    for key in SEARCH_KEYS:
        assert out[key]["resourceType"] == "Bundle" and out[key]["type"] == "searchset"
        assert ids(out[key]) == ids(hook_request["prefetch"][key]), key
    assert len(server.requests) == 4
    for seen in server.requests:
        assert seen.authorization == f"Bearer {TOKEN}"
        assert seen.accept == "application/fhir+json"
        assert seen.path.startswith("/fhir/")
    paths = sorted(s.path for s in server.requests)
    assert paths == ["/fhir/Condition", "/fhir/Observation", "/fhir/Observation", f"/fhir/Patient/{pid_of(hook_request)}"]
    condition_query = next(s.query for s in server.requests if s.path == "/fhir/Condition")
    assert condition_query["patient"] == [pid_of(hook_request)]
    assert condition_query["clinical-status"] == [CLINICAL_STATUSES]


def test_empty_prefetch_object_is_the_same_as_none(hook_request, server) -> None:
    out = call(hook_request, server, prefetch={})
    assert ids(out["exerciseRounds"]) == ids(hook_request["prefetch"]["exerciseRounds"])


def test_partial_prefetch_fetches_only_absent_keys(hook_request, server) -> None:
    prefetch = partial(hook_request["prefetch"], ["patient", "painScores"])
    prefetch["conditions"] = None  # null: the EHR has none, do not fetch
    out = call(hook_request, server, prefetch=prefetch)
    assert out["patient"] == hook_request["prefetch"]["patient"]
    assert out["painScores"] == hook_request["prefetch"]["painScores"]
    assert out["conditions"] is None
    assert ids(out["exerciseRounds"]) == ids(hook_request["prefetch"]["exerciseRounds"])
    assert len(server.requests) == 1
    assert server.requests[0].query["code"] == [
        "https://lbp-cds.org/fhir/CodeSystem/observation|reps-to-technical-failure"]


def test_prefetched_values_are_returned_as_sent(hook_request, server) -> None:
    """Validation of prefetched data belongs to cds.extract: even odd values are passed through."""
    prefetch = partial(hook_request["prefetch"], SEARCH_KEYS)
    prefetch["painScores"] = {"resourceType": "Bundle", "type": "searchset", "entry": [
        {"resource": {"resourceType": "OperationOutcome", "issue": []}}]}
    out = call(hook_request, server, prefetch=prefetch)
    assert out["painScores"] is prefetch["painScores"]
    assert [s.path for s in server.requests] == [f"/fhir/Patient/{pid_of(hook_request)}"]


def test_keys_are_fetched_concurrently(hook_request, server) -> None:
    """Four keys each taking 300 ms finish in about 300 ms, not 1.2 s."""
    server.overrides["*"] = Override(delay=0.3)
    started = time.monotonic()
    out = call(hook_request, server, settings=FetchSettings(allow_http=True, total_timeout=3.0))
    elapsed = time.monotonic() - started
    assert ids(out["painScores"]) == ids(hook_request["prefetch"]["painScores"])
    assert elapsed < 0.9, f"{elapsed:.3f}s: keys were not fetched concurrently"


def test_fetch_is_fast_on_loopback(hook_request, server) -> None:
    call(hook_request, server)  # warm up
    best = min(_timed(lambda: call(hook_request, server)) for _ in range(3))
    assert best < 0.2, f"best of 3: {best:.3f}s"


def _timed(fn) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started


# --------------------------------------------------------------------------------------------------
# Paging


def _paged(count: int) -> dict[str, str]:
    return {"exerciseRounds": TEMPLATES["exerciseRounds"].replace("_count=100", f"_count={count}")}


def test_paging_follows_next_links_and_merges(hook_request, server) -> None:
    expected = ids(hook_request["prefetch"]["exerciseRounds"])
    assert len(expected) >= 5
    out = call(hook_request, server, templates=_paged(2))
    bundle = out["exerciseRounds"]
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    assert ids(bundle) == expected  # all pages, in server order
    assert "link" not in bundle
    pages = -(-len(expected) // 2)
    assert len(server.requests) == pages
    # HAPI-style next links, on the base path itself: [base]?_getpages=<id>&_getpagesoffset=N&...
    assert [s.path for s in server.requests] == ["/fhir/Observation"] + ["/fhir"] * (pages - 1)
    assert [s.query.get("_getpagesoffset") for s in server.requests] == [None] + [[str(2 * i)] for i in range(1, pages)]
    assert all(s.authorization == f"Bearer {TOKEN}" for s in server.requests)
    assert all(s.answered for s in server.requests)


def test_offset_style_next_links_under_the_base_path_are_followed_too(hook_request, server) -> None:
    server.paging = "offset"
    out = call(hook_request, server, templates=_paged(2))
    assert ids(out["exerciseRounds"]) == ids(hook_request["prefetch"]["exerciseRounds"])
    assert [s.query.get("_offset") for s in server.requests][1:] == [["2"], ["4"]][: len(server.requests) - 1]


def test_more_pages_than_the_limit_is_412(hook_request, server, all_logs) -> None:
    n = len(ids(hook_request["prefetch"]["exerciseRounds"]))
    settings = FetchSettings(allow_http=True, max_pages=2)
    exc = fails(hook_request, server, templates=_paged(1), settings=settings)
    assert exc.key == "exerciseRounds" and "more than 2 pages" in exc.reason
    assert len(server.requests) == 2 < n
    assert any("more than 2 pages" in r.getMessage() for r in all_logs.records if r.name == "cds.fhir_client")


def test_exactly_max_pages_is_fine(hook_request, server) -> None:
    n = len(ids(hook_request["prefetch"]["exerciseRounds"]))
    out = call(hook_request, server, templates=_paged(1), settings=FetchSettings(allow_http=True, max_pages=n))
    assert len(ids(out["exerciseRounds"])) == n


def test_next_link_to_another_host_is_refused_and_gets_no_token(hook_request, server) -> None:
    with FhirTestServer(FhirData.from_prefetch(hook_request["prefetch"])) as other:
        server.next_base = other.base_url  # same host, another port: another origin
        exc = fails(hook_request, server, templates=_paged(2))
        assert exc.key == "exerciseRounds" and "outside fhirServer" in exc.reason
        assert other.requests == []
        server.next_base = "https://evil.example.org/fhir"
        exc = fails(hook_request, server, templates=_paged(2))
        assert "outside fhirServer" in exc.reason


def test_next_link_outside_the_base_path_is_refused(hook_request, server) -> None:
    server.next_base = server.origin + "/other"
    exc = fails(hook_request, server, templates=_paged(2))
    assert "outside fhirServer" in exc.reason
    assert len(server.requests) == 1


# --------------------------------------------------------------------------------------------------
# Time budget


def test_slow_server_is_412_within_budget(hook_request, server) -> None:
    server.overrides["Observation"] = Override(delay=2.0)
    exc = fails(hook_request, server)
    assert exc.key in ("painScores", "exerciseRounds")
    assert "timed out" in exc.reason


def test_slow_single_key_is_412_within_budget(hook_request, server) -> None:
    server.overrides["Patient"] = Override(delay=2.0)
    prefetch = partial(hook_request["prefetch"], SEARCH_KEYS)
    exc = fails(hook_request, server, prefetch=prefetch)
    assert exc.key == "patient" and "timed out" in exc.reason


def test_trickling_body_is_412_within_budget(hook_request, server) -> None:
    server.overrides["Condition"] = Override(trickle=0.02)  # headers at once, then 1 byte / 20 ms
    exc = fails(hook_request, server, prefetch=partial(hook_request["prefetch"], ["patient", "painScores"]))
    assert exc.key == "conditions" and "timed out" in exc.reason
    # the abandoned worker notices the deadline between reads and ends too, instead of lingering
    end = time.monotonic() + 0.5
    while time.monotonic() < end and any(t.name.startswith("cds-prefetch") for t in threading.enumerate()):
        time.sleep(0.01)
    assert not any(t.name.startswith("cds-prefetch") for t in threading.enumerate())


def test_smaller_budget_is_respected(hook_request, server) -> None:
    server.overrides["*"] = Override(delay=1.0)
    settings = FetchSettings(allow_http=True, total_timeout=0.1)
    started = time.monotonic()
    with pytest.raises(PrefetchUnavailable):
        call(hook_request, server, settings=settings)
    assert time.monotonic() - started < 0.1 + SLACK


def test_connection_refused_is_412(hook_request) -> None:
    with FhirTestServer() as gone:
        url = gone.base_url
    exc = fails(hook_request, None, fhir_server=url)
    assert exc.key in TEMPLATES and "could not be reached" in exc.reason  # whichever key failed first


def test_slow_page_after_the_first_is_412_within_budget(hook_request, server) -> None:
    server.getpages_delay = 2.0  # the first page is quick, later pages are slow
    exc = fails(hook_request, server, templates=_paged(2))
    assert exc.key == "exerciseRounds" and "timed out" in exc.reason
    assert len(server.requests) == 2


# --------------------------------------------------------------------------------------------------
# Failing servers


@pytest.mark.parametrize("status", [401, 403, 404, 500, 503])
def test_error_status_is_412_naming_key_and_status(hook_request, server, status) -> None:
    server.overrides["Condition"] = Override(status=status)
    exc = fails(hook_request, server, prefetch=partial(hook_request["prefetch"], ["patient", "painScores"]))
    assert exc.key == "conditions"
    assert f"HTTP {status}" in exc.reason
    assert "conditions" in str(exc)


def test_wrong_token_is_401_then_412(hook_request, server) -> None:
    exc = fails(hook_request, server, token="another-token",
                prefetch=partial(hook_request["prefetch"], SEARCH_KEYS))
    assert exc.key == "patient" and "HTTP 401" in exc.reason
    assert server.requests[0].authorization == "Bearer another-token"


def test_unknown_patient_read_is_404_then_412(hook_request, server) -> None:
    ctx_request = copy.deepcopy(hook_request)
    ctx_request["context"]["patientId"] = "nobody"
    exc = fails(ctx_request, server, prefetch=partial(hook_request["prefetch"], SEARCH_KEYS))
    assert exc.key == "patient" and "HTTP 404" in exc.reason


def test_redirect_is_not_followed(hook_request, server) -> None:
    server.overrides["Patient"] = Override(status=302)
    exc = fails(hook_request, server, prefetch=partial(hook_request["prefetch"], SEARCH_KEYS))
    assert exc.key == "patient" and "redirect" in exc.reason
    assert len(server.requests) == 1


def test_body_not_json_is_412(hook_request, server) -> None:
    server.overrides["Observation"] = Override(raw=b"<html>oops</html>", content_type="text/html")
    exc = fails(hook_request, server, prefetch=partial(hook_request["prefetch"], ["patient", "conditions"]))
    assert exc.key in ("painScores", "exerciseRounds") and "not JSON" in exc.reason


def test_truncated_json_is_412(hook_request, server) -> None:
    server.overrides["Condition"] = Override(raw=b'{"resourceType": "Bundle", "type": "sea')
    exc = fails(hook_request, server, prefetch=partial(hook_request["prefetch"], ["patient", "painScores"]))
    assert exc.key == "conditions" and "not JSON" in exc.reason


@pytest.mark.parametrize("body", [
    [1, 2, 3],
    {"hello": "world"},
    {"resourceType": "Observation", "id": "x", "status": "final"},
    {"resourceType": "Bundle", "type": "collection"},
    {"resourceType": "Bundle", "type": "searchset", "entry": {"not": "a list"}},
])
def test_search_answer_that_is_not_a_searchset_is_412(hook_request, server, body) -> None:
    server.overrides["Condition"] = Override(json_body=body)
    exc = fails(hook_request, server, prefetch=partial(hook_request["prefetch"], ["patient", "painScores", "exerciseRounds"]))
    assert exc.key == "conditions"
    assert "response is invalid" in exc.reason


def test_read_answer_of_another_type_is_412(hook_request, server) -> None:
    server.overrides["Patient"] = Override(json_body={"resourceType": "Bundle", "type": "searchset"})
    exc = fails(hook_request, server, prefetch=partial(hook_request["prefetch"], SEARCH_KEYS))
    assert exc.key == "patient" and "invalid (not a Patient resource)" in exc.reason


def test_read_of_another_patient_is_412(hook_request, server) -> None:
    server.overrides["Patient"] = Override(json_body={"resourceType": "Patient", "id": "someone-else"})
    exc = fails(hook_request, server, prefetch=partial(hook_request["prefetch"], SEARCH_KEYS))
    assert exc.key == "patient" and "not for the context patient" in exc.reason


# --------------------------------------------------------------------------------------------------
# Content filtering


def test_resources_of_another_patient_are_dropped_and_logged(hook_request, server, all_logs) -> None:
    server.foreign_patient = "someone-else"
    out = call(hook_request, server)
    for key in SEARCH_KEYS:
        assert ids(out[key]) == ids(hook_request["prefetch"][key]), key
        for entry in out[key].get("entry", []):
            assert entry["resource"]["subject"]["reference"] == f"Patient/{pid_of(hook_request)}"
    assert any(s.query.get("patient") for s in server.requests)
    messages = [r.getMessage() for r in all_logs.records if r.name == "cds.fhir_client"]
    assert any("not for the context patient" in m and "exerciseRounds" in m for m in messages)


def test_operation_outcome_entries_are_dropped_and_logged(hook_request, server, all_logs) -> None:
    server.operation_outcome = True
    out = call(hook_request, server, templates={**TEMPLATES, **_paged(2)})
    for key in SEARCH_KEYS:
        assert all(e["resource"]["resourceType"] != "OperationOutcome" for e in out[key].get("entry", []))
        assert ids(out[key]) == ids(hook_request["prefetch"][key])
    messages = [r.getMessage() for r in all_logs.records if r.name == "cds.fhir_client"]
    assert any("OperationOutcome" in m and "exerciseRounds" in m for m in messages)


def test_entries_of_an_unexpected_type_are_dropped(hook_request, server) -> None:
    rounds = hook_request["prefetch"]["exerciseRounds"]
    body = copy.deepcopy(rounds)
    body["entry"].append({"resource": {"resourceType": "Condition", "id": "odd",
                                       "subject": {"reference": f"Patient/{pid_of(hook_request)}"}}})
    server.overrides["Observation"] = Override(json_body=body)
    out = call(hook_request, server, prefetch=partial(hook_request["prefetch"], ["patient", "conditions", "painScores"]))
    assert ids(out["exerciseRounds"]) == ids(rounds)


# --------------------------------------------------------------------------------------------------
# Missing server / token, http


def test_missing_token_is_412(hook_request, server) -> None:
    exc = fails(hook_request, server, token=None, prefetch=partial(hook_request["prefetch"], ["patient"]))
    assert exc.key == "conditions"
    assert "access token" in exc.reason and "painScores" in exc.reason
    assert server.requests == []


def test_missing_fhir_server_is_412(hook_request) -> None:
    exc = fails(hook_request, None, prefetch=partial(hook_request["prefetch"], ["patient", "conditions"]))
    assert exc.key == "painScores" and "fhirServer" in exc.reason


def test_http_fhir_server_is_refused_unless_allowed(hook_request, server) -> None:
    exc = fails(hook_request, server, settings=FetchSettings())
    assert "https" in exc.reason
    assert server.requests == []
    call(hook_request, server, settings=FetchSettings(allow_http=True))
    assert server.requests


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/fhir", "not a url", "https://user:pw@ehr.example.org/fhir",
                                 "https://ehr.example.org/fhir?x=1"])
def test_unusable_fhir_server_is_412(hook_request, url) -> None:
    exc = fails(hook_request, None, fhir_server=url)
    assert exc.key == "patient"


def test_token_with_control_characters_is_412_without_echo(hook_request, server) -> None:
    bad = TOKEN + "\r\nX-Evil: 1"
    with pytest.raises(PrefetchUnavailable) as info:
        call(hook_request, server, token=bad)
    assert TOKEN not in str(info.value) and "X-Evil" not in str(info.value)
    assert server.requests == []


# --------------------------------------------------------------------------------------------------
# Secrets


def test_token_and_patient_id_absent_from_logs_of_a_full_fetch(hook_request, server, all_logs) -> None:
    server.foreign_patient = "someone-else"
    server.operation_outcome = True
    call(hook_request, server, templates={**TEMPLATES, **_paged(2)})
    assert all_logs.records, "expected some log output"
    assert any(r.name == "httpx" for r in all_logs.records)
    assert any(r.name.startswith("httpcore") for r in all_logs.records)
    pid = pid_of(hook_request)
    for record in all_logs.records:
        if record.name.startswith(("cds.", "httpx", "httpcore")):
            assert pid not in record.getMessage(), record.getMessage()
    _assert_no_token_in_logs(all_logs)


def test_exception_str_and_repr_never_carry_the_token(hook_request, server) -> None:
    server.overrides["*"] = Override(status=401)
    with pytest.raises(PrefetchUnavailable) as info:
        call(hook_request, server)
    exc = info.value
    for text in (str(exc), repr(exc), str(exc.args), exc.reason, str(exc.__cause__), str(exc.__context__)):
        assert TOKEN not in text
    assert exc.__cause__ is None and exc.__suppress_context__


# --------------------------------------------------------------------------------------------------
# Real servers (issue 11): strict query encoding, HAPI paging, where the token may go, stale pooled
# connections, the default budget, failure logs.


def test_the_test_server_is_strict_like_tomcat(server) -> None:
    """The double must be able to fail the fetch tests: a raw '|' gets 400, its encoded form does not."""
    server.required_token = None
    raw = httpx.get(server.base_url + "/Observation?code=http://loinc.org|72514-3")
    assert raw.status_code == 400 and not server.requests[-1].answered
    encoded = httpx.get(server.base_url + "/Observation?code=http%3A%2F%2Floinc.org%7C72514-3")
    assert encoded.status_code == 200 and server.requests[-1].answered


def test_query_values_are_percent_encoded_on_the_wire(hook_request, server) -> None:
    call(hook_request, server)
    searches = [s for s in server.requests if s.path != f"/fhir/Patient/{pid_of(hook_request)}"]
    assert len(searches) == 3 and all(s.answered for s in searches)
    for seen in searches:
        assert "|" not in seen.raw and "," not in seen.raw, seen.raw
        if seen.path == "/fhir/Observation":
            assert "%7C" in seen.raw, seen.raw  # system|code
    condition = next(s for s in searches if s.path == "/fhir/Condition")
    assert "%2C" in condition.raw
    assert condition.query["clinical-status"] == ["active,recurrence,relapse"]  # decoded: the same OR list


def test_context_values_with_reserved_characters_stay_one_value(hook_request, server) -> None:
    templates = {"odd": "Observation?patient={{context.patientId}}&code=http://loinc.org|72514-3"}
    context = {**hook_request["context"], "patientId": "a&b=c|d e+f"}
    complete_prefetch(templates=templates, prefetch=None, context=context, patient_id="a&b=c|d e+f",
                      fhir_server=server.base_url, access_token=TOKEN, settings=DEV)
    assert server.requests[-1].query["patient"] == ["a&b=c|d e+f"]
    assert server.requests[-1].answered


def test_dot_segment_context_value_is_a_template_error() -> None:
    with pytest.raises(TemplateError, match="dot segment"):
        render_template("Patient/{{context.patientId}}", {"patientId": ".."})


@pytest.mark.parametrize(("path", "expected"), [
    ("/a/b/c/./../../g", "/a/g"), ("mid/content=5/../6", "mid/6"), ("/fhir/a/../../other", "/other"),
    ("/fhir/..", "/"), ("/fhir/./Patient", "/fhir/Patient"), ("/fhir/", "/fhir/"), ("", ""),
])
def test_remove_dot_segments_follows_rfc_3986(path: str, expected: str) -> None:
    assert fhir_client.remove_dot_segments(path) == expected


@pytest.mark.parametrize("suffix", ["/../other", "/../../other", "/%2e%2e/other", "/%2E%2E/%2e%2e/x", "/a%2F..%2F..%2Fx",
                                    "x", "/..", "/./../other"])
def test_next_link_leaving_the_base_path_is_refused_and_gets_no_token(hook_request, server, suffix) -> None:
    server.next_base = server.base_url + suffix
    exc = fails(hook_request, server, templates=_paged(2))
    assert exc.key == "exerciseRounds" and "outside fhirServer" in exc.reason
    assert len(server.requests) == 1  # only the first page; nothing was sent to the refused link
    assert all(s.path.startswith("/fhir/") or s.path == "/fhir" for s in server.requests)


def test_next_link_with_dot_segments_resolving_into_the_base_is_followed_as_normalised(hook_request, server) -> None:
    server.next_base = server.base_url + "/../fhir/./"  # resolves to [base]/ : on the base path
    out = call(hook_request, server, templates=_paged(2))
    assert ids(out["exerciseRounds"]) == ids(hook_request["prefetch"]["exerciseRounds"])
    assert [s.path for s in server.requests][1:] == ["/fhir/"] * (len(server.requests) - 1)
    assert all(".." not in s.raw for s in server.requests)


def test_stale_pooled_connection_is_retried_once_and_succeeds(hook_request, server, all_logs) -> None:
    client = fhir_client.make_client()
    try:
        first = complete_prefetch(templates=TEMPLATES, prefetch=None, context=hook_request["context"],
                                  patient_id=pid_of(hook_request), fhir_server=server.base_url,
                                  access_token=TOKEN, settings=DEV, client=client)
        server.requests.clear()
        server.drop_next = 1  # the next request on a kept-alive connection: closed without an answer
        again = complete_prefetch(templates=TEMPLATES, prefetch=None, context=hook_request["context"],
                                  patient_id=pid_of(hook_request), fhir_server=server.base_url,
                                  access_token=TOKEN, settings=DEV, client=client)
    finally:
        client.close()
    assert again == first
    assert len(server.requests) == 5 and sum(not s.answered for s in server.requests) == 1
    dropped = next(s for s in server.requests if not s.answered)
    assert sum(s.raw == dropped.raw for s in server.requests) == 2  # the same GET, sent again
    assert sum("retrying once" in r.getMessage() for r in all_logs.records) == 1


def test_a_connection_closed_without_an_answer_is_retried_only_once(hook_request, server) -> None:
    server.drop_next, server.drop_reused_only = 5, False
    exc = fails(hook_request, server, prefetch=partial(hook_request["prefetch"], SEARCH_KEYS))
    assert exc.key == "patient" and "could not be reached (connection broken)" in exc.reason
    assert len(server.requests) == 2


def test_an_error_status_is_not_retried(hook_request, server) -> None:
    server.overrides["Patient"] = Override(status=503)
    fails(hook_request, server, prefetch=partial(hook_request["prefetch"], SEARCH_KEYS))
    assert len(server.requests) == 1


def test_server_closing_idle_connections_after_1s_does_not_break_the_next_call(hook_request, server) -> None:
    server.idle_timeout = 1.0
    client = fhir_client.make_client()
    try:
        kwargs = dict(templates=TEMPLATES, prefetch=None, context=hook_request["context"],
                      patient_id=pid_of(hook_request), fhir_server=server.base_url, access_token=TOKEN,
                      settings=DEFAULT, client=client)
        first = complete_prefetch(**kwargs)  # type: ignore[arg-type]
        opened = server.connections
        time.sleep(1.3)  # the server closes the pooled connections
        assert complete_prefetch(**kwargs) == first  # type: ignore[arg-type]
    finally:
        client.close()
    assert server.connections > opened  # new connections were made: the old ones really were closed


def test_default_budget_copes_with_a_realistic_server(hook_request, server) -> None:
    """0.6 s per search, strict, HAPI paging, idle close after 1 s: the defaults fetch it, concurrently."""
    assert (DEFAULT.connect_timeout, DEFAULT.total_timeout) == (0.5, 2.5)
    server.search_delay, server.idle_timeout = 0.6, 1.0
    started = time.monotonic()
    out = call(hook_request, server, settings=DEFAULT)
    elapsed = time.monotonic() - started
    for key in SEARCH_KEYS:
        assert ids(out[key]) == ids(hook_request["prefetch"][key])
    assert elapsed < 1.5, f"{elapsed:.3f}s: three 0.6 s searches were not fetched concurrently"


def test_concurrent_fetch_gives_the_same_result_as_one_key_at_a_time(hook_request, server) -> None:
    together = call(hook_request, server, templates={**TEMPLATES, **_paged(2)})
    for key in TEMPLATES:
        alone = call(hook_request, server, templates={**TEMPLATES, **_paged(2)},
                     prefetch={k: v for k, v in together.items() if k != key})
        assert alone == together, key


def test_the_service_configuration_defaults_match_the_fetch_defaults() -> None:
    from cds.config import load_settings

    settings = load_settings({}, serving=False)
    assert (settings.fetch_connect_timeout, settings.fetch_total_timeout) == (0.5, 2.5)
    assert (FetchSettings().connect_timeout, FetchSettings().total_timeout) == (0.5, 2.5)
    tuned = load_settings({"CDS_FETCH_TOTAL_TIMEOUT": "4", "CDS_FETCH_CONNECT_TIMEOUT": "1"}, serving=False)
    assert (tuned.fetch_connect_timeout, tuned.fetch_total_timeout) == (1.0, 4.0)


def _failure_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "cds.fhir_client" and r.levelno >= logging.WARNING
            and "failed" in r.getMessage()]


@pytest.mark.parametrize("failure", ["status", "slow", "outside-link", "refused"])
def test_every_fetch_failure_is_logged_once_with_key_host_and_reason(hook_request, server, all_logs, failure) -> None:
    kwargs: dict[str, Any] = {"prefetch": partial(hook_request["prefetch"], ["patient", "conditions", "painScores"])}
    host = f"127.0.0.1:{server.port}"
    if failure == "status":
        server.overrides["Observation"] = Override(status=503)
        reason = "HTTP 503"
    elif failure == "slow":
        server.overrides["Observation"] = Override(delay=2.0)
        reason = "timed out"
    elif failure == "outside-link":
        server.next_base = server.base_url + "/../other"
        kwargs["templates"] = {**TEMPLATES, **_paged(2)}
        reason = "outside fhirServer"
    else:
        with FhirTestServer() as gone:
            kwargs["fhir_server"] = gone.base_url
            host = f"127.0.0.1:{gone.port}"
        reason = "could not be reached"
    exc = fails(hook_request, server, **kwargs)
    assert exc.key == "exerciseRounds"
    logs = _failure_logs(all_logs)
    assert len(logs) == 1, [r.getMessage() for r in logs]
    message = logs[0].getMessage()
    assert "exerciseRounds" in message and host in message and reason in message, message
    assert getattr(logs[0], "key", None) == "exerciseRounds"
    assert pid_of(hook_request) not in message and TOKEN not in message


def test_failure_before_any_request_is_logged_too(hook_request, all_logs) -> None:
    fails(hook_request, None, prefetch=partial(hook_request["prefetch"], ["patient", "conditions"]))
    logs = _failure_logs(all_logs)
    assert len(logs) == 1 and "painScores" in logs[0].getMessage() and "no fhirServer" in logs[0].getMessage()


def test_a_connect_timeout_longer_than_the_budget_is_a_configuration_error() -> None:
    from cds.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="CDS_FETCH_CONNECT_TIMEOUT"):
        load_settings({"CDS_FETCH_CONNECT_TIMEOUT": "3", "CDS_FETCH_TOTAL_TIMEOUT": "2"}, serving=False)
