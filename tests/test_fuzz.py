"""Fuzzing: schemathesis against the service's own ``/openapi.json``, and hypothesis property tests
that throw malformed hook requests and random or mutated FHIR resources at the hook endpoint.

The properties: no request ever gets a 500; every error is a FHIR OperationOutcome body; every
200 is a conformant CDS Hooks response. Example counts are bounded so the file runs in well under a
minute. Prefetch keys left absent with a ``fhirServer`` are "fetched" from an in-process mock FHIR
server (httpx.MockTransport), so fuzzing never touches the network.
"""

from __future__ import annotations

import atexit
import copy
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from cdshooks_conformance import assert_conformant_response
from conftest import RULES_DIR, SERVICE_URL, error_issue, example_pairs
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

FEEDBACK_URL = SERVICE_URL + "/feedback"
EXAMPLES = [request for _, request, _ in example_pairs()]
FUZZ = settings(
    max_examples=int(os.environ.get("CDS_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
    database=None,
)


def _mock_fhir(request: httpx.Request) -> httpx.Response:
    """A FHIR server with nothing to say: empty searchsets, and the Patient whose id is asked for."""
    if request.url.params:
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset", "total": 0, "entry": []})
    pid = request.url.path.rstrip("/").rsplit("/", 1)[-1]
    return httpx.Response(200, json={"resourceType": "Patient", "id": pid})


def _make_app():
    from cds.config import load_settings
    from cds.http import create_app

    tmp = tempfile.mkdtemp(prefix="lbp-cds-fuzz-")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    db = Path(tmp) / "db.sqlite3"
    return create_app(load_settings({}, development=True, rules_dir=RULES_DIR, rules_poll_seconds=0,
                                    database_url=f"sqlite:///{db}"))


# Built at import: schemathesis parametrizes the tests from the document this app serves.
APP = _make_app()


@pytest.fixture(scope="module", autouse=True)
def _no_network() -> Iterator[None]:
    """Absent prefetch keys are "fetched" from the mock FHIR server, never from the network."""
    from cds import fhir_client

    mock = httpx.Client(transport=httpx.MockTransport(_mock_fhir))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fhir_client, "_default", (os.getpid(), mock))
        yield
    mock.close()


@pytest.fixture(scope="module")
def fuzz_app():
    return APP


@pytest.fixture(scope="module")
def fuzz_client(fuzz_app):
    return fuzz_app.test_client()


# ---- schemathesis --------------------------------------------------------------------------------


schema = schemathesis.openapi.from_wsgi("/openapi.json", APP)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@schema.parametrize()
@settings(
    max_examples=int(os.environ.get("CDS_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_openapi_fuzz(case):
    response = case.call_and_validate(checks=CHECKS)
    if case.formatted_path == SERVICE_URL and case.method.upper() == "POST" and response.status_code == 200:
        assert_conformant_response(response.json())
    if 400 <= response.status_code < 600:
        assert_error_body(response.json(), response.status_code)


def test_openapi_document_is_served_and_covers_every_endpoint(fuzz_client):
    response = fuzz_client.get("/openapi.json")
    assert response.status_code == 200
    doc = response.get_json()
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {
        "/cds-services",
        "/cds-services/{service_id}",
        "/cds-services/{service_id}/feedback",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/charts/trend.svg",
    }
    refs = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "$ref":
                    refs.add(v)
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    def resolves(ref: str) -> bool:
        node: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    assert all(ref.startswith("#/") and resolves(ref) for ref in refs), sorted(r for r in refs if not resolves(r))
    schemathesis.openapi.from_dict(doc)  # loads as a valid OpenAPI document


def test_openapi_request_schema_accepts_every_example(fuzz_client):
    """The documented request schema agrees with what the service accepts (the bundled examples)."""
    jsonschema_rs = pytest.importorskip("jsonschema_rs")  # installed with schemathesis

    doc = fuzz_client.get("/openapi.json").get_json()
    components = doc["components"]["schemas"]
    validator = jsonschema_rs.Draft202012Validator(
        {"$ref": "#/components/schemas/PatientViewRequest", "components": {"schemas": components}}
    )
    for request in EXAMPLES:
        validator.validate(request)


# ---- hypothesis: malformed hook requests ---------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)


def assert_error_body(body: Any, status: int) -> None:
    assert 400 <= status <= 599
    error_issue(body)


def check_response(response) -> None:
    assert response.status_code < 500, (response.status_code, response.get_data(as_text=True)[:1000])
    body = response.get_json()
    if response.status_code == 200:
        assert_conformant_response(body)
    else:
        assert 400 <= response.status_code < 500
        assert_error_body(body, response.status_code)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        node = node[p]
    return node


def _swap_type(value: Any) -> Any:
    """A value of another JSON type that a careless parser might still take."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return {"0": value[0]} if value else {}
    if isinstance(value, dict):
        return list(value.values())
    return 0


# Inserted as copies: a later mutation of an inserted list or dict must not change this table.
EDGE_VALUES = [
    None, "", " ", "0", 0, -1, 1.5, 10**30, -(10**30), 1e308, 1e-05, 1e16, 0.0001, True, [], {}, [None], {"": None},
    "2026-02-30", "2026", "2026-11-18T25:00:00Z", "9999-12-31", "0001-01-01", "Patient/", "../..",
    "\u0000", "\ud7ff\ue000", "x" * 2000, "{{context.patientId}}", "%s%s%n", "Observation/round-x",
]


@st.composite
def mutated_requests(draw) -> dict[str, Any]:
    body = copy.deepcopy(draw(st.sampled_from(EXAMPLES)))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = _paths(body)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = _get(body, path[:-1])
        key = path[-1]
        op = draw(st.sampled_from(["drop", "swap", "edge", "random", "string"]))
        if op == "drop":
            if isinstance(parent, dict):
                del parent[key]
            else:
                parent.pop(key)
        elif op == "swap":
            parent[key] = _swap_type(parent[key])
        elif op == "edge":
            parent[key] = draw(st.sampled_from(EDGE_VALUES).map(copy.deepcopy))
        elif op == "random":
            parent[key] = draw(json_values)
        else:
            parent[key] = draw(st.text(max_size=40))
    return body


@FUZZ
@given(body=json_values)
def test_random_json_never_500(fuzz_client, body):
    for url in (SERVICE_URL, FEEDBACK_URL):
        check_response(fuzz_client.post(url, json=body))


@FUZZ
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_random_bytes_never_500(fuzz_client, raw):
    response = fuzz_client.post(SERVICE_URL, data=raw, headers={"Content-Type": "application/json"})
    check_response(response)


@FUZZ
@given(body=mutated_requests())
def test_mutated_example_requests_never_500(fuzz_client, body):
    check_response(fuzz_client.post(SERVICE_URL, json=body))


@FUZZ
@given(
    top=st.dictionaries(
        st.sampled_from(["hook", "hookInstance", "context", "prefetch", "fhirServer", "fhirAuthorization", "extension"]),
        json_values,
        max_size=7,
    ),
    context=st.dictionaries(st.sampled_from(["userId", "patientId", "encounterId", "x"]), json_values, max_size=4),
)
def test_hook_requests_with_random_member_values_never_500(fuzz_client, top, context):
    body = {"hook": "patient-view", "hookInstance": "fuzz", **top}
    if context:
        body.setdefault("context", context)
    check_response(fuzz_client.post(SERVICE_URL, json=body))


# ---- hypothesis: random and mutated FHIR resources in prefetch Bundles ----------------------------


def _example_resources() -> list[dict[str, Any]]:
    out = []
    for request in EXAMPLES:
        for value in (request.get("prefetch") or {}).values():
            if isinstance(value, dict) and value.get("resourceType") == "Bundle":
                out += [e["resource"] for e in value.get("entry", []) if isinstance(e.get("resource"), dict)]
    return out


RESOURCES = _example_resources()
BUNDLE_KEYS = ["conditions", "painScores", "exerciseRounds"]


@st.composite
def mutated_resources(draw) -> dict[str, Any]:
    resource = copy.deepcopy(draw(st.sampled_from(RESOURCES)))
    resource["id"] = draw(st.sampled_from([resource.get("id", "x"), "fuzz-1", "fuzz-2", "", "a b", "x" * 70]))
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        paths = [p for p in _paths(resource) if p != ("resourceType",) or draw(st.booleans())]
        path = draw(st.sampled_from(paths))
        parent = _get(resource, path[:-1])
        op = draw(st.sampled_from(["drop", "swap", "edge", "random"]))
        if op == "drop":
            if isinstance(parent, dict):
                del parent[path[-1]]
            else:
                parent.pop(path[-1])
        elif op == "swap":
            parent[path[-1]] = _swap_type(parent[path[-1]])
        elif op == "edge":
            parent[path[-1]] = draw(st.sampled_from(EDGE_VALUES).map(copy.deepcopy))
        else:
            parent[path[-1]] = draw(json_values)
    return resource


random_resources = st.dictionaries(st.text(max_size=10), json_values, max_size=5).map(
    lambda d: {"resourceType": "Observation", **d}
)


@FUZZ
@given(
    base=st.sampled_from(EXAMPLES),
    additions=st.lists(
        st.tuples(st.sampled_from(BUNDLE_KEYS), mutated_resources() | random_resources), min_size=1, max_size=4
    ),
)
def test_mutated_fhir_resources_in_bundles_never_500(fuzz_client, base, additions):
    body = copy.deepcopy(base)
    prefetch = body.setdefault("prefetch", {})
    for key, resource in additions:
        bundle = prefetch.get(key)
        if not isinstance(bundle, dict):
            bundle = prefetch[key] = {"resourceType": "Bundle", "type": "searchset", "entry": []}
        bundle.setdefault("entry", []).append({"resource": resource})
    response = fuzz_client.post(SERVICE_URL, json=body)
    check_response(response)
    assert response.status_code == 200, response.get_data(as_text=True)[:500]  # bad resources are skipped


@FUZZ
@given(base=st.sampled_from(EXAMPLES), data=st.data())
def test_an_invalid_copy_of_a_resource_is_never_used(fuzz_client, base, data):
    """Appending a resource that fails FHIR validation never changes the decision."""
    body = copy.deepcopy(base)
    bundles = [k for k in BUNDLE_KEYS if isinstance((body.get("prefetch") or {}).get(k), dict) and body["prefetch"][k].get("entry")]
    assume(bundles)
    key = data.draw(st.sampled_from(bundles))
    entries = body["prefetch"][key]["entry"]
    original = copy.deepcopy(data.draw(st.sampled_from(entries)))
    resource = original["resource"]
    resource["id"] = "fuzz-invalid-copy"
    field = data.draw(st.sampled_from(["issued", "status", "meta", "text", "language"]))
    resource[field] = data.draw(st.sampled_from([5, ["x"], {"x": 1}, True]) if field != "meta" else st.just("not-an-object"))

    baseline = fuzz_client.post(SERVICE_URL, json=base)
    assert baseline.status_code == 200
    entries.append(original)
    response = fuzz_client.post(SERVICE_URL, json=body)
    check_response(response)

    def decisions(resp) -> list[tuple[Any, Any, Any]]:
        out = []
        for card in resp.get_json()["cards"]:
            rec = card["extension"]["org.lbp-cds.recommendation"]
            out.append((rec["ruleId"], rec["decision"], rec.get("recommendedExercise")))
        return out

    assert decisions(response) == decisions(baseline)
    for before, after in zip(baseline.get_json()["cards"], response.get_json()["cards"], strict=True):
        b = before["extension"]["org.lbp-cds.recommendation"]["facts"]["skippedInvalid"]
        a = after["extension"]["org.lbp-cds.recommendation"]["facts"]["skippedInvalid"]
        assert a in (b, b + 1)  # counted when it was looked at (older history is not even validated)


@FUZZ
@given(item=st.dictionaries(
    st.sampled_from(["card", "outcome", "acceptedSuggestions", "overrideReason", "outcomeTimestamp", "extension", "x"]),
    json_values
    | st.sampled_from(["accepted", "overridden", "2026-11-20T10:00:00Z", "0b5c8d4e-2f1a-4a53-9f9a-3e2b7c1d5e6f"])
    | st.datetimes(timezones=st.timezones() | st.none()).map(lambda d: d.isoformat())
    | st.sampled_from(["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-12:00", "2026-11-20T10:00:00+25:00"]),
    max_size=6,
))
def test_random_feedback_never_500(fuzz_client, item):
    response = fuzz_client.post(FEEDBACK_URL, json={"feedback": [item]})
    assert response.status_code < 500, response.get_data(as_text=True)[:500]
    if response.status_code != 200:
        assert_error_body(response.get_json(), response.status_code)
