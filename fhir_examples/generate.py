"""Generate the example CDS Hooks patient-view requests in ``fhir_examples/requests/``.

Run ``.venv/bin/python fhir_examples/generate.py``. For every scenario declared below it writes

* ``requests/<scenario>.json``: a complete ``patient-view`` request with all four prefetch keys;
* ``requests/<scenario>.expected.json``: the cards the service must return, in order.

Dates in the scenarios are day offsets from the anchor evaluation date in ``config.json``; start the
service with ``CDS_EVALUATION_DATE`` set to that date. The output is deterministic, so the committed
files must equal what this script produces (``tests/test_examples_data.py`` checks that).

Every resource is validated with the ``fhir.resources`` R4B models, except the ones a scenario
breaks on purpose: those carry the ``meta.tag`` ``DELIBERATELY_INVALID_TAG``.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REQUESTS_DIR = HERE / "requests"
CONFIG_FILE = HERE / "config.json"
README_FILE = HERE / "README.md"

# --- vocabulary (matches rules/codes.yaml and SPEC section 2) -------------------------------------

OBS_SYSTEM = "https://lbp-cds.org/fhir/CodeSystem/observation"
EXERCISE_SYSTEM = "https://lbp-cds.org/fhir/CodeSystem/exercise"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
FHIR_BASE = "https://ehr.example.org/fhir"
HOOK_INSTANCE_NAMESPACE = uuid.UUID("6f1c2f4e-6a53-4f0e-9a43-1b5c0c1d7e21")
DELIBERATELY_INVALID_TAG = {
    "system": "https://lbp-cds.org/fhir/CodeSystem/example-tag",
    "code": "deliberately-invalid",
    "display": "Deliberately invalid example resource: the service must skip it",
}

LBP_CODES = {
    "279039007": ("http://snomed.info/sct", "Low back pain"),
    "278860009": ("http://snomed.info/sct", "Chronic low back pain"),
    "M54.5": ("http://hl7.org/fhir/sid/icd-10-cm", "Low back pain"),
    "M54.50": ("http://hl7.org/fhir/sid/icd-10-cm", "Low back pain, unspecified"),
    "M54.51": ("http://hl7.org/fhir/sid/icd-10-cm", "Vertebrogenic low back pain"),
    "M54.59": ("http://hl7.org/fhir/sid/icd-10-cm", "Other low back pain"),
}
PAIN_ANSWERS = {0: "LA6111-4", 1: "LA6112-2", 2: "LA6113-0", 3: "LA6114-8", 4: "LA6115-5", 5: "LA10137-0",
                6: "LA10138-8", 7: "LA10139-6", 8: "LA10140-4", 9: "LA10141-2", 10: "LA13942-0"}

HA, BD, SL, RH = "hip-abduction", "bird-dog", "single-leg-reverse-hyper", "reverse-hyper"
LADDER = [HA, BD, SL, RH]


# --- scenario building blocks ---------------------------------------------------------------------

@dataclass(frozen=True)
class Condition:
    """An LBP Condition. ``onset`` is a day offset (None: no onset recorded)."""

    onset: int | None
    period: bool = False  # onsetPeriod.start instead of onsetDateTime
    code: str = "279039007"
    clinical: str | None = "active"
    verification: str = "confirmed"
    subject: str | None = None  # another patient's id; default: the scenario's patient


@dataclass(frozen=True)
class Session:
    """Rounds of one exercise on one day (``day`` is an offset), optionally with a pain score."""

    day: int
    exercise: str
    reps: tuple[int, ...]
    pain: int | None = None  # one pain score on the same day
    linked: bool = False  # the pain score has derivedFrom -> these rounds
    time: str = "10:00:00-05:00"
    pain_time: str = "10:30:00-05:00"
    status: str = "final"
    subject: str | None = None
    label: str = ""  # extra id part, to tell decoy resources apart


@dataclass(frozen=True)
class Pain:
    """A stand-alone pain score. ``derived_from`` names sessions as (day, exercise)."""

    day: int
    score: int
    derived_from: tuple[tuple[int, str], ...] = ()
    time: str = "10:30:00-05:00"
    value: str = "integer"  # integer | quantity | answer
    status: str = "final"
    subject: str | None = None
    label: str = ""
    effective: str | None = None  # a literal effectiveDateTime, used to break the resource on purpose
    invalid: bool = False  # deliberately fails FHIR validation; never validated here


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    sessions: tuple[Session, ...] = ()
    pains: tuple[Pain, ...] = ()
    conditions: tuple[Condition, ...] = (Condition(onset=-300),)
    cards: tuple[dict[str, Any], ...] = ()
    skipped_invalid: int = 0


def card(decision: str, rule: str | None = None, indicator: str = "info", exercise: str | None = None,
         notes: tuple[str, ...] = ()) -> dict[str, Any]:
    """An expected card. ``recommendedExercise`` and ``notes`` are omitted when there are none."""
    out: dict[str, Any] = {"decision": decision, "ruleId": rule or decision, "indicator": indicator}
    if exercise:
        out["recommendedExercise"] = exercise
    if notes:
        out["notes"] = list(notes)
    return out


NEW_ONSET = card("new-onset", indicator="warning")
ONSET_UNKNOWN = card("onset-unknown", indicator="warning")


def older(exercise: str, linked: bool = False, pain: int | None = 1) -> tuple[Session, ...]:
    """Two older sessions (16 and 9 days ago) on the rung below ``exercise`` (or the same first rung)."""
    below = LADDER[max(LADDER.index(exercise) - 1, 0)]
    return (Session(-16, below, (19, 18), pain=pain, linked=linked),
            Session(-9, below, (23, 22), pain=pain, linked=linked))


L = -2  # the day of the latest session in most scenarios


# --- the scenarios --------------------------------------------------------------------------------

SCENARIOS: tuple[Scenario, ...] = (
    # onset
    Scenario("new-onset", "LBP began 10 days ago: the programme does not apply yet, only the new-onset card.",
             conditions=(Condition(-10),),
             sessions=(*older(BD), Session(L, BD, (28, 27), pain=1)), cards=(NEW_ONSET,)),
    Scenario("new-onset-period", "Onset given as onsetPeriod.start 10 days ago: still a new onset.",
             conditions=(Condition(-10, period=True, code="M54.50"),),
             sessions=(*older(BD), Session(L, BD, (20, 18), pain=1)), cards=(NEW_ONSET,)),
    Scenario("recurrence-new-onset",
             "An old chronic LBP condition plus a recurrence 20 days ago: the most recent onset counts.",
             conditions=(Condition(-400, code="278860009"), Condition(-20, code="M54.59", clinical="recurrence")),
             sessions=(*older(BD), Session(L, BD, (20, 18), pain=1)), cards=(NEW_ONSET,)),
    Scenario("onset-undocumented", "No LBP condition at all: onset-unknown warning, progression advice still given.",
             conditions=(), sessions=(*older(BD), Session(L, BD, (20, 18), pain=1)),
             cards=(ONSET_UNKNOWN, card("continue", exercise=BD))),
    Scenario("condition-without-onset", "An active LBP condition with no onset recorded: onset-unknown warning.",
             conditions=(Condition(None, code="M54.5"),),
             sessions=(*older(BD), Session(L, BD, (20, 18), pain=1, linked=True)),
             cards=(ONSET_UNKNOWN, card("continue", exercise=BD))),
    Scenario("onset-period", "Onset as onsetPeriod.start 200 days ago (no onsetDateTime): not new, step up.",
             conditions=(Condition(-200, period=True),),
             sessions=(*older(BD), Session(L, BD, (28, 27), pain=1)), cards=(card("step-up", exercise=SL),)),
    # start
    Scenario("no-sessions", "Chronic LBP, no rounds recorded: start on the first rung.",
             conditions=(Condition(-300, code="278860009"),),
             cards=(card("start", exercise=HA),)),
    # pain gate
    Scenario("pain-5-bird-dog", "Pain 5/10 on bird-dog: above the gate, step back to hip abduction.",
             sessions=(*older(BD), Session(L, BD, (20, 19), pain=5, linked=True)),
             cards=(card("pain-gate", indicator="warning", exercise=HA),)),
    Scenario("pain-4-hip-abduction", "Pain 4/10 on the first rung: modify hip abduction to be pain-free.",
             sessions=(*older(HA), Session(L, HA, (20, 20), pain=4)),
             cards=(card("pain-gate", "pain-gate-first-rung", "warning", HA),)),
    Scenario("no-pain-recorded", "Bird-dog 22, 21 with no pain score at all: the gate cannot be confirmed.",
             sessions=(*older(BD, pain=None), Session(L, BD, (22, 21))),
             cards=(card("pain-unrecorded", indicator="warning", exercise=BD),)),
    Scenario("pain-loinc-answer", "Pain recorded as the LOINC answer LA6113-0 (= 2): at the gate, continue.",
             sessions=(*older(BD), Session(L, BD, (22, 20))),
             pains=(Pain(L, 2, value="answer"),), cards=(card("continue", exercise=BD),)),
    Scenario("pain-value-quantity", "Pain 4/10 recorded as valueQuantity: above the gate, step back.",
             sessions=(*older(BD), Session(L, BD, (20, 18))),
             pains=(Pain(L, 4, value="quantity"),), cards=(card("pain-gate", indicator="warning", exercise=HA),)),
    # rep range
    Scenario("bird-dog-12-14", "Bird-dog 12, 14 (a round below 15): too hard, step back to hip abduction.",
             sessions=(*older(BD), Session(L, BD, (12, 14), pain=1)), cards=(card("step-back", exercise=HA),)),
    Scenario("bird-dog-20-18", "Bird-dog 20, 18 with pain 1: in range, continue.",
             sessions=(*older(BD), Session(L, BD, (20, 18), pain=1)), cards=(card("continue", exercise=BD),)),
    Scenario("bird-dog-28-27", "Bird-dog 28, 27 with pain 1: too easy, step up to the single-leg reverse hyper.",
             sessions=(*older(BD, linked=True), Session(L, BD, (28, 27), pain=1, linked=True)),
             cards=(card("step-up", exercise=SL),)),
    Scenario("reverse-hyper-30-29", "Reverse hyper 30, 29 with pain 0: top rung, stay and add resistance.",
             sessions=(*older(RH, linked=True), Session(L, RH, (30, 29), pain=0, linked=True)),
             cards=(card("step-up", "step-up-top-rung", exercise=RH),)),
    Scenario("hip-abduction-10-9", "Hip abduction 10, 9: too hard on the first rung, make it easier.",
             sessions=(*older(HA), Session(L, HA, (10, 9), pain=1)),
             cards=(card("step-back", "step-back-first-rung", exercise=HA),)),
    Scenario("single-round", "Only one round (20) recorded: continue, with the incomplete-session note.",
             sessions=(*older(BD), Session(L, BD, (20,), pain=1, linked=True)),
             cards=(card("continue", exercise=BD, notes=("incomplete-session",)),)),
    # latest-session selection and pain association
    Scenario("two-exercises-same-day",
             "Hip abduction 20, 20 and bird-dog 22, 21 on the same latest day: the highest rung is the session.",
             sessions=(*older(BD), Session(L, HA, (20, 20), time="11:00:00-05:00"), Session(L, BD, (22, 21), pain=1)),
             cards=(card("continue", exercise=BD),)),
    Scenario("pain-derived-from",
             "Pain 4 dated the day after the session but derivedFrom its rounds counts for it; pain 0 on the "
             "session day derived from an older session's round does not.",
             sessions=(Session(-16, BD, (19, 18), pain=1, linked=True), Session(-9, BD, (20, 18)),
                       Session(L, BD, (28, 27))),
             pains=(Pain(L + 1, 4, derived_from=((L, BD),), time="08:15:00-05:00"),
                    Pain(L, 0, derived_from=((-9, BD),), time="18:00:00-05:00")),
             cards=(card("pain-gate", indicator="warning", exercise=HA),)),
    Scenario("pain-derived-from-older-session",
             "The only pain on the latest day is derivedFrom an older session's round: the latest session has no pain.",
             sessions=(Session(-16, BD, (19, 18), pain=1), Session(-9, BD, (20, 18)), Session(L, BD, (28, 27))),
             pains=(Pain(L, 5, derived_from=((-9, BD),)),),
             cards=(card("pain-unrecorded", indicator="warning", exercise=BD),)),
    Scenario("date-as-written",
             "Session at 23:10-05:00 (the next day in UTC): the session date is the date as written, so the "
             "pain 4 written on the next day does not belong to it; pain 1 written on the session day does.",
             sessions=(*older(BD), Session(L, BD, (28, 27), time="23:10:00-05:00")),
             pains=(Pain(L, 1, time="23:40:00-05:00"), Pain(L + 1, 4, time="05:00:00+00:00")),
             cards=(card("step-up", exercise=SL),)),
    # resources that must not be used
    Scenario("ignored-resources",
             "Bird-dog 20, 18 pain 1 plus decoys that must be ignored: entered-in-error and preliminary "
             "observations, another patient's round and pain, and entered-in-error, refuted, resolved and "
             "other-patient conditions with recent onsets.",
             conditions=(Condition(-300),
                         Condition(-5, clinical=None, verification="entered-in-error"),
                         Condition(-3, subject="someone-else"),
                         Condition(-7, verification="refuted"),
                         Condition(-14, clinical="resolved")),
             sessions=(*older(BD), Session(L, BD, (20, 18), pain=1),
                       Session(L, BD, (5,), status="entered-in-error", label="eie"),
                       Session(L, RH, (30,), subject="someone-else", label="other")),
             pains=(Pain(L, 9, status="entered-in-error", label="eie", time="11:00:00-05:00"),
                    Pain(L, 8, subject="someone-else", label="other"),
                    Pain(L, 7, status="preliminary", label="prelim", time="11:30:00-05:00")),
             cards=(card("continue", exercise=BD),)),
    Scenario("invalid-resource",
             "Bird-dog 28, 27 pain 1 plus a pain 9 derivedFrom the same rounds whose effectiveDateTime is "
             "impossible (30 February): it fails FHIR validation, is skipped and counted.",
             sessions=(*older(BD), Session(L, BD, (28, 27), pain=1, linked=True)),
             pains=(Pain(L, 9, derived_from=((L, BD),), label="invalid", effective="2026-02-30T10:00:00Z",
                         invalid=True),),
             cards=(card("step-up", exercise=SL),), skipped_invalid=1),
    # boundaries of SPEC section 1
    Scenario("boundary-reps-15-15", "Reps 15, 15: 15 is not below reps_low, continue.",
             sessions=(*older(BD), Session(L, BD, (15, 15), pain=1)), cards=(card("continue", exercise=BD),)),
    Scenario("boundary-reps-25-25", "Reps 25, 25: 25 is not above reps_high, continue.",
             sessions=(*older(BD), Session(L, BD, (25, 25), pain=1, linked=True)),
             cards=(card("continue", exercise=BD),)),
    Scenario("boundary-reps-26-26", "Reps 26, 26: every round above reps_high, step up.",
             sessions=(*older(BD), Session(L, BD, (26, 26), pain=1)), cards=(card("step-up", exercise=SL),)),
    Scenario("boundary-reps-25-26", "Reps 25, 26: not every round above reps_high, continue.",
             sessions=(*older(BD), Session(L, BD, (25, 26), pain=1)), cards=(card("continue", exercise=BD),)),
    Scenario("boundary-reps-14-20", "Reps 14, 20: one round below reps_low, step back.",
             sessions=(*older(BD), Session(L, BD, (14, 20), pain=1, linked=True)),
             cards=(card("step-back", exercise=HA),)),
    Scenario("boundary-pain-2", "Pain 2: at the gate (not above it), continue.",
             sessions=(*older(BD), Session(L, BD, (20, 18), pain=2)), cards=(card("continue", exercise=BD),)),
    Scenario("boundary-pain-3", "Pain 3: above the gate, step back.",
             sessions=(*older(BD), Session(L, BD, (20, 18), pain=3)),
             cards=(card("pain-gate", indicator="warning", exercise=HA),)),
    Scenario("boundary-onset-41-days", "Onset 41 days ago: fewer than 42, new onset.",
             conditions=(Condition(-41),),
             sessions=(*older(BD), Session(L, BD, (20, 18), pain=1)), cards=(NEW_ONSET,)),
    Scenario("boundary-onset-42-days", "Onset exactly 42 days ago: not new onset, continue.",
             conditions=(Condition(-42),),
             sessions=(*older(BD), Session(L, BD, (20, 18), pain=1)), cards=(card("continue", exercise=BD),)),
)


# --- FHIR resources -------------------------------------------------------------------------------

def coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def concept(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    return {"coding": [coding(system, code, display)]}


class _Ids:
    """Readable, unique resource ids within one request."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def new(self, *parts: Any) -> str:
        base = "-".join(str(p) for p in parts if p not in ("", None))
        candidate, n = base, 1
        while candidate in self.used:
            n += 1
            candidate = f"{base}-{n}"
        self.used.add(candidate)
        return candidate


