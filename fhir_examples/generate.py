"""Generate the example CDS Hooks requests in ``rules/tests/requests/`` and ``README.md``.

Run ``.venv/bin/python fhir_examples/generate.py``. For every scenario declared below it writes

* ``rules/tests/requests/<scenario>.json``: a complete ``patient-view`` request with all four prefetch
  keys (``fhir_examples/requests`` is a symlink to that folder, so ``-d @fhir_examples/requests/...``
  keeps working); a scenario with ``drafts`` is an ``order-sign`` request instead (the same prefetch,
  and ``context.draftOrders``), written to ``rules/tests/requests/order-sign/<scenario>.json``;
* a row of the scenario table in ``fhir_examples/README.md``.

The scenarios here declare only the patient data. What each one shows (``description``) and the cards
the service must answer (``expect``) are written once, in the rule test case of the same name in
``rules/tests/examples.yaml``; the README table is built from those cases, so the expected outcome of a
scenario has a single source, tested by ``cds rules test rules``.

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
ROOT = HERE.parent
RULE_TESTS_DIR = ROOT / "rules" / "tests"
REQUESTS_DIR = RULE_TESTS_DIR / "requests"
EXAMPLE_CASES = RULE_TESTS_DIR / "examples.yaml"
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
SNOMED = "http://snomed.info/sct"
EXERCISE_THERAPY = ("229065009", "Exercise therapy")
PHYSICAL_THERAPY = ("91251008", "Physical therapy procedure")
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
FHIR_BASE = "https://ehr.example.org/fhir"
HOOK_INSTANCE_NAMESPACE = uuid.UUID("6f1c2f4e-6a53-4f0e-9a43-1b5c0c1d7e21")
DELIBERATELY_INVALID_TAG = {
    "system": "https://lbp-cds.org/fhir/CodeSystem/example-tag",
    "code": "deliberately-invalid",
    "display": "Deliberately invalid example resource: the service must skip it",
}
#: a valid FHIR resource the service cannot use (e.g. an effective date written only to the month):
#: skipped and counted like an invalid one
DELIBERATELY_UNUSABLE_TAG = {
    "system": "https://lbp-cds.org/fhir/CodeSystem/example-tag",
    "code": "deliberately-unusable",
    "display": "Valid FHIR the service cannot use on purpose: it must skip and count it",
}

LBP_CODES = {
    "279039007": ("http://snomed.info/sct", "Low back pain"),
    "278860009": ("http://snomed.info/sct", "Chronic low back pain"),
    "M54.5": ("http://hl7.org/fhir/sid/icd-10-cm", "Low back pain"),
    "M54.50": ("http://hl7.org/fhir/sid/icd-10-cm", "Low back pain, unspecified"),
    "M54.51": ("http://hl7.org/fhir/sid/icd-10-cm", "Vertebrogenic low back pain"),
    "M54.59": ("http://hl7.org/fhir/sid/icd-10-cm", "Other low back pain"),
}
#: red-flag and risk-factor codes used by the scenarios (rules/codes.yaml: red_flags, red_flag_risks)
FLAG_CODES = {
    "192970008": ("http://snomed.info/sct", "Cauda equina syndrome"),
    "S32.010A": ("http://hl7.org/fhir/sid/icd-10-cm",
                 "Wedge compression fracture of first lumbar vertebra, initial encounter for closed fracture"),
    "Z79.52": ("http://hl7.org/fhir/sid/icd-10-cm", "Long term (current) use of systemic steroids"),
}
CONDITION_CODES = {**LBP_CODES, **FLAG_CODES}
PAIN_ANSWERS = {0: "LA6111-4", 1: "LA6112-2", 2: "LA6113-0", 3: "LA6114-8", 4: "LA6115-5", 5: "LA10137-0",
                6: "LA10138-8", 7: "LA10139-6", 8: "LA10140-4", 9: "LA10141-2", 10: "LA13942-0"}

HA, BD, SL, RH = "hip-abduction", "bird-dog", "single-leg-reverse-hyper", "reverse-hyper"
LADDER = [HA, BD, SL, RH]


# --- scenario building blocks ---------------------------------------------------------------------

@dataclass(frozen=True)
class Condition:
    """A Condition (LBP unless ``code`` is one of FLAG_CODES). ``onset`` is a day offset (None: no onset recorded)."""

    onset: int | None
    period: bool = False  # onsetPeriod.start instead of onsetDateTime
    code: str = "279039007"
    clinical: str | None = "active"
    verification: str = "confirmed"
    subject: str | None = None  # another patient's id; default: the scenario's patient
    onset_text: str | None = None  # an onset written literally (e.g. the month "2026-10"), instead of ``onset``
    invalid: bool = False  # deliberately fails FHIR validation (an impossible ``onset_text``); never validated here


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
    unusable: bool = False  # valid FHIR the service cannot use (tagged DELIBERATELY_UNUSABLE_TAG)


@dataclass(frozen=True)
class Draft:
    """A draft ServiceRequest of an order-sign request: coded exercise therapy plus, when ``exercise``
    is given, its ladder code (without one it is not a ladder exercise order)."""

    exercise: str | None
    label: str = ""


@dataclass(frozen=True)
class Scenario:
    """The patient data of one example; its description and expected cards are in rules/tests/examples.yaml.

    With ``drafts`` the scenario is an ``order-sign`` request signing those draft orders."""

    name: str
    sessions: tuple[Session, ...] = ()
    pains: tuple[Pain, ...] = ()
    conditions: tuple[Condition, ...] = (Condition(onset=-300),)
    drafts: tuple[Draft, ...] = ()

    @property
    def hook(self) -> str:
        return "order-sign" if self.drafts else "patient-view"

    @property
    def path(self) -> str:
        """The request file, relative to ``rules/tests/requests``."""
        return f"order-sign/{self.name}.json" if self.drafts else f"{self.name}.json"

    @property
    def deliberately_invalid(self) -> int:
        """How many resources of the request are broken on purpose (and must be skipped as invalid)."""
        return sum(p.invalid for p in self.pains) + sum(c.invalid for c in self.conditions)

    @property
    def deliberately_unusable(self) -> int:
        """How many resources are valid FHIR the service cannot use, on purpose (skipped and counted)."""
        return sum(p.unusable for p in self.pains)


def older(exercise: str, linked: bool = False, pain: int | None = 1) -> tuple[Session, ...]:
    """Two older sessions (16 and 9 days ago) on the rung below ``exercise`` (or the same first rung)."""
    below = LADDER[max(LADDER.index(exercise) - 1, 0)]
    return (Session(-16, below, (19, 18), pain=pain, linked=linked),
            Session(-9, below, (23, 22), pain=pain, linked=linked))


L = -2  # the day of the latest session in most scenarios


# --- the scenarios --------------------------------------------------------------------------------

SCENARIOS: tuple[Scenario, ...] = (
    # onset
    Scenario("new-onset",
             conditions=(Condition(-10),),
             sessions=(*older(BD), Session(L, BD, (28, 27), pain=1))),
    Scenario("new-onset-period",
             conditions=(Condition(-10, period=True, code="M54.50"),),
             sessions=(*older(BD), Session(L, BD, (20, 18), pain=1))),
    Scenario("recurrence-new-onset",
             conditions=(Condition(-400, code="278860009"), Condition(-20, code="M54.59", clinical="recurrence")),
             sessions=(*older(BD), Session(L, BD, (20, 18), pain=1))),
    Scenario("onset-undocumented",
             conditions=(), sessions=(*older(BD), Session(L, BD, (20, 18), pain=1))),
    Scenario("condition-without-onset",
             conditions=(Condition(None, code="M54.5"),),
             sessions=(*older(BD), Session(L, BD, (20, 18), pain=1, linked=True))),
    Scenario("onset-period",
             conditions=(Condition(-200, period=True),),
             sessions=(*older(BD), Session(L, BD, (28, 27), pain=1))),
    # start
    Scenario("no-sessions",
             conditions=(Condition(-300, code="278860009"),)),
    # safety: red flags, risk factors, outside the programme
    Scenario("red-flag-cauda-equina",
             conditions=(Condition(-300), Condition(-3, code="192970008")),
             sessions=(*older(BD), Session(L, BD, (28, 27), pain=1))),
    Scenario("red-flag-fracture-prefix",
             conditions=(Condition(-300), Condition(-20, code="S32.010A")),
             sessions=(*older(BD), Session(L, BD, (28, 27), pain=1))),
    Scenario("red-flag-refuted",
             conditions=(Condition(-300), Condition(-3, code="192970008", verification="refuted"),
                         Condition(-20, code="S32.010A", clinical=None, verification="entered-in-error")),
             sessions=(*older(BD), Session(L, BD, (28, 27), pain=1))),
    Scenario("risk-steroids-step-up",
             conditions=(Condition(-300), Condition(-700, code="Z79.52")),
             sessions=(*older(BD), Session(L, BD, (28, 27), pain=1))),
    Scenario("red-flag-unreadable",
             conditions=(Condition(-300), Condition(None, code="S32.010A", onset_text="2026-02-30", invalid=True)),
             sessions=(*older(BD), Session(L, BD, (28, 27), pain=1))),
    Scenario("outside-programme", conditions=()),
    # pain gate
    Scenario("pain-5-bird-dog",
             sessions=(*older(BD), Session(L, BD, (20, 19), pain=5, linked=True))),
    Scenario("pain-4-hip-abduction",
             sessions=(*older(HA), Session(L, HA, (20, 20), pain=4))),
    Scenario("no-pain-recorded",
             sessions=(*older(BD, pain=None), Session(L, BD, (22, 21)))),
    Scenario("pain-loinc-answer",
             sessions=(*older(BD), Session(L, BD, (22, 20))),
             pains=(Pain(L, 2, value="answer"),)),
    Scenario("pain-value-quantity",
             sessions=(*older(BD), Session(L, BD, (20, 18))),
             pains=(Pain(L, 4, value="quantity"),)),
    # rep range
    Scenario("bird-dog-12-14",
             sessions=(*older(BD), Session(L, BD, (12, 14), pain=1))),
    Scenario("bird-dog-20-18",
             sessions=(*older(BD), Session(L, BD, (20, 18), pain=1))),
    Scenario("bird-dog-28-27",
             sessions=(*older(BD, linked=True), Session(L, BD, (28, 27), pain=1, linked=True))),
    Scenario("reverse-hyper-30-29",
             sessions=(*older(RH, linked=True), Session(L, RH, (30, 29), pain=0, linked=True))),
    Scenario("hip-abduction-10-9",
             sessions=(*older(HA), Session(L, HA, (10, 9), pain=1))),
    Scenario("single-round",
             sessions=(*older(BD), Session(L, BD, (20,), pain=1, linked=True))),
    # latest-session selection and pain association
    Scenario("two-exercises-same-day",
             sessions=(*older(BD), Session(L, HA, (20, 20), time="11:00:00-05:00"), Session(L, BD, (22, 21), pain=1))),
    # order-sign: draft exercise orders checked against the decision
    Scenario("order-agrees",
             sessions=(*older(BD), Session(L, BD, (20, 18), pain=1)),
             drafts=(Draft(BD), Draft(None, label="referral"))),
    Scenario("order-one-rung-too-high",
             sessions=(*older(BD), Session(L, BD, (20, 18), pain=1)),
             drafts=(Draft(SL),)),
    Scenario("order-new-onset-beside-risk",
             conditions=(Condition(-10), Condition(-700, code="Z79.52")),
             sessions=(*older(BD), Session(L, BD, (28, 27), pain=1)),
             drafts=(Draft(SL),)),
    Scenario("order-red-flag",
             conditions=(Condition(-300), Condition(-20, code="S32.010A")),
             sessions=(*older(BD), Session(L, BD, (20, 18), pain=1)),
             drafts=(Draft(BD),)),
    Scenario("pain-derived-from",
             sessions=(Session(-16, BD, (19, 18), pain=1, linked=True), Session(-9, BD, (20, 18)),
                       Session(L, BD, (28, 27))),
             pains=(Pain(L + 1, 4, derived_from=((L, BD),), time="08:15:00-05:00"),
                    Pain(L, 0, derived_from=((-9, BD),), time="18:00:00-05:00"))),
    Scenario("pain-derived-from-older-session",
             sessions=(Session(-16, BD, (19, 18), pain=1), Session(-9, BD, (20, 18)), Session(L, BD, (28, 27))),
             pains=(Pain(L, 5, derived_from=((-9, BD),)),)),
    Scenario("date-as-written",
             sessions=(*older(BD), Session(L, BD, (28, 27), time="23:10:00-05:00")),
             pains=(Pain(L, 1, time="23:40:00-05:00"), Pain(L + 1, 4, time="05:00:00+00:00"))),
    # resources that must not be used
    Scenario("ignored-resources",
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
                    Pain(L, 7, status="preliminary", label="prelim", time="11:30:00-05:00"))),
    Scenario("invalid-resource",
             sessions=(*older(BD), Session(L, BD, (28, 27), pain=1, linked=True)),
             pains=(Pain(L, 9, derived_from=((L, BD),), label="invalid", effective="2026-02-30T10:00:00Z",
                         invalid=True),)),
    # boundaries of SPEC section 1
    Scenario("boundary-reps-15-15",
             sessions=(*older(BD), Session(L, BD, (15, 15), pain=1))),
    Scenario("boundary-reps-25-25",
             sessions=(*older(BD), Session(L, BD, (25, 25), pain=1, linked=True))),
    Scenario("boundary-reps-26-26",
             sessions=(*older(BD), Session(L, BD, (26, 26), pain=1))),
    Scenario("boundary-reps-25-26",
             sessions=(*older(BD), Session(L, BD, (25, 26), pain=1))),
    Scenario("boundary-reps-14-20",
             sessions=(*older(BD), Session(L, BD, (14, 20), pain=1, linked=True))),
    Scenario("boundary-pain-2",
             sessions=(*older(BD), Session(L, BD, (20, 18), pain=2))),
    Scenario("boundary-pain-3",
             sessions=(*older(BD), Session(L, BD, (20, 18), pain=3))),
    Scenario("boundary-onset-41-days",
             conditions=(Condition(-41),),
             sessions=(*older(BD), Session(L, BD, (20, 18), pain=1))),
    Scenario("boundary-onset-42-days",
             conditions=(Condition(-42),),
             sessions=(*older(BD), Session(L, BD, (20, 18), pain=1))),
    # imprecise and impossible dates, sessions as prescribed (anchor 2026-11-20, new_onset_days 42)
    Scenario("onset-month-new",
             conditions=(Condition(None, onset_text="2026-11"),),
             sessions=(*older(BD), Session(L, BD, (28, 27), pain=1))),
    Scenario("onset-month-straddling",
             conditions=(Condition(None, onset_text="2026-10"),),
             sessions=(*older(BD), Session(L, BD, (28, 27), pain=1))),
    Scenario("onset-month-old",
             conditions=(Condition(None, onset_text="2026-06"),),
             sessions=(*older(BD), Session(L, BD, (28, 27), pain=1))),
    Scenario("onset-month-beside-old-condition",
             conditions=(Condition(-300, code="278860009"), Condition(None, code="M54.50", onset_text="2026-10")),
             sessions=(*older(BD), Session(L, BD, (20, 18), pain=1))),
    Scenario("onset-future",
             conditions=(Condition(16),),
             sessions=(*older(BD), Session(L, BD, (20, 18), pain=1))),
    Scenario("extra-round-28-27-14",
             sessions=(*older(BD), Session(L, BD, (28, 27, 14), pain=1, linked=True))),
    Scenario("single-round-28",
             sessions=(*older(BD), Session(L, BD, (28,), pain=1))),
    Scenario("stale-session",
             sessions=(Session(-40, HA, (20, 19), pain=1), Session(-31, BD, (28, 27), pain=1))),
    Scenario("pain-9-partial-date",
             sessions=(*older(BD), Session(L, BD, (20, 18), pain=1)),
             pains=(Pain(L, 9, label="month", effective="2026-11", unusable=True),)),
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
        system, display = CONDITION_CODES[c.code]
        res: dict[str, Any] = {"resourceType": "Condition", "id": self.ids.new("condition", len(self.conditions) + 1)}
        if c.invalid:
            res["meta"] = {"tag": [DELIBERATELY_INVALID_TAG]}
        if c.clinical:  # FHIR con-5: no clinicalStatus on an entered-in-error condition
            res["clinicalStatus"] = concept(CONDITION_CLINICAL, c.clinical)
        res["verificationStatus"] = concept(CONDITION_VERIFICATION, c.verification)
        res["category"] = [concept(CONDITION_CATEGORY, "problem-list-item", "Problem List Item")]
        res["code"] = {"coding": [coding(system, c.code, display)], "text": display}
        res["subject"] = self.subject(c.subject)
        if c.onset is not None or c.onset_text is not None:
            onset = c.onset_text if c.onset_text is not None else self.date(c.onset or 0).isoformat()
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
        elif p.unusable:
            res["meta"] = {"tag": [DELIBERATELY_UNUSABLE_TAG]}
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
    """Order like ``_sort=-date``; a resource with an unparseable or partial date goes last."""
    def key(res: dict[str, Any]) -> tuple[int, dt.datetime]:
        try:
            if len(res["effectiveDateTime"]) < 10:
                raise ValueError("a partial date")
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


def draft_order(d: Draft, patient_id: str, anchor: dt.date, ids: _Ids) -> dict[str, Any]:
    codings = [coding(SNOMED, *EXERCISE_THERAPY)]
    if d.exercise:
        codings.append(coding(EXERCISE_SYSTEM, d.exercise))
    return {
        "resourceType": "ServiceRequest", "id": ids.new("draft", d.label, d.exercise),
        "status": "draft", "intent": "order",
        "category": [concept(SNOMED, *PHYSICAL_THERAPY)],
        "code": {"coding": codings},
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": anchor.isoformat(),
        "requester": {"reference": "Practitioner/example"},
    }


def build_request(s: Scenario, anchor: dt.date) -> dict[str, Any]:
    patient_id = f"lbp-{s.name}"
    req = _Request(anchor, patient_id)
    for c in s.conditions:
        req.add_condition(c)
    for session in s.sessions:
        req.add_session(session)
    for pain in s.pains:
        req.add_pain(pain)
    context: dict[str, Any] = {"userId": "Practitioner/example", "patientId": patient_id}
    if s.drafts:
        context["draftOrders"] = {"resourceType": "Bundle", "type": "collection",
                                  "entry": [{"resource": draft_order(d, patient_id, anchor, req.ids)} for d in s.drafts]}
    return {
        "hook": s.hook,
        "hookInstance": str(uuid.uuid5(HOOK_INSTANCE_NAMESPACE, s.name)),
        "context": context,
        "prefetch": {
            "patient": patient_resource(patient_id, s.name),
            "conditions": searchset(req.conditions),
            "painScores": searchset(_newest_first(req.pains)),
            "exerciseRounds": searchset(_newest_first(req.rounds)),
        },
    }


# --- validation and output ------------------------------------------------------------------------

def is_deliberately_invalid(resource: dict[str, Any]) -> bool:
    return DELIBERATELY_INVALID_TAG in resource.get("meta", {}).get("tag", [])


def is_deliberately_unusable(resource: dict[str, Any]) -> bool:
    return DELIBERATELY_UNUSABLE_TAG in resource.get("meta", {}).get("tag", [])


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

    drafts = request["context"].get("draftOrders")
    if drafts is not None:
        get_fhir_model_class("Bundle").model_validate(drafts)

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


def load_example_cases(path: Path = EXAMPLE_CASES) -> dict[str, dict[str, Any]]:
    """The rule test cases of ``rules/tests/examples.yaml`` by request file, without ``requests/`` and
    ``.json`` (``<name>``, or ``order-sign/<name>`` for an order-sign scenario)."""
    import yaml

    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    out: dict[str, dict[str, Any]] = {}
    for case in doc.get("cases") or []:
        request = str(case.get("request", ""))
        if request.startswith("requests/") and request.endswith(".json"):
            out[request.removeprefix("requests/").removesuffix(".json")] = case
    return out


def describe_cards(cards: list[dict[str, Any]]) -> str:
    """The expected cards of a rule test case, as the README table shows them."""
    parts = []
    for c in cards:
        text = c["decision"] + (f" → {c['recommended']}" if c.get("recommended") else "")
        rule = f", rule {c['rule']}" if c["rule"] != c["decision"] else ""
        notes = f", note {', '.join(c['notes'])}" if c.get("notes") else ""
        parts.append(f"{text} ({c['indicator']}{rule}{notes})")
    return "; ".join(parts) or "no card"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def build_readme(anchor: dt.date, cases: dict[str, dict[str, Any]]) -> str:
    rows = []
    for s in SCENARIOS:
        case = cases[s.path.removesuffix(".json")]
        skipped = f"; skippedInvalid {case['skipped_invalid']}" if case.get("skipped_invalid") else ""
        rows.append(f"| `{s.path.removesuffix('.json')}` | {_cell(case.get('description', ''))} | "
                    f"{describe_cards(case.get('expect') or [])}{skipped} |")
    return README_TEMPLATE.format(anchor=anchor.isoformat(), table="\n".join(rows))


def build(anchor: dt.date | None = None, cases: dict[str, dict[str, Any]] | None = None) -> dict[str, str]:
    """Every generated file: path relative to the repository root -> exact text. Validates the requests.

    Every scenario needs a rule test case in ``rules/tests/examples.yaml`` with a ``description``."""
    anchor = anchor or load_anchor()
    cases = load_example_cases() if cases is None else cases
    names = [s.name for s in SCENARIOS]
    assert len(names) == len(set(names)), "duplicate scenario name"
    keys = [s.path.removesuffix(".json") for s in SCENARIOS]
    missing = [n for n in keys if n not in cases or not cases[n].get("description")]
    assert not missing, f"scenarios without a described case (request: requests/<name>.json) in examples.yaml: {missing}"
    files: dict[str, str] = {}
    for s in SCENARIOS:
        request = build_request(s, anchor)
        validate_request(request)
        files[f"rules/tests/requests/{s.path}"] = render(request)
    files["fhir_examples/README.md"] = build_readme(anchor, cases)
    return files


def main() -> int:
    files = build()
    (REQUESTS_DIR / "order-sign").mkdir(parents=True, exist_ok=True)
    for stale in [*REQUESTS_DIR.glob("*.json"), *REQUESTS_DIR.glob("order-sign/*.json")]:
        if f"rules/tests/requests/{stale.relative_to(REQUESTS_DIR)}" not in files:
            stale.unlink()
    for rel, text in files.items():
        (ROOT / rel).write_text(text, encoding="utf-8")
    print(f"wrote {len(SCENARIOS)} scenarios to {REQUESTS_DIR.relative_to(ROOT)}/ and fhir_examples/README.md")
    return 0


README_TEMPLATE = """\
# FHIR example requests

