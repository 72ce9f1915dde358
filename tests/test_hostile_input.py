"""Hostile and malformed input through the HTTP layer: every failure a client can cause is a 4xx JSON
error (a FHIR OperationOutcome) naming the problem, never a 500 (SPEC §3 "Errors", issue 6).

A single FHIR resource inside a prefetch Bundle that fails validation is skipped, counted on the card
(``facts.skippedInvalid``) and never used: the decision is the one the request gets without it.
"""

from __future__ import annotations

import copy
import io
import json
import logging
from typing import Any

import pytest
from cdshooks_conformance import assert_conformant_response
from conftest import REQUESTS_DIR, RULES_DIR, SERVICE_URL, error_issue

FEEDBACK_URL = SERVICE_URL + "/feedback"
RECOMMENDATION = "org.lbp-cds.recommendation"


def _load(name: str) -> dict[str, Any]:
    return json.loads((REQUESTS_DIR / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def hostile_app(tmp_path_factory):
    from cds.config import load_settings
    from cds.http import create_app

    db = tmp_path_factory.mktemp("hostile") / "db.sqlite3"
    settings = load_settings({}, development=True, rules_dir=RULES_DIR, rules_poll_seconds=0,
                             database_url=f"sqlite:///{db}")
    return create_app(settings)


@pytest.fixture
def hc(hostile_app):
    return hostile_app.test_client()


@pytest.fixture(scope="module")
def small_app(tmp_path_factory):
    from cds.config import load_settings
    from cds.http import create_app

    db = tmp_path_factory.mktemp("small") / "db.sqlite3"
    settings = load_settings(
        {}, development=True, rules_dir=RULES_DIR, rules_poll_seconds=0, database_url=f"sqlite:///{db}",
        max_body_bytes=4096
    )
    return create_app(settings)


def error_of(response, status: int) -> dict[str, Any]:
    """The error of a JSON OperationOutcome response with ``status``, as ``{"message", "code", "field"?}``."""
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True)[:500])
    assert response.mimetype == "application/json"
    issue = error_issue(response.get_json())
    err = {"message": issue["diagnostics"], "code": issue["code"]}
    if "expression" in issue:
        err["field"] = issue["expression"][0]
    return err


def post_raw(client, data: bytes | str, content_type: str | None = "application/json", url: str = SERVICE_URL):
    headers = {} if content_type is None else {"Content-Type": content_type}
    return client.post(url, data=data, headers=headers)


def mutate(body: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(body)
    node = out
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return out


def recommendation(response) -> dict[str, Any]:
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    body = response.get_json()
    assert_conformant_response(body)
    (card,) = body["cards"]
    return card["extension"][RECOMMENDATION]


# ---- transport-level problems --------------------------------------------------------------------


@pytest.mark.parametrize("url", [SERVICE_URL, FEEDBACK_URL])
def test_body_over_the_limit_is_413(small_app, url):
    client = small_app.test_client()
    big = json.dumps({"hook": "patient-view", "padding": "x" * 10_000})
    err = error_of(post_raw(client, big, url=url), 413)
    assert "too large" in err["message"]


def test_body_over_the_limit_without_content_length_is_413(small_app):
    client = small_app.test_client()

    raw = b'{"hook": "patient-view", "padding": "' + b"x" * 20_000 + b'"}'
    response = client.post(
        SERVICE_URL,
        input_stream=io.BytesIO(raw),
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    error_of(response, 413)


def test_body_under_the_limit_is_not_refused_for_size(small_app):
    response = post_raw(small_app.test_client(), json.dumps({"hook": 1}))
    error_of(response, 400)


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml"]
)
@pytest.mark.parametrize("url", [SERVICE_URL, FEEDBACK_URL])
def test_wrong_content_type_is_415(hc, content_type, url):
    err = error_of(post_raw(hc, json.dumps(_load("bird-dog-12-14")), content_type, url=url), 415)
    assert "application/json" in err["message"]


def test_json_with_charset_is_accepted(hc):
    response = post_raw(hc, json.dumps(_load("bird-dog-12-14")), "application/json; charset=utf-8")
    assert response.status_code == 200


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b'{"hook": "patient-view",}',
        b"{'hook': 'patient-view'}",
        b"\xff\xfe\x00{",
        b'{"hook": "patient-view"} trailing',
        b'{"a": ' + b"9" * 5000 + b"}",
    ],
    ids=["empty", "unclosed", "trailing-comma", "single-quotes", "bad-utf8", "trailing-garbage", "huge-int"],
)
@pytest.mark.parametrize("url", [SERVICE_URL, FEEDBACK_URL])
def test_malformed_json_is_400(hc, raw, url):
    err = error_of(post_raw(hc, raw, url=url), 400)
    assert "JSON" in err["message"]


