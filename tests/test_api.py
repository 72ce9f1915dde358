"""The HTTP API through the Flask test client: discovery, the service call, and every error status.

Every 200 answer of the service is checked with ``assert_conformant_response`` (explicitly here, and
again by the checking test client of conftest).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from cdshooks_conformance import assert_conformant_response, empty_values
from conftest import REQUESTS_DIR, SERVICE_URL, error_expression, error_issue

BASE = json.loads((REQUESTS_DIR / "bird-dog-20-18.json").read_text())

CLINICAL_STATUSES = "active,recurrence,relapse"
SPEC_PREFETCH = {
    "patient": "Patient/{{context.patientId}}",
    "conditions": "Condition?patient={{context.patientId}}&clinical-status=" + CLINICAL_STATUSES,
    "painScores": "Observation?patient={{context.patientId}}&code=http://loinc.org|72514-3&_sort=-date&_count=100",
    "exerciseRounds": (
        "Observation?patient={{context.patientId}}"
        "&code=https://lbp-cds.org/fhir/CodeSystem/observation|reps-to-technical-failure&_sort=-date&_count=100"
    ),
}


def request_with(change) -> dict[str, Any]:
    body = copy.deepcopy(BASE)
    change(body)
    return body


def assert_error(response, status: int, *words: str) -> dict[str, Any]:
    """A JSON OperationOutcome error body with ``status``, whose diagnostics mention every word."""
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True)[:500])
    assert response.mimetype == "application/json"
    body = response.get_json()
    message = error_issue(body)["diagnostics"]
    assert isinstance(message, str) and message
    for word in words:
        assert word in message, f"{word!r} not named in {message!r}"
    assert empty_values(body, "") == []
    return body


def post(client, body: Any, *, content_type: str = "application/json", url: str = SERVICE_URL):
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return client.post(url, data=data, content_type=content_type)


# ------------------------------------------------------------------------------------------------
# Discovery
# ------------------------------------------------------------------------------------------------


def test_discovery_lists_the_service_with_the_spec_prefetch_templates(client, ruleset):
    response = client.get("/cds-services")
    assert response.status_code == 200
    body = response.get_json()
    assert list(body) == ["services"]
    [svc] = body["services"]
    assert svc["hook"] == "patient-view"
    assert svc["id"] == "lbp-exercise-progression"
    assert svc["title"] == ruleset.document.ruleset.title
    assert svc["description"] == ruleset.document.ruleset.description
    assert svc["prefetch"] == SPEC_PREFETCH
    assert "_sort=-date" in svc["prefetch"]["painScores"] and "_sort=-date" in svc["prefetch"]["exerciseRounds"]
    ident = ruleset.identity
    assert svc["extension"] == {
        "org.lbp-cds.ruleset": {"name": ident.name, "version": ident.version, "sha256": ident.sha256}
    }
    assert empty_values(body, "") == []


def test_without_a_services_section_only_the_patient_view_service_exists(client):
    """The fixture rule set declares no ``services``: the default is the one patient-view service, so the
    order-sign service id is unknown (tests/test_order_check.py covers a rule set declaring both)."""
    assert [s["id"] for s in client.get("/cds-services").get_json()["services"]] == ["lbp-exercise-progression"]
    order_sign = {**BASE, "hook": "order-sign"}
    assert_error(post(client, order_sign, url="/cds-services/lbp-exercise-order-check"), 404, "lbp-exercise-order-check")
    assert_error(post(client, order_sign), 400, "answers 'patient-view'")


def test_discovery_is_get_only(client):
    assert_error(client.post("/cds-services", json={}), 405, "method not allowed")


# ------------------------------------------------------------------------------------------------
# A successful call
# ------------------------------------------------------------------------------------------------


def test_a_call_returns_conformant_cards(client):
    response = post(client, BASE)
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert_conformant_response(body)
    [card] = body["cards"]
    assert card["extension"]["org.lbp-cds.recommendation"]["decision"] == "continue"


def test_null_prefetch_values_mean_the_ehr_has_no_data(client):
    body = request_with(lambda b: b["prefetch"].update({k: None for k in b["prefetch"]}))
    response = post(client, body)
    assert response.status_code == 200
    payload = response.get_json()
    assert_conformant_response(payload)
    decisions = [c["extension"]["org.lbp-cds.recommendation"]["decision"] for c in payload["cards"]]
    assert decisions == ["onset-unknown", "start"]


def test_a_null_patient_alone_is_accepted(client):
    response = post(client, request_with(lambda b: b["prefetch"].update(patient=None)))
    assert response.status_code == 200
    assert_conformant_response(response.get_json())


def test_extension_fields_in_the_request_are_allowed(client):
    body = request_with(lambda b: b.update(extension={"com.example.ehr": {"x": 1}}))
    body["context"]["encounterId"] = "enc-1"
    response = post(client, body)
    assert response.status_code == 200
    assert_conformant_response(response.get_json())


@pytest.fixture
def rules_that_cannot_fire(rules_copy: Path) -> Path:
    """A rule-set copy keeping only the new-onset rule: a chronic patient matches nothing."""
    path = rules_copy / "progression.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["rules"] = [r for r in doc["rules"] if r["id"] == "new-onset"]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return rules_copy


def test_nothing_applies_gives_an_empty_card_list(make_app, rules_that_cannot_fire):
    app = make_app(rules_dir=rules_that_cannot_fire)
    response = post(app.test_client(), BASE)
    assert response.status_code == 200
    body = response.get_json()
    assert body == {"cards": []}
    assert_conformant_response(body)
    # the same rule set still answers a new onset
    onset = json.loads((REQUESTS_DIR / "new-onset.json").read_text())
    body = post(app.test_client(), onset).get_json()
    assert [c["extension"]["org.lbp-cds.recommendation"]["ruleId"] for c in body["cards"]] == ["new-onset"]


# ------------------------------------------------------------------------------------------------
# Errors: each status, with a message naming the field
# ------------------------------------------------------------------------------------------------


def test_malformed_json_is_400(client):
    assert_error(post(client, '{"hook": "patient-view",'), 400, "not valid JSON")


def test_undecodable_bytes_are_400(client):
    assert_error(post(client, b"\xff\xfe\x00"), 400, "JSON")


def test_deeply_nested_json_is_400(client):
    assert_error(post(client, "[" * 100_000), 400, "nested")


@pytest.mark.parametrize("body", ["[1, 2]", '"patient-view"', "42", "null", "true"])
def test_a_body_that_is_not_an_object_is_400(client, body):
    assert_error(post(client, body), 400, "JSON object")


@pytest.mark.parametrize("field", ["hook", "hookInstance", "context"])
def test_a_missing_required_field_is_400_naming_it(client, field):
    body = assert_error(post(client, request_with(lambda b: b.pop(field))), 400, field, "required")
    assert error_issue(body)["diagnostics"].startswith(field)
    assert error_expression(body) == [field]


@pytest.mark.parametrize("field", ["patientId", "userId"])
def test_a_missing_context_field_is_400_naming_it(client, field):
    assert_error(post(client, request_with(lambda b: b["context"].pop(field))), 400, f"context.{field}", "required")


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda b: b.update(hook=""), ("hook",)),
        (lambda b: b.update(hook=5), ("hook",)),
        (lambda b: b.update(hookInstance=""), ("hookInstance",)),
        (lambda b: b.update(context="Patient/1"), ("context",)),
        (lambda b: b["context"].update(patientId="has spaces/and slashes"), ("context.patientId",)),
        (lambda b: b["context"].update(patientId=""), ("context.patientId",)),
        (lambda b: b.update(fhirServer="not a url"), ("fhirServer", "URL")),
        (lambda b: b.update(prefetch=["a"]), ("prefetch",)),
    ],
)
def test_an_invalid_field_is_400_naming_it(client, change, words):
    assert_error(post(client, request_with(change)), 400, *words)


def test_a_wrong_hook_is_400(client):
    assert_error(post(client, request_with(lambda b: b.update(hook="order-sign"))), 400, "hook", "patient-view")


def test_fhir_authorization_without_fhir_server_is_400(client):
    auth = {"access_token": "abc", "token_type": "Bearer", "expires_in": 300, "scope": "patient/*.read", "subject": "x"}
    body = request_with(lambda b: b.update(fhirAuthorization=auth))
    response = post(client, body)
    assert_error(response, 400, "fhirServer", "fhirAuthorization")
    assert "abc" not in response.get_data(as_text=True)  # the token is never echoed


@pytest.mark.parametrize(
    "key, value",
    [
        ("painScores", 5),
        ("painScores", "Bundle"),
        ("painScores", [1, 2]),
        ("painScores", {"foo": 1}),
        ("exerciseRounds", {"resourceType": "Bundle", "type": "searchset", "entry": "x"}),
        ("conditions", True),
        ("patient", "Patient/1"),
    ],
)
def test_a_prefetch_value_that_is_not_a_fhir_resource_is_400_naming_the_key(client, key, value):
    body = request_with(lambda b: b["prefetch"].update({key: value}))
    assert_error(post(client, body), 400, f"prefetch.{key}")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
def test_a_wrong_content_type_is_415(client, content_type):
    assert_error(post(client, json.dumps(BASE), content_type=content_type), 415, "application/json")


def test_no_content_type_is_415(client):
    response = client.post(SERVICE_URL, data=json.dumps(BASE))
    assert_error(response, 415, "application/json")


def test_fhir_json_content_type_is_not_accepted_silently(client):
    # application/fhir+json is not what CDS Hooks sends; Flask treats any +json as JSON, which is fine
    response = post(client, BASE, content_type="application/fhir+json")
    assert response.status_code in (200, 415)


def test_an_oversized_body_is_413(make_app):
    app = make_app(max_body_bytes=1024)
    client = app.test_client()
    body = json.dumps(BASE)
    assert len(body) > 1024
    assert_error(post(client, body), 413, "too large")
    # a small body still gets through to validation
    assert_error(post(client, "{}"), 400, "hook")


def test_an_unknown_service_is_404(client):
    assert_error(post(client, BASE, url="/cds-services/no-such-service"), 404, "no-such-service")
    assert_error(client.get("/no/such/path"), 404, "not found")


def test_get_on_the_service_is_405(client):
    assert_error(client.get(SERVICE_URL), 405, "method not allowed")
    assert_error(client.put(SERVICE_URL, json=BASE), 405, "method not allowed")


@pytest.mark.parametrize("key", ["patient", "conditions", "painScores", "exerciseRounds"])
def test_a_required_prefetch_key_absent_without_fhir_server_is_412_naming_it(client, key):
    body = request_with(lambda b: b["prefetch"].pop(key))
    error = assert_error(post(client, body), 412, key, "fhirServer")
    assert error_expression(error) == [f"prefetch.{key}"]
    assert error_issue(error)["code"] == "incomplete"


def test_no_prefetch_at_all_without_fhir_server_is_412(client):
    error = assert_error(post(client, request_with(lambda b: b.pop("prefetch"))), 412, "patient")
    assert error_expression(error) == ["prefetch.patient"]


# ------------------------------------------------------------------------------------------------
# Never a 500 for anything a client sends
# ------------------------------------------------------------------------------------------------

ODD_BODIES: list[Any] = [
    "",
    " ",
    "{}",
    '{"hook": null, "hookInstance": null, "context": null}',
    request_with(lambda b: b.update(context={})),
    request_with(lambda b: b.update(context={"patientId": 5, "userId": []})),
    request_with(lambda b: b.update(prefetch={})),
    request_with(lambda b: b.update(prefetch=None)),
    request_with(lambda b: b["prefetch"].update(painScores={"resourceType": "Bundle"})),
    request_with(lambda b: b["prefetch"].update(painScores={"resourceType": "Bundle", "entry": [None, 1, "x"]})),
    request_with(lambda b: b["prefetch"].update(painScores={"resourceType": "Bundle", "entry": [{"resource": 7}]})),
    request_with(lambda b: b["prefetch"].update(painScores={"resourceType": "Observation"})),
    request_with(lambda b: b["prefetch"].update(painScores={"resourceType": "NoSuchThing", "id": "x"})),
    request_with(lambda b: b["prefetch"].update(patient={"resourceType": "Patient", "id": ["x"]})),
    request_with(lambda b: b["prefetch"].update(conditions={"resourceType": 5})),
    request_with(lambda b: b.update(fhirServer="https://ehr.example.org/fhir", fhirAuthorization="token")),
    request_with(lambda b: b.update(hookInstance="x" * 10_000)),
    '{"hook": "patient-view", "hookInstance": "a", "context": {"patientId": "p", "userId": "u"}, "prefetch": {"patient": 1e999}}',
    '{"hook": "\\ud800", "hookInstance": "a", "context": {}}',
]


@pytest.mark.parametrize("index", range(len(ODD_BODIES)))
def test_odd_bodies_never_give_a_500(client, index):
    response = post(client, ODD_BODIES[index])
    assert response.status_code < 500, response.get_data(as_text=True)[:500]
    if response.status_code != 200:
        assert_error(response, response.status_code)
