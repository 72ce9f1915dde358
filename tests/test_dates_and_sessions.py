"""Mechanics of imprecise dates, unusable data and sessions as prescribed (issue 10, points 4-6).

Run on the fixture rule set ``tests/fixtures/rules-dates/`` (the frozen fixture plus ``texts.skipped``,
``stale_session_days`` and three notes whose texts show the new placeholders): the assessment facts
(``cds.assessment.assess``), the engine recording a note once, the placeholders and the skipped-data
list (``cds.cards``), the ``suggestion: not-recommended`` note key, and the rule checker on
``texts.skipped``. What the shipped rules decide is tested by ``rules/tests/dates-and-sessions.yaml``.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
from conftest import ROOT

from cds.assessment import FACT_FIELDS, Assessment, assess
from cds.cards import build_cards, template_values
from cds.engine import RuleEngine
from cds.facts import ExerciseRound, LbpCondition, PainScore, PatientFacts, Session, SkippedResource
from cds.ruleset.loader import check_ruleset, load_ruleset
from cds.ruleset.model import RuleSet
from cds.templates import PLACEHOLDERS

FIXTURE = ROOT / "tests" / "fixtures" / "rules-dates"
TODAY = dt.date(2026, 11, 20)
DAY = dt.date(2026, 11, 18)
LADDER = ["hip-abduction", "bird-dog", "single-leg-reverse-hyper", "reverse-hyper"]


@pytest.fixture(scope="module")
def rs() -> RuleSet:
    return load_ruleset(FIXTURE)


@pytest.fixture(scope="module")
def engine(rs: RuleSet) -> RuleEngine:
    return RuleEngine(rs)


def facts_with(
    reps: tuple[float, ...] = (20, 18),
    *,
    day: dt.date = DAY,
    onset: LbpCondition | None = None,
    skipped: tuple[SkippedResource, ...] = (),
    pain: float = 1,
) -> PatientFacts:
    rounds = tuple(
        ExerciseRound(resource_id=f"r{i}", exercise="bird-dog", reps=r, date=day, round_number=i)
        for i, r in enumerate(reps, start=1)
    )
    pains = (PainScore(resource_id="p", score=pain, date=day),)
    session = Session(exercise="bird-dog", date=day, rounds=rounds, pain_scores=pains) if rounds else None
    if onset is None:
        onset = LbpCondition(resource_id="c", onset=dt.date(2026, 1, 10))
    return PatientFacts(
        patient_id="p1", conditions=(onset,), pain_scores=pains, rounds=rounds, latest_session=session,
        skipped=skipped,
    )


def month(text: str, first: dt.date, last: dt.date) -> LbpCondition:
    return LbpCondition(resource_id="c", onset=first, onset_latest=last, onset_precision="month", onset_text=text)


def run(engine: RuleEngine, facts: PatientFacts, rs: RuleSet, today: dt.date = TODAY):
    ev = engine.evaluate(assess(facts, LADDER, today, rs.document.parameters), today)
    return ev, build_cards(ev, facts, rs, patient_id="p1")


# --- assessment facts --------------------------------------------------------------------------------


def test_every_new_fact_is_listed_for_the_checker_and_docs() -> None:
    assert set(Assessment.model_fields) == set(FACT_FIELDS)
    for name in ("onset_recorded", "onset_in_future", "onset_precision_month", "onset_latest_days_ago",
                 "rounds_used", "extra_rounds", "session_days_ago", "skipped_in_session", "skipped_pain_max"):
        assert name in FACT_FIELDS


def test_onset_facts_for_a_month_a_year_a_day_and_the_future() -> None:
    a = assess(facts_with(onset=month("2026-10", dt.date(2026, 10, 1), dt.date(2026, 10, 31))), LADDER, TODAY)
    assert (a.onset_recorded, a.onset_known, a.onset_in_future) == (True, True, False)
    assert (a.onset_precision_day, a.onset_precision_month, a.onset_precision_year) == (False, True, False)
    assert (a.onset_days_ago, a.onset_latest_days_ago) == (50, 20)

    year = LbpCondition(resource_id="c", onset=dt.date(2026, 1, 1), onset_latest=dt.date(2026, 12, 31),
                        onset_precision="year", onset_text="2026")
    a = assess(facts_with(onset=year), LADDER, TODAY)
    assert a.onset_precision_year and a.onset_known and a.onset_latest_days_ago == -41

    a = assess(facts_with(onset=LbpCondition(resource_id="c", onset=dt.date(2026, 12, 6))), LADDER, TODAY)
    assert (a.onset_recorded, a.onset_known, a.onset_in_future, a.onset_days_ago) == (True, False, True, -16)
    assert a.onset_precision_day

    a = assess(facts_with(onset=LbpCondition(resource_id="c")), LADDER, TODAY)  # no onset written
    assert (a.onset_recorded, a.onset_known, a.onset_days_ago) == (False, False, None)


def test_only_the_first_rounds_decide_and_all_of_them_without_the_parameter() -> None:
    facts = facts_with((28, 27, 14))
    a = assess(facts, LADDER, TODAY, {"rounds": 2})
    assert (a.rounds_recorded, a.rounds_used, a.extra_rounds, a.min_reps, a.max_reps) == (3, 2, 1, 27, 28)
    a = assess(facts, LADDER, TODAY)  # a rule set without `rounds`: every round decides
    assert (a.rounds_used, a.extra_rounds, a.min_reps) == (3, 0, 14)
    a = assess(facts_with((28,)), LADDER, TODAY, {"rounds": 2})
    assert (a.rounds_recorded, a.rounds_used, a.extra_rounds) == (1, 1, 0)
    assert assess(facts, LADDER, TODAY).session_days_ago == 2


def test_skipped_facts_count_what_could_have_mattered() -> None:
    skipped = (
        SkippedResource(resource_type="Observation", resource_id="a", reason="x", invalid=True, kind="pain",
                        value=9, in_session=False),
        SkippedResource(resource_type="Observation", resource_id="b", reason="x", invalid=True, kind="round",
                        value=30, in_session=True),
        SkippedResource(resource_type="Observation", resource_id="c", reason="status", kind="pain", value=10),
    )
    a = assess(facts_with(skipped=skipped), LADDER, TODAY)
    assert (a.skipped_in_session, a.skipped_pain_max) == (1, 9)  # a filtered-out (valid) resource is no data error
    a = assess(facts_with(), LADDER, TODAY)
    assert (a.skipped_in_session, a.skipped_pain_max) == (0, None)


# --- engine ---------------------------------------------------------------------------------------------


def test_a_note_whose_or_alternatives_both_hold_is_recorded_once(engine: RuleEngine, rs: RuleSet) -> None:
    skipped = (SkippedResource(resource_type="Observation", resource_id="a", reason="x", invalid=True, kind="pain",
                               value=9, in_session=True),)
    ev, _ = run(engine, facts_with(skipped=skipped), rs)
    [fired] = ev.fired
    assert fired.notes == ("skipped-data",)


# --- cards ------------------------------------------------------------------------------------------------


def test_extra_rounds_are_shown_not_used(engine: RuleEngine, rs: RuleSet) -> None:
    ev, [pair] = run(engine, facts_with((28, 27, 14)), rs)
    assert pair.fired.rule_id == "step-up" and pair.fired.notes == ("extra-rounds",)
    assert "EXTRA 1 (reps 14); USED 2 (reps 28, 27)" in pair.card.detail
    values = template_values(ev, facts_with((28, 27, 14)), rs, pair.fired)
    assert (values["reps"], values["extra_reps"], values["rounds_used"]) == ("28, 27", "14", "2")
    assert "| 28, 27 |" in pair.card.detail  # the facts table shows the rounds used


def test_not_recommended_note_clears_is_recommended(engine: RuleEngine, rs: RuleSet) -> None:
    _, [pair] = run(engine, facts_with(), rs)
    [suggestion] = pair.card.suggestions
    assert suggestion.is_recommended is True and pair.fired.notes == ()

    straddling = facts_with(onset=month("2026-10", dt.date(2026, 10, 1), dt.date(2026, 10, 31)))
    _, [pair] = run(engine, straddling, rs)
    assert pair.fired.notes == ("onset-caveat",)
    assert "CAVEAT onset 2026-10" in pair.card.detail  # the onset as written
    [suggestion] = pair.card.suggestions
    assert suggestion.is_recommended is False


def test_skipped_list_says_what_when_and_why_in_the_rule_files_words(engine: RuleEngine, rs: RuleSet) -> None:
    skipped = (
        SkippedResource(resource_type="Observation", resource_id="p9", reason="failed FHIR R4 validation at x",
                        invalid=True, reason_key="invalid", kind="pain", date_text="2026-02-30T10:00:00Z", value=9),
        SkippedResource(resource_type="Observation", resource_id="r", reason="effective date is not...",
                        invalid=True, reason_key="partial_date", kind="round", date_text="2026-11", value=12,
                        in_session=True),
        SkippedResource(resource_type="Observation", resource_id="p1", reason="x", invalid=True,
                        reason_key="no_value", kind="pain", date_text="2025-01-01", value=1),  # old, low: not listed
        SkippedResource(resource_type="Observation", resource_id="u", reason="x", invalid=True,
                        reason_key="no_date", kind="round", in_session=True),
    )
    _, [pair] = run(engine, facts_with(skipped=skipped), rs)
    assert pair.fired.notes == ("skipped-data",)
    detail = pair.card.detail
    assert "SKIPPED 2, HIGHEST 9:" in detail
    assert "- PAIN 9 ON 2026-02-30T10:00:00Z BECAUSE R-INVALID" in detail
    assert "- ROUND 12 ON 2026-11 BECAUSE R-PARTIAL" in detail
    assert "- ROUND not recorded ON not recorded BECAUSE R-NO-DATE" in detail
    assert "2025-01-01" not in detail and "failed FHIR" not in detail  # technical reasons stay in the logs


def test_without_texts_skipped_the_list_renders_as_not_recorded(rs: RuleSet) -> None:
    data = rs.document.model_dump()
    data["texts"]["skipped"] = None
    other = RuleSet(document=type(rs.document).model_validate(data), sha256="e" * 64,
                    conditions=rs.conditions)
    skipped = (SkippedResource(resource_type="Observation", resource_id="r", reason="x", invalid=True,
                               reason_key="no_date", kind="round", in_session=True),)
    facts = facts_with(skipped=skipped)
    ev = RuleEngine(other).evaluate(assess(facts, LADDER, TODAY, other.document.parameters), TODAY)
    values = template_values(ev, facts, other, ev.fired[0])
    assert values["skipped_list"] == other.document.texts.not_recorded
    assert set(values) >= PLACEHOLDERS


def test_stale_session_days_come_from_the_session_date(engine: RuleEngine, rs: RuleSet) -> None:
    facts = facts_with(day=dt.date(2026, 10, 1))
    ev, [pair] = run(engine, facts, rs)
    assert template_values(ev, facts, rs, pair.fired)["session_days_ago"] == "50"
    assert ev.assessment.session_days_ago == 50


# --- the rule checker on the new keys -----------------------------------------------------------------------


def _copy(tmp_path: Path) -> Path:
    folder = tmp_path / "rules"
    shutil.copytree(FIXTURE, folder)
    return folder


def test_checker_positions_an_unknown_placeholder_in_texts_skipped(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    f = folder / "ruleset.yaml"
    f.write_text(f.read_text().replace('pain: "PAIN {value} ON {date}', 'pain: "PAIN {valeu} ON {date}'))
    problems = [str(p) for p in check_ruleset(folder)]
    line = next(i for i, t in enumerate(f.read_text().splitlines(), start=1) if "{valeu}" in t)
    assert len(problems) == 1
    assert problems[0].startswith(f"{f}:{line}:")
    assert "unknown placeholder '{valeu}'" in problems[0] and "{value}, {date}, {reason}" in problems[0]


def test_checker_names_a_misspelt_reason_key_and_a_bad_note_suggestion(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    f = folder / "ruleset.yaml"
    f.write_text(f.read_text().replace("      partial_date: R-PARTIAL", "      partial_dates: R-PARTIAL"))
    p = folder / "progression.yaml"
    p.write_text(p.read_text().replace("suggestion: not-recommended", "suggestion: maybe"))
    problems = "\n".join(str(x) for x in check_ruleset(folder))
    assert "unknown key 'partial_dates'" in problems and "did you mean 'partial_date'" in problems
    assert "note 'onset-caveat': suggestion: expected 'recommended' or 'not-recommended', found 'maybe'" in problems
    assert "Traceback" not in problems


def test_a_rule_set_without_the_new_keys_still_loads() -> None:
    old = load_ruleset(ROOT / "tests" / "fixtures" / "rules")  # no texts.skipped, no stale_session_days
    assert old.document.texts.skipped is None
    assert all(n.suggestion == "recommended" for n in old.document.notes)


def test_the_extension_gives_the_onset_period_start_and_its_precision(engine: RuleEngine, rs: RuleSet) -> None:
    """Machines read ``onsetDate`` as an ISO date; an onset written to the month says so beside it."""
    from cds.cards import EXTENSION_KEY

    _, pairs = run(engine, facts_with(onset=month("2026-06", dt.date(2026, 6, 1), dt.date(2026, 6, 30))), rs)
    facts = pairs[0].card.extension[EXTENSION_KEY]["facts"]
    assert (facts["onsetDate"], facts["onsetPrecision"]) == ("2026-06-01", "month")
    _, pairs = run(engine, facts_with(), rs)
    facts = pairs[0].card.extension[EXTENSION_KEY]["facts"]
    assert facts["onsetDate"] == "2026-01-10" and "onsetPrecision" not in facts


# --- Conditions that are not valid FHIR, and resources with no date (issue 10 point 5) -------------------


def _with_skipped_texts(rs: RuleSet, **texts: str | None) -> RuleSet:
    data = rs.document.model_dump()
    data["texts"]["skipped"].update(texts)
    return RuleSet(document=type(rs.document).model_validate(data), sha256="f" * 64, conditions=rs.conditions)


UNREADABLE = (
    SkippedResource(resource_type="Condition", resource_id="fx", reason="failed FHIR R4 validation at onsetDateTime",
                    invalid=True, reason_key="invalid", kind="condition", date_text="2026-02-30",
                    condition="Vertebral fracture", red_flag=True),
    SkippedResource(resource_type="Condition", resource_id="lbp2", reason="failed FHIR R4 validation at code",
                    invalid=True, reason_key="invalid", kind="condition"),
    SkippedResource(resource_type="Observation", resource_id="u", reason="no effective date", invalid=True,
                    reason_key="no_date", kind="pain", value=9),
)


def test_skipped_conditions_are_counted_as_facts() -> None:
    a = assess(facts_with(skipped=UNREADABLE), LADDER, TODAY)
    assert (a.skipped_conditions, a.skipped_red_flags) == (2, 1)
    assert (a.skipped_in_session, a.skipped_pain_max) == (0, 9)  # conditions are not session data
    a = assess(facts_with(), LADDER, TODAY)
    assert (a.skipped_conditions, a.skipped_red_flags) == (0, 0)


def test_unreadable_conditions_and_undated_resources_are_listed_in_their_own_words(rs: RuleSet) -> None:
    worded = _with_skipped_texts(rs, condition="COND {condition} ONSET {date} BECAUSE {reason}",
                                 lbp_condition="LBP", pain_undated="PAIN {value} UNDATED BECAUSE {reason}")
    facts = facts_with(skipped=UNREADABLE)
    ev = RuleEngine(worded).evaluate(assess(facts, LADDER, TODAY, worded.document.parameters), TODAY)
    listed = template_values(ev, facts, worded, ev.fired[0])["skipped_list"].splitlines()
    assert listed == ["- COND Vertebral fracture ONSET 2026-02-30 BECAUSE R-INVALID",
                      "- COND LBP ONSET not recorded BECAUSE R-INVALID",
                      "- PAIN 9 UNDATED BECAUSE R-NO-DATE"]
    # without `condition` the Conditions are counted, not listed; without `pain_undated`, `pain` is used
    plain = _with_skipped_texts(rs, condition=None, pain_undated=None)
    ev = RuleEngine(plain).evaluate(assess(facts, LADDER, TODAY, plain.document.parameters), TODAY)
    assert template_values(ev, facts, plain, ev.fired[0])["skipped_list"] == "- PAIN 9 ON not recorded BECAUSE R-NO-DATE"


def test_checker_positions_an_unknown_placeholder_in_the_condition_text(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    f = folder / "ruleset.yaml"
    text = f.read_text()
    anchor = '    pain: "PAIN {value} ON {date}'
    assert anchor in text
    f.write_text(text.replace(anchor, '    condition: "COND {value} ON {date}"\n' + anchor))
    problems = [str(p) for p in check_ruleset(folder)]
    line = next(i for i, t in enumerate(f.read_text().splitlines(), start=1) if "COND {value}" in t)
    assert len(problems) == 1 and problems[0].startswith(f"{f}:{line}:")
    assert "unknown placeholder '{value}'" in problems[0] and "{condition}, {date}, {reason}" in problems[0]


# --- pain recorded after the latest session ---------------------------------------------------------------


def _prefetch_with_later_pain(*, linked: bool) -> dict:
    obs = "https://lbp-cds.org/fhir/CodeSystem/observation"

    def rnd(rid: str, reps: int) -> dict:
        return {"resourceType": "Observation", "id": rid, "status": "final",
                "code": {"coding": [{"system": obs, "code": "reps-to-technical-failure"}]},
                "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2026-11-18", "valueInteger": reps,
                "component": [{"code": {"coding": [{"system": obs, "code": "exercise"}]},
                               "valueCodeableConcept": {"coding": [
                                   {"system": "https://lbp-cds.org/fhir/CodeSystem/exercise", "code": "bird-dog"}]}}]}

    def pain(pid: str, day: str, score: int, derived: tuple[str, ...] = ()) -> dict:
        res = {"resourceType": "Observation", "id": pid, "status": "final",
               "code": {"coding": [{"system": "http://loinc.org", "code": "72514-3"}]},
               "subject": {"reference": "Patient/p1"}, "effectiveDateTime": day, "valueInteger": score}
        if derived:
            res["derivedFrom"] = [{"reference": f"Observation/{d}"} for d in derived]
        return res

    def bundle(items: list) -> dict:
        return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in items]}

    later = pain("later", "2026-11-19", 9, ("r1",) if linked else ())
    return {"patient": {"resourceType": "Patient", "id": "p1"}, "conditions": bundle([]),
            "painScores": bundle([pain("same-day", "2026-11-18", 1), later, pain("older", "2026-11-01", 7)]),
            "exerciseRounds": bundle([rnd("r1", 20), rnd("r2", 18)])}


def test_pain_recorded_after_the_session_and_not_linked_to_it_is_its_own_fact(rs: RuleSet) -> None:
    from cds.extract import extract

    doc = rs.document
    facts = extract(_prefetch_with_later_pain(linked=False), patient_id="p1", codes=doc.codes, ladder=doc.ladder)
    assert [p.resource_id for p in facts.pains_after_session] == ["later"]  # not the older one, not the session's
    assert assess(facts, LADDER, TODAY).pain_after_session_max == 9
    linked = extract(_prefetch_with_later_pain(linked=True), patient_id="p1", codes=doc.codes, ladder=doc.ladder)
    assert linked.pains_after_session == ()  # linked to the session's rounds: it is the session's pain
    assert assess(linked, LADDER, TODAY).max_pain == 9 and assess(linked, LADDER, TODAY).pain_after_session_max is None
    assert assess(facts_with(), LADDER, TODAY).pain_after_session_max is None
