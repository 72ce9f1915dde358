"""Unit tests for the CDS Hooks models (cds.cdshooks), the card builder (cds.cards) and the
conformance checker every API test uses (tests/cdshooks_conformance.py)."""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import json
import logging
from pathlib import Path
from typing import Any

import pydantic
import pytest
from cdshooks_conformance import (
    assert_conformant_card,
    assert_conformant_response,
    card_problems,
    empty_values,
    response_problems,
)
from conftest import RULES_DIR  # noqa: E402
from fhir.resources.R4B.servicerequest import ServiceRequest

from cds.assessment import Assessment, assess
from cds.cards import EXTENSION_KEY, RuleCard, build_cards, template_values
from cds.cdshooks import (
    Action,
    Card,
    CdsResponse,
    Coding,
    Discovery,
    FhirAuthorization,
    HookRequest,
    Link,
    OverrideReason,
    PatientViewContext,
    PatientViewRequest,
    ServiceDescription,
    Source,
    Suggestion,
    to_json,
    validation_message,
)
from cds.decisions import Evaluation, FiredRule, recommended_rung
from cds.facts import ExerciseRound, LbpCondition, PainScore, PatientFacts, Session, SkippedResource
from cds.ruleset.model import RuleSet
from cds.ruleset.schema import Recommend, RuleSetDocument
from cds.templates import (
    PLACEHOLDERS,
    TemplateError,
    fill,
    max_rendered_length,
    placeholders_for,
    render_number,
    template_fields,
)

EVAL_DATE = dt.date(2026, 11, 21)
SESSION_DATE = dt.date(2026, 11, 20)
OLD_ONSET = dt.date(2026, 1, 10)
PATIENT = "123"


# ------------------------------------------------------------------------------------------------
# Fixtures and builders
# ------------------------------------------------------------------------------------------------


def _load(path: Path) -> RuleSet:
    try:
        from cds.ruleset.loader import load_ruleset
    except ImportError:  # pragma: no cover - before the loader existed
        import yaml

        merged: dict[str, Any] = {}
        for name in ("ruleset.yaml", "codes.yaml", "progression.yaml"):
            merged.update(yaml.safe_load((path / name).read_text()))
        return RuleSet(document=RuleSetDocument.model_validate(merged), sha256="0" * 64)
    return load_ruleset(path)


@pytest.fixture(scope="module")
def rs() -> RuleSet:
    return _load(RULES_DIR)


def with_changes(ruleset: RuleSet, change) -> RuleSet:
    """A copy of the rule set whose document dict was edited in place by ``change``."""
    data = ruleset.document.model_dump()
    change(data)
    return RuleSet(document=RuleSetDocument.model_validate(data), sha256="f" * 64)


def make_facts(
    exercise: str | None = None,
    reps: tuple[float, ...] = (),
    pain: tuple[float, ...] = (),
    onset: dt.date | None = OLD_ONSET,
    skipped_invalid: int = 0,
) -> PatientFacts:
    rounds = tuple(
        ExerciseRound(resource_id=f"round-{i}", exercise=exercise, reps=r, date=SESSION_DATE, round_number=i)
        for i, r in enumerate(reps, start=1)
    )
    scores = tuple(PainScore(resource_id=f"pain-{i}", score=p, date=SESSION_DATE) for i, p in enumerate(pain))
    session = Session(exercise=exercise, date=SESSION_DATE, rounds=rounds, pain_scores=scores) if rounds else None
    conditions = (LbpCondition(resource_id="cond-1", onset=onset),) if onset else ()
    skipped = tuple(
        SkippedResource(resource_type="Observation", resource_id=f"bad-{i}", reason="invalid", invalid=True)
        for i in range(skipped_invalid)
    )
    return PatientFacts(
        patient_id=PATIENT, conditions=conditions, pain_scores=scores, rounds=rounds, latest_session=session,
        skipped=skipped,
    )


def fired_rule(ruleset: RuleSet, rule_id: str, assessment: Assessment, notes: tuple[str, ...] = ()) -> FiredRule:
    """The FiredRule the engine would build (the recommended rung decided as the engine does)."""
    r = ruleset.rule(rule_id)
    return FiredRule(
        rule_id=r.id, stage=r.stage, decision=r.decision, indicator=r.indicator, recommend=r.recommend,
        recommended=recommended_rung(r.recommend, assessment, ruleset.document.ladder), notes=notes,
    )


def evaluate(ruleset: RuleSet, facts: PatientFacts, *rule_ids: str, notes: tuple[str, ...] = ()) -> Evaluation:
    assessment = assess(facts, ruleset.ladder_codes, EVAL_DATE)
    return Evaluation(
        ruleset=ruleset.identity,
        evaluation_date=EVAL_DATE,
        assessment=assessment,
        fired=tuple(fired_rule(ruleset, rid, assessment, notes) for rid in rule_ids),
    )


def card_list(*args, **kwargs) -> list[Card]:
    """The cards of :func:`build_cards`, each checked to be paired with its fired rule."""
    pairs = build_cards(*args, **kwargs)
    for pair in pairs:
        assert isinstance(pair, RuleCard)
        assert pair.card.extension[EXTENSION_KEY]["ruleId"] == pair.fired.rule_id
    return [pair.card for pair in pairs]


def counter_uuids():
    n = itertools.count(1)
    return lambda: f"00000000-0000-4000-8000-{next(n):012d}"


def cards_for(ruleset: RuleSet, facts: PatientFacts, *rule_ids: str, notes: tuple[str, ...] = ()) -> list[dict]:
    ev = evaluate(ruleset, facts, *rule_ids, notes=notes)
    cards = card_list(ev, facts, ruleset, patient_id=PATIENT, uuid_factory=counter_uuids())
    body = to_json(CdsResponse(cards=cards))
    assert_conformant_response(body)
    # and survives a JSON round trip unchanged
    assert json.loads(json.dumps(body)) == body
    return body["cards"]


def rec(card: dict) -> dict:
    return card["extension"][EXTENSION_KEY]