@pytest.mark.parametrize("raw", [b"[]", b'"patient-view"', b"42", b"null", b"true"])
@pytest.mark.parametrize("url", [SERVICE_URL, FEEDBACK_URL])
def test_json_that_is_not_an_object_is_400(hc, raw, url):
    error_of(post_raw(hc, raw, url=url), 400)


@pytest.mark.parametrize("raw", [b'{"hook": NaN}', b'{"hook": Infinity}', b'{"x": -Infinity}'])
def test_non_standard_json_constants_are_400(hc, raw):
    err = error_of(post_raw(hc, raw), 400)
    assert "JSON" in err["message"]


@pytest.mark.parametrize("depth", [1_000, 100_000])
@pytest.mark.parametrize("opener,closer", [("[", "]"), ('{"a":', "}")], ids=["arrays", "objects"])
@pytest.mark.parametrize("url", [SERVICE_URL, FEEDBACK_URL])
def test_deep_nesting_is_4xx(hc, depth, opener, closer, url):
    raw = opener * depth + closer * depth
    response = post_raw(hc, raw, url=url)
    assert 400 <= response.status_code < 500, response.status_code
    error_of(response, response.status_code)


@pytest.mark.parametrize("where", ["context", "prefetch", "extension"])
def test_deep_nesting_inside_a_valid_request_is_4xx(hc, where):
    body = _load("bird-dog-12-14")
    deep = "[" * 50_000 + "]" * 50_000
    raw = json.dumps(body)
    if where == "context":
        raw = raw.replace('"context": {', f'"context": {{"deep": {deep}, ', 1)
    elif where == "prefetch":
        raw = raw.replace('"prefetch": {', f'"prefetch": {{"deep": {deep}, ', 1)
    else:
        raw = raw[:-1] + f', "extension": {{"deep": {deep}}}}}'
    response = post_raw(hc, raw)
    assert 400 <= response.status_code < 500, response.status_code
    error_of(response, response.status_code)


def test_moderately_nested_extension_is_fine(hc):
    body = _load("bird-dog-12-14")
    nested: Any = "leaf"
    for _ in range(90):
        nested = [nested]
    body["extension"] = {"x": nested}
    assert hc.post(SERVICE_URL, json=body).status_code == 200


def _nested_extension(levels: int) -> dict[str, Any]:
    ext: dict[str, Any] = {"url": "https://example.org/leaf", "valueString": "x"}
    for _ in range(levels):
        ext = {"url": "https://example.org/node", "extension": [ext]}
    return ext


@pytest.mark.parametrize("key", ["exerciseRounds", "painScores", "conditions"])
@pytest.mark.parametrize("levels", [40, 150, 450])
def test_deeply_nested_fhir_extensions_are_skipped_not_500(hc, key, levels):
    """Found by probing: ~140 nested extensions in a resource that is FHIR-validated exhausted the
    recursion limit (RecursionError -> 500). Validation now reports such a resource as invalid: it is
    skipped and counted like any other invalid resource, and the rest of the data is still used."""
    body = _load("invalid-resource")
    baseline = recommendation(hc.post(SERVICE_URL, json=body))["facts"]["skippedInvalid"]
    body["prefetch"][key]["entry"][0]["resource"]["extension"] = [_nested_extension(levels)]
    response = post_raw(hc, json.dumps(body))
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    cards = response.get_json()["cards"]
    assert_conformant_response(response.get_json())
    skipped = {c["extension"]["org.lbp-cds.recommendation"]["facts"]["skippedInvalid"] for c in cards}
    assert skipped == {baseline if levels <= 40 else baseline + 1}


