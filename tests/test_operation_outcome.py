"""Error bodies are FHIR R4 OperationOutcome resources (issue 11 point 5, CDS Hooks 3.0 ballot)."""

from __future__ import annotations

import pytest
from conftest import SERVICE_URL, error_issue
from fhir.resources.R4B.operationoutcome import OperationOutcome as FhirOperationOutcome

from cds.http.errors import ISSUE_TYPE, expression_for, outcome


@pytest.mark.parametrize("status", sorted(ISSUE_TYPE))
def test_every_error_body_is_a_valid_fhir_operation_outcome(status):
    body = outcome(status, "context.patientId: Field required").model_dump(mode="json", exclude_none=True)
    FhirOperationOutcome.model_validate(body)  # the FHIR R4 model accepts it
    assert body["issue"][0]["code"] == ISSUE_TYPE[status]
    assert body["issue"][0]["diagnostics"] == "context.patientId: Field required"


def test_401_names_no_field():
    assert "expression" not in outcome(401, "unauthorized").model_dump(exclude_none=True)["issue"][0]


@pytest.mark.parametrize(
    "message, kwargs, expected",
    [
        ("context.patientId: Field required", {}, ["context.patientId"]),
        ("feedback[0].acceptedSuggestions[1].id: must be a UUID", {}, ["feedback[0].acceptedSuggestions[1].id"]),
        ("hook: service 'x' answers 'patient-view', not the hook sent", {}, ["hook"]),
        ("request body is not valid JSON: Expecting value", {}, None),
        ("(body): must be a JSON object", {}, None),
        ("not found", {}, None),
        ("anything", {"field": "fhirServer"}, ["fhirServer"]),
        ("painScores: cannot be fetched", {"key": "painScores"}, ["prefetch.painScores"]),
    ],
)
def test_expression_names_the_field(message, kwargs, expected):
    assert expression_for(message, **kwargs) == expected


def test_the_wire(client):
    response = client.post(SERVICE_URL, json={"hook": "patient-view", "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea"})
    assert response.status_code == 400 and response.mimetype == "application/json"
    issue = error_issue(response)
    assert issue["code"] == "invalid" and issue["expression"] == ["context"]
    response = client.get("/cds-services/nope/feedback")
    assert response.status_code in (404, 405)
    assert error_issue(response)["code"] in ("not-found", "not-supported")
    response = client.post(SERVICE_URL, data=b"{}", headers={"Content-Type": "text/plain"})
    assert response.status_code == 415 and error_issue(response)["code"] == "not-supported"
