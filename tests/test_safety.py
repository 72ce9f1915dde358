"""Red flags, risk factors and the silent outside-programme rule: the mechanisms, on the fixture rule
set ``tests/fixtures/rules_safety/`` (the frozen ``tests/fixtures/rules/`` plus ``safety.yaml`` and
red-flag/risk categories in ``codes.yaml``). What the shipped rules answer is tested by rules/tests.

Covered: ``match: prefix`` (a true ICD-10-CM category prefix), the classification of Conditions
(red flag, risk factor, LBP, skipped) with the status filters, the facts and placeholders, silent
rules, ``rules``/``notes`` split across files with exact error positions, and the ``conditions``
prefetch template.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import RULES_DIR, edit_rule_file as edit, rule_problems as problems

from cds import service
from cds.assessment import assess
from cds.clock import FixedClock
from cds.extract import CodeList, extract
from cds.live_rules import LiveRuleSet
from cds.ruleset.loader import load_ruleset
from cds.ruleset.schema import ConditionCoding, code_matches
from cds.ruletests import RuleCase, run_cases
from cds.templates import LIST_TEXT_CHARS, max_rendered_length

SAFETY_DIR = RULES_DIR.parent / "rules_safety"
PID = "p1"
TODAY = dt.date(2026, 11, 20)
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
SCT = "http://snomed.info/sct"
EXT = "org.lbp-cds.recommendation"


@pytest.fixture(scope="module")
def active():
    return LiveRuleSet(SAFETY_DIR).current()


# --- code matching -----------------------------------------------------------------------------


@pytest.mark.parametrize(("pattern", "code", "expected"), [
    ("S32.0", "S32.0", True),
    ("S32.0", "S32.01", True),
    ("S32.0", "S32.010A", True),
    ("S32.0", "S32.1", False),
    ("S32.0", "S32", False),
    ("S32.0", "S32.", False),
    ("M45", "M45", True),
    ("M45", "M45.9", True),
    ("M45", "M450", False),  # a three-character category is followed by its '.', never another digit
    ("M45", "M4", False),
    ("M80.08", "M80.08XA", True),
    ("M80.08", "M80.0", False),
])
def test_prefix_is_a_true_category_prefix(pattern: str, code: str, expected: bool) -> None:
    assert code_matches(pattern, "prefix", code) is expected


def test_exact_match_is_the_code_alone() -> None:
    assert code_matches("S32.0", "exact", "S32.0")
    assert not code_matches("S32.0", "exact", "S32.01")
    coding = ConditionCoding(system=SCT, code="192970008")
    assert coding.match == "exact"  # the default
    assert coding.matches(SCT, "192970008") and not coding.matches(ICD, "192970008")
    assert not coding.matches(SCT, None)


def test_code_list_matches_exact_codes_and_prefixes_of_their_own_system() -> None:
    codes = CodeList([ConditionCoding(system=ICD, code="M46.2", match="prefix"), ConditionCoding(system=SCT, code="1")])
    assert codes.any([(ICD, "M46.26")]) and codes.any([("x", "y"), (SCT, "1")])
    assert not codes.any([(SCT, "M46.26")]) and not codes.any([(SCT, "12")]) and not codes.any([])


# --- extraction ----------------------------------------------------------------------------------


def condition(cid: str, system: str, code: str, *, display: str | None = None, text: str | None = None,
              clinical: str | None = "active", verification: str | None = None, subject: str = PID,
              extra_coding: tuple[str, str] | None = None) -> dict[str, Any]:
    coding: list[dict[str, Any]] = [{"system": system, "code": code, **({"display": display} if display else {})}]
    if extra_coding:
        coding.append({"system": extra_coding[0], "code": extra_coding[1]})
    res: dict[str, Any] = {"resourceType": "Condition", "id": cid, "code": {"coding": coding},
                           "subject": {"reference": f"Patient/{subject}"}}
    if text:
        res["code"]["text"] = text
    if clinical:
        res["clinicalStatus"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                             "code": clinical}]}
    if verification:
        res["verificationStatus"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                                                 "code": verification}]}
    return res


LBP = {**condition("lbp", SCT, "279039007"), "onsetDateTime": "2026-01-10"}


def round_obs(rid: str, reps: int) -> dict[str, Any]:
    obs = "https://lbp-cds.org/fhir/CodeSystem/observation"
    return {"resourceType": "Observation", "id": rid, "status": "final",
            "code": {"coding": [{"system": obs, "code": "reps-to-technical-failure"}]},
            "subject": {"reference": f"Patient/{PID}"}, "effectiveDateTime": "2026-11-18", "valueInteger": reps,
            "component": [{"code": {"coding": [{"system": obs, "code": "exercise"}]},
                           "valueCodeableConcept": {"coding": [
                               {"system": "https://lbp-cds.org/fhir/CodeSystem/exercise", "code": "bird-dog"}]}}]}


PAIN = {"resourceType": "Observation", "id": "pain", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "72514-3"}]},
        "subject": {"reference": f"Patient/{PID}"}, "effectiveDateTime": "2026-11-18", "valueInteger": 1}


def prefetch(*conditions: dict[str, Any], rounds: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    """The conditions, and the rounds with a pain score of 1 on their date (when there are rounds)."""
    def bundle(items):
        return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in items]}
    return {"patient": {"resourceType": "Patient", "id": PID}, "conditions": bundle(conditions),
            "painScores": bundle([PAIN] if rounds else []), "exerciseRounds": bundle(rounds)}


def facts_of(*conditions: dict[str, Any], rounds: tuple[dict[str, Any], ...] = ()):
    doc = load_ruleset(SAFETY_DIR).document
    return extract(prefetch(*conditions, rounds=rounds), patient_id=PID, codes=doc.codes, ladder=doc.ladder)


def test_conditions_are_classified_red_flag_risk_lbp_or_skipped(caplog) -> None:
    caplog.set_level(logging.DEBUG)
    facts = facts_of(
        LBP,
        condition("fx", ICD, "S32.010A", display="Wedge compression fracture of L1"),
        condition("sacrum", ICD, "S32.1", text="Fracture of sacrum"),  # not under S32.0
        condition("ster", ICD, "Z79.52", text="On prednisolone"),
        condition("refuted", SCT, "192970008", verification="refuted"),
        condition("eie", ICD, "M46.25", clinical=None, verification="entered-in-error"),
        condition("resolved", ICD, "M45.6", clinical="resolved"),
        condition("other", ICD, "M46.25", subject="p2"),
    )
    assert [c.resource_id for c in facts.conditions] == ["lbp"]
    assert [(f.resource_id, f.category, f.category_display, f.text) for f in facts.red_flags] == [
        ("fx", "fracture", "Spinal fracture", "Wedge compression fracture of L1")]
    assert [(f.resource_id, f.category, f.text) for f in facts.risk_factors] == [("ster", "steroids", "On prednisolone")]
    reasons = {s.resource_id: s.reason for s in facts.skipped}
    assert reasons == {
        "sacrum": "code is not a counted condition",
        "refuted": "verificationStatus is excluded",
        "eie": "clinicalStatus is not one of the counted clinical statuses",
        "resolved": "clinicalStatus is not one of the counted clinical statuses",
        "other": "subject is not the context patient",
    }
    logged = caplog.text
    assert "Wedge" not in logged and "prednisolone" not in logged and "S32" not in logged


def test_condition_text_falls_back_to_the_coding_display_then_the_code_lists_display_then_the_code() -> None:
    facts = facts_of(
        condition("a", ICD, "M46.26", text="  Vertebral\nosteomyelitis  ", display="ignored"),
        condition("b", ICD, "M46.27", display="Osteomyelitis, lumbosacral"),
        condition("c", ICD, "M46.28"),  # no words in the record: the code list's display of M46.2
        condition("d", ICD, "M45.9"),  # nor in the code list: the code itself, never the category again
    )
    assert [f.text for f in facts.red_flags] == [
        "Vertebral osteomyelitis", "Osteomyelitis, lumbosacral", "Osteomyelitis of vertebra", "M45.9"]
    assert "Axial SpA" in {f.category_display for f in facts.red_flags}


def test_a_red_flag_code_beside_an_lbp_code_on_the_same_condition_makes_it_both() -> None:
    # a flagged code does not hide the low back pain code beside it: its onset still counts (a new onset
    # coded beside a risk factor must not be missed)
    facts = facts_of(condition("both", SCT, "279039007", extra_coding=(ICD, "S32.01")))
    assert [c.resource_id for c in facts.conditions] == ["both"] and [f.resource_id for f in facts.red_flags] == ["both"]


def test_an_invalid_red_flag_condition_is_skipped_as_invalid() -> None:
    bad = condition("bad", ICD, "S32.01")
    bad["onsetDateTime"] = "2026-02-30"
    facts = facts_of(LBP, bad)
    assert facts.red_flags == () and facts.skipped_invalid == 1


def test_assessment_facts() -> None:
    ladder = load_ruleset(SAFETY_DIR).ladder_codes
    a = assess(facts_of(LBP, condition("s", ICD, "Z79.52")), ladder, TODAY)
    assert (a.condition_recorded, a.red_flag, a.red_flag_risk) == (True, False, True)
    a = assess(facts_of(condition("fx", ICD, "S32.0")), ladder, TODAY)
    assert (a.condition_recorded, a.red_flag, a.red_flag_risk) == (False, True, False)
    assert {"condition_recorded", "red_flag", "red_flag_risk"} <= set(a.engine_fact())


def test_the_frozen_rule_set_without_safety_keys_still_loads() -> None:
    doc = load_ruleset(RULES_DIR).document
    assert doc.codes.red_flags == [] and doc.codes.red_flag_risks == [] and doc.texts.list_separator == ", "
    assert all(c.match == "exact" for c in doc.codes.lbp_condition)


# --- evaluation and cards ------------------------------------------------------------------------


def evaluate(active, *conditions: dict[str, Any], rounds: tuple[dict[str, Any], ...] = ()) -> service.Outcome:
    return service.evaluate(active, prefetch(*conditions, rounds=rounds), patient_id=PID, clock=FixedClock(TODAY))


ROUNDS = (round_obs("r1", 28), round_obs("r2", 27))


def test_outside_the_programme_the_silent_rule_fires_and_answers_no_card(active) -> None:
    outcome = evaluate(active, condition("htn", SCT, "38341003"))
    assert [f.rule_id for f in outcome.evaluation.fired] == ["outside-programme"]
    assert outcome.cards == [] and outcome.rule_cards == []
    # an LBP condition alone, or rounds alone, are in the programme
    assert [f.rule_id for f in evaluate(active, LBP).evaluation.fired] == ["start"]
    assert [f.rule_id for f in evaluate(active, rounds=ROUNDS).evaluation.fired] == ["onset-unknown", "step-up"]


def test_red_flag_card_names_categories_and_conditions_with_the_rule_file_separator(active) -> None:
    outcome = evaluate(active, LBP, condition("a", ICD, "M46.26", text="Osteomyelitis"),
                       condition("b", ICD, "S32.01", text="L1 fracture"),
                       condition("c", ICD, "S32.02", text="L2 fracture"), rounds=ROUNDS)
    [card] = outcome.cards
    assert card.indicator == "critical" and not card.suggestions
    assert card.summary == "Red flag (Spinal infection / Spinal fracture): review first"
    assert card.detail.startswith("Found Osteomyelitis / L1 fracture / L2 fracture (Spinal infection / Spinal fracture).")
    rec = card.extension[EXT]
    assert rec["decision"] == "red-flag" and rec["facts"]["redFlags"] == ["infection", "fracture"]
    assert "recommendedExercise" not in rec


def test_risk_card_comes_before_the_progression_card_with_its_note(active) -> None:
    outcome = evaluate(active, LBP, condition("s", ICD, "Z79.52"), rounds=ROUNDS)
    assert [(f.rule_id, f.notes) for f in outcome.evaluation.fired] == [
        ("red-flag-risk", ("risk-note",)), ("step-up", ())]
    risk, step_up = outcome.cards
    assert risk.summary == "Risk factor (Steroids)" and risk.indicator == "warning" and not risk.suggestions
    assert "Sessions are recorded." in risk.detail  # a note written in another file than the rule's stage list
    assert step_up.suggestions and step_up.extension[EXT]["facts"]["redFlagRisks"] == ["steroids"]


def test_long_condition_texts_are_cut_and_the_summary_bound_holds(active) -> None:
    outcome = evaluate(active, LBP, condition("a", ICD, "Z79.52", text="x" * 200), rounds=ROUNDS)
    detail = outcome.cards[0].detail
    assert "x" * (LIST_TEXT_CHARS - 1) + "…" in detail and "x" * LIST_TEXT_CHARS not in detail
    ruleset = active.ruleset
    displays = " / ".join(c.display for c in ruleset.document.codes.red_flags)
    assert max_rendered_length("{red_flag_category}", ruleset) == len(displays)
    assert max_rendered_length("{red_flag_condition}", ruleset) == LIST_TEXT_CHARS


def test_facts_table_shows_the_exercise_name_without_its_code(active) -> None:
    detail = evaluate(active, LBP, rounds=ROUNDS).cards[0].detail
    assert "| Bird-dog |" in detail and "`bird-dog`" not in detail


def test_rule_test_coverage_counts_a_silent_rule(active, tmp_path: Path) -> None:
    case = RuleCase(file="t.yaml", line=1, column=1, name="outside", as_of=TODAY, expect=(), patient=PID,
                    resources=(condition("htn", SCT, "38341003"),))
    report = run_cases([case], active)
    assert not report.failed and "outside-programme" not in report.uncovered_rules


def test_prefetch_asks_for_every_active_condition(active) -> None:
    templates = service.prefetch_templates(active.ruleset)
    assert "lbpConditions" not in templates
    assert templates["conditions"] == "Condition?patient={{context.patientId}}&clinical-status=active,recurrence,relapse"


# --- rule files: silent rules and rules split across files ----------------------------------------


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    dest = tmp_path / "rules"
    shutil.copytree(SAFETY_DIR, dest)
    return dest


def test_the_safety_fixture_is_valid(rules) -> None:
    assert problems(rules) == []
    doc = load_ruleset(rules).document
    ids = [r.id for r in doc.rules]
    assert ids[-3:] == ["outside-programme", "red-flag", "red-flag-risk"]  # progression.yaml, then safety.yaml
    assert [n.id for n in doc.notes][-1] == "risk-note"


@pytest.mark.parametrize(("file", "old", "new", "expected"), [
    ("safety.yaml", "when: red_flag\n", "when: red_flagg\n",
     "safety.yaml:15:11: rule 'red-flag': unknown fact 'red_flagg' (did you mean 'red_flag'?)"),
    ("safety.yaml", "    stage: risk\n    when: red_flag_risk and", "    stage: riskk\n    when: red_flag_risk and",
     "safety.yaml:35:12: note 'risk-note': unknown stage 'riskk' (stages: scope, safety, risk, onset, progression)"),
    ("safety.yaml", "  - id: red-flag-risk\n", "  - id: step-up\n",
     "safety.yaml:23:9: duplicate rule id 'step-up' (first defined at progression.yaml line 159)"),
    ("safety.yaml", "    silent: true\n", "    silent: true\n    card: {summary: s, detail: d}\n",
     "safety.yaml:11:5: rule 'outside-programme': a silent rule answers no card, so it has no 'card': "
     "remove 'card' or 'silent: true'"),
    ("safety.yaml", "    silent: true\n", "    silent: true\n    recommend: {rung: first}\n",
     "safety.yaml:11:5: rule 'outside-programme': a silent rule answers no card, so it has no 'recommend': "
     "remove 'recommend' or 'silent: true'"),
    ("safety.yaml", "    silent: true\n", "",
     "safety.yaml:3:5: rule 'outside-programme': required key 'card' is missing (write the card, or "
     "'silent: true' for a rule that answers no card)"),
    ("safety.yaml", "summary: \"Red flag ({red_flag_category}): review first\"",
     "summary: \"Red flag ({red_flag_categry}): review first\"",
     "safety.yaml:20:27: unknown fact '{red_flag_categry}' in card text (did you mean 'red_flag_category'?)"),
    ("codes.yaml", 'code: "S32.0", match: prefix', 'code: "S32.0", match: prefixes',
     "codes.yaml:15:79: codes.red_flags.0.codes.0.match: expected 'exact' or 'prefix', found 'prefixes'"),
    ("codes.yaml", "  pain_score: {", "  pain_score: {match: prefix, ",
     "codes.yaml:33:16: unknown key 'match' in codes.pain_score (allowed: system, code, display)"),
    ("codes.yaml", "    - id: infection\n", "    - id: Infection\n",
     "codes.yaml:17:11: codes.red_flags.1.id: expected lower-case letters, digits and '-', found 'Infection'"),
    ("codes.yaml", "    - id: steroids\n", "    - id: axial\n",
     "codes.yaml:26:11: duplicate red-flag or risk-factor category id 'axial' (first defined at line 21)"),
    ("codes.yaml", '      display: Steroids\n      codes:\n        - {system: "http://hl7.org/fhir/sid/icd-10-cm", '
     'code: "Z79.52", match: prefix}\n', "      display: Steroids\n",
     "codes.yaml:26:7: codes.red_flag_risks.0: required key 'codes' is missing"),
])
def test_rule_file_mistakes_have_exact_positions(rules, file, old, new, expected) -> None:
    edit(rules, file, old, new)
    assert problems(rules) == [expected]


def test_a_flagged_or_lbp_condition_that_is_not_valid_fhir_is_a_listed_skip(caplog) -> None:
    caplog.set_level(logging.DEBUG)
    bad_fx = {**condition("fx", ICD, "S32.010A", display="Wedge compression fracture of L1"), "onsetDateTime": "2026-02-30"}
    bad_lbp = {**condition("lbp2", SCT, "279039007"), "onsetDateTime": "2026-13"}
    facts = facts_of(LBP, bad_fx, bad_lbp)
    assert facts.red_flags == () and [c.resource_id for c in facts.conditions] == ["lbp"]
    skipped = {s.resource_id: s for s in facts.skipped}
    fx, lbp2 = skipped["fx"], skipped["lbp2"]
    assert (fx.kind, fx.invalid, fx.condition, fx.red_flag, fx.date_text) == (
        "condition", True, "Spinal fracture", True, "2026-02-30")
    assert (lbp2.kind, lbp2.condition, lbp2.red_flag) == ("condition", None, False)
    a = assess(facts, ["hip-abduction", "bird-dog"], dt.date(2026, 11, 20))
    assert (a.skipped_conditions, a.skipped_red_flags) == (2, 1)
    assert "S32" not in caplog.text and "2026-02-30" not in caplog.text  # codes and dates stay out of the logs


def test_a_condition_coded_both_low_back_pain_and_a_red_flag_counts_as_both_and_is_validated_once() -> None:
    both = {**condition("both", SCT, "279039007"), "onsetDateTime": "2026-11-10"}
    both["code"]["coding"].append({"system": ICD, "code": "M46.26"})
    facts = facts_of(both)
    assert [c.resource_id for c in facts.conditions] == ["both"] and facts.conditions[0].onset == dt.date(2026, 11, 10)
    assert [f.resource_id for f in facts.red_flags] == ["both"]
    broken = {**both, "onsetDateTime": "2026-02-30"}
    facts = facts_of(broken)
    assert facts.conditions == () and facts.red_flags == ()
    assert [(s.resource_id, s.kind, s.red_flag) for s in facts.skipped] == [("both", "condition", True)]
    assert facts.skipped_invalid == 1


def test_a_list_too_long_for_its_placeholder_is_cut_after_a_whole_item_or_word() -> None:
    from cds.templates import join_list

    names = ["Vertebral osteomyelitis of the lumbar spine", "Osteomyelitis of vertebra", "Fracture of lumbar vertebra"]
    cut = join_list(names, "; ", LIST_TEXT_CHARS)
    assert cut == "Vertebral osteomyelitis of the lumbar spine; Osteomyelitis of vertebra…"
    words = join_list(["a long condition name with many words that goes past the limit of eighty characters"], "; ", 60)
    assert words == "a long condition name with many words that goes past the…" and len(words) <= 60
    assert join_list(["x" * 100], "; ", 10) == "x" * 9 + "…"
    assert join_list(["a", "b", "a"], "; ", 10) == "a; b"