Complete CDS Hooks 2.0 `patient-view` requests for the `lbp-exercise-progression` service, one per
clinical scenario, and `order-sign` requests for the `lbp-exercise-order-check` service (in
`requests/order-sign/`). They are for demos, for trying the service with curl, and for the end-to-end tests.

*Generated by `generate.py`; do not edit this README or `requests/` by hand.*

## Files

- `config.json`: the anchor evaluation date, **{anchor}**. Every date in the examples is a day
  offset from it, so the examples never rot: start the service with `CDS_EVALUATION_DATE={anchor}`.
- `requests/<scenario>.json`: the request (`requests/` links to `../rules/tests/requests/`: the rule
  tests own the files, so a copy of `rules/` carries everything its cases need). `hook`, a fixed `hookInstance`, `context`
  (`userId` `Practitioner/example`, `patientId` `lbp-<scenario>`) and `prefetch` with exactly the
  keys `patient` (a Patient), `conditions`, `painScores` and `exerciseRounds` (searchset Bundles,
  newest first like `_sort=-date`). There is no `fhirServer`: everything is prefetched.
- `requests/order-sign/<scenario>.json`: an `order-sign` request with the same prefetch and
  `context.draftOrders`, a Bundle of draft ServiceRequests coded SNOMED CT 229065009 (exercise
  therapy) with, for a ladder exercise, its ladder code; a draft without a ladder code is not checked.