# ---- wrong types in the hook request --------------------------------------------------------------

WRONG = [
    (("hook",), 5, "hook"),
    (("hook",), None, "hook"),
    (("hook",), "", "hook"),
    (("hook",), "order-select", "hook"),
    (("hookInstance",), 12, "hookInstance"),
    (("hookInstance",), ["x"], "hookInstance"),
    (("context",), [], "context"),
    (("context",), "patient", "context"),
    (("context",), None, "context"),
    (("context", "patientId"), "lbp bird dog", "context.patientId"),
    (("context", "patientId"), 42, "context.patientId"),
    (("context", "patientId"), "", "context.patientId"),
    (("context", "patientId"), "x" * 65, "context.patientId"),
    (("context", "patientId"), "../Patient/other", "context.patientId"),
    (("context", "userId"), 7, "context.userId"),
    (("context", "userId"), "", "context.userId"),
    (("context", "encounterId"), "a/b", "context.encounterId"),
    (("prefetch",), [], "prefetch"),
    (("prefetch",), "everything", "prefetch"),
    (("prefetch",), 3, "prefetch"),
    (("fhirAuthorization",), "Bearer abc", "fhirAuthorization"),
    (("fhirAuthorization",), [], "fhirAuthorization"),
    (("fhirServer",), 5, "fhirServer"),
    (("fhirServer",), "ftp://ehr.example.org/fhir", "fhirServer"),
    (("fhirServer",), "not a url", "fhirServer"),
]


@pytest.mark.parametrize("path,value,field", WRONG, ids=[f"{'.'.join(p)}={v!r}"[:60] for p, v, _ in WRONG])
def test_wrong_type_in_hook_request_is_400_naming_the_field(hc, path, value, field):
    body = mutate(_load("bird-dog-12-14"), path, value)
    err = error_of(hc.post(SERVICE_URL, json=body), 400)
    assert field in err["message"], err["message"]


@pytest.mark.parametrize("field", ["hook", "hookInstance", "context"])
def test_missing_required_field_is_400_naming_it(hc, field):
    body = _load("bird-dog-12-14")
    del body[field]
    err = error_of(hc.post(SERVICE_URL, json=body), 400)
    assert field in err["message"]


@pytest.mark.parametrize("field", ["patientId", "userId"])
def test_missing_context_field_is_400_naming_it(hc, field):
    body = _load("bird-dog-12-14")
    del body["context"][field]
    err = error_of(hc.post(SERVICE_URL, json=body), 400)
    assert f"context.{field}" in err["message"]


def test_fhir_authorization_without_fhir_server_is_400(hc):
    body = _load("bird-dog-12-14")
    body["fhirAuthorization"] = {
        "access_token": "secret-token-value",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "lbp-cds",
    }
    body.pop("fhirServer", None)
    response = hc.post(SERVICE_URL, json=body)
    err = error_of(response, 400)
    assert "fhirServer" in err["message"]
    assert "secret-token-value" not in response.get_data(as_text=True)


@pytest.mark.parametrize(
    "field,value",
    [("access_token", 5), ("token_type", "MAC"), ("expires_in", "soon"), ("expires_in", -1), ("scope", [])],
)
def test_wrong_fhir_authorization_member_is_400_naming_it_without_echoing(hc, field, value):
    body = _load("bird-dog-12-14")
    body["fhirServer"] = "https://ehr.example.org/fhir"
    body["fhirAuthorization"] = {
        "access_token": "secret-token-value",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "lbp-cds",
    }
    body["fhirAuthorization"][field] = value
    response = hc.post(SERVICE_URL, json=body)
    err = error_of(response, 400)
    assert f"fhirAuthorization.{field}" in err["message"]
    assert "secret-token-value" not in response.get_data(as_text=True)


def test_error_message_never_echoes_client_values(hc):
    body = mutate(_load("bird-dog-12-14"), ("context", "patientId"), "<script>alert(1)</script>")
    response = hc.post(SERVICE_URL, json=body)
    error_of(response, 400)
    assert "<script>" not in response.get_data(as_text=True)