# (rule id, facts, expected recommended exercise or None)
SCENARIOS = {
    "new-onset": (dict(exercise="bird-dog", reps=(22, 20), pain=(1,), onset=EVAL_DATE - dt.timedelta(days=10)), None),
    "onset-unknown": (dict(exercise="bird-dog", reps=(22, 20), pain=(1,), onset=None), None),
    "start": (dict(), "hip-abduction"),
    "pain-unrecorded": (dict(exercise="bird-dog", reps=(20, 20)), "bird-dog"),
    "pain-gate-first-rung": (dict(exercise="hip-abduction", reps=(20, 20), pain=(4,)), "hip-abduction"),
    "pain-gate": (dict(exercise="single-leg-reverse-hyper", reps=(20, 20), pain=(3, 1)), "bird-dog"),
    "step-back-first-rung": (dict(exercise="hip-abduction", reps=(10, 12), pain=(0,)), "hip-abduction"),
    "step-back": (dict(exercise="bird-dog", reps=(10, 18), pain=(1,)), "hip-abduction"),
    "step-up-top-rung": (dict(exercise="reverse-hyper", reps=(30, 28), pain=(1,)), "reverse-hyper"),
    "step-up": (dict(exercise="bird-dog", reps=(28, 27), pain=(1,)), "single-leg-reverse-hyper"),
    "continue": (dict(exercise="bird-dog", reps=(20, 22), pain=(1,)), "bird-dog"),
}


def test_every_shipped_rule_has_a_scenario(rs):
    assert {r.id for r in rs.document.rules} == set(SCENARIOS)


# ------------------------------------------------------------------------------------------------
# Cards per decision
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule_id", sorted(SCENARIOS))
def test_card_for_each_rule(rs, rule_id):
    kwargs, recommended = SCENARIOS[rule_id]
    facts = make_facts(**kwargs)
    [card] = cards_for(rs, facts, rule_id)
    assert_conformant_card(card)
    rule = rs.rule(rule_id)

    assert card["indicator"] == rule.indicator
    assert card["summary"] and len(card["summary"]) < 140
    assert "{" not in card["summary"] and "{" not in card["detail"]
    assert rs.document.texts.not_recorded not in card["summary"]

    ext = rec(card)
    assert ext["ruleId"] == rule_id
    assert ext["decision"] == rule.decision
    assert ext["ruleset"] == {"name": rs.identity.name, "version": rs.identity.version, "sha256": rs.sha256}
    assert ext["facts"]["skippedInvalid"] == 0
    if recommended is None:
        assert "recommendedExercise" not in ext
        assert "suggestions" not in card and "selectionBehavior" not in card
    else:
        assert ext["recommendedExercise"] == recommended
        [suggestion] = card["suggestions"]
        assert card["selectionBehavior"] == "at-most-one"
        assert suggestion["isRecommended"] is True
        display = rs.document.ladder.rung(recommended).display
        assert display in suggestion["label"]
        [action] = suggestion["actions"]
        assert action["type"] == "create"
        resource = action["resource"]
        ServiceRequest.model_validate(resource)
        assert resource["code"]["coding"] == [
            {"system": rs.document.ladder.system, "code": recommended, "display": display}
        ]
    if kwargs.get("exercise"):
        assert ext["currentExercise"] == kwargs["exercise"]
    else:
        assert "currentExercise" not in ext

    # every card: facts table, rule line, disclaimer at the end, evidence links, override reasons
    detail = card["detail"]
    assert "| Fact | Value |" in detail
    assert f"Rule: `{rule_id}` · Rule set: {rs.identity.name} {rs.identity.version}" in detail
    assert detail.rstrip().endswith("*")
    assert " ".join(rs.document.disclaimer.split()) in detail
    assert detail.index("educational purposes only") > detail.index("Rule: `")
    assert [link["url"] for link in card["links"]] == [e.url for e in rs.document.evidence]
    assert all(link["type"] == "absolute" for link in card["links"])
    assert [(o["system"], o["code"], o["display"]) for o in card["overrideReasons"]] == [
        (o.system, o.code, o.display) for o in rs.document.override_reasons
    ]
    src = rs.document.ruleset.source
    assert card["source"]["label"].startswith(src.label)
    assert rs.identity.name in card["source"]["label"] and rs.identity.version in card["source"]["label"]
    assert card["source"]["url"] == src.url
    assert card["source"]["topic"]["code"] == src.topic.code


def test_step_up_card_content(rs):
    [card] = cards_for(rs, make_facts("bird-dog", (28, 27), (1,)), "step-up")
    assert card["summary"] == "Bird-dog too easy (reps 28, 27): step up to Single-leg reverse hyper"
    assert rec(card) == {
        "ruleId": "step-up",
        "decision": "step-up",
        "currentExercise": "bird-dog",
        "recommendedExercise": "single-leg-reverse-hyper",
        "ruleset": {"name": rs.identity.name, "version": rs.identity.version, "sha256": rs.sha256},
        "facts": {"sessionDate": "2026-11-20", "reps": [28, 27], "maxPain": 1, "onsetDate": "2026-01-10",
                  "skippedInvalid": 0},
    }
    assert "notes" not in rec(card)
    assert "| Reps per round | 28, 27 |" in card["detail"]
    assert "| Onset date | 2026-01-10 |" in card["detail"]
    assert "skipped as invalid" not in card["detail"]


def test_service_request_content(rs):
    [card] = cards_for(rs, make_facts("bird-dog", (28, 27), (1,)), "step-up")
    resource = card["suggestions"][0]["actions"][0]["resource"]
    sr = ServiceRequest.model_validate(resource)
    assert sr.status == "draft" and sr.intent == "proposal"
    assert resource["subject"] == {"reference": f"Patient/{PATIENT}"}
    assert resource["authoredOn"] == EVAL_DATE.isoformat()
    dose = resource["orderDetail"][0]["text"]
    params = rs.document.parameters
    assert f"{render_number(params['rounds'])} rounds" in dose
    assert "technical failure" in dose
    assert f"{render_number(params['pain_gate_max'])}/10" in dose


