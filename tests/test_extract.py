"""cds.extract: FHIR prefetch JSON -> PatientFacts (SPEC section 2)."""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

import pytest
import yaml
from conftest import RULES_DIR

from cds import extract as extract_module
from cds.extract import PrefetchShapeError, extract
from cds.facts import PatientFacts
from cds.ruleset.schema import Codes, Ladder

_DOC = yaml.safe_load((RULES_DIR / "codes.yaml").read_text())
CODES = Codes.model_validate(_DOC["codes"])
LADDER = Ladder.model_validate(_DOC["ladder"])

PID = "pt-q7z3x"
OBS_SYSTEM = "https://lbp-cds.org/fhir/CodeSystem/observation"
EX_SYSTEM = "https://lbp-cds.org/fhir/CodeSystem/exercise"
LOINC = "http://loinc.org"
DAY = "2026-11-20"


# --- builders ------------------------------------------------------------------------------------


def round_obs(
    rid: str,
    date: str | None = DAY,
    exercise: str | None = "bird-dog",
    reps: Any = 20,
    round_no: int | None = None,
    *,
    status: str = "final",
    subject: str = f"Patient/{PID}",
    value: str = "quantity",
    period: bool = False,
    exercise_system: str = EX_SYSTEM,
) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Observation",
        "id": rid,
        "status": status,
        "code": {"coding": [{"system": OBS_SYSTEM, "code": "reps-to-technical-failure"}]},
        "subject": {"reference": subject},
    }
    if date is not None:
        if period:
            res["effectivePeriod"] = {"start": date}
        else:
            res["effectiveDateTime"] = date
    if reps is not None:
        if value == "quantity":
            res["valueQuantity"] = {"value": reps, "unit": "repetitions"}
        else:
            res["valueInteger"] = reps
    components = []
    if exercise is not None:
        components.append(
            {
                "code": {"coding": [{"system": OBS_SYSTEM, "code": "exercise"}]},
                "valueCodeableConcept": {"coding": [{"system": exercise_system, "code": exercise}]},
            }
        )
    if round_no is not None:
        components.append({"code": {"coding": [{"system": OBS_SYSTEM, "code": "round"}]}, "valueInteger": round_no})
    if components:
        res["component"] = components
    return res


def pain_obs(
    pid: str,
    date: str | None = DAY,
    score: Any = 1,
    *,
    value: str = "quantity",
    derived: tuple[str, ...] = (),
    status: str = "final",
    subject: str = f"Patient/{PID}",
) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Observation",
        "id": pid,
        "status": status,
        "code": {"coding": [{"system": LOINC, "code": "72514-3"}]},
        "subject": {"reference": subject},
    }
    if date is not None:
        res["effectiveDateTime"] = date
    if value == "quantity":
        res["valueQuantity"] = {"value": score, "unit": "{score}"}
    elif value == "integer":
        res["valueInteger"] = score
    elif value == "answer":
        res["valueCodeableConcept"] = {"coding": [{"system": LOINC, "code": score}]}
    if derived:
        res["derivedFrom"] = [{"reference": f"Observation/{r}"} for r in derived]
    return res


def condition(
    cid: str,
    onset: str | None = "2026-01-10",
    *,
    period: bool = False,
    clinical: str | None = "active",
    verification: str | None = None,
    code: tuple[str, str] = ("http://snomed.info/sct", "279039007"),
    subject: str = f"Patient/{PID}",
) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Condition",
        "id": cid,
        "code": {"coding": [{"system": code[0], "code": code[1]}]},
        "subject": {"reference": subject},
    }
    if clinical:
        res["clinicalStatus"] = {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": clinical}]
        }
    if verification:
        res["verificationStatus"] = {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": verification}]
        }
    if onset is not None:
        if period:
            res["onsetPeriod"] = {"start": onset}
        else:
            res["onsetDateTime"] = onset
    return res


def bundle(*resources: dict[str, Any], type_: str = "searchset") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": type_, "entry": [{"resource": r} for r in resources]}