def test_odd_extension_keys_are_not_reflected(hc):
    body = _load("bird-dog-12-14")
    body["context"] = {"<img src=x>": 1, "userId": 5, "patientId": "p"}
    response = hc.post(SERVICE_URL, json=body)
    error_of(response, 400)
    assert "<img" not in response.get_data(as_text=True)


# ---- prefetch values that are not FHIR -----------------------------------------------------------

NOT_FHIR = [
    ("patient", "Patient/123"),
    ("patient", 42),
    ("patient", []),
    ("patient", True),
    ("patient", {"id": "no-resource-type"}),
    ("patient", {"resourceType": 7}),
    ("painScores", [{"resourceType": "Observation"}]),
    ("painScores", {"resourceType": "Bundle", "entry": {"resource": {}}}),
    ("painScores", {"resourceType": "Bundle", "entry": ["Observation/1"]}),
    ("exerciseRounds", {"resourceType": "Bundle", "type": "searchset", "entry": [None]}),
    ("conditions", {"resourceType": None}),
]


@pytest.mark.parametrize("key,value", NOT_FHIR, ids=[f"{k}={json.dumps(v)}"[:50] for k, v in NOT_FHIR])
def test_prefetch_value_that_is_not_fhir_is_400_naming_the_key(hc, key, value):
    body = mutate(_load("bird-dog-12-14"), ("prefetch", key), value)
    err = error_of(hc.post(SERVICE_URL, json=body), 400)
    assert f"prefetch.{key}" in err["message"], err["message"]