def test_first_rung_pain_gate_keeps_exercise_with_adjustment(rs):
    [card] = cards_for(rs, make_facts("hip-abduction", (20, 20), (4,)), "pain-gate-first-rung")
    assert rec(card)["currentExercise"] == rec(card)["recommendedExercise"] == "hip-abduction"
    assert card["summary"].startswith("Pain 4/10 on Hip abduction")
    adjustment = rs.rule("pain-gate-first-rung").recommend.adjustment
    resource = card["suggestions"][0]["actions"][0]["resource"]
    assert {"text": adjustment} in resource["note"]
    assert adjustment in card["suggestions"][0]["actions"][0]["description"]


def test_top_rung_step_up_stays_with_more_resistance(rs):
    [card] = cards_for(rs, make_facts("reverse-hyper", (30, 28), (0,)), "step-up-top-rung")
    assert rec(card)["recommendedExercise"] == "reverse-hyper"
    note_texts = [n["text"] for n in card["suggestions"][0]["actions"][0]["resource"]["note"]]
    assert rs.rule("step-up-top-rung").recommend.adjustment in note_texts


def test_start_recommends_first_rung_and_omits_unknown_facts(rs):
    [card] = cards_for(rs, make_facts(), "start")
    ext = rec(card)
    assert ext["recommendedExercise"] == rs.ladder_codes[0]
    assert "currentExercise" not in ext
    assert ext["facts"] == {"onsetDate": "2026-01-10", "skippedInvalid": 0}
    assert "| Session date | not recorded |" in card["detail"]
    assert "| Reps per round | not recorded |" in card["detail"]


def test_new_onset_has_no_suggestion(rs):
    facts = make_facts("bird-dog", (22, 20), (1,), onset=EVAL_DATE - dt.timedelta(days=10))
    [card] = cards_for(rs, facts, "new-onset")
    assert card["indicator"] == "warning"
    assert "10 days ago" in card["summary"]
    assert "suggestions" not in card and "selectionBehavior" not in card
    assert "recommendedExercise" not in rec(card)
    assert rec(card)["facts"]["onsetDate"] == (EVAL_DATE - dt.timedelta(days=10)).isoformat()


def test_onset_unknown_omits_onset_everywhere(rs):
    [card] = cards_for(rs, make_facts("bird-dog", (22, 20), (1,), onset=None), "onset-unknown")
    assert "onsetDate" not in rec(card)["facts"]
    assert "| Onset date | not recorded |" in card["detail"]


def test_pain_unrecorded_omits_max_pain(rs):
    [card] = cards_for(rs, make_facts("bird-dog", (20, 20)), "pain-unrecorded")
    assert "maxPain" not in rec(card)["facts"]
    assert "| Highest pain (0-10) | not recorded |" in card["detail"]
    assert rec(card)["recommendedExercise"] == "bird-dog"


def test_incomplete_session_note(rs):
    facts = make_facts("bird-dog", (22,), (1,))
    [card] = cards_for(rs, facts, "continue", notes=("incomplete-session",))
    rounds = render_number(rs.document.parameters["rounds"])
    assert f"Only 1 of {rounds} rounds were recorded" in card["detail"]
    # the note comes after the rule's own text and before the facts table
    assert card["detail"].index("Only 1 of") < card["detail"].index("**Facts used**")
    assert rec(card)["facts"]["reps"] == [22]
    assert rec(card)["notes"] == ["incomplete-session"]


def test_several_cards_in_firing_order_with_distinct_uuids(rs):
    facts = make_facts("bird-dog", (28, 27), (1,), onset=None)
    cards = cards_for(rs, facts, "onset-unknown", "step-up")
    assert [rec(c)["ruleId"] for c in cards] == ["onset-unknown", "step-up"]
    uuids = [cards[0]["uuid"], cards[1]["uuid"], cards[1]["suggestions"][0]["uuid"]]
    assert len(set(uuids)) == 3


def test_default_uuid_factory_gives_uuid4(rs):
    import uuid

    facts = make_facts("bird-dog", (28, 27), (1,))
    [card] = card_list(evaluate(rs, facts, "step-up"), facts, rs, patient_id=PATIENT)
    assert uuid.UUID(card.uuid).version == 4
    assert uuid.UUID(card.suggestions[0].uuid).version == 4


def test_no_fired_rules_no_cards(rs):
    facts = make_facts()
    assert card_list(evaluate(rs, facts), facts, rs, patient_id=PATIENT) == []
    assert to_json(CdsResponse(cards=[])) == {"cards": []}


def test_skipped_invalid_reported(rs):
    [card] = cards_for(rs, make_facts("bird-dog", (20, 22), (1,), skipped_invalid=3), "continue")
    assert rec(card)["facts"]["skippedInvalid"] == 3
    assert "| Resources skipped as invalid | 3 |" in card["detail"]


def test_numbers_render_without_trailing_zero(rs):
    facts = make_facts("bird-dog", (28.0, 22.5), (2.5,))
    [card] = cards_for(rs, facts, "continue")
    assert "reps 28, 22.5" in card["summary"] and "pain 2.5/10" in card["summary"]
    assert rec(card)["facts"]["reps"] == [28, 22.5]
    assert isinstance(rec(card)["facts"]["reps"][0], int)
    assert rec(card)["facts"]["maxPain"] == 2.5
    assert render_number(28.0) == "28" and render_number(2.5) == "2.5" and render_number(3) == "3"
    assert render_number(0.0) == "0"


def test_content_comes_from_the_ruleset(rs):
    """Change parameters, ladder names and text: the card follows, nothing is hard-coded."""

    def change(d):
        d["parameters"]["rounds"] = 3
        d["parameters"]["pain_gate_max"] = 1
        d["ladder"]["rungs"][2]["display"] = "SL reverse hyper (site name)"
        d["disclaimer"] = "Site disclaimer: educational purposes only; not medical advice."
        d["override_reasons"] = []
        d["ruleset"]["source"]["label"] = "Site CDS"

    site = with_changes(rs, change)
    [card] = cards_for(site, make_facts("bird-dog", (28, 27), (1,)), "step-up")
    assert card["summary"].endswith("step up to SL reverse hyper (site name)")
    dose = card["suggestions"][0]["actions"][0]["resource"]["orderDetail"][0]["text"]
    assert "3 rounds" in dose and "1/10" in dose
    assert "Site disclaimer" in card["detail"]
    assert "overrideReasons" not in card
    assert card["source"]["label"].startswith("Site CDS")
    assert rec(card)["ruleset"]["sha256"] == "f" * 64