@dataclass
class _Request:
    """The resources of one request while it is being built."""

    anchor: dt.date
    patient_id: str
    ids: _Ids = field(default_factory=_Ids)
    conditions: list[dict[str, Any]] = field(default_factory=list)
    pains: list[dict[str, Any]] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    session_rounds: dict[tuple[int, str], list[str]] = field(default_factory=dict)

    def date(self, offset: int) -> dt.date:
        return self.anchor + dt.timedelta(days=offset)

    def subject(self, other: str | None) -> dict[str, str]:
        return {"reference": f"Patient/{other or self.patient_id}"}

    def add_condition(self, c: Condition) -> None:
        system, display = LBP_CODES[c.code]
        res: dict[str, Any] = {"resourceType": "Condition", "id": self.ids.new("condition", len(self.conditions) + 1)}
        if c.clinical:  # FHIR con-5: no clinicalStatus on an entered-in-error condition
            res["clinicalStatus"] = concept(CONDITION_CLINICAL, c.clinical)
        res["verificationStatus"] = concept(CONDITION_VERIFICATION, c.verification)
        res["category"] = [concept(CONDITION_CATEGORY, "problem-list-item", "Problem List Item")]
        res["code"] = {"coding": [coding(system, c.code, display)], "text": display}
        res["subject"] = self.subject(c.subject)
        if c.onset is not None:
            onset = self.date(c.onset).isoformat()
            if c.period:
                res["onsetPeriod"] = {"start": onset}
            else:
                res["onsetDateTime"] = onset
        self.conditions.append(res)

    def add_session(self, s: Session) -> None:
        day = self.date(s.day)
        ids = []
        for n, reps in enumerate(s.reps, start=1):
            rid = self.ids.new("round", s.label, f"{day:%Y%m%d}", s.exercise, n)
            ids.append(rid)
            self.rounds.append({
                "resourceType": "Observation", "id": rid, "status": s.status,
                "code": concept(OBS_SYSTEM, "reps-to-technical-failure"),
                "subject": self.subject(s.subject), "effectiveDateTime": f"{day.isoformat()}T{s.time}",
                "valueQuantity": {"value": reps, "unit": "repetitions", "system": UCUM, "code": "{repetitions}"},
                "component": [
                    {"code": concept(OBS_SYSTEM, "exercise"), "valueCodeableConcept": concept(EXERCISE_SYSTEM, s.exercise)},
                    {"code": concept(OBS_SYSTEM, "round"), "valueInteger": n},
                ],
            })
        if s.status == "final" and s.subject is None:
            self.session_rounds.setdefault((s.day, s.exercise), []).extend(ids)
        if s.pain is not None:
            self.add_pain(Pain(s.day, s.pain, time=s.pain_time, status=s.status, subject=s.subject, label=s.label),
                          derived_from=ids if s.linked else ())

    def add_pain(self, p: Pain, derived_from: list[str] | tuple[str, ...] = ()) -> None:
        day = self.date(p.day)
        refs = list(derived_from) + [rid for key in p.derived_from for rid in self.session_rounds[key]]
        res: dict[str, Any] = {"resourceType": "Observation", "id": self.ids.new("pain", p.label, f"{day:%Y%m%d}")}
        if p.invalid:
            res["meta"] = {"tag": [DELIBERATELY_INVALID_TAG]}
        res.update({
            "status": p.status,
            "category": [concept(OBSERVATION_CATEGORY, "survey", "Survey")],
            "code": concept(LOINC, "72514-3", "Pain severity - 0-10 verbal numeric rating [Score] - Reported"),
            "subject": self.subject(p.subject),
            "effectiveDateTime": p.effective or f"{day.isoformat()}T{p.time}",
        })
        if p.value == "quantity":
            res["valueQuantity"] = {"value": p.score, "unit": "score", "system": UCUM, "code": "{score}"}
        elif p.value == "answer":
            res["valueCodeableConcept"] = concept(LOINC, PAIN_ANSWERS[p.score], str(p.score))
        else:
            res["valueInteger"] = p.score
        if refs:
            res["derivedFrom"] = [{"reference": f"Observation/{rid}"} for rid in refs]
        self.pains.append(res)