def test_unknown_prefetch_keys_are_ignored(hc):
    """Keys the service did not ask for are not looked at (EHRs may send more than asked)."""
    body = _load("bird-dog-12-14")
    baseline = recommendation(hc.post(SERVICE_URL, json=body))
    body["prefetch"]["extra"] = "junk"
    body["prefetch"]["moreRounds"] = {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Observation"}}]}
    assert recommendation(hc.post(SERVICE_URL, json=body)) == baseline


def test_null_prefetch_values_mean_no_data(hc):
    body = _load("bird-dog-12-14")
    body["prefetch"] = {k: None for k in body["prefetch"]}
    response = hc.post(SERVICE_URL, json=body)
    assert response.status_code == 200
    assert_conformant_response(response.get_json())


# ---- an invalid resource inside a Bundle ---------------------------------------------------------


def test_example_invalid_resource_is_skipped_counted_and_not_used(hc):
    body = _load("invalid-resource")
    with_invalid = recommendation(hc.post(SERVICE_URL, json=body))
    assert with_invalid["facts"]["skippedInvalid"] == 1

    entries = body["prefetch"]["painScores"]["entry"]
    body["prefetch"]["painScores"]["entry"] = [e for e in entries if e["resource"]["id"] != "pain-invalid-20261118"]
    assert len(body["prefetch"]["painScores"]["entry"]) == len(entries) - 1
    without = recommendation(hc.post(SERVICE_URL, json=body))
    assert without["facts"]["skippedInvalid"] == 0
    # the decision is the same; only the count and the rule files' notes describing unusable data may differ
    assert {k: v for k, v in with_invalid.items() if k not in ("facts", "notes")} == {
        k: v for k, v in without.items() if k not in ("facts", "notes")
    }
    assert {k: v for k, v in with_invalid["facts"].items() if k != "skippedInvalid"} == {
        k: v for k, v in without["facts"].items() if k != "skippedInvalid"
    }


def _session_pain(body: dict[str, Any]) -> dict[str, Any]:
    """The pain score of the latest session of ``bird-dog-28-27``."""
    for entry in body["prefetch"]["painScores"]["entry"]:
        if entry["resource"].get("derivedFrom"):
            return entry
    return body["prefetch"]["painScores"]["entry"][0]


INVALIDATE = [
    ("issued", "yesterday"),  # not an instant
    ("status", ["final"]),  # not a code
    ("valueInteger", "nine"),  # not an integer
    ("effectiveDateTime", "2026-11-18T25:99:00Z"),  # impossible time
    ("subject", {"reference": 5}),  # wrong type inside
    ("unknownElement", True),  # not an Observation element
]


@pytest.mark.parametrize("field,value", INVALIDATE, ids=[f for f, _ in INVALIDATE])
def test_an_invalid_pain_score_that_would_change_the_decision_is_skipped(hc, field, value):
    body = _load("bird-dog-28-27")
    baseline = recommendation(hc.post(SERVICE_URL, json=body))
    assert baseline["facts"]["skippedInvalid"] == 0

    # A pain 9 in the same session would stop the progression...
    entry = copy.deepcopy(_session_pain(body))
    entry["resource"]["id"] = "pain-9-hostile"
    entry["resource"]["valueInteger"] = 9
    entry["fullUrl"] = entry.get("fullUrl", "").rsplit("/", 1)[0] + "/pain-9-hostile"
    valid = copy.deepcopy(body)
    valid["prefetch"]["painScores"]["entry"].append(entry)
    changed = recommendation(hc.post(SERVICE_URL, json=valid))
    assert changed["decision"] != baseline["decision"], "the probe resource must matter when valid"

    # ...but when it is not valid FHIR it is skipped, counted and never used.
    bad = copy.deepcopy(entry)
    bad["resource"][field] = value
    invalid = copy.deepcopy(body)
    invalid["prefetch"]["painScores"]["entry"].append(bad)
    got = recommendation(hc.post(SERVICE_URL, json=invalid))
    assert got["facts"]["skippedInvalid"] == 1
    assert got["decision"] == baseline["decision"]
    assert got["ruleId"] == baseline["ruleId"]
    assert got.get("recommendedExercise") == baseline.get("recommendedExercise")


def test_bundle_entries_without_a_resource_or_with_junk_resources_are_skipped(hc):
    body = _load("bird-dog-28-27")
    baseline = recommendation(hc.post(SERVICE_URL, json=body))
    body["prefetch"]["painScores"]["entry"] += [
        {},
        {"resource": None},
        {"resource": "Observation/1"},
        {"resource": {"resourceType": 5}},
        {"resource": {"resourceType": "Observation"}},
        {"resource": {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Observation"}}]}},
        {"resource": {"resourceType": "OperationOutcome", "issue": []}},
    ]
    got = recommendation(hc.post(SERVICE_URL, json=body))
    assert got["decision"] == baseline["decision"]


@pytest.mark.parametrize("value", [1e16, 1e30, 10**20, 1e308, 1e-05, 1e-300])
@pytest.mark.parametrize("where", ["reps", "pain"])
def test_numbers_the_rule_engine_cannot_take_never_reach_it(hc, value, where):
    """Found by probing: durable-rules fails on numbers JSON writes in exponent form (500 before).
    Extraction rounds values to 2 decimals and skips reps too large to evaluate; pain outside 0-10
    is skipped. The answer is a normal set of cards, never a 500."""
    body = _load("pain-value-quantity" if where == "pain" else "bird-dog-28-27")
    if where == "reps":
        entry = body["prefetch"]["exerciseRounds"]["entry"][0]
        entry["resource"]["valueQuantity"]["value"] = value
    else:
        entry = next(e for e in body["prefetch"]["painScores"]["entry"] if "valueQuantity" in e["resource"])
        entry["resource"]["valueQuantity"]["value"] = value
    response = post_raw(hc, json.dumps(body))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert_conformant_response(response.get_json())
    facts = recommendation(response).get("facts", {})
    if where == "reps" and value > 1:  # the absurd round was skipped: only the other round is used
        assert facts["reps"] == [27]
    if where == "reps" and value < 1:  # a tiny value is read as 0 reps
        assert 0 in facts["reps"]


@pytest.mark.parametrize("value", [0, 0.0001, 12.5, 1e14, 123456789012345678])
def test_large_or_tiny_reps_are_never_a_500(hc, value):
    body = _load("bird-dog-28-27")
    body["prefetch"]["exerciseRounds"]["entry"][0]["resource"]["valueQuantity"]["value"] = value
    assert post_raw(hc, json.dumps(body)).status_code in (200, 400)


# ---- feedback ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body,field",
    [
        ({}, "feedback"),
        ({"feedback": {}}, "feedback"),
        ({"feedback": []}, "feedback"),
        ({"feedback": [5]}, "feedback[0]"),
        ({"feedback": [{"card": "not-a-uuid", "outcome": "overridden", "outcomeTimestamp": "2026-11-20T10:00:00Z"}]}, "feedback[0].card"),
        ({"feedback": [{"card": "0b5c8d4e-2f1a-4a53-9f9a-3e2b7c1d5e6f", "outcome": "maybe", "outcomeTimestamp": "2026-11-20T10:00:00Z"}]}, "feedback[0].outcome"),
        ({"feedback": [{"card": "0b5c8d4e-2f1a-4a53-9f9a-3e2b7c1d5e6f", "outcome": "accepted", "outcomeTimestamp": "2026-11-20T10:00:00Z"}]}, "feedback[0].acceptedSuggestions"),
        ({"feedback": [{"card": "0b5c8d4e-2f1a-4a53-9f9a-3e2b7c1d5e6f", "outcome": "overridden", "outcomeTimestamp": 1700000000}]}, "feedback[0].outcomeTimestamp"),
    ],
)
def test_bad_feedback_is_400_naming_the_field(hc, body, field):
    err = error_of(hc.post(FEEDBACK_URL, json=body), 400)
    assert field in err["message"], err["message"]


@pytest.mark.parametrize("timestamp", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_feedback_timestamp_at_the_edge_of_the_calendar_is_400_not_500(hc, timestamp):
    """Found by schemathesis: converting these to UTC overflowed (OverflowError -> 500)."""
    body = {"feedback": [{"card": "0b5c8d4e-2f1a-4a53-9f9a-3e2b7c1d5e6f", "outcome": "overridden", "outcomeTimestamp": timestamp}]}
    err = error_of(hc.post(FEEDBACK_URL, json=body), 400)
    assert "outcomeTimestamp" in err["message"]


# ---- routing -------------------------------------------------------------------------------------


def test_unknown_service_is_404_json(hc):
    error_of(hc.post("/cds-services/no-such-service", json=_load("bird-dog-12-14")), 404)
    error_of(hc.post("/cds-services/no-such-service/feedback", json={"feedback": []}), 404)
    error_of(hc.get("/no/such/path"), 404)


@pytest.mark.parametrize("method,url", [("put", SERVICE_URL), ("delete", SERVICE_URL), ("get", SERVICE_URL), ("post", "/cds-services"), ("post", "/healthz")])
def test_wrong_method_is_405_json(hc, method, url):
    error_of(getattr(hc, method)(url), 405)


def test_no_500_is_logged_for_any_of_the_above(hc, caplog):
    """A quick sweep of odd requests in one test, with the logs checked for 'unexpected error'."""
    bodies: list[bytes] = [b"\x00", b"{}" * 10, b'{"hook":"patient-view","hookInstance":"x","context":{"patientId":"p","userId":"u"},"prefetch":{"patient":{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Patient","id":"p"}}]}}}']
    with caplog.at_level(logging.ERROR, logger="cds.http"):
        for raw in bodies:
            assert post_raw(hc, raw).status_code < 500
    assert not [r for r in caplog.records if "unexpected" in r.getMessage()]


# --- work bounded by counts, not only bytes (issue 12, point 2) --------------------------------------------


@pytest.mark.parametrize("key", ["exerciseRounds", "painScores", "conditions"])
def test_a_prefetch_bundle_of_too_many_entries_is_413_naming_the_key(hc, key) -> None:
    from cds.extract import MAX_ENTRIES_PER_KEY

    body = _load("bird-dog-12-14")
    body["prefetch"][key] = {"resourceType": "Bundle", "type": "searchset", "entry": [{}] * (MAX_ENTRIES_PER_KEY + 1)}
    err = error_of(post_raw(hc, json.dumps(body)), 413)
    assert err["message"].startswith(f"prefetch.{key}: ") and err.get("field") == f"prefetch.{key}"


def test_the_entry_cap_is_the_configured_one(tmp_path) -> None:
    """CDS_MAX_ENTRIES_PER_KEY sets the cap the extractor applies, lower or higher than the default."""
    from cds.config import load_settings
    from cds.extract import MAX_ENTRIES_PER_KEY
    from cds.http import create_app

    def client(cap: int):
        settings = load_settings({}, development=True, rules_dir=RULES_DIR, rules_poll_seconds=0,
                                 database_url="", max_entries_per_key=cap)
        return create_app(settings).test_client()

    body = _load("bird-dog-12-14")
    body["prefetch"]["conditions"] = {"resourceType": "Bundle", "type": "searchset",
                                      "entry": [{}] * (MAX_ENTRIES_PER_KEY + 1)}
    assert post_raw(client(MAX_ENTRIES_PER_KEY + 1), json.dumps(body)).status_code == 200
    err = error_of(post_raw(client(10), json.dumps(_load("bird-dog-12-14") | {"prefetch": {
        **body["prefetch"], "conditions": {"resourceType": "Bundle", "type": "searchset", "entry": [{}] * 11}}})), 413)
    assert err["message"] == "prefetch.conditions: the Bundle has 11 entries, more than the 10 accepted"


def test_entries_up_to_the_cap_are_skipped_with_one_summary_log_line(hc, caplog) -> None:
    from cds.extract import MAX_ENTRIES_PER_KEY

    caplog.set_level(logging.INFO)
    body = _load("bird-dog-12-14")
    body["prefetch"]["conditions"] = {"resourceType": "Bundle", "type": "searchset",
                                      "entry": [{}] * MAX_ENTRIES_PER_KEY}
    response = post_raw(hc, json.dumps(body))
    assert response.status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "cds.extract" and r.levelno >= logging.INFO]
    assert len(lines) == 1 and lines[0].startswith(f"skipped {MAX_ENTRIES_PER_KEY} resource(s): ")
    assert len(caplog.records) < 50  # not one line per skipped entry


def test_a_resource_whose_arrays_fill_the_body_is_skipped_without_being_validated(hc, caplog, monkeypatch) -> None:
    """The entry cap bounds entries per key, not the arrays inside one resource: a pain score with
    100,000 ``{}`` components (~0.4 MiB, under the body limit) is invalid by its size alone
    (``MAX_RESOURCE_BYTES``), never handed to fhir.resources, logged and counted; the card says the
    session's pain was not usable (bench/bench_worst_body.py: 9.9 s of CPU before, 0.07 s now)."""
    from fhir.resources.R4B.observation import Observation

    from cds.extract import fact_memo
    from cds.fhir_validation import MAX_RESOURCE_BYTES, validation_cache

    validation_cache.clear()
    fact_memo.clear()  # nothing of this patient memoised by earlier tests: every candidate is validated now
    body = _load("bird-dog-12-14")
    pain = body["prefetch"]["painScores"]["entry"][0]["resource"]
    pain["component"] = [{}] * 100_000
    seen: list[str] = []
    real = Observation.model_validate.__func__  # type: ignore[attr-defined]

    def counting(cls: type, obj: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(obj.get("id") if isinstance(obj, dict) else None)
        return real(cls, obj, *args, **kwargs)

    monkeypatch.setattr(Observation, "model_validate", classmethod(counting))
    caplog.set_level(logging.INFO)
    response = post_raw(hc, json.dumps(body))
    assert response.status_code == 200
    assert pain["id"] not in seen and seen  # the other Observations were validated, this one never
    [line] = [r.getMessage() for r in caplog.records if r.name == "cds.extract" and r.levelno >= logging.INFO]
    assert line == "skipped 1 resource(s): failed FHIR R4 validation: 1"
    card = response.get_json()["cards"][0]
    facts = card["extension"][RECOMMENDATION]["facts"]
    assert facts.get("maxPain") is None  # the pain score was not used ...
    assert "skipped as invalid" in card["detail"].lower() or "not used" in card["detail"].lower()  # ... and it says so
    assert len(json.dumps(pain)) > MAX_RESOURCE_BYTES
