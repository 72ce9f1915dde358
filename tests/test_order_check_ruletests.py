"""The rule-test runner on order-sign cases (fixture rule set tests/fixtures/rules-orders).

A case is order-sign when its request's hook is, or when it lists ``draft_orders``; its cards are the
order checks that fired, and ``delete``/``create`` check the suggestion's actions.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import EVALUATION_DATE, REQUESTS_DIR

from cds.ruletests import RuleTestError, format_report, load_cases, run_tests

ORDERS_DIR = Path(__file__).resolve().parent / "fixtures" / "rules-orders"

PATIENT = """
    patient: p1
    resources:
      - resourceType: Condition
        id: lbp
        clinicalStatus: {coding: [{system: http://terminology.hl7.org/CodeSystem/condition-clinical, code: active}]}
        code: {coding: [{system: http://snomed.info/sct, code: "279039007"}]}
        subject: {reference: Patient/p1}
        onsetDateTime: "2026-01-10"
      - resourceType: Observation
        id: r1
        status: final
        code: {coding: [{system: https://lbp-cds.org/fhir/CodeSystem/observation, code: reps-to-technical-failure}]}
        subject: {reference: Patient/p1}
        effectiveDateTime: "2026-11-18"
        valueInteger: 20
        component:
          - code: {coding: [{system: https://lbp-cds.org/fhir/CodeSystem/observation, code: exercise}]}
            valueCodeableConcept: {coding: [{system: https://lbp-cds.org/fhir/CodeSystem/exercise, code: bird-dog}]}
      - resourceType: Observation
        id: pain
        status: final
        code: {coding: [{system: http://loinc.org, code: 72514-3}]}
        subject: {reference: Patient/p1}
        effectiveDateTime: "2026-11-18"
        valueInteger: 1
"""


def draft_orders(code: str) -> str:
    return f"""
    draft_orders:
      - resourceType: ServiceRequest
        id: d1
        status: draft
        intent: order
        subject: {{reference: Patient/p1}}
        code: {{coding: [{{system: https://lbp-cds.org/fhir/CodeSystem/exercise, code: {code}}}]}}
"""


def write_cases(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cases.yaml").write_text(text)
    return folder


def test_a_passing_order_sign_case_and_check_coverage(tmp_path):
    tests = write_cases(tmp_path / "t", "cases:\n  - name: too high\n    as_of: 2026-11-20\n" + PATIENT
                        + draft_orders("reverse-hyper") + """    expect:
      - {rule: check-too-high, decision: continue, indicator: critical, recommended: bird-dog,
         delete: ServiceRequest/d1, create: bird-dog, summary: {contains: Reverse hyperextension above Bird-dog}}
  - name: agrees
    as_of: 2026-11-20
""" + PATIENT + draft_orders("bird-dog") + "    expect: []\n")
    report = run_tests(ORDERS_DIR, tests)
    assert [r.passed for r in report.results] == [True, True], format_report(report)
    assert report.uncovered_checks == ["check-new-onset"] and not report.ok
    assert "uncovered order checks (no case fires them): check-new-onset" in format_report(report)


def test_wrong_delete_and_create_are_reported(tmp_path):
    tests = write_cases(tmp_path / "t", "cases:\n  - name: too high\n    as_of: 2026-11-20\n" + PATIENT
                        + draft_orders("reverse-hyper") + """    expect:
      - {rule: check-too-high, decision: continue, indicator: critical, recommended: bird-dog,
         delete: ServiceRequest/d2, create: none}
""")
    [result] = run_tests(ORDERS_DIR, tests).results
    assert result.diff == ["card 1 delete: expected ServiceRequest/d2, got ServiceRequest/d1",
                           "card 1 create: expected none, got bird-dog"]


def test_a_request_file_with_the_order_sign_hook_is_an_order_sign_case(tmp_path):
    body = json.loads((REQUESTS_DIR / "bird-dog-20-18.json").read_text())
    body["hook"] = "order-sign"
    body["context"]["draftOrders"] = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {
        "resourceType": "ServiceRequest", "id": "x1", "status": "draft", "intent": "order",
        "subject": {"reference": "Patient/x"},
        "code": {"coding": [{"system": "https://lbp-cds.org/fhir/CodeSystem/exercise", "code": "reverse-hyper"}]}}}]}
    tests = tmp_path / "t"
    tests.mkdir()
    (tests / "order.json").write_text(json.dumps(body))
    write_cases(tests, f"""cases:
  - name: order file
    as_of: {EVALUATION_DATE.isoformat()}
    request: order.json
    expect:
      - {{rule: check-too-high, decision: continue, indicator: critical, recommended: bird-dog,
         delete: ServiceRequest/x1, create: bird-dog}}
""")
    [result] = run_tests(ORDERS_DIR, tests).results
    assert result.passed, result.diff or result.error


def test_an_order_sign_case_needs_an_order_sign_service(tmp_path):
    from conftest import RULES_DIR

    tests = write_cases(tmp_path / "t", "cases:\n  - name: no service\n    as_of: 2026-11-20\n" + PATIENT
                        + draft_orders("bird-dog") + "    expect: []\n")
    [result] = run_tests(RULES_DIR, tests).results
    assert result.error == "no service of the rule set answers the 'order-sign' hook (see 'services')"


@pytest.mark.parametrize(("extra", "message"), [
    ("    draft_orders: [1]\n", "draft_orders: expected a list of FHIR resources (draft ServiceRequests)"),
    ("    expect:\n      - {rule: a, decision: b, indicator: c, delete: ''}\n",
     "delete: expected a resourceId such as ServiceRequest/draft-1"),
])
def test_malformed_order_sign_keys_are_positioned_problems(tmp_path, extra, message):
    text = "cases:\n  - name: bad\n    as_of: 2026-11-20\n" + PATIENT + extra
    if "expect" not in extra:
        text += "    expect: []\n"
    tests = write_cases(tmp_path / "t", text)
    with pytest.raises(RuleTestError) as caught:
        load_cases(tests)
    assert any(message in p.message and p.line > 1 for p in caught.value.problems), caught.value.problems


def test_draft_orders_only_in_a_resources_case(tmp_path):
    tests = write_cases(tmp_path / "t", f"""cases:
  - name: bad
    as_of: 2026-11-20
    request: {REQUESTS_DIR / 'bird-dog-20-18.json'}
    draft_orders: []
    expect: []
""")
    with pytest.raises(RuleTestError, match=r"cases.yaml:5:5: draft_orders: only for 'resources' cases"):
        load_cases(tests)


# --- is_recommended and order: the suggestion and the ServiceRequest it creates ------------------------

TOO_HIGH = ("      - {rule: check-too-high, decision: continue, indicator: critical, recommended: bird-dog,\n"
            "         delete: ServiceRequest/d1, create: bird-dog")


def test_the_created_order_and_is_recommended_are_checked(tmp_path):
    tests = write_cases(tmp_path / "t", "cases:\n  - name: too high\n    as_of: 2026-11-20\n" + PATIENT
                        + draft_orders("reverse-hyper") + "    expect:\n" + TOO_HIGH + """, is_recommended: true,
         order: {patient_instruction: {contains: "Bird-dog"}, note: {matches: "Proposed by rule \\\\S+ of"},
                 reason: Condition/lbp, requester: none, authored_on: 2026-11-20,
                 codes: [bird-dog, "229065009"], category: ["91251008"]}}
""")
    [result] = run_tests(ORDERS_DIR, tests).results
    assert result.passed, result.diff or result.error


def test_a_wrong_order_or_is_recommended_names_each_field(tmp_path):
    tests = write_cases(tmp_path / "t", "cases:\n  - name: too high\n    as_of: 2026-11-20\n" + PATIENT
                        + draft_orders("reverse-hyper") + "    expect:\n" + TOO_HIGH + """, is_recommended: false,
         order: {patient_instruction: {contains: "add resistance"}, reason: Condition/other,
                 requester: Practitioner/x, authored_on: 2026-11-19, codes: [reverse-hyper], category: ["1"]}}
""")
    [result] = run_tests(ORDERS_DIR, tests).results
    assert result.diff[0] == "card 1 is_recommended: expected false, got true"
    assert result.diff[1].startswith("card 1 order.patient_instruction: expected to contain 'add resistance', got 'Bird-dog")
    assert result.diff[2:] == [
        "card 1 order.reason: expected Condition/other, got Condition/lbp",
        "card 1 order.requester: expected Practitioner/x, got none",
        "card 1 order.authored_on: expected 2026-11-19, got 2026-11-20",
        "card 1 order.codes: expected to include reverse-hyper, got 229065009, bird-dog",
        "card 1 order.category: expected to include 1, got 91251008",
    ]


def test_an_order_check_on_a_card_that_creates_nothing_fails(tmp_path):
    tests = write_cases(tmp_path / "t", """cases:
  - name: new onset
    as_of: 2026-11-20
""" + PATIENT.replace('onsetDateTime: "2026-01-10"', 'onsetDateTime: "2026-11-01"') + draft_orders("bird-dog") + """    expect:
      - {rule: check-new-onset, decision: new-onset, indicator: warning, order: {reason: Condition/lbp}}
""")
    [result] = run_tests(ORDERS_DIR, tests).results
    assert result.diff == ["card 1 order: expected a suggestion that creates an order, got none"]


@pytest.mark.parametrize(("extra", "message"), [
    ("is_recommended: yes-please", "is_recommended: expected true or false"),
    ("order: {reasons: Condition/lbp}", "unknown key 'reasons' in order (did you mean 'reason'?)"),
    ("order: {codes: bird-dog}", "order.codes: expected a list of codes"),
    ("order: {note: bird-dog}", "order.note: expected {contains: \"...\"} or {matches: \"regex\"}"),
    ("order: {authored_on: [1]}", "order.authored_on: expected a date such as 2026-11-20"),
    ("order: []", "order: expected a mapping of checks"),
])
def test_malformed_suggestion_checks_are_positioned_problems(tmp_path, extra, message):
    text = ("cases:\n  - name: bad\n    as_of: 2026-11-20\n" + PATIENT
            + f"    expect:\n      - {{rule: a, decision: b, indicator: c, {extra}}}\n")
    tests = write_cases(tmp_path / "t", text)
    with pytest.raises(RuleTestError) as caught:
        load_cases(tests)
    assert any(message in p.message and p.line > 1 for p in caught.value.problems), caught.value.problems