def _newest_first(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Order like ``_sort=-date``; a resource with an unparseable date goes last."""
    def key(res: dict[str, Any]) -> tuple[int, dt.datetime]:
        try:
            return 1, dt.datetime.fromisoformat(res["effectiveDateTime"]).astimezone(dt.timezone.utc)
        except ValueError:
            return 0, dt.datetime.min.replace(tzinfo=dt.timezone.utc)
    return sorted(resources, key=key, reverse=True)


def searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": len(resources)}
    if resources:
        bundle["entry"] = [{"fullUrl": f"{FHIR_BASE}/{r['resourceType']}/{r['id']}", "resource": r,
                            "search": {"mode": "match"}} for r in resources]
    return bundle


def patient_resource(patient_id: str, scenario: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": patient_id, "active": True,
            "name": [{"use": "official", "family": "Example", "given": [scenario]}],
            "gender": "female", "birthDate": "1978-04-12"}


def build_request(s: Scenario, anchor: dt.date) -> dict[str, Any]:
    patient_id = f"lbp-{s.name}"
    req = _Request(anchor, patient_id)
    for c in s.conditions:
        req.add_condition(c)
    for session in s.sessions:
        req.add_session(session)
    for pain in s.pains:
        req.add_pain(pain)
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid5(HOOK_INSTANCE_NAMESPACE, s.name)),
        "context": {"userId": "Practitioner/example", "patientId": patient_id},
        "prefetch": {
            "patient": patient_resource(patient_id, s.name),
            "lbpConditions": searchset(req.conditions),
            "painScores": searchset(_newest_first(req.pains)),
            "exerciseRounds": searchset(_newest_first(req.rounds)),
        },
    }


def build_expected(s: Scenario, anchor: dt.date) -> dict[str, Any]:
    return {"scenario": s.name, "description": s.description, "evaluationDate": anchor.isoformat(),
            "cards": [dict(c) for c in s.cards], "skippedInvalid": s.skipped_invalid}


# --- validation and output ------------------------------------------------------------------------

def is_deliberately_invalid(resource: dict[str, Any]) -> bool:
    return DELIBERATELY_INVALID_TAG in resource.get("meta", {}).get("tag", [])


def request_resources(request: dict[str, Any]) -> list[dict[str, Any]]:
    """Every resource in a request's prefetch: the Patient, then each Bundle's entries."""
    out = []
    for value in request["prefetch"].values():
        if value is None:
            continue
        if value["resourceType"] == "Bundle":
            out.extend(e["resource"] for e in value.get("entry", []))
        else:
            out.append(value)
    return out


def validate_request(request: dict[str, Any]) -> None:
    """Validate every resource (and each Bundle without its deliberately invalid entries) with R4B."""
    from fhir.resources.R4B import get_fhir_model_class

    for value in request["prefetch"].values():
        if value is None:
            continue
        if value["resourceType"] == "Bundle":
            entries = [e for e in value.get("entry", []) if not is_deliberately_invalid(e["resource"])]
            shell = {k: v for k, v in value.items() if k != "entry"}
            if entries:
                shell["entry"] = entries
            get_fhir_model_class("Bundle").model_validate(shell)
    for resource in request_resources(request):
        if not is_deliberately_invalid(resource):
            get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def load_anchor() -> dt.date:
    return dt.date.fromisoformat(json.loads(CONFIG_FILE.read_text())["evaluationDate"])


def render(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def describe_cards(cards: list[dict[str, Any]]) -> str:
    parts = []
    for c in cards:
        text = c["decision"] + (f" → {c['recommendedExercise']}" if "recommendedExercise" in c else "")
        rule = f", rule {c['ruleId']}" if c["ruleId"] != c["decision"] else ""
        notes = f", note {', '.join(c['notes'])}" if c.get("notes") else ""
        parts.append(f"{text} ({c['indicator']}{rule}{notes})")
    return "; ".join(parts)


def build_readme(anchor: dt.date) -> str:
    rows = []
    for s in SCENARIOS:
        expected = build_expected(s, anchor)
        skipped = f"; skippedInvalid {s.skipped_invalid}" if s.skipped_invalid else ""
        rows.append(f"| `{s.name}` | {s.description} | {describe_cards(expected['cards'])}{skipped} |")
    return README_TEMPLATE.format(anchor=anchor.isoformat(), table="\n".join(rows))


def build(anchor: dt.date | None = None) -> dict[str, str]:
    """Every generated file: path relative to ``fhir_examples/`` -> exact text. Validates the requests."""
    anchor = anchor or load_anchor()
    names = [s.name for s in SCENARIOS]
    assert len(names) == len(set(names)), "duplicate scenario name"
    files: dict[str, str] = {}
    for s in SCENARIOS:
        request = build_request(s, anchor)
        validate_request(request)
        files[f"requests/{s.name}.json"] = render(request)
        files[f"requests/{s.name}.expected.json"] = render(build_expected(s, anchor))
    files["README.md"] = build_readme(anchor)
    return files


def main() -> int:
    files = build()
    REQUESTS_DIR.mkdir(exist_ok=True)
    for stale in REQUESTS_DIR.glob("*.json"):
        if f"requests/{stale.name}" not in files:
            stale.unlink()
    for rel, text in files.items():
        (HERE / rel).write_text(text, encoding="utf-8")
    print(f"wrote {len(SCENARIOS)} scenarios to {REQUESTS_DIR.relative_to(HERE.parent)}/ and README.md")
    return 0


README_TEMPLATE = """\
# FHIR example requests

Complete CDS Hooks 2.0 `patient-view` requests for the `lbp-exercise-progression` service, one per
clinical scenario, each with the cards the service must answer. They are for demos, for trying the
service with curl, and for the end-to-end tests.

*Generated by `generate.py`; do not edit this README or `requests/` by hand.*

## Files

- `config.json`: the anchor evaluation date, **{anchor}**. Every date in the examples is a day
  offset from it, so the examples never rot: start the service with `CDS_EVALUATION_DATE={anchor}`.
- `requests/<scenario>.json`: the request. `hook`, a fixed `hookInstance`, `context`
  (`userId` `Practitioner/example`, `patientId` `lbp-<scenario>`) and `prefetch` with exactly the
  keys `patient` (a Patient), `lbpConditions`, `painScores` and `exerciseRounds` (searchset Bundles,
  newest first like `_sort=-date`). There is no `fhirServer`: everything is prefetched.
- `requests/<scenario>.expected.json`: the expected outcome,
  `{{"scenario", "description", "evaluationDate", "cards": [...], "skippedInvalid"}}`. `cards` lists
  the cards in response order, each `{{"decision", "ruleId", "indicator", "recommendedExercise"}}`
  (`recommendedExercise` absent when the card recommends none) plus `"notes": [...]` only when a
  rule-file note (e.g. `incomplete-session`) is expected on that card. Compare these fields with the
  card's `extension["org.lbp-cds.recommendation"]`, the card's `indicator`, and `skippedInvalid` with
  `facts.skippedInvalid` (absent or 0 when nothing was skipped).
- `generate.py`: the scenarios, declared as data at its top, and the generator.

Resources follow SPEC section 2: LBP Conditions (SNOMED CT 279039007/278860009 or ICD-10-CM M54.5x),
pain scores (LOINC 72514-3, `valueInteger` unless the scenario says otherwise) and one exercise-round
Observation per round (`reps-to-technical-failure`, components `exercise` and `round`). Most patients
also have two older sessions (16 and 9 days before the anchor) so choosing the *latest* session matters;
the latest session is 2 days before the anchor. Some pain scores carry `derivedFrom` references to
their session's rounds, others rely on being on the session's date.

Every resource is valid FHIR R4 (checked with the `fhir.resources` R4B models by the generator and by
`tests/test_examples_data.py`) except the one a scenario breaks on purpose; it carries the `meta.tag`
`https://lbp-cds.org/fhir/CodeSystem/example-tag|deliberately-invalid`.

## Regenerate

```sh
.venv/bin/python fhir_examples/generate.py
```

Commit the script and its output together; the test fails when they differ.

## Try one

```sh
CDS_EVALUATION_DATE={anchor} make run    # in another terminal
curl -s -X POST http://127.0.0.1:8080/cds-services/lbp-exercise-progression -H 'Content-Type: application/json' -d @fhir_examples/requests/bird-dog-28-27.json
```

## Scenarios

| scenario | what it shows | expected cards (decision → recommended exercise, indicator) |
|---|---|---|
{table}
"""


if __name__ == "__main__":
    sys.exit(main())