def test_source_label_and_adjusted_action_description_are_rule_file_texts(rs):
    """``texts.source_label`` and ``texts.action_description_adjusted`` shape the source label and the
    order description: Python adds no wording or punctuation of its own."""
    [card] = cards_for(rs, make_facts("hip-abduction", (20, 20), (4,)), "pain-gate-first-rung")
    adjustment = rs.rule("pain-gate-first-rung").recommend.adjustment
    plain = card["suggestions"][0]["actions"][0]["description"]
    assert card["source"]["label"] == f"{rs.document.ruleset.source.label} ({rs.identity.name} {rs.identity.version})"

    def change(d):
        d["texts"]["source_label"] = "{ruleset_name} v{ruleset_version} from {source_label}"
        d["texts"]["action_description_adjusted"] = "{adjustment} -- then: {action_description}"

    site = with_changes(rs, change)
    [card] = cards_for(site, make_facts("hip-abduction", (20, 20), (4,)), "pain-gate-first-rung")
    assert card["source"]["label"] == f"{rs.identity.name} v{rs.identity.version} from {rs.document.ruleset.source.label}"
    description = card["suggestions"][0]["actions"][0]["description"]
    assert description == f"{adjustment} -- then: {plain.removesuffix(f'. {adjustment}')}"
    # a rule without an adjustment uses action_description alone
    [card] = cards_for(site, make_facts("bird-dog", (28, 27), (1,)), "step-up")
    assert "-- then:" not in card["suggestions"][0]["actions"][0]["description"]


def test_overlong_summary_is_truncated_with_warning(rs, caplog):
    def change(d):
        for r in d["rules"]:
            if r["id"] == "continue":
                r["card"]["summary"] = "x" * 150 + " {exercise_name}"

    long = with_changes(rs, change)
    facts = make_facts("bird-dog", (20, 22), (1,))
    with caplog.at_level(logging.WARNING, logger="cds.cards"):
        [card] = card_list(evaluate(long, facts, "continue"), facts, long, patient_id=PATIENT)
    assert len(card.summary) == 139 and card.summary.endswith("…")
    assert any("truncated" in r.getMessage() for r in caplog.records)


def test_assessment_by_hand_without_session_facts(rs):
    """Template values fall back to the assessment when the facts carry no session."""
    facts = make_facts(onset=None)
    a = Assessment(onset_known=False, session_recorded=True, rung=2, exercise="bird-dog", rounds_recorded=2,
                   min_reps=20, max_reps=22, pain_recorded=True, max_pain=1)
    ev = Evaluation(ruleset=rs.identity, evaluation_date=EVAL_DATE, assessment=a,
                    fired=(fired_rule(rs, "continue", a),))
    values = template_values(ev, facts, rs, ev.fired[0])
    assert values["exercise"] == "bird-dog" and values["exercise_name"] == "Bird-dog"
    assert values["recommended"] == "bird-dog"
    assert values["max_pain"] == "1" and values["min_reps"] == "20"
    assert values["onset_date"] == rs.document.texts.not_recorded and values["session_date"] == rs.document.texts.not_recorded
    [card] = card_list(ev, facts, rs, patient_id=PATIENT)
    assert_conformant_card(card.wire())


# ------------------------------------------------------------------------------------------------
# Templates and bounds
# ------------------------------------------------------------------------------------------------


def test_template_values_cover_exactly_the_placeholders(rs):
    facts = make_facts("bird-dog", (28, 27), (1,))
    ev = evaluate(rs, facts, "step-up")
    values = template_values(ev, facts, rs, ev.fired[0])
    assert set(values) == placeholders_for(rs) == PLACEHOLDERS | set(rs.document.parameters) | {"reps_target"}
    params = rs.document.parameters
    assert values["reps_target"] == render_number((params["reps_low"] + params["reps_high"]) / 2)
    assert values["reps"] == "28, 27"
    assert values["recommended"] == "single-leg-reverse-hyper"
    assert values["recommended_name"] == "Single-leg reverse hyper"
    assert values["onset_days_ago"] == str((EVAL_DATE - OLD_ONSET).days)
    assert values["rounds_recorded"] == "2" and values["min_reps"] == "27" and values["max_reps"] == "28"
    # without a rule there is no recommendation
    assert template_values(ev, facts, rs)["recommended_name"] == rs.document.texts.not_recorded


def test_fill_and_template_errors():
    assert fill("a {x} {{literal}}", {"x": "1"}) == "a 1 {literal}"
    assert template_fields("{a} {b} {a}") == ["a", "b"]
    with pytest.raises(TemplateError):
        fill("{nope}", {})
    with pytest.raises(TemplateError):
        fill("{x:>5}", {"x": "1"})
    with pytest.raises(TemplateError):
        fill("{x!r}", {"x": "1"})
    with pytest.raises(TemplateError):
        fill("unbalanced {", {})
    with pytest.raises(TemplateError):
        template_fields("{a.b}")


def test_max_rendered_length_bounds(rs):
    longest_name = max(len(r.display) for r in rs.document.ladder.rungs)
    assert max_rendered_length("", rs) == 0
    assert max_rendered_length("{exercise_name}", rs) == max(longest_name, len(rs.document.texts.not_recorded))
    assert max_rendered_length("{session_date}", rs) == len(rs.document.texts.not_recorded)  # > 10 for a date
    assert max_rendered_length("{rounds}", rs) == len(render_number(rs.document.parameters["rounds"]))
    assert max_rendered_length("{reps}", rs) == 8 * 3 + 7 * 2
    assert max_rendered_length("ab {max_pain}", rs) == 3 + 12
    with pytest.raises(TemplateError):
        max_rendered_length("{unknown_fact}", rs)
    for rule in rs.document.rules:
        assert max_rendered_length(rule.card.summary, rs) < 140, rule.id