- The expected outcome of each scenario is written once, in the rule test case of the same name in
  [`rules/tests/examples.yaml`](../rules/tests/examples.yaml) (`description`, `expect`: the cards in
  response order, and `skipped_invalid`), checked by `cds rules test rules`; the table below is built
  from those cases. See docs/rule-authoring.md for the case format.
- `generate.py`: the scenarios (patient data only), declared as data at its top, and the generator.

Resources follow SPEC section 2: LBP Conditions (SNOMED CT 279039007/278860009 or ICD-10-CM M54.5x),
pain scores (LOINC 72514-3, `valueInteger` unless the scenario says otherwise) and one exercise-round
Observation per round (`reps-to-technical-failure`, components `exercise` and `round`). Most patients
also have two older sessions (16 and 9 days before the anchor) so choosing the *latest* session matters;
the latest session is 2 days before the anchor. Some pain scores carry `derivedFrom` references to
their session's rounds, others rely on being on the session's date.

Every resource is valid FHIR R4 (checked with the `fhir.resources` R4B models by the generator and by
`tests/test_examples_data.py`) except the one a scenario breaks on purpose; it carries the `meta.tag`
`https://lbp-cds.org/fhir/CodeSystem/example-tag|deliberately-invalid`. A resource that is valid FHIR but
that the service cannot use on purpose (a pain score dated only to the month) carries
`https://lbp-cds.org/fhir/CodeSystem/example-tag|deliberately-unusable`; both are skipped and counted.

## Regenerate

```sh
.venv/bin/python fhir_examples/generate.py
```

Commit the script, `rules/tests/examples.yaml` and the output together; `tests/test_examples_data.py`
fails when they differ. A new scenario needs a case with a `description` in `rules/tests/examples.yaml`.

## Try one

```sh
CDS_EVALUATION_DATE={anchor} make run    # in another terminal
curl -s -X POST http://127.0.0.1:8080/cds-services/lbp-exercise-progression -H 'Content-Type: application/json' -d @fhir_examples/requests/bird-dog-28-27.json
curl -s -X POST http://127.0.0.1:8080/cds-services/lbp-exercise-order-check -H 'Content-Type: application/json' -d @fhir_examples/requests/order-sign/order-one-rung-too-high.json
```

## Scenarios

From `rules/tests/examples.yaml`:

| scenario | what it shows | expected cards (decision → recommended exercise, indicator) |
|---|---|---|
{table}
"""


if __name__ == "__main__":
    sys.exit(main())
