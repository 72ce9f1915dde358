"""The order-sign service and the order a card proposes: mechanics only, on fixture rule sets.

``tests/fixtures/rules-orders`` is the frozen fixture rule set plus a ``services`` section, order codes
and two order checks (``check-new-onset``, ``check-too-high``); ``tests/fixtures/rules`` has none of
them, so it shows the defaults (one patient-view service, an order with only its ladder coding).
Which cards the *shipped* order checks give is tested only by rules/tests (``cds rules test rules``).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import EVALUATION_DATE, REQUESTS_DIR, RULES_DIR, build_app, edit_rule_file
from fhir.resources.R4B.servicerequest import ServiceRequest
from loopback import serve_wsgi

from cds import order_check, service
from cds.clock import FixedClock
from cds.facts import LbpCondition, PatientFacts
from cds.live_rules import LiveRuleSet
from cds.ruleset.conditions import compile_condition, holds
from cds.ruleset.loader import RuleSetError, check_ruleset, load_ruleset

ORDERS_DIR = Path(__file__).resolve().parent / "fixtures" / "rules-orders"
EXERCISE = "https://lbp-cds.org/fhir/CodeSystem/exercise"
SNOMED = "http://snomed.info/sct"
EXT = "org.lbp-cds.recommendation"
ORDER_URL = "/cds-services/lbp-exercise-order-check"
PATIENT_URL = "/cds-services/lbp-exercise-progression"


def request(name: str) -> dict[str, Any]:
    return json.loads((REQUESTS_DIR / f"{name}.json").read_text())


def draft(rid: str | None, *codes: tuple[str, str]) -> dict[str, Any]:
    order: dict[str, Any] = {"resourceType": "ServiceRequest", "status": "draft", "intent": "order",
                             "code": {"coding": [{"system": s, "code": c} for s, c in codes]},
                             "subject": {"reference": "Patient/x"}}
    if rid is not None:
        order["id"] = rid
    return order


def bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


def order_sign(name: str, *drafts: dict[str, Any], user: str = "Practitioner/example") -> dict[str, Any]:
    """The patient-view request ``name`` as an order-sign request signing ``drafts``."""
    body = copy.deepcopy(request(name))
    body["hook"] = "order-sign"
    body["context"] = {"userId": user, "patientId": body["context"]["patientId"], "draftOrders": bundle(*drafts)}
    return body


@pytest.fixture(scope="module")
def active():
    return LiveRuleSet(ORDERS_DIR).current()


def run(active, body: dict[str, Any]) -> order_check.OrderOutcome:
    return order_check.evaluate_orders(
        active, body["prefetch"], body["context"]["draftOrders"], patient_id=body["context"]["patientId"],
        clock=FixedClock(EVALUATION_DATE), user_id=body["context"]["userId"])


# --- the draft orders that are checked --------------------------------------------------------------


def test_only_ladder_exercise_orders_with_an_id_are_checked(active, caplog):
    drafts = bundle(
        draft("a", (SNOMED, "229065009"), (EXERCISE, "bird-dog")),  # exercise therapy + ladder code: checked
        draft("b", (SNOMED, "229065009")),  # exercise therapy only: not a ladder exercise
        draft("c", ("https://other.example/codes", "bird-dog")),  # a ladder code of another system
        draft(None, (EXERCISE, "reverse-hyper")),  # nothing to delete
        draft("bad id!", (EXERCISE, "reverse-hyper")),  # not a FHIR id
        {"resourceType": "MedicationRequest", "id": "m"},
        draft("d", (EXERCISE, "reverse-hyper")),
    )
    with caplog.at_level("INFO", logger="cds.order_check"):
        found = order_check.draft_orders(drafts, active.ruleset)
    assert [(d.index, d.resource_id, d.exercise, d.rung) for d in found] == [
        (0, "a", "bird-dog", 2), (6, "d", "reverse-hyper", 4)]
    assert found[1].reference == "ServiceRequest/d"
    skipped = [r.getMessage() for r in caplog.records]
    assert skipped == ["draftOrders entry 1 skipped: not a ladder exercise",
                       "draftOrders entry 2 skipped: not a ladder exercise",
                       "draftOrders entry 3 skipped: a ladder exercise order without a valid id",
                       "draftOrders entry 4 skipped: a ladder exercise order without a valid id",
                       "draftOrders entry 5 skipped: not a ServiceRequest"]
    assert not any("bad id" in m or "Patient" in m for m in skipped)  # positions only, no ids


# --- the order facts and the checks -----------------------------------------------------------------


def test_an_order_that_agrees_gets_no_card(active):
    outcome = run(active, order_sign("bird-dog-20-18", draft("d1", (EXERCISE, "bird-dog")),
                                     draft("d2", (EXERCISE, "hip-abduction"))))
    assert [d.resource_id for d in outcome.drafts] == ["d1", "d2"]
    assert outcome.cards == []
    assert [f.decision for f in outcome.evaluation.fired] == ["continue"]  # evaluated as patient-view does


def test_order_facts_of_a_draft(active):
    outcome = run(active, order_sign("bird-dog-28-27", draft("d1", (EXERCISE, "reverse-hyper"))))
    facts = order_check.order_facts(outcome.drafts[0], outcome.evaluation, active.ruleset)
    assert facts["ordered_exercise"] == "reverse-hyper" and facts["ordered_rung"] == 4
    assert facts["recommended_exercise"] == "single-leg-reverse-hyper" and facts["recommended_rung"] == 3
    assert facts["rungs_above_recommended"] == 1
    assert facts["decision"] == "step-up"
    assert facts["exercise"] == "bird-dog" and facts["max_pain"] == 1  # the assessment too


def test_a_rung_too_high_gets_a_card_deleting_the_draft_and_creating_the_recommended_order(active):
    body = order_sign("bird-dog-20-18", draft("d1", (EXERCISE, "single-leg-reverse-hyper")))
    outcome = run(active, body)
    [check_card] = outcome.rule_cards
    card = check_card.card.wire()
    assert check_card.fired.rule_id == "check-too-high" and check_card.fired.decision == "continue"
    assert card["indicator"] == "critical"  # from the rule file
    assert card["summary"] == "Fixture: Single-leg reverse hyper above Bird-dog"
    assert card["detail"].startswith("Fixture detail: single-leg-reverse-hyper ordered, bird-dog recommended.")
    assert "Rule: `check-too-high`" in card["detail"] and "educational purposes only" in card["detail"]
    [suggestion] = card["suggestions"]
    assert suggestion["label"] == "Fixture: replace with Bird-dog" and card["selectionBehavior"] == "at-most-one"
    delete, create = suggestion["actions"]
    assert delete == {"type": "delete", "description": "Fixture: delete single-leg-reverse-hyper",
                      "resourceId": ["ServiceRequest/d1"]}
    assert create["type"] == "create" and create["description"].startswith("Fixture: create Bird-dog (2 rounds")
    order = create["resource"]
    ServiceRequest.model_validate(order)
    assert order["code"]["coding"][0]["code"] == "bird-dog"
    assert order["subject"] == {"reference": f"Patient/{body['context']['patientId']}"}
    rec = card["extension"][EXT]
    assert rec["ruleId"] == "check-too-high" and rec["decisionRuleId"] == "continue"
    assert rec["draftOrder"] == "ServiceRequest/d1" and rec["orderedExercise"] == "single-leg-reverse-hyper"
    assert rec["recommendedExercise"] == "bird-dog" and rec["decision"] == "continue"


def test_replace_false_only_deletes_the_draft_even_when_a_rung_is_recommended(tmp_path):
    folder = tmp_path / "rules"
    shutil.copytree(ORDERS_DIR, folder)
    edit_rule_file(folder, "order-check.yaml", '      create: "Fixture: create {recommended_name} ({dose})"\n',
                   '      create: "Fixture: create {recommended_name} ({dose})"\n      replace: false\n')
    body = order_sign("bird-dog-20-18", draft("d1", (EXERCISE, "single-leg-reverse-hyper")))
    [check_card] = run(LiveRuleSet(folder).current(), body).rule_cards
    assert check_card.fired.rule_id == "check-too-high" and check_card.fired.recommended == "bird-dog"
    [suggestion] = check_card.card.suggestions
    assert [a.type for a in suggestion.actions] == ["delete"]


def test_the_replacement_order_is_pre_selected_only_when_the_patient_view_order_would_be(tmp_path):
    folder = tmp_path / "rules"
    shutil.copytree(ORDERS_DIR, folder)
    edit_rule_file(folder, "progression.yaml", "notes:\n", "notes:\n  - id: caveat\n    stage: progression\n"
                   "    when: not onset_recorded\n    text: Fixture caveat.\n    suggestion: not-recommended\n")
    live = LiveRuleSet(folder).current()
    flags = {}
    for name in ("onset-undocumented", "bird-dog-20-18"):
        [check_card] = run(live, order_sign(name, draft("d1", (EXERCISE, "reverse-hyper")))).rule_cards
        assert check_card.fired.rule_id == "check-too-high"
        [suggestion] = check_card.card.suggestions
        assert [a.type for a in suggestion.actions] == ["delete", "create"]
        flags[name] = suggestion.is_recommended
    assert flags == {"onset-undocumented": False, "bird-dog-20-18": True}


def test_one_card_per_conflicting_draft(active):
    outcome = run(active, order_sign("bird-dog-20-18", draft("d1", (EXERCISE, "reverse-hyper")),
                                     draft("d2", (EXERCISE, "bird-dog")), draft("d3", (EXERCISE, "reverse-hyper"))))
    assert [c.fired.draft.resource_id for c in outcome.rule_cards] == ["d1", "d3"]
    assert len({c.card.uuid for c in outcome.rule_cards}) == 2


def test_new_onset_card_only_deletes(active):
    outcome = run(active, order_sign("new-onset", draft("d1", (EXERCISE, "hip-abduction"))))
    [check_card] = outcome.rule_cards
    assert check_card.fired.rule_id == "check-new-onset" and check_card.fired.decision == "new-onset"
    assert check_card.fired.recommended is None
    [suggestion] = check_card.card.suggestions
    assert [a.type for a in suggestion.actions] == ["delete"]
    assert check_card.card.indicator == "warning"


def test_decisive_rule_is_the_recommending_card_else_the_final_one_else_the_first(active):
    ruleset = active.ruleset
    onset_unknown = run(active, order_sign("onset-undocumented", draft("d1", (EXERCISE, "bird-dog"))))
    assert [f.decision for f in onset_unknown.evaluation.fired] == ["onset-unknown", "continue"]
    assert order_check.decisive_rule(onset_unknown.evaluation, ruleset).decision == "continue"
    new_onset = run(active, order_sign("new-onset", draft("d1", (EXERCISE, "bird-dog"))))
    assert order_check.decisive_rule(new_onset.evaluation, ruleset).decision == "new-onset"
    assert order_check.decisive_rule(new_onset.evaluation.model_copy(update={"fired": ()}), ruleset) is None
    # a card beside the decision (not final, recommending nothing) ahead of the final rule is not the
    # decision: a risk-factor warning before a new onset must not hide the new onset from the order check
    beside = onset_unknown.evaluation.fired[0]
    assert not ruleset.rule(beside.rule_id).final and beside.recommended is None
    both = new_onset.evaluation.model_copy(update={"fired": (beside, *new_onset.evaluation.fired)})
    assert order_check.decisive_rule(both, ruleset).decision == "new-onset"
    # with no final rule and nothing recommended, the first card
    alone = new_onset.evaluation.model_copy(update={"fired": (beside,)})
    assert order_check.decisive_rule(alone, ruleset).rule_id == beside.rule_id


def test_holds_follows_the_engine_semantics():
    types = {"a": float, "b": bool, "s": str}
    def cond(text: str):
        return compile_condition(text, fact_types=types, parameters={"p": 2}, ladder_codes=["x", "y"],
                                 string_values={"s": ("one", "two")})
    assert holds(cond("a > p"), {"a": 3}) and not holds(cond("a > p"), {"a": 2})
    assert not holds(cond("a > p"), {}) and not holds(cond("a != 1"), {})  # an unknown fact never matches
    assert holds(cond("missing(a)"), {}) and holds(cond("present(a)"), {"a": 0})
    assert holds(cond("not b"), {"b": False}) and not holds(cond("b"), {"b": False})
    assert holds(cond("s == 'two' or a < 0"), {"s": "two"}) and not holds(cond("s == 'one'"), {"s": "two"})
    assert holds(cond("(a >= 1 and b) or s != 'one'"), {"a": 1, "b": True, "s": "one"})


# --- the ServiceRequest the card proposes (point 7) -------------------------------------------------


def proposed_order(active, name: str, user: str | None = "Practitioner/example") -> dict[str, Any]:
    body = request(name)
    outcome = service.evaluate(active, body["prefetch"], patient_id=body["context"]["patientId"],
                               clock=FixedClock(EVALUATION_DATE), user_id=user)
    [order] = [a.resource for c in outcome.cards for s in c.suggestions for a in s.actions if a.type == "create"]
    assert order is not None
    ServiceRequest.model_validate(order)
    return order


def test_the_order_carries_the_codes_reason_requester_and_date(active):
    order = proposed_order(active, "bird-dog-28-27")
    assert order["code"]["coding"] == [
        {"system": EXERCISE, "code": "single-leg-reverse-hyper", "display": "Single-leg reverse hyper"},
        {"system": SNOMED, "code": "229065009", "display": "Exercise therapy"}]
    assert order["category"] == [{"coding": [{"system": SNOMED, "code": "91251008",
                                              "display": "Physical therapy procedure"}]}]
    condition = request("bird-dog-28-27")["prefetch"]["conditions"]["entry"][0]["resource"]["id"]
    assert order["reasonReference"] == [{"reference": f"Condition/{condition}"}]
    assert order["requester"] == {"reference": "Practitioner/example"}
    assert order["authoredOn"] == EVALUATION_DATE.isoformat()


@pytest.mark.parametrize("user", ["PractitionerRole/r-1", "Practitioner/p.2"])
def test_a_practitioner_or_role_is_the_requester(active, user):
    assert proposed_order(active, "bird-dog-28-27", user)["requester"] == {"reference": user}


@pytest.mark.parametrize("user", ["Patient/123", "RelatedPerson/1", "Practitioner/", "someone", None,
                                  "Practitioner/a/b"])
def test_another_user_is_not_the_requester(active, user):
    assert "requester" not in proposed_order(active, "bird-dog-28-27", user)


def test_the_adjustment_is_in_the_patient_instruction_and_the_note(active):
    order = proposed_order(active, "pain-4-hip-abduction")  # first rung, pain above the gate: modify it
    adjustment = active.ruleset.rule("pain-gate-first-rung").recommend.adjustment
    dose = order["orderDetail"][0]["text"]
    assert order["patientInstruction"].endswith(adjustment) and dose in order["patientInstruction"]
    assert [n["text"] for n in order["note"]][:2] == [adjustment, dose]
    plain = proposed_order(active, "bird-dog-28-27")  # no adjustment: the instruction is the dose
    assert plain["patientInstruction"] == f"Single-leg reverse hyper: {plain['orderDetail'][0]['text']}."


def test_without_order_codes_the_order_has_only_its_ladder_coding():
    order = proposed_order(LiveRuleSet(RULES_DIR).current(), "bird-dog-28-27")
    assert [c["system"] for c in order["code"]["coding"]] == [EXERCISE] and "category" not in order


def test_condition_used_is_the_one_whose_onset_counts():
    old, new, undated = (LbpCondition(resource_id="old", onset=dt.date(2020, 1, 1)),
                         LbpCondition(resource_id="new", onset=dt.date(2026, 1, 1)), LbpCondition(resource_id="u"))
    assert PatientFacts(patient_id="p", conditions=(undated, old, new)).condition_used == new
    assert PatientFacts(patient_id="p", conditions=(undated,)).condition_used == undated
    assert PatientFacts(patient_id="p").condition_used is None


# --- the rule files: services and order checks ------------------------------------------------------


def test_services_default_to_the_patient_view_service():
    ruleset = load_ruleset(RULES_DIR)
    [only] = service.describe_all(ruleset)
    assert (only.id, only.hook, only.title) == (service.SERVICE_ID, "patient-view", ruleset.document.ruleset.title)


def test_declared_services_are_described_with_the_same_prefetch(active):
    described = service.describe_all(active.ruleset)
    assert [(d.id, d.hook) for d in described] == [("lbp-exercise-progression", "patient-view"),
                                                   ("lbp-exercise-order-check", "order-sign")]
    assert described[1].title == "Order check (fixture)"
    assert described[0].prefetch == described[1].prefetch == service.prefetch_templates(active.ruleset)


@pytest.fixture
def orders_copy(tmp_path: Path) -> Path:
    target = tmp_path / "rules"
    shutil.copytree(ORDERS_DIR, target)
    return target


@pytest.mark.parametrize(("file", "old", "new", "message"), [
    ("order-check.yaml", "when: rungs_above_recommended > 0", "when: rungs_above > 0",
     "order-check.yaml:15:11: order check 'check-too-high': unknown fact 'rungs_above' (did you mean "
     "'rungs_above_recommended'?)"),
    ("order-check.yaml", "when: decision == 'new-onset'", "when: decision == 'new-onsett'",
     "order-check.yaml:4:23: order check 'check-new-onset': unknown decision 'new-onsett' (did you mean "
     "'new-onset'?) (one of: red-flag, red-flag-risk, outside-programme, new-onset, onset-unknown, start, pain-gate, pain-unrecorded, step-back, continue, "
     "step-up)"),
    ("order-check.yaml", "when: rungs_above_recommended > 0", "when: decision == 'new-onset' and ordered_rung > 0",
     "order-check.yaml:15:11: order check 'check-too-high' can never fire: order check 'check-new-onset' has a "
     "higher priority and matches whenever this one does"),
    ("order-check.yaml", '      delete: "Fixture: delete {ordered}"\n\n', '      delete: "Fixture: delete {orderd}"\n\n',
     "order-check.yaml:11:32: unknown fact '{orderd}' in card text (did you mean 'ordered'?)"),
    ("order-check.yaml", "    indicator: critical", "    indicator: severe",
     "order-check.yaml:16:16: order check 'check-too-high': indicator: expected 'info', 'warning' or 'critical', "
     "found 'severe'"),
    ("order-check.yaml", "    priority: 20", "    priorty: 20",
     "order-check.yaml:14:5: order check 'check-too-high': unknown key 'priorty' (did you mean 'priority'?)"),
    ("ruleset.yaml", "  - id: lbp-exercise-order-check\n    hook: order-sign",
     "  - id: lbp-exercise-progression\n    hook: order-sign",
     "ruleset.yaml:77:9: duplicate service id 'lbp-exercise-progression' (first defined at line 75)"),
    ("ruleset.yaml", "    hook: order-sign", "    hook: order-select",
     "ruleset.yaml:78:11: service 'lbp-exercise-order-check': hook: expected 'patient-view' or 'order-sign', "
     "found 'order-select'"),
    ("ruleset.yaml", "    hook: order-sign", "    hook: order-sign\n    stages: [onset, progresion]",
     "ruleset.yaml:79:21: service 'lbp-exercise-order-check': unknown stage 'progresion' (stages: onset, "
     "progression)"),
    ("ruleset.yaml", "  - id: lbp-exercise-order-check\n    hook: order-sign\n", "",
     "order-check.yaml:1:1: order checks are declared but no service answers the 'order-sign' hook; add one to "
     "'services'"),
])
def test_rule_file_mistakes_are_precise_errors(orders_copy, file, old, new, message):
    edit_rule_file(orders_copy, file, old, new)
    problems = [str(p).removeprefix(str(orders_copy) + "/") for p in check_ruleset(orders_copy)]
    assert message in problems, problems


def test_an_order_check_summary_too_long_is_an_error(orders_copy):
    edit_rule_file(orders_copy, "order-check.yaml", 'summary: "Fixture: {ordered_name} above {recommended_name}"',
         'summary: "Fixture: {ordered_name} above {recommended_name} ' + "x" * 90 + '"')
    with pytest.raises(RuleSetError, match=r"order-check.yaml:18:16: summary can reach \d+ characters"):
        load_ruleset(orders_copy)


# --- over HTTP --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def orders_app():
    return build_app(rules=LiveRuleSet(ORDERS_DIR), clock=FixedClock(EVALUATION_DATE))


@pytest.fixture
def client(orders_app):
    return orders_app.test_client()


def test_discovery_lists_both_services(client):
    services = client.get("/cds-services").get_json()["services"]
    assert [(s["id"], s["hook"]) for s in services] == [("lbp-exercise-progression", "patient-view"),
                                                        ("lbp-exercise-order-check", "order-sign")]
    assert services[0]["prefetch"] == services[1]["prefetch"]


def test_order_sign_call(client):
    response = client.post(ORDER_URL, json=order_sign("bird-dog-20-18", draft("d1", (EXERCISE, "reverse-hyper"))))
    assert response.status_code == 200, response.get_json()
    [card] = response.get_json()["cards"]
    assert card["extension"][EXT]["ruleId"] == "check-too-high"
    assert card["suggestions"][0]["actions"][0]["resourceId"] == ["ServiceRequest/d1"]
    agree = client.post(ORDER_URL, json=order_sign("bird-dog-20-18", draft("d1", (EXERCISE, "bird-dog"))))
    assert agree.status_code == 200 and agree.get_json() == {"cards": []}


def test_each_service_answers_only_its_hook(client):
    patient_view = request("bird-dog-20-18")
    wrong = client.post(ORDER_URL, json=patient_view)
    assert wrong.status_code == 400 and "answers 'order-sign'" in json.dumps(wrong.get_json())
    wrong = client.post(PATIENT_URL, json=order_sign("bird-dog-20-18", draft("d1", (EXERCISE, "bird-dog"))))
    assert wrong.status_code == 400 and "answers 'patient-view'" in json.dumps(wrong.get_json())
    assert client.post(PATIENT_URL, json=patient_view).status_code == 200
    assert client.post("/cds-services/lbp-exercise-order-checks", json=patient_view).status_code == 404


@pytest.mark.parametrize(("draft_orders", "message"), [
    ({"resourceType": "ServiceRequest"}, "context.draftOrders: must be a FHIR Bundle"),
    ("not a bundle", "context.draftOrders: Input should be a valid dictionary"),
    ({"resourceType": "Bundle", "entry": {}}, "context.draftOrders: entry must be a list"),
    ({"resourceType": "Bundle", "entry": [{"resource": {"id": "x"}}]},
     "context.draftOrders: entry[0] must hold a FHIR resource"),
    (None, "context.draftOrders: Input should be a valid dictionary"),
])
def test_a_malformed_draft_orders_bundle_is_a_400_naming_it(client, draft_orders, message):
    body = order_sign("bird-dog-20-18")
    body["context"]["draftOrders"] = draft_orders
    response = client.post(ORDER_URL, json=body)
    assert response.status_code == 400 and message in json.dumps(response.get_json())


def test_missing_draft_orders_is_a_400(client):
    body = order_sign("bird-dog-20-18")
    del body["context"]["draftOrders"]
    response = client.post(ORDER_URL, json=body)
    assert response.status_code == 400 and "context.draftOrders: Field required" in json.dumps(response.get_json())


def test_feedback_accepts_both_service_ids(client):
    for url in (PATIENT_URL, ORDER_URL):
        assert client.post(f"{url}/feedback", json={"feedback": []}).status_code != 404
    assert client.post("/cds-services/nope/feedback", json={"feedback": []}).status_code == 404


@pytest.fixture(scope="module")
def server_url(orders_app) -> Iterator[str]:
    with serve_wsgi(orders_app, "order-check-http-server") as url:
        yield url


def test_order_sign_over_a_real_http_server(server_url):
    from cdshooks_conformance import assert_conformant_response

    with httpx.Client(base_url=server_url, timeout=10) as http:
        ids = [s["id"] for s in http.get("/cds-services").json()["services"]]
        assert ids == ["lbp-exercise-progression", "lbp-exercise-order-check"]
        body = json.loads((REQUESTS_DIR / "order-sign" / "order-one-rung-too-high.json").read_text())
        response = http.post(ORDER_URL, json=body)
        assert response.status_code == 200
        answer = response.json()
        assert_conformant_response(answer)
        [card] = answer["cards"]
        delete, create = card["suggestions"][0]["actions"]
        assert delete["resourceId"] == ["ServiceRequest/draft-single-leg-reverse-hyper"]
        assert create["resource"]["code"]["coding"][0]["code"] == "bird-dog"
        assert create["resource"]["requester"] == {"reference": "Practitioner/example"}


def test_the_guide_lists_every_order_fact():
    from cds.order_facts import ORDER_FACT_FIELDS, ORDER_PLACEHOLDERS

    guide = (Path(__file__).resolve().parents[1] / "docs" / "rule-authoring.md").read_text()
    section = guide[guide.index("## 10. The order-sign service"):]
    for name in ORDER_FACT_FIELDS:
        assert f"| `{name}` |" in section, name
    for name in ORDER_PLACEHOLDERS:
        assert f"`{{{name}}}`" in section, name


def test_order_checks_without_a_services_section_are_an_error(orders_copy):
    """Without ``services`` only the default patient-view service exists: the checks would never run."""
    text = (orders_copy / "ruleset.yaml").read_text()
    (orders_copy / "ruleset.yaml").write_text(text[: text.index("\nservices:")] + "\n")
    problems = [str(p).removeprefix(str(orders_copy) + "/") for p in check_ruleset(orders_copy)]
    assert problems == ["order-check.yaml:1:1: order checks are declared but no service answers the 'order-sign' "
                        "hook; add one to 'services'"]