@pytest.mark.parametrize("rule_id", sorted(SCENARIOS))
def test_bound_holds_for_scenarios(rs, rule_id):
    kwargs, _ = SCENARIOS[rule_id]
    [card] = cards_for(rs, make_facts(**kwargs), rule_id)
    assert len(card["summary"]) <= max_rendered_length(rs.rule(rule_id).card.summary, rs)


def test_recommended_rung_moves_and_clamps(rs):
    codes = rs.ladder_codes
    ladder = rs.document.ladder

    def at(rung):
        return Assessment(onset_known=True, session_recorded=rung is not None, rung=rung)

    assert recommended_rung(None, at(2), ladder) is None
    assert recommended_rung(Recommend(rung="first"), at(None), ladder) == codes[0]
    assert recommended_rung(Recommend(rung="first"), at(3), ladder) == codes[0]
    assert recommended_rung(Recommend(rung="previous"), at(1), ladder) == codes[0]
    assert recommended_rung(Recommend(rung="previous"), at(3), ladder) == codes[1]
    assert recommended_rung(Recommend(rung="current"), at(2), ladder) == codes[1]
    assert recommended_rung(Recommend(rung="next"), at(2), ladder) == codes[2]
    assert recommended_rung(Recommend(rung="next"), at(len(codes)), ladder) == codes[-1]
    assert recommended_rung(Recommend(rung="current"), at(None), ladder) is None


# ------------------------------------------------------------------------------------------------
# Wire models: serialisation
# ------------------------------------------------------------------------------------------------


def _source() -> Source:
    return Source(label="lbp-cds")


def test_to_json_prunes_empty_values_everywhere():
    card = Card(
        uuid="u1",
        summary="s",
        detail="",
        indicator="info",
        source=Source(label="x", url="", topic=None),
        links=[],
        extension={"a": None, "b": "", "c": [], "d": {}, "e": {"f": None, "g": [None, "", {}]}, "zero": 0,
                   "no": False, "keep": {"x": [1, None]}},
    )
    assert to_json(card) == {
        "uuid": "u1", "summary": "s", "indicator": "info", "source": {"label": "x"},
        "extension": {"zero": 0, "no": False, "keep": {"x": [1]}},
    }
    assert card.wire() == to_json(card)
    assert empty_values(to_json(card), "card") == []


def test_to_json_keeps_required_empty_lists():
    assert to_json(CdsResponse(cards=[])) == {"cards": []}
    assert to_json(CdsResponse()) == {"cards": []}
    assert to_json(Discovery(services=[])) == {"services": []}


def test_to_json_uses_wire_names():
    card = Card(
        uuid="u", summary="s", indicator="warning", source=_source(),
        suggestions=[Suggestion(label="l", uuid="s1", is_recommended=True,
                                actions=[Action(type="delete", description="d", resource_id="X/1")])],
        selection_behavior="any",
        override_reasons=[OverrideReason(system="s", code="c", display="d")],
        links=[Link(label="l", url="https://x", type="smart", app_context="ctx")],
    )
    out = to_json(card)
    assert out["selectionBehavior"] == "any"
    assert out["suggestions"][0]["isRecommended"] is True
    assert out["suggestions"][0]["actions"][0]["resourceId"] == "X/1"
    assert out["links"][0]["appContext"] == "ctx"
    assert out["overrideReasons"] == [{"system": "s", "code": "c", "display": "d"}]
    # and the wire names are accepted on input
    assert Card.model_validate(out) == card


def test_discovery_serialisation():
    svc = ServiceDescription(
        hook="patient-view", title="t", description="d", id="lbp-exercise-progression",
        prefetch={"patient": "Patient/{{context.patientId}}"}, usage_requirements=None, extension={},
    )
    assert to_json(Discovery(services=[svc])) == {
        "services": [{"hook": "patient-view", "title": "t", "description": "d", "id": "lbp-exercise-progression",
                      "prefetch": {"patient": "Patient/{{context.patientId}}"}}]
    }


# ------------------------------------------------------------------------------------------------
# Wire models: validation of response parts
# ------------------------------------------------------------------------------------------------


def test_card_summary_must_be_shorter_than_140():
    Card(uuid="u", summary="x" * 139, indicator="info", source=_source())
    with pytest.raises(pydantic.ValidationError):
        Card(uuid="u", summary="x" * 140, indicator="info", source=_source())
    with pytest.raises(pydantic.ValidationError):
        Card(uuid="u", summary="", indicator="info", source=_source())


def test_card_selection_behavior_iff_suggestions():
    s = Suggestion(label="l", uuid="s", actions=[])
    with pytest.raises(pydantic.ValidationError, match="selectionBehavior is required"):
        Card(uuid="u", summary="s", indicator="info", source=_source(), suggestions=[s])
    with pytest.raises(pydantic.ValidationError, match="selectionBehavior must be omitted"):
        Card(uuid="u", summary="s", indicator="info", source=_source(), selection_behavior="any")
    with pytest.raises(pydantic.ValidationError):
        Card(uuid="u", summary="s", indicator="info", source=_source(), suggestions=[s], selection_behavior="all")


def test_card_rejects_bad_indicator_and_unknown_field():
    with pytest.raises(pydantic.ValidationError):
        Card(uuid="u", summary="s", indicator="hint", source=_source())
    with pytest.raises(pydantic.ValidationError):
        Card.model_validate({"uuid": "u", "summary": "s", "indicator": "info", "source": {"label": "x"}, "foo": 1})


def test_link_app_context_only_on_smart():
    Link(label="l", url="https://app", type="smart", app_context="x")
    with pytest.raises(pydantic.ValidationError, match="appContext"):
        Link(label="l", url="https://x", type="absolute", app_context="x")
    with pytest.raises(pydantic.ValidationError):
        Link(label="l", url="https://x", type="relative")