def run(
    rounds: list[dict[str, Any]] | None = None,
    pains: list[dict[str, Any]] | None = None,
    conditions: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> PatientFacts:
    prefetch: dict[str, Any] = {
        "patient": {"resourceType": "Patient", "id": PID},
        "conditions": bundle(*conditions) if conditions is not None else None,
        "painScores": bundle(*pains) if pains is not None else None,
        "exerciseRounds": bundle(*rounds) if rounds is not None else None,
        **extra,
    }
    return extract(prefetch, patient_id=PID, codes=CODES, ladder=LADDER)


def skipped_ids(facts: PatientFacts) -> dict[str | None, str]:
    return {s.resource_id: s.reason for s in facts.skipped}


# --- basics ---------------------------------------------------------------------------------------


def test_no_data_gives_empty_facts() -> None:
    facts = run()
    assert facts.patient_id == PID
    assert facts.conditions == () and facts.rounds == () and facts.pain_scores == ()
    assert facts.latest_session is None and facts.skipped == ()


def test_spec_example_round_and_session() -> None:
    facts = run(
        rounds=[round_obs("r2", "2026-11-20T10:05:00-05:00", reps=21, round_no=2),
                round_obs("r1", "2026-11-20T10:00:00-05:00", reps=22, round_no=1)],
        pains=[pain_obs("p1", "2026-11-20T10:10:00-05:00", 2)],
    )
    s = facts.latest_session
    assert s is not None
    assert (s.exercise, s.date) == ("bird-dog", dt.date(2026, 11, 20))
    assert [r.resource_id for r in s.rounds] == ["r1", "r2"]
    assert s.reps == [22.0, 21.0]
    assert all(type(r) is float for r in s.reps)  # Decimal converted
    assert [p.resource_id for p in s.pain_scores] == ["p1"]
    assert type(s.max_pain) is float and s.max_pain == 2.0
    assert facts.skipped == ()


def test_single_resource_and_collection_bundle_accepted() -> None:
    prefetch = {
        "exerciseRounds": bundle(round_obs("r1"), type_="collection"),
        "painScores": pain_obs("p1", score=0),
        "conditions": condition("c1"),
    }
    facts = extract(prefetch, patient_id=PID, codes=CODES, ladder=LADDER)
    assert facts.latest_session is not None and facts.latest_session.max_pain == 0.0
    assert [c.resource_id for c in facts.conditions] == ["c1"]


# --- pain values ------------------------------------------------------------------------------------


def test_pain_value_quantity_and_integer() -> None:
    facts = run(rounds=[round_obs("r1")], pains=[pain_obs("pq", score=3.5), pain_obs("pi", score=4, value="integer")])
    assert {p.resource_id: p.score for p in facts.pain_scores} == {"pq": 3.5, "pi": 4.0}
    assert all(type(p.score) is float for p in facts.pain_scores)


@pytest.mark.parametrize(("answer", "score"), sorted(CODES.pain_answers.values.items()))
def test_every_loinc_answer_maps_to_its_score(answer: str, score: int) -> None:
    facts = run(rounds=[round_obs("r1")], pains=[pain_obs("pa", score=answer, value="answer")])
    assert [p.score for p in facts.pain_scores] == [float(score)]
    assert facts.latest_session is not None and facts.latest_session.max_pain == float(score)


def test_loinc_answer_mapping_matches_spec() -> None:
    assert CODES.pain_answers.values == {
        "LA6111-4": 0, "LA6112-2": 1, "LA6113-0": 2, "LA6114-8": 3, "LA6115-5": 4, "LA10137-0": 5,
        "LA10138-8": 6, "LA10139-6": 7, "LA10140-4": 8, "LA10141-2": 9, "LA13942-0": 10,
    }  # fmt: skip


def test_unknown_answer_code_or_no_value_skipped_and_counted() -> None:
    wrong_system = pain_obs("p-sys", score="LA6111-4", value="answer")
    wrong_system["valueCodeableConcept"]["coding"][0]["system"] = "http://example.org"
    facts = run(
        rounds=[round_obs("r1")],
        pains=[pain_obs("p-code", score="LA9999-9", value="answer"), wrong_system, pain_obs("p-none", value="none")],
    )
    assert facts.pain_scores == ()
    reasons = skipped_ids(facts)
    assert set(reasons) == {"p-code", "p-sys", "p-none"}
    assert all("no usable pain value" in r for r in reasons.values())
    assert facts.skipped_invalid == 3  # unusable data is counted on the card
    assert {s.reason_key for s in facts.skipped} == {"no_value"}
    assert all(s.kind == "pain" and s.in_session and s.date_text == DAY for s in facts.skipped)
    # the answer code of another system is not read as a score, even for the card
    assert {s.resource_id: s.value for s in facts.skipped} == {"p-code": None, "p-sys": None, "p-none": None}


@pytest.mark.parametrize("score", [11, -1, 10.5])
def test_out_of_range_pain_skipped(score: float) -> None:
    facts = run(rounds=[round_obs("r1")], pains=[pain_obs("p-bad", score=score), pain_obs("p-ok", score=10)])
    assert [p.resource_id for p in facts.pain_scores] == ["p-ok"]
    assert skipped_ids(facts) == {"p-bad": "pain score outside the 0-10 scale"}
    assert facts.skipped_invalid == 1
    (bad,) = facts.skipped
    assert (bad.kind, bad.value, bad.reason_key, bad.in_session) == ("pain", score, "value_out_of_range", True)


# --- status and subject -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["preliminary", "entered-in-error", "registered", "cancelled"])
def test_non_counted_status_skipped(status: str) -> None:
    facts = run(
        rounds=[round_obs("r-ok", reps=20), round_obs("r-bad", reps=5, status=status)],
        pains=[pain_obs("p-ok", score=1), pain_obs("p-bad", score=9, status=status)],
    )
    s = facts.latest_session
    assert s is not None and s.reps == [20.0] and s.max_pain == 1.0
    reasons = skipped_ids(facts)
    assert set(reasons) == {"r-bad", "p-bad"}
    assert all("status" in r for r in reasons.values())


@pytest.mark.parametrize("status", ["amended", "corrected", "final"])
def test_counted_statuses_used(status: str) -> None:
    facts = run(rounds=[round_obs("r1", status=status)], pains=[pain_obs("p1", score=2, status=status)])
    s = facts.latest_session
    assert s is not None and s.reps == [20.0] and s.max_pain == 2.0


def test_other_patient_skipped_absolute_url_accepted() -> None:
    facts = run(
        rounds=[
            round_obs("r-other", "2026-11-25", reps=3, subject="Patient/someone-else"),
            round_obs("r-prefix", "2026-11-25", reps=3, subject=f"Patient/{PID}x"),
            round_obs("r-abs", reps=18, subject=f"https://ehr.example.org/fhir/Patient/{PID}"),
        ],
        pains=[pain_obs("p-other", score=9, subject="Patient/someone-else"), pain_obs("p1", score=1)],
        conditions=[condition("c-other", "2026-11-01", subject="Patient/someone-else")],
    )
    s = facts.latest_session
    assert s is not None and [r.resource_id for r in s.rounds] == ["r-abs"] and s.max_pain == 1.0
    assert facts.conditions == ()
    reasons = skipped_ids(facts)
    assert reasons == {k: "subject is not the context patient" for k in ("r-other", "r-prefix", "p-other", "c-other")}


# --- conditions ----------------------------------------------------------------------------------------


def test_condition_statuses() -> None:
    facts = run(
        conditions=[
            condition("c-active", "2026-01-10"),
            condition("c-recurrence", "2026-02-10", clinical="recurrence"),
            condition("c-relapse", "2026-03-10", clinical="relapse", verification="confirmed"),
            condition("c-resolved", "2026-10-01", clinical="resolved"),
            condition("c-no-clinical", "2026-10-02", clinical=None),
            condition("c-refuted", "2026-10-03", verification="refuted"),
            condition("c-eie", "2026-10-04", verification="entered-in-error"),
            condition("c-other-code", "2026-10-05", code=("http://snomed.info/sct", "22298006")),
        ]
    )
    assert [c.resource_id for c in facts.conditions] == ["c-active", "c-recurrence", "c-relapse"]
    assert facts.onset == dt.date(2026, 3, 10)
    reasons = skipped_ids(facts)
    assert set(reasons) == {"c-resolved", "c-no-clinical", "c-refuted", "c-eie", "c-other-code"}
    assert "clinicalStatus" in reasons["c-resolved"] and "clinicalStatus" in reasons["c-no-clinical"]
    assert "verificationStatus" in reasons["c-refuted"] and "verificationStatus" in reasons["c-eie"]
    assert "not a counted condition" in reasons["c-other-code"]


@pytest.mark.parametrize("code", [(c.system, c.code) for c in CODES.lbp_condition])
def test_every_lbp_code_matches(code: tuple[str, str]) -> None:
    facts = run(conditions=[condition("c1", code=code)])
    assert [c.resource_id for c in facts.conditions] == ["c1"]


def test_onset_forms_and_most_recent_onset() -> None:
    facts = run(
        conditions=[
            condition("c-dt", "2025-06-01T08:00:00+02:00"),
            condition("c-period", "2026-04-15T23:30:00-07:00", period=True),  # UTC would be the 16th
            condition("c-date", "2026-02-01"),
            condition("c-none", None),
        ]
    )
    onsets = {c.resource_id: c.onset for c in facts.conditions}
    assert onsets == {
        "c-dt": dt.date(2025, 6, 1),
        "c-period": dt.date(2026, 4, 15),
        "c-date": dt.date(2026, 2, 1),
        "c-none": None,
    }
    assert facts.onset == dt.date(2026, 4, 15)


def test_condition_without_onset_only() -> None:
    facts = run(conditions=[condition("c1", None)])
    assert [(c.resource_id, c.onset) for c in facts.conditions] == [("c1", None)]
    assert facts.onset is None


# --- invalid FHIR ----------------------------------------------------------------------------------------


def test_invalid_resources_skipped_and_counted() -> None:
    facts = run(
        rounds=[
            round_obs("r-baddate", "2026-13-45", reps=3),  # sorts newest: must be validated, then fall back
            round_obs("r-badvalue", DAY, reps="abc"),
            round_obs("r-ok", DAY, reps=19),
        ],
        pains=[pain_obs("p-bad", score="abc"), pain_obs("p-ok", score=1)],
        conditions=[condition("c-bad", "2026-02-30"), condition("c-ok")],
    )
    s = facts.latest_session
    assert s is not None and s.date == dt.date(2026, 11, 20)
    assert [r.resource_id for r in s.rounds] == ["r-ok"]
    assert [p.resource_id for p in s.pain_scores] == ["p-ok"]
    assert [c.resource_id for c in facts.conditions] == ["c-ok"]
    invalid = {s.resource_id for s in facts.skipped if s.invalid}
    assert invalid == {"r-baddate", "r-badvalue", "p-bad", "c-bad"}
    assert facts.skipped_invalid == 4
    reasons = skipped_ids(facts)
    assert reasons["r-baddate"].startswith("failed FHIR R4 validation") and "effectiveDateTime" in reasons["r-baddate"]
    assert "valueQuantity.value" in reasons["r-badvalue"]


def test_date_group_with_only_invalid_rounds_falls_back() -> None:
    facts = run(
        rounds=[
            round_obs("old-1", "2026-11-10", reps=17, round_no=1),
            round_obs("old-2", "2026-11-10", reps=16, round_no=2),
            round_obs("new-1", "2026-11-20", reps="abc", round_no=1),
            round_obs("new-2", "2026-11-20T10:00:00", reps=30, round_no=2),  # dateTime without offset: invalid
        ]
    )
    s = facts.latest_session
    assert s is not None and s.date == dt.date(2026, 11, 10) and s.reps == [17.0, 16.0]
    assert facts.skipped_invalid == 2
    assert [r.resource_id for r in facts.rounds] == ["old-1", "old-2"]


def test_unusable_rounds_skipped_with_reason() -> None:
    facts = run(
        rounds=[
            round_obs("r-ok", reps=20),
            round_obs("r-neg", reps=-4),
            round_obs("r-huge", reps=1e16),
            round_obs("r-unknown", exercise="plank"),
            round_obs("r-system", exercise_system="http://example.org"),
            round_obs("r-noex", exercise=None),
            round_obs("r-noreps", reps=None),
            round_obs("r-nodate", date=None),
            round_obs("r-partial", date="2026-12"),  # sorts newest, partial: falls back
        ]
    )
    s = facts.latest_session
    assert s is not None and [r.resource_id for r in s.rounds] == ["r-ok"]
    reasons = skipped_ids(facts)
    assert reasons == {
        "r-neg": "reps value is negative",
        "r-huge": "reps value too large to evaluate",
        "r-unknown": "exercise is not a known ladder code",
        "r-system": "exercise is not a known ladder code",
        "r-noex": "exercise component is missing",
        "r-noreps": "no reps value (valueQuantity.value or valueInteger)",
        "r-nodate": "no effectiveDateTime or effectivePeriod.start",
        "r-partial": "effective date is not a full calendar date",
    }
    assert facts.skipped_invalid == 8  # every one of them is unusable data, counted on the card
    keys = {s.resource_id: s.reason_key for s in facts.skipped}
    assert keys == {
        "r-neg": "value_out_of_range", "r-huge": "value_out_of_range", "r-unknown": "unknown_exercise",
        "r-system": "unknown_exercise", "r-noex": "no_exercise", "r-noreps": "no_value", "r-nodate": "no_date",
        "r-partial": "partial_date",
    }
    # all dated on or after the session (or undated): each could have belonged to it
    assert all(s.in_session for s in facts.skipped)


def test_values_rounded_to_two_decimals_so_the_engine_can_read_them() -> None:
    facts = run(rounds=[round_obs("r-1", reps=20.456), round_obs("r-2", reps=0.00001)])
    s = facts.latest_session
    assert s is not None and sorted(s.reps) == [0.0, 20.46]


def test_value_integer_reps_and_effective_period() -> None:
    facts = run(rounds=[round_obs("r1", "2026-11-20T08:00:00Z", reps=12, value="integer", period=True)])
    s = facts.latest_session
    assert s is not None and s.reps == [12.0] and s.date == dt.date(2026, 11, 20)


def test_operation_outcome_unknown_type_and_patient() -> None:
    oo = {"resourceType": "OperationOutcome", "id": "oo1", "issue": [{"severity": "error", "code": "timeout"}]}
    enc = {"resourceType": "Encounter", "id": "e1"}
    facts = run(rounds=[round_obs("r1"), oo, enc, {"resourceType": "Patient", "id": PID}], other=oo | {"id": "oo2"})
    assert facts.latest_session is not None
    assert {(s.resource_type, s.resource_id): s.reason for s in facts.skipped} == {
        ("OperationOutcome", "oo1"): "OperationOutcome in Bundle",
        ("Encounter", "e1"): "unsupported resource type",
        ("OperationOutcome", "oo2"): "OperationOutcome in prefetch",
    }
    assert facts.skipped_invalid == 0


def test_entry_resource_not_a_resource_is_invalid_and_duplicates_ignored() -> None:
    rounds = bundle(round_obs("r1", reps=20))
    rounds["entry"].append({"resource": ["not", "a", "resource"]})
    rounds["entry"].append({"fullUrl": "urn:uuid:x"})
    facts = extract(
        {"exerciseRounds": rounds, "again": bundle(round_obs("r1", reps=20))},
        patient_id=PID, codes=CODES, ladder=LADDER,
    )  # fmt: skip
    s = facts.latest_session
    assert s is not None and s.reps == [20.0]  # the duplicate is not a second round
    assert [(x.resource_type, x.resource_id, x.invalid) for x in facts.skipped] == [
        ("unknown", None, True),
        ("unknown", None, False),
        ("Observation", "r1", False),
    ]
    assert facts.skipped_invalid == 1


def test_malformed_raw_structure_is_invalid_not_a_crash() -> None:
    weird = round_obs("r-weird")
    weird["code"] = "reps-to-technical-failure"
    weird_subject = round_obs("r-weird-subject")
    weird_subject["subject"] = ["Patient", PID]
    facts = run(rounds=[weird, weird_subject, round_obs("r-ok")])
    assert facts.latest_session is not None and [r.resource_id for r in facts.rounds] == ["r-ok"]
    assert {s.resource_id for s in facts.skipped if s.invalid} == {"r-weird", "r-weird-subject"}


def test_observation_with_other_code_skipped() -> None:
    obs = pain_obs("bp")
    obs["code"] = {"coding": [{"system": LOINC, "code": "85354-9"}]}
    facts = run(pains=[obs])
    assert skipped_ids(facts) == {"bp": "code is neither a pain score nor an exercise round"}


# --- sessions and pain association ---------------------------------------------------------------------


def test_derived_from_association() -> None:
    facts = run(
        rounds=[
            round_obs("old-1", "2026-11-10", reps=15, round_no=1),
            round_obs("new-1", "2026-11-20", reps=20, round_no=1),
            round_obs("new-2", "2026-11-20", reps=21, round_no=2),
        ],
        pains=[
            pain_obs("p-next-day", "2026-11-21", 2, derived=("new-2",)),  # other date, linked: counts
            pain_obs("p-old-link", "2026-11-20", 9, derived=("old-1",)),  # latest date, linked to old: no
            pain_obs("p-same-day", "2026-11-20", 1),  # no derivedFrom, same date: counts
            pain_obs("p-old-day", "2026-11-10", 8),  # no derivedFrom, other date: no
            pain_obs("p-day-after", "2026-11-21", 7),  # no derivedFrom, other date: no
        ],
    )
    s = facts.latest_session
    assert s is not None
    assert sorted(p.resource_id for p in s.pain_scores) == ["p-next-day", "p-same-day"]
    assert s.max_pain == 2.0
    linked = next(p for p in s.pain_scores if p.resource_id == "p-next-day")
    assert linked.derived_from == ("new-2",) and linked.date == dt.date(2026, 11, 21)
    assert facts.pain_scores == s.pain_scores
    assert facts.skipped == ()  # history that cannot matter is not "skipped"


def test_derived_from_absolute_and_non_observation_references() -> None:
    absolute = pain_obs("p-abs", "2026-11-22", 2)
    absolute["derivedFrom"] = [{"reference": "https://ehr.example.org/fhir/Observation/new-1/_history/3"}]
    questionnaire = pain_obs("p-qr", DAY, 1)
    questionnaire["derivedFrom"] = [{"reference": "QuestionnaireResponse/qr-1"}]  # not a round: date decides
    facts = run(rounds=[round_obs("new-1")], pains=[absolute, questionnaire])
    s = facts.latest_session
    assert s is not None and sorted(p.resource_id for p in s.pain_scores) == ["p-abs", "p-qr"]


def test_pain_without_session_is_not_used() -> None:
    facts = run(pains=[pain_obs("p1", score=3)])
    assert facts.latest_session is None and facts.pain_scores == ()


def test_two_exercises_on_latest_date_highest_rung_wins() -> None:
    facts = run(
        rounds=[
            round_obs("sl-1", DAY, "single-leg-reverse-hyper", reps=14, round_no=1),
            round_obs("bd-1", DAY, "bird-dog", reps=28, round_no=1),
            round_obs("ha-1", DAY, "hip-abduction", reps=30, round_no=1),
            round_obs("sl-2", DAY, "single-leg-reverse-hyper", reps=12, round_no=2),
            round_obs("rh-old", "2026-11-01", "reverse-hyper", reps=20),
        ],
        pains=[pain_obs("p-bd", DAY, 5, derived=("bd-1",)), pain_obs("p-day", DAY, 1)],
    )
    s = facts.latest_session
    assert s is not None and s.exercise == "single-leg-reverse-hyper"
    assert s.reps == [14.0, 12.0]
    assert [p.resource_id for p in s.pain_scores] == ["p-day"]  # p-bd belongs to the bird-dog session
    assert {r.resource_id for r in facts.rounds} == {"sl-1", "sl-2", "bd-1", "ha-1"}


def test_round_order_by_number_none_last_then_resource_order() -> None:
    facts = run(
        rounds=[
            round_obs("n-a", reps=1),
            round_obs("r3", reps=3, round_no=3),
            round_obs("n-b", reps=2),
            round_obs("r1", reps=4, round_no=1),
        ]
    )
    s = facts.latest_session
    assert s is not None and [r.resource_id for r in s.rounds] == ["r1", "r3", "n-a", "n-b"]
    assert [r.round_number for r in s.rounds] == [1, 3, None, None]


def test_date_is_taken_as_written_in_its_own_offset() -> None:
    facts = run(
        rounds=[
            round_obs("late-west", "2026-11-20T23:30:00-05:00", reps=20),  # UTC: Nov 21
            round_obs("early-east", "2026-11-21T01:00:00+09:00", reps=20, exercise="hip-abduction"),  # UTC: Nov 20
        ],
        pains=[pain_obs("p-21", "2026-11-21T00:10:00+09:00", 1), pain_obs("p-20", "2026-11-20T23:50:00-05:00", 6)],
    )
    s = facts.latest_session
    assert s is not None
    assert (s.exercise, s.date) == ("hip-abduction", dt.date(2026, 11, 21))
    assert [p.resource_id for p in s.pain_scores] == ["p-21"]


@pytest.mark.parametrize("layer", ["extraction", "resource"])
def test_long_history_every_resource_validated_once_then_cached(monkeypatch: pytest.MonkeyPatch, layer: str) -> None:
    from cds.fhir_validation import validation_cache

    validation_cache.clear()
    extract_module.fact_memo.clear()
    start = dt.date(2025, 1, 1)
    rounds, pains = [], []
    for day in range(200):
        date = (start + dt.timedelta(days=day)).isoformat()
        exercise = LADDER.codes[min(day // 60, 3)]
        rounds += [round_obs(f"r{day}-{n}", f"{date}T09:0{n}:00+01:00", exercise, 10 + n, n) for n in (1, 2)]
        pains.append(pain_obs(f"p{day}", f"{date}T09:05:00+01:00", day % 3))
    rounds[5]["effectiveDateTime"] = "2025-01-02T99:00:00Z"  # invalid and old: still validated and counted
    pains[7]["valueQuantity"]["value"] = 12  # out of range and old: counted too
    rounds.reverse()  # history order must not matter
    pains.reverse()
    assert len(rounds) == 400 and len(pains) == 200

    validated = 0
    real = extract_module.Observation.model_validate.__func__  # type: ignore[attr-defined]

    def counting(cls: type, obj: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal validated
        validated += 1
        return real(cls, obj, *args, **kwargs)

    monkeypatch.setattr(extract_module.Observation, "model_validate", classmethod(counting))
    facts = run(rounds=rounds, pains=pains)

    last = (start + dt.timedelta(days=199))
    s = facts.latest_session
    assert s is not None and s.date == last and s.exercise == "reverse-hyper"
    assert [r.resource_id for r in s.rounds] == ["r199-1", "r199-2"] and s.reps == [11.0, 12.0]
    assert [p.resource_id for p in s.pain_scores] == ["p199"] and s.max_pain == 199 % 3
    assert validated == 600  # every round and pain score, once
    assert {(x.resource_id, x.reason_key) for x in facts.skipped} == {("r2-2", "invalid"), ("p7", "value_out_of_range")}
    assert facts.skipped_invalid == 2
    assert not any(x.in_session for x in facts.skipped)  # old history: could not have been the session
    (pain,) = [x for x in facts.skipped if x.kind == "pain"]
    assert pain.value == 12 and pain.date_text == "2025-01-08T09:05:00+01:00"

    validated = 0
    if layer == "resource":  # without the whole-extraction memo: every resource from the per-resource memo
        extract_module.fact_memo.extractions.clear()
    # the EHR sends the same history at the next chart opening (JSON parsed afresh)
    again = run(rounds=json.loads(json.dumps(rounds)), pains=json.loads(json.dumps(pains)))
    assert validated == 0 and again == facts


# --- prefetch shape -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ([{"resourceType": "Observation"}], "not a FHIR resource or Bundle"),
        ("Observation/1", "not a FHIR resource or Bundle"),
        ({"id": "x"}, "not a FHIR resource or Bundle (no resourceType)"),
        ({"resourceType": 7}, "resourceType is not a string"),
        ({"resourceType": "Bundle", "entry": {"resource": {}}}, "entry is not a list"),
        ({"resourceType": "Bundle", "entry": ["Observation/1"]}, "entry[0] is not an object"),
    ],
)
def test_prefetch_shape_errors(value: Any, fragment: str) -> None:
    with pytest.raises(PrefetchShapeError) as info:
        extract({"patient": None, "painScores": value}, patient_id=PID, codes=CODES, ladder=LADDER)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.key == "painScores"
    assert fragment in err.message
    assert str(err).startswith("prefetch.painScores: ") and fragment in str(err)


def test_shape_error_example_message() -> None:
    expected = r"^prefetch\.painScores: not a FHIR resource or Bundle \(no resourceType\)$"
    with pytest.raises(PrefetchShapeError, match=expected):
        extract({"painScores": {}}, patient_id=PID, codes=CODES, ladder=LADDER)


def test_empty_bundle_is_fine() -> None:
    empty = {"resourceType": "Bundle", "type": "searchset"}
    facts = extract({"painScores": empty}, patient_id=PID, codes=CODES, ladder=LADDER)
    assert facts.skipped == () and facts.pain_scores == ()


# --- logging --------------------------------------------------------------------------------------------


def test_skips_are_logged_without_patient_ids_or_values(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    facts = run(
        rounds=[
            round_obs("r-ok", "2031-07-19T10:00:00+03:00", reps=4321),
            round_obs("r-neg", "2031-07-19", reps=-8765),
            round_obs("r-other", "2031-07-18", reps=5432, subject="Patient/other-pt-8c2d"),
            round_obs("r-invalid", "2031-07-19", reps="abc9137"),
            round_obs("r-status", "2031-07-19", reps=6543, status="preliminary"),
        ],
        pains=[pain_obs("p-range", "2031-07-19", 8137), pain_obs("p-invalid", "2031-07-19T25:00:00Z", 3)],
        conditions=[condition("c-resolved", "2031-06-17", clinical="resolved")],
    )
    assert len(facts.skipped) == 7
    records = [r for r in caplog.records if r.name == "cds.extract"]
    # one DEBUG line per skipped resource (type and id), one INFO summary per request (counts by reason)
    per_resource = [r.getMessage() for r in records if r.levelno == logging.DEBUG]
    summary = [r.getMessage() for r in records if r.levelno == logging.INFO]
    assert len(per_resource) == 7 and len(records) == 8
    for rid in ("r-neg", "r-other", "r-invalid", "r-status", "p-range", "p-invalid", "c-resolved"):
        assert sum(rid in m for m in per_resource) == 1
    assert summary == [
        "skipped 7 resource(s): clinicalStatus is not one of the counted clinical statuses: 1; "
        "subject is not the context patient: 1; status is not one of the counted observation statuses: 1; "
        "reps value is negative: 1; failed FHIR R4 validation: 2; pain score outside the 0-10 scale: 1"
    ]
    text = "\n".join(r.getMessage() for r in records)
    assert "Observation" in text and "Condition" in text
    for secret in (PID, "other-pt-8c2d", "Patient/", "2031", "8765", "5432", "9137", "6543", "8137", "4321", "T25"):
        assert secret not in text
        assert all(secret not in s.reason for s in facts.skipped)
    assert all(secret not in caplog.text for secret in (PID, "other-pt-8c2d", "8137", "2031"))


def test_log_lines_cannot_be_forged_and_missing_ids_skipped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cds.extract")
    forged = {"resourceType": "Encounter\nINFO fake", "id": "e1"}
    no_id = round_obs("x")
    del no_id["id"]
    bad_id = round_obs("x")
    bad_id["id"] = 12
    facts = run(rounds=[forged, no_id, bad_id, round_obs("r-ok")])
    assert facts.latest_session is not None
    assert [(s.resource_id, s.reason, s.invalid) for s in facts.skipped] == [
        ("e1", "unsupported resource type", False),
        (None, "resource has no id", False),
        (None, "resource has no id", True),
    ]
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["skipped 3 resource(s): unsupported resource type: 1; resource has no id: 2"]
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="cds.extract")
    run(rounds=[forged, no_id, bad_id, round_obs("r-ok")])
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 4 and all("\n" not in m for m in messages)
    assert messages[0] == "skipped 'Encounter\\nINFO fake' e1: unsupported resource type"


# --- dates written to the year or month; what a skipped resource carries for the card ---------------------


def test_onset_precision_bounds_and_text_as_written() -> None:
    facts = run(
        conditions=[
            condition("c-year", "2025"),
            condition("c-month", "2024-02"),  # a leap February: its latest day is the 29th
            condition("c-dec", "2023-12", period=True),
            condition("c-day", "2026-03-04"),
            condition("c-time", "2026-04-15T23:30:00-07:00"),  # the date as written, not UTC's 16th
        ]
    )
    got = {c.resource_id: (c.onset, c.onset_latest, c.onset_precision, c.onset_text) for c in facts.conditions}
    assert got == {
        "c-year": (dt.date(2025, 1, 1), dt.date(2025, 12, 31), "year", "2025"),
        "c-month": (dt.date(2024, 2, 1), dt.date(2024, 2, 29), "month", "2024-02"),
        "c-dec": (dt.date(2023, 12, 1), dt.date(2023, 12, 31), "month", "2023-12"),
        "c-day": (dt.date(2026, 3, 4), dt.date(2026, 3, 4), "day", "2026-03-04"),
        "c-time": (dt.date(2026, 4, 15), dt.date(2026, 4, 15), "day", "2026-04-15"),
    }


def test_most_recent_onset_is_the_latest_possible_day() -> None:
    # 2026-06 may be as late as 06-30: more recent than 2026-06-20, though it may also be earlier
    facts = run(conditions=[condition("c-day", "2026-06-20"), condition("c-month", "2026-06"), condition("c-old", "2025")])
    assert facts.onset_condition is not None and facts.onset_condition.resource_id == "c-month"
    assert facts.onset == dt.date(2026, 6, 1)
    # on a tie of the latest day, the later earliest day (the more precise one) wins
    facts = run(conditions=[condition("c-month", "2026-06"), condition("c-last", "2026-06-30")])
    assert facts.onset_condition is not None and facts.onset_condition.resource_id == "c-last"


def test_partial_effective_date_is_skipped_counted_and_described() -> None:
    facts = run(
        rounds=[round_obs("r-ok", "2026-11-18", reps=20, round_no=1), round_obs("r-month", "2026-11", reps=9)],
        pains=[pain_obs("p-year", "2026", 7)],
    )
    s = facts.latest_session
    assert s is not None and [r.resource_id for r in s.rounds] == ["r-ok"]
    got = {x.resource_id: (x.reason_key, x.kind, x.date_text, x.value, x.in_session, x.invalid) for x in facts.skipped}
    assert got == {
        "r-month": ("partial_date", "round", "2026-11", 9, True, True),  # November may include the 18th
        "p-year": ("partial_date", "pain", "2026", 7, True, True),
    }


def test_could_have_belonged_to_the_latest_session() -> None:
    session = [round_obs("r1", "2026-11-18T10:00:00-05:00", reps=20, round_no=1),
               round_obs("r2", "2026-11-18T10:10:00-05:00", reps=20, round_no=2)]
    facts = run(
        rounds=[*session, round_obs("r-old", "2026-11-01", reps=-3), round_obs("r-later", "2026-11-19", exercise="plank")],
        pains=[
            pain_obs("p-linked", "2026-02-30T10:00:00Z", 9, derived=("r1",)),  # invalid date, linked: could matter
            pain_obs("p-other", "2026-11-19", 11, derived=("r-old",)),  # linked to another session: not
            pain_obs("p-before", "2026-11-17", 12),  # before the session: not
            pain_obs("p-undated", None, 5),  # no date: could be the session's
            pain_obs("p-bad-date", "2026-11-31", 4),  # an unreadable date: could be the session's
        ],
    )
    flags = {x.resource_id: x.in_session for x in facts.skipped}
    assert flags == {
        "r-old": False, "r-later": True, "p-linked": True, "p-other": False, "p-before": False, "p-undated": True,
        "p-bad-date": True,
    }
    described = {x.resource_id: (x.date_text, x.value) for x in facts.skipped}
    assert described["p-linked"] == ("2026-02-30T10:00:00Z", 9)
    assert described["p-undated"] == (None, 5)


def test_without_a_usable_session_every_unusable_round_could_have_been_it() -> None:
    facts = run(rounds=[round_obs("r-noex", "2025-01-01", exercise=None)], pains=[pain_obs("p-bad", "2025-01-01", 12)])
    assert facts.latest_session is None
    assert {x.resource_id: x.in_session for x in facts.skipped} == {"r-noex": True, "p-bad": False}


def test_date_shown_only_when_it_looks_like_a_date() -> None:
    sneaky = pain_obs("p-sneaky", "2026-11-18", 1)
    sneaky["effectiveDateTime"] = "<img src=x> **bold**"
    facts = run(pains=[sneaky])
    (skip,) = facts.skipped
    assert skip.invalid and skip.date_text is None  # not valid FHIR; the text never reaches a card


def test_round_order_round_number_then_time_then_resource_order() -> None:
    facts = run(
        rounds=[
            round_obs("t-late", "2026-11-20T10:30:00-05:00", reps=1),
            round_obs("n2", "2026-11-20T09:00:00-05:00", reps=2, round_no=2),
            round_obs("t-early-east", "2026-11-20T20:00:00+09:00", reps=3),  # 11:00 UTC = 06:00-05:00
            round_obs("d-a", "2026-11-20", reps=4),
            round_obs("n1", "2026-11-20T11:00:00-05:00", reps=5, round_no=1),
            round_obs("d-b", "2026-11-20", reps=6),
        ]
    )
    s = facts.latest_session
    assert s is not None
    assert [r.resource_id for r in s.rounds] == ["n1", "n2", "t-early-east", "t-late", "d-a", "d-b"]


@pytest.mark.parametrize("layer", ["extraction", "resource"])
def test_memoised_outcomes_are_replayed_logged_and_per_rule_set(caplog: pytest.LogCaptureFixture, layer: str) -> None:
    extract_module.fact_memo.clear()
    rounds = [round_obs("r-ok", reps=20, round_no=1), round_obs("r-plank", exercise="plank")]
    first = run(rounds=rounds)
    if layer == "resource":
        extract_module.fact_memo.extractions.clear()
    caplog.set_level(logging.DEBUG, logger="cds.extract")
    again = run(rounds=json.loads(json.dumps(rounds)))  # the same JSON again: every outcome from the memo
    assert again == first and again.skipped_invalid == 1
    assert [r.getMessage() for r in caplog.records if r.name == "cds.extract"] == [
        "skipped Observation r-plank: exercise is not a known ladder code",
        "skipped 1 resource(s): exercise is not a known ladder code: 1",
    ]
    # another rule set (here: plank on the ladder) is another memo: nothing is reused across them
    doc = dict(_DOC["ladder"])
    doc["rungs"] = [*doc["rungs"], {"code": "plank", "display": "Plank", "about": "A plank."}]
    ladder = Ladder.model_validate(doc)
    prefetch = {"exerciseRounds": bundle(*rounds)}
    other = extract(prefetch, patient_id=PID, codes=CODES, ladder=ladder)
    assert other.latest_session is not None and other.latest_session.exercise == "plank"
    assert other.skipped == ()


@pytest.mark.parametrize("layer", ["extraction", "resource"])
def test_memo_replays_an_invalid_resource_with_its_detail_and_counts_it_by_reason(
    caplog: pytest.LogCaptureFixture, layer: str,
) -> None:
    extract_module.fact_memo.clear()
    rounds = [round_obs("r-ok", reps=20), round_obs("r-bad", reps="abc"), round_obs("r-neg", reps=-3)]
    caplog.set_level(logging.DEBUG, logger="cds.extract")
    first = run(rounds=rounds)
    cold = [r.getMessage() for r in caplog.records]
    caplog.clear()
    if layer == "resource":
        extract_module.fact_memo.extractions.clear()
    again = run(rounds=json.loads(json.dumps(rounds)))  # from the memo
    assert again == first and again.skipped_invalid == 2
    assert [r.getMessage() for r in caplog.records] == cold == [
        "skipped Observation r-bad: failed FHIR R4 validation at valueQuantity.value",
        "skipped Observation r-neg: reps value is negative",
        "skipped 2 resource(s): failed FHIR R4 validation: 1; reps value is negative: 1",
    ]


def test_memo_checks_the_subject_for_each_patient() -> None:
    extract_module.fact_memo.clear()
    rounds = [round_obs("r-1", reps=20)]  # subject Patient/PID
    mine = run(rounds=rounds)
    assert mine.latest_session is not None
    # the very same JSON in another patient's request: the memo never carries the subject verdict over
    other = extract({"exerciseRounds": bundle(*rounds)}, patient_id="someone-else", codes=CODES, ladder=LADDER)
    assert other.latest_session is None
    assert [(s.resource_id, s.reason) for s in other.skipped] == [("r-1", "subject is not the context patient")]
    absolute = round_obs("r-2", subject=f"https://ehr.example.org/fhir/Patient/{PID}")
    for _ in range(2):  # cold, then from the memo
        assert run(rounds=[absolute]).latest_session is not None


@pytest.mark.parametrize("subject", [f"Patient/{PID}", "Patient/someone-else"])
def test_memo_keeps_the_order_of_the_raw_checks(subject: str) -> None:
    """A status of the wrong JSON type behind the wrong subject is a subject skip, as without the
    memo; behind the right subject it is left to FHIR validation (invalid). Same on a second call."""
    extract_module.fact_memo.clear()
    obs = round_obs("r-odd", subject=subject)
    obs["status"] = 7
    outcomes = []
    for _ in range(2):
        facts = run(rounds=[json.loads(json.dumps(obs))])
        outcomes.append([(s.resource_id, s.reason.split(" at ")[0], s.invalid) for s in facts.skipped])
    expected = (
        ("r-odd", "failed FHIR R4 validation", True) if subject.endswith(PID)
        else ("r-odd", "subject is not the context patient", False)
    )
    assert outcomes == [[expected], [expected]]


def test_content_key_is_exact() -> None:
    from cds.fhir_validation import canonical_bytes

    assert len({canonical_bytes({"v": v}) for v in (1, 1.0, True, "1", [1], None)}) == 6
    assert canonical_bytes({"a": 1, "b": 2}) != canonical_bytes({"b": 2, "a": 1})  # only a miss, never a wrong hit
    obs = round_obs("r-1", reps=20)
    assert canonical_bytes(json.loads(json.dumps(obs))) == canonical_bytes(obs)
    assert canonical_bytes({"x": dt.date(2026, 1, 1)}) is None  # not JSON: validated without caching


def test_memo_holds_candidates_only() -> None:
    """An Observation of a code the rules ignore is skipped by the raw filter every time; it takes
    no memo entry (a history of unrelated Observations cannot push the useful ones out)."""
    extract_module.fact_memo.clear()
    vitals = round_obs("v-1")
    vitals["code"] = {"coding": [{"system": LOINC, "code": "8867-4"}]}
    for _ in range(2):
        facts = run(rounds=[json.loads(json.dumps(vitals)), round_obs("r-1")])
        assert [(s.resource_id, s.reason) for s in facts.skipped] == [
            ("v-1", "code is neither a pain score nor an exercise round")
        ]
        assert facts.latest_session is not None
    assert len(extract_module.fact_memo.table(CODES, LADDER)) == 1


# --- the whole-extraction memo ------------------------------------------------------------------


def _history() -> dict[str, Any]:
    return {
        "conditions": bundle(condition("c-1", onset="2026-01-10")),
        "painScores": bundle(pain_obs("p-1", DAY, 2), pain_obs("p-odd", DAY, 14)),
        "exerciseRounds": bundle(round_obs("r-1", reps=20, round_no=1), round_obs("r-2", reps=18, round_no=2),
                                 round_obs("r-bad", reps="abc"), round_obs("r-plank", exercise="plank")),
    }


def test_same_prefetch_again_is_one_lookup_with_the_same_facts_and_logs(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The EHR's next chart openings (the same JSON, parsed afresh): from the third call the whole
    extraction comes from the memo, and every skip is logged (DEBUG) and counted (the INFO summary)
    exactly as the first time."""
    extract_module.fact_memo.clear()
    text = json.dumps(_history())
    caplog.set_level(logging.DEBUG, logger="cds.extract")
    first = extract(json.loads(text), patient_id=PID, codes=CODES, ladder=LADDER)
    cold = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert first.skipped_invalid == 3 and first.latest_session is not None
    assert cold[-1] == ("INFO", "skipped 3 resource(s): failed FHIR R4 validation: 1; "
                                "exercise is not a known ladder code: 1; pain score outside the 0-10 scale: 1")
    assert len(cold) == 4  # one DEBUG line per skipped resource
    caplog.clear()
    second = extract(json.loads(text), patient_id=PID, codes=CODES, ladder=LADDER)  # memoised now
    assert second == first and [(r.levelname, r.getMessage()) for r in caplog.records] == cold
    caplog.clear()

    def no_work(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the memoised extraction must not look at any resource")

    monkeypatch.setattr(extract_module._Extractor, "add", no_work)
    again = extract(json.loads(text), patient_id=PID, codes=CODES, ladder=LADDER)
    assert again == first
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == cold
    caplog.clear()
    caplog.set_level(logging.INFO, logger="cds.extract")  # as deployed: the summary line only
    extract(json.loads(text), patient_id=PID, codes=CODES, ladder=LADDER)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [cold[-1]]


def test_whole_extraction_memo_is_exact() -> None:
    """Another patient, another rule set, or any change to the JSON is another extraction."""
    extract_module.fact_memo.clear()
    text = json.dumps(_history())
    mine = extract(json.loads(text), patient_id=PID, codes=CODES, ladder=LADDER)
    assert mine.latest_session is not None
    other = extract(json.loads(text), patient_id="someone-else", codes=CODES, ladder=LADDER)
    assert other.latest_session is None and other.patient_id == "someone-else"
    assert {s.reason for s in other.skipped} == {"subject is not the context patient"}
    changed = json.loads(text)
    changed["exerciseRounds"]["entry"][1]["resource"]["valueQuantity"]["value"] = 25.0  # 18 -> 25.0
    facts = extract(changed, patient_id=PID, codes=CODES, ladder=LADDER)
    assert facts.latest_session is not None and facts.latest_session.reps == [20.0, 25.0]
    reordered = json.loads(text)
    reordered["exerciseRounds"]["entry"].reverse()  # resource order is part of the content
    assert extract(reordered, patient_id=PID, codes=CODES, ladder=LADDER).skipped != mine.skipped
    ladder = Ladder.model_validate({**_DOC["ladder"], "rungs": [*_DOC["ladder"]["rungs"],
                                    {"code": "plank", "display": "Plank", "about": "A plank."}]})
    with_plank = extract(json.loads(text), patient_id=PID, codes=CODES, ladder=ladder)
    assert with_plank.skipped_invalid == 2 and with_plank.latest_session is not None
    # equal bytes mean equal JSON; the same JSON with its objects shared otherwise is only a miss
    shared = json.loads(text)
    keep = [e["resource"]["status"] for e in shared["painScores"]["entry"]]
    assert extract_module.prefetch_key(shared) != extract_module.prefetch_key(json.loads(text))
    assert extract(shared, patient_id=PID, codes=CODES, ladder=LADDER) == mine and keep
    assert extract_module.prefetch_key({"x": dt.date(2026, 1, 1)}) is None
    assert len({extract_module.prefetch_key({"v": v}) for v in (1, 1.0, True, "1", [1], None)}) == 6


def test_whole_extraction_memo_is_bounded() -> None:
    memo = extract_module._ExtractionMemo(maxsize=3, max_bytes=40_000)
    facts = PatientFacts(patient_id=PID)
    entry = extract_module._Extracted(CODES, LADDER, facts, (), ())
    for n in range(5):
        memo.put(PID, bytes([n]) * 100, entry)
    assert len(memo) == 3 and memo.get(CODES, LADDER, PID, bytes([0]) * 100) is None
    assert memo.get(CODES, LADDER, PID, bytes([4]) * 100) is entry
    memo.put(PID, b"x" * 10_001, entry)  # more than a quarter of the bytes: never stored
    assert memo.get(CODES, LADDER, PID, b"x" * 10_001) is None
    for n in range(3):
        memo.put(PID, bytes([n]) * 9_000, entry)  # 27,000 + the small ones: within 40,000
    memo.put(PID, b"y" * 9_000, entry)
    assert len(memo) <= 3 and memo._bytes <= 40_000
    assert memo.get(CODES, LADDER, PID, b"y" * 9_000) is entry


def test_the_whole_prefetch_key_is_computed_only_for_an_outline_seen_before(monkeypatch: pytest.MonkeyPatch) -> None:
    """A prefetch never seen before (a new session changed the history) costs no whole-prefetch key:
    it is computed from the second call of the same outline, and the third call is a hit."""
    extract_module.fact_memo.clear()
    keys = 0
    real = extract_module.prefetch_key

    def counting(prefetch: Any) -> bytes | None:
        nonlocal keys
        keys += 1
        return real(prefetch)

    monkeypatch.setattr(extract_module, "prefetch_key", counting)
    history = _history()
    text = json.dumps(history)
    outcomes = [extract(json.loads(text), patient_id=PID, codes=CODES, ladder=LADDER) for _ in range(3)]
    assert keys == 2 and len(extract_module.fact_memo.extractions) == 1
    assert outcomes[0] == outcomes[1] == outcomes[2]
    history["exerciseRounds"]["entry"].insert(0, {"resource": round_obs("r-new", reps=25, round_no=3)})
    grown = extract(json.loads(json.dumps(history)), patient_id=PID, codes=CODES, ladder=LADDER)
    assert keys == 2  # a new outline: no key
    assert grown.latest_session is not None and grown.latest_session.reps == [20.0, 18.0, 25.0]
    # same outline, other content (a value changed in place): the key decides, never the outline
    changed = json.loads(text)
    changed["exerciseRounds"]["entry"][0]["resource"]["valueQuantity"]["value"] = 30
    facts = extract(changed, patient_id=PID, codes=CODES, ladder=LADDER)
    assert keys == 3 and facts.latest_session is not None and facts.latest_session.reps == [30.0, 18.0]


# --- the whole history: PatientFacts.sessions -----------------------------------------------------


def test_sessions_group_a_multi_day_history_oldest_first() -> None:
    """One session per date, oldest first: the highest rung of the date, its rounds in round order;
    a pain score linked by derivedFrom to an older session's round stays with that session (whatever
    its date); one without derivedFrom belongs to the session of its date; the last is latest_session."""
    facts = run(
        rounds=[
            round_obs("c2", "2026-11-18", reps=18, round_no=2), round_obs("c1", "2026-11-18", reps=20, round_no=1),
            round_obs("a1", "2026-11-04", "hip-abduction", 30, 1), round_obs("a2", "2026-11-04", "hip-abduction", 29, 2),
            round_obs("b3", "2026-11-11", reps=9, round_no=3), round_obs("b1", "2026-11-11", reps=16, round_no=1),
            round_obs("h1", "2026-11-11", "hip-abduction", 40, 1),  # lower rung on the same date: not the session
            round_obs("b2", "2026-11-11", reps=14, round_no=2),
            round_obs("x1", "2026-11-06", reps=20, round_no=1, status="preliminary"),  # not counted: no session
        ],
        pains=[
            pain_obs("p-a", "2026-11-18", 4, derived=("a1",)),  # recorded on the latest date, for 2026-11-04
            pain_obs("p-b", "2026-11-11", 1),
            pain_obs("p-h", "2026-11-04", 6, derived=("h1",)),  # linked to a round that is no session's
            pain_obs("p-c", "2026-11-18", 0),
            pain_obs("p-b2", "2026-11-20", 2, derived=("b2", "b3")),  # two rounds of one session: once
        ],
    )
    got = [(s.date.isoformat(), s.exercise, [r.resource_id for r in s.rounds], [p.resource_id for p in s.pain_scores])
           for s in facts.sessions]
    assert got == [
        ("2026-11-04", "hip-abduction", ["a1", "a2"], ["p-a"]),
        ("2026-11-11", "bird-dog", ["b1", "b2", "b3"], ["p-b", "p-b2"]),
        ("2026-11-18", "bird-dog", ["c1", "c2"], ["p-c"]),
    ]
    assert facts.latest_session == facts.sessions[-1]
    assert facts.pain_scores == facts.sessions[-1].pain_scores
    assert [r.resource_id for r in facts.rounds] == ["c2", "c1"]  # every round of the latest date, resource order
    assert [s.max_pain for s in facts.sessions] == [4.0, 2.0, 0.0]


def test_sessions_are_kept_by_the_extraction_memo() -> None:
    """A prefetch seen before gives the same facts, sessions included, from the memo."""
    rounds = [round_obs(f"r{d}", f"2026-11-{d:02d}", reps=20 + d, round_no=1) for d in (3, 10, 17)]
    first = [run(rounds=rounds, pains=[pain_obs("p", "2026-11-10", 3)]) for _ in range(4)]
    assert all(f == first[0] for f in first)
    assert [(s.date.day, s.max_pain) for s in first[-1].sessions] == [(3, None), (10, 3.0), (17, None)]


def test_a_new_session_reuses_the_older_sessions_and_a_changed_one_is_rebuilt() -> None:
    """Older dates of a history seen before give the very same Session facts (extract_module.session_memo);
    a changed resource of an older date gives that date a new session, never the remembered one."""
    rounds = [round_obs(f"r{d}", f"2026-11-{d:02d}", reps=20 + d, round_no=1) for d in (3, 10)]
    pains = [pain_obs("p10", "2026-11-10", 3)]
    before = run(rounds=rounds, pains=pains)
    added = run(rounds=[*rounds, round_obs("r17", "2026-11-17", reps=40, round_no=1)], pains=pains)
    assert added.sessions[0] is before.sessions[0] and added.sessions[1] is before.sessions[1]
    changed = run(rounds=[*rounds, round_obs("r17", "2026-11-17", reps=40, round_no=1)],
                  pains=[pain_obs("p10", "2026-11-10", 5)])
    assert [s.max_pain for s in changed.sessions] == [None, 5.0, None]
    assert changed.sessions[0] is before.sessions[0] and changed.sessions[1] is not before.sessions[1]
    extract_module.session_memo.clear()
    assert run(rounds=[*rounds, round_obs("r17", "2026-11-17", reps=40, round_no=1)], pains=pains) == added