def test_action_payload_rules():
    with pytest.raises(pydantic.ValidationError, match="resource is required"):
        Action(type="create", description="d")
    with pytest.raises(pydantic.ValidationError, match="resourceType"):
        Action(type="update", description="d", resource={"status": "draft"})
    with pytest.raises(pydantic.ValidationError, match="resourceId"):
        Action(type="delete", description="d")
    with pytest.raises(pydantic.ValidationError):
        Action(type="patch", description="d", resource_id="x")


def test_override_reason_needs_display():
    Coding(system="s", code="c")
    with pytest.raises(pydantic.ValidationError):
        OverrideReason(system="s", code="c")


# ------------------------------------------------------------------------------------------------
# Wire models: the request
# ------------------------------------------------------------------------------------------------

TOKEN = "eyJSECRET-ACCESS-TOKEN-VALUE"


def request_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "fhirServer": "https://fhir.example.org/r4",
        "fhirAuthorization": {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 300,
                              "scope": "patient/*.read", "subject": "lbp-cds"},
        "context": {"userId": "Practitioner/1", "patientId": "123"},
        "prefetch": {"patient": {"resourceType": "Patient", "id": "123"}, "painScores": None},
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


def test_valid_patient_view_request():
    req = PatientViewRequest.model_validate(request_body())
    assert req.hook_instance == "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea"
    assert req.context.patient_id == "123" and req.context.user_id == "Practitioner/1"
    assert req.context.encounter_id is None
    assert req.prefetch == {"patient": {"resourceType": "Patient", "id": "123"}, "painScores": None}
    assert req.fhir_authorization.access_token == TOKEN
    generic = HookRequest.model_validate(request_body())
    assert generic.context == {"userId": "Practitioner/1", "patientId": "123"}
    assert PatientViewContext.model_validate(generic.context).patient_id == "123"


def test_minimal_request_without_fhir_access():
    req = HookRequest.model_validate(request_body(fhirServer=..., fhirAuthorization=..., prefetch=...))
    assert req.fhir_server is None and req.fhir_authorization is None and req.prefetch is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hook": ...}, "hook: Field required"),
        ({"hookInstance": ...}, "hookInstance: Field required"),
        ({"context": ...}, "context: Field required"),
        ({"context": {"userId": "Practitioner/1"}}, "context.patientId: Field required"),
        ({"context": {"patientId": "123"}}, "context.userId: Field required"),
        ({"fhirServer": ...}, "fhirServer is required when fhirAuthorization is present"),
        ({"fhirServer": "ftp://x"}, "fhirServer: must be an absolute http(s) URL"),
        ({"prefetch": [1]}, "prefetch: Input should be a valid dictionary"),
    ],
)
def test_request_errors_name_the_field(changes, message):
    with pytest.raises(pydantic.ValidationError) as info:
        PatientViewRequest.model_validate(request_body(**changes))
    assert message in validation_message(info.value)


@pytest.mark.parametrize("field", ["access_token", "token_type", "expires_in", "scope", "subject"])
def test_fhir_authorization_fields_required(field):
    auth = dict(request_body()["fhirAuthorization"])
    del auth[field]
    with pytest.raises(pydantic.ValidationError) as info:
        HookRequest.model_validate(request_body(fhirAuthorization=auth))
    assert validation_message(info.value) == f"fhirAuthorization.{field}: Field required"


def _assert_no_secret(err: pydantic.ValidationError, secret: str) -> None:
    assert secret not in str(err)
    assert secret not in repr(err)
    assert secret not in err.json()
    assert secret not in repr(err.errors())
    assert secret not in validation_message(err)


@pytest.mark.parametrize(
    "auth_change",
    [
        {"subject": ...},  # "missing" errors carry the whole enclosing object as input
        {"token_type": "MAC"},
        {"expires_in": "soon"},
        {"access_token": 12345},
    ],
)
def test_token_never_in_validation_errors(auth_change):
    auth = {**request_body()["fhirAuthorization"], **auth_change}
    auth = {k: v for k, v in auth.items() if v is not ...}
    with pytest.raises(pydantic.ValidationError) as info:
        PatientViewRequest.model_validate(request_body(fhirAuthorization=auth, context={"userId": TOKEN}))
    _assert_no_secret(info.value, TOKEN)


def test_no_input_values_echoed():
    with pytest.raises(pydantic.ValidationError) as info:
        PatientViewRequest.model_validate(request_body(context={"userId": "u", "patientId": "Jane Doe 1970-01-01"}))
    _assert_no_secret(info.value, "Jane Doe")
    assert validation_message(info.value).startswith("context.patientId: must be a FHIR id (")
    # a client-chosen key that is not a plain name is never reflected back
    class Keyed(pydantic.BaseModel):
        values: dict[str, int]

    with pytest.raises(pydantic.ValidationError) as info:
        Keyed.model_validate({"values": {"<b>k": "v", "ok-key": "w"}})
    assert validation_message(info.value) == (
        "values.?: Input should be a valid integer, unable to parse string as an integer; "
        "values.ok-key: Input should be a valid integer, unable to parse string as an integer"
    )


def test_prefetch_values_may_be_anything_or_null():
    """Whether a prefetch value is a FHIR resource is decided by the API layer (it names the key)."""
    req = HookRequest.model_validate(request_body(prefetch={"a": None, "b": {"resourceType": "Bundle"}, "c": 5}))
    assert req.prefetch == {"a": None, "b": {"resourceType": "Bundle"}, "c": 5}


def test_token_never_in_repr():
    req = PatientViewRequest.model_validate(request_body())
    assert TOKEN not in repr(req) and TOKEN not in str(req)
    assert TOKEN not in repr(req.fhir_authorization) and TOKEN not in str(req.fhir_authorization)
    auth = FhirAuthorization.model_validate({**request_body()["fhirAuthorization"], "refresh_token": TOKEN})
    assert TOKEN not in repr(auth)


def test_validation_message_prefix_and_limit():
    with pytest.raises(pydantic.ValidationError) as info:
        PatientViewContext.model_validate({})
    assert validation_message(info.value, prefix="context") == (
        "context.userId: Field required; context.patientId: Field required"
    )
    assert validation_message(info.value, limit=1) == "userId: Field required; and 1 more error(s)"


# ------------------------------------------------------------------------------------------------
# The conformance checker itself
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def good_card(rs) -> dict:
    [card] = cards_for(rs, make_facts("bird-dog", (28, 27), (1,)), "step-up")
    assert card_problems(card) == []
    return copy.deepcopy(card)


def _rejected(card: dict, fragment: str) -> None:
    problems = card_problems(card)
    assert any(fragment in p for p in problems), problems
    with pytest.raises(AssertionError, match="not CDS Hooks 2.0 conformant"):
        assert_conformant_card(card)
    with pytest.raises(AssertionError):
        assert_conformant_response({"cards": [card]})


def test_checker_accepts_empty_response():
    assert_conformant_response({"cards": []})
    assert response_problems({"cards": []}) == []


def test_checker_rejects_bad_responses():
    assert any("response.cards: required" in p for p in response_problems({}))
    assert any("must be a list" in p for p in response_problems({"cards": {}}))
    assert any("response.extra" in p for p in response_problems({"cards": [], "extra": 1}))
    assert any("systemActions: empty list" in p for p in response_problems({"cards": [], "systemActions": []}))
    with pytest.raises(AssertionError):
        assert_conformant_response([])


def test_checker_rejects_duplicate_card_uuids(good_card):
    problems = response_problems({"cards": [good_card, copy.deepcopy(good_card)]})
    assert any("cards[1].uuid: duplicate" in p for p in problems)


def test_checker_rejects_140_char_summary(good_card):
    good_card["summary"] = "x" * 140
    _rejected(good_card, "card.summary: is 140 characters")
    good_card["summary"] = "x" * 139
    assert card_problems(good_card) == []


def test_checker_rejects_missing_selection_behavior(good_card):
    del good_card["selectionBehavior"]
    _rejected(good_card, "card.selectionBehavior: required when suggestions are present")


def test_checker_rejects_selection_behavior_without_suggestions(good_card):
    del good_card["suggestions"]
    del good_card["extension"][EXTENSION_KEY]["recommendedExercise"]
    _rejected(good_card, "card.selectionBehavior: present but the card has no suggestions")


def test_checker_rejects_null_and_empty_fields(good_card):
    card = copy.deepcopy(good_card)
    card["source"]["icon"] = None
    _rejected(card, "card.source.icon: null")
    card = copy.deepcopy(good_card)
    card["extension"][EXTENSION_KEY]["facts"]["note"] = ""
    _rejected(card, f"card.extension.{EXTENSION_KEY}.facts.note: empty string")
    card = copy.deepcopy(good_card)
    card["links"] = []
    _rejected(card, "card.links: empty list")
    card = copy.deepcopy(good_card)
    card["suggestions"][0]["actions"][0]["resource"]["meta"] = {}
    _rejected(card, "card.suggestions[0].actions[0].resource.meta: empty object")


def test_checker_rejects_app_context_on_absolute_link(good_card):
    good_card["links"][0]["appContext"] = "launch=1"
    _rejected(good_card, "card.links[0].appContext: only allowed on links of type 'smart'")
    good_card["links"][0]["type"] = "smart"
    assert card_problems(good_card) == []
    good_card["links"][0]["type"] = "relative"
    _rejected(good_card, "card.links[0].type")


def test_checker_rejects_invalid_fhir_resource(good_card):
    del good_card["suggestions"][0]["actions"][0]["resource"]["subject"]
    _rejected(good_card, "card.suggestions[0].actions[0].resource: not a valid FHIR R4 ServiceRequest")


def test_checker_rejects_unknown_resource_type(good_card):
    good_card["suggestions"][0]["actions"][0]["resource"]["resourceType"] = "Prescription"
    _rejected(good_card, "is not a FHIR R4 resource type")


def test_checker_rejects_action_problems(good_card):
    card = copy.deepcopy(good_card)
    del card["suggestions"][0]["actions"][0]["resource"]
    _rejected(card, "card.suggestions[0].actions[0].resource: required for a create action")
    card = copy.deepcopy(good_card)
    card["suggestions"][0]["actions"][0]["type"] = "patch"
    _rejected(card, "card.suggestions[0].actions[0].type")
    card = copy.deepcopy(good_card)
    del card["suggestions"][0]["actions"][0]["description"]
    _rejected(card, "card.suggestions[0].actions[0].description: required field missing")
    card = copy.deepcopy(good_card)
    del card["suggestions"][0]["uuid"]
    _rejected(card, "card.suggestions[0].uuid: required field missing")


def test_checker_rejects_card_field_problems(good_card):
    for field, fragment in [
        ("uuid", "card.uuid: required field missing"),
        ("summary", "card.summary: required field missing"),
        ("detail", "card.detail: required field missing"),
        ("source", "card.source: required object"),
        ("extension", "card.extension: required object"),
    ]:
        card = copy.deepcopy(good_card)
        del card[field]
        _rejected(card, fragment)
    card = copy.deepcopy(good_card)
    card["indicator"] = "hint"
    _rejected(card, "card.indicator: must be one of info|warning|critical")
    card = copy.deepcopy(good_card)
    card["priority"] = 1
    _rejected(card, "card.priority: not a CDS Hooks card field")
    card = copy.deepcopy(good_card)
    del card["source"]["label"]
    _rejected(card, "card.source.label: required field missing")


def test_checker_rejects_missing_disclaimer(good_card):
    good_card["detail"] = good_card["detail"].replace("not medical advice", "advice")
    _rejected(good_card, "disclaimer words 'not medical advice' missing")


def test_checker_rejects_override_reason_without_display(good_card):
    del good_card["overrideReasons"][1]["display"]
    _rejected(good_card, "card.overrideReasons[1].display: required field missing")


def test_checker_rejects_bad_extension(good_card):
    path = f"card.extension.{EXTENSION_KEY}"
    card = copy.deepcopy(good_card)
    rec(card)["decision"] = "progress"
    _rejected(card, f"{path}.decision: must be one of")
    card = copy.deepcopy(good_card)
    del rec(card)["ruleset"]["sha256"]
    _rejected(card, f"{path}.ruleset.sha256")
    card = copy.deepcopy(good_card)
    del rec(card)["ruleset"]["version"]
    _rejected(card, f"{path}.ruleset.version: required field missing")
    card = copy.deepcopy(good_card)
    rec(card)["decision"] = "new-onset"
    _rejected(card, f"{path}.recommendedExercise: must be absent for decision 'new-onset'")
    card = copy.deepcopy(good_card)
    del rec(card)["facts"]["skippedInvalid"]
    _rejected(card, f"{path}.facts.skippedInvalid")
    card = copy.deepcopy(good_card)
    rec(card)["facts"]["sessionDate"] = "20/11/2026"
    _rejected(card, f"{path}.facts.sessionDate: must be an ISO date")
    card = copy.deepcopy(good_card)
    rec(card)["facts"]["reps"] = [28.0, 27]
    _rejected(card, f"{path}.facts.reps: integral values")
    card = copy.deepcopy(good_card)
    rec(card)["facts"]["maxPain"] = 11
    _rejected(card, f"{path}.facts.maxPain")
    card = copy.deepcopy(good_card)
    del card["extension"][EXTENSION_KEY]
    _rejected(card, f"card.extension.{EXTENSION_KEY}: required field missing")


def test_checker_message_lists_every_problem(good_card):
    good_card["summary"] = "x" * 200
    good_card["indicator"] = "loud"
    with pytest.raises(AssertionError) as info:
        assert_conformant_card(good_card)
    text = str(info.value)
    assert "2 problem(s)" in text
    assert "card.summary: is 200 characters" in text and "card.indicator" in text


# ------------------------------------------------------------------------------------------------
# Texts from the rule files, derived placeholders, note decisions, the decided rung
# ------------------------------------------------------------------------------------------------


def test_texts_come_from_the_rule_files(rs):
    def change(d):
        t = d["texts"]
        t["facts"]["heading"] = "Daten"
        t["facts"]["exercise"] = "Übung"
        t["not_recorded"] = "unbekannt"
        t["dose"] = "{rounds} Runden"
        t["suggestion_label"] = "Verordnen: {recommended_name}"
        t["action_description"] = "Vorschlag {recommended_name} ({dose})"
        t["order_note"] = "Regel {rule_id}"
        t["provenance"] = "Regel {rule_id} / {ruleset_name}"

    other = with_changes(rs, change)
    facts = make_facts("bird-dog", (20, 22), (1,), onset=None)
    [card] = cards_for(other, facts, "continue")
    rounds = render_number(rs.document.parameters["rounds"])
    assert "**Daten**" in card["detail"] and "| Übung | Bird-dog |" in card["detail"]
    assert "| unbekannt |" in card["detail"]  # the onset date
    assert f"Regel continue / {rs.identity.name}" in card["detail"]
    assert "Facts used" not in card["detail"] and "Rule: `" not in card["detail"]
    [suggestion] = card["suggestions"]
    assert suggestion["label"] == "Verordnen: Bird-dog"
    [action] = suggestion["actions"]
    assert action["description"] == f"Vorschlag Bird-dog ({rounds} Runden)"
    assert action["resource"]["orderDetail"] == [{"text": f"{rounds} Runden"}]
    assert action["resource"]["note"][-1] == {"text": "Regel continue"}


def test_reps_target_renders_as_the_middle_of_the_range(rs):
    def change(d):
        for r in d["rules"]:
            if r["id"] == "continue":
                r["card"]["detail"] = "aim for {reps_target} ({reps_low}-{reps_high})"
        d["parameters"]["reps_low"], d["parameters"]["reps_high"] = 15, 24

    other = with_changes(rs, change)
    facts = make_facts("bird-dog", (20, 22), (1,))
    [card] = cards_for(other, facts, "continue")
    assert card["detail"].startswith("aim for 19.5 (15-24)")
    assert max_rendered_length("{reps_target}", other) == len("19.5")


def _load_with_note_decisions(tmp_path: Path, decisions: str) -> RuleSet:
    from cds.ruleset.loader import load_ruleset

    folder = tmp_path / decisions.strip("[]").replace(", ", "_")
    folder.mkdir()
    for f in RULES_DIR.glob("*.yaml"):
        (folder / f.name).write_text(f.read_text())
    progression = folder / "progression.yaml"
    text = progression.read_text()
    marker = "    when: session_recorded and rounds_recorded < rounds\n"
    assert marker in text
    progression.write_text(text.replace(marker, marker + f"    decisions: {decisions}\n"))
    return load_ruleset(folder)


def test_note_decisions_limit_where_a_note_is_added(tmp_path):
    from cds.engine import RuleEngine

    facts = make_facts("bird-dog", (20,), (1,))  # one round of two: continue, an incomplete session
    for decisions, shown in (("[continue]", True), ("[step-up, step-back]", False)):
        ruleset = _load_with_note_decisions(tmp_path, decisions)
        ev = RuleEngine(ruleset).evaluate(assess(facts, ruleset.ladder_codes, EVAL_DATE), EVAL_DATE)
        [fired] = ev.fired
        assert fired.decision == "continue"
        assert fired.notes == (("incomplete-session",) if shown else ()), decisions
        [pair] = build_cards(ev, facts, ruleset, patient_id=PATIENT)
        assert ("notes" in pair.card.extension[EXTENSION_KEY]) is shown


@pytest.mark.parametrize("rule_id", sorted(SCENARIOS))
def test_the_engine_decides_the_rung_and_the_card_shows_it(rs, rule_id):
    from cds.engine import RuleEngine

    kwargs, recommended = SCENARIOS[rule_id]
    facts = make_facts(**kwargs)
    ev = RuleEngine(rs).evaluate(assess(facts, rs.ladder_codes, EVAL_DATE), EVAL_DATE)
    assert rule_id in [f.rule_id for f in ev.fired]
    pairs = build_cards(ev, facts, rs, patient_id=PATIENT)
    assert [p.fired for p in pairs] == list(ev.fired)
    for pair in pairs:
        assert pair.fired.recommended == pair.card.extension[EXTENSION_KEY].get("recommendedExercise")
        if pair.fired.rule_id == rule_id:
            assert pair.fired.recommended == recommended
