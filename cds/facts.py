"""Typed facts extracted from a patient's FHIR data, and the flat assessment the rule engine sees.

Data flows one way: FHIR JSON -> :class:`PatientFacts` (``cds.extract``) -> :class:`Assessment`
(``cds.assessment``) -> rule engine -> decisions -> cards. Nothing here knows about HTTP or Flask.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: how precisely a date was written: ``YYYY``, ``YYYY-MM``, or a day (``YYYY-MM-DD`` or a dateTime)
Precision = Literal["day", "month", "year"]


class _Fact(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LbpCondition(_Fact):
    """An active, non-refuted low back pain Condition with its onset (if documented).

    An onset written to the year or month (``2026``, ``2026-06``: valid FHIR) spans a period:
    ``onset`` is its earliest possible day, ``onset_latest`` its latest; for a day they are equal.
    ``onset_text`` is the onset as written (for the card; a dateTime is cut to its date part).
    """

    resource_id: str
    onset: dt.date | None = None  # earliest possible day
    onset_latest: dt.date | None = None  # latest possible day
    onset_precision: Precision | None = None
    onset_text: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _a_day_by_default(cls, data: Any) -> Any:
        """An onset given without its latest day or precision is a day (``onset`` alone)."""
        if isinstance(data, dict) and data.get("onset") is not None:
            data = dict(data)
            data.setdefault("onset_latest", data["onset"])
            data.setdefault("onset_precision", "day")
        return data


class FlaggedCondition(_Fact):
    """An active, non-refuted Condition in a red-flag or risk-factor category of the rule files.

    ``text`` is the condition as the record names it (``code.text``, else the matching coding's
    display, else the category's display): shown on the card, never logged.
    """

    resource_id: str
    category: str  # the category id in the rule files, e.g. "cauda-equina"
    category_display: str  # the category as the card names it
    text: str


class PainScore(_Fact):
    """One 0-10 pain score (LOINC 72514-3)."""

    resource_id: str
    score: float = Field(ge=0, le=10)
    date: dt.date
    derived_from: tuple[str, ...] = ()  # ids of the round Observations it refers to, if any


class ExerciseRound(_Fact):
    """One round of repetitions to technical failure of one ladder exercise."""

    resource_id: str
    exercise: str  # ladder code, e.g. "bird-dog"
    reps: float = Field(ge=0)
    date: dt.date
    round_number: int | None = None
    recorded_at: dt.datetime | None = None  # effective dateTime (with its offset), when it has a time


class Session(_Fact):
    """The rounds of one exercise on one calendar date, with the pain scores that belong to it.

    ``rounds`` holds every round recorded, in round order; how many of them decide (the rule set's
    ``rounds`` parameter) is the assessment's business (``cds.assessment``).
    """

    exercise: str
    date: dt.date
    rounds: tuple[ExerciseRound, ...]
    pain_scores: tuple[PainScore, ...] = ()

    @property
    def reps(self) -> list[float]:
        """Reps per round, in round order (round number, then resource order)."""
        return [r.reps for r in self.rounds]

    @property
    def max_pain(self) -> float | None:
        return max((p.score for p in self.pain_scores), default=None)


#: what a skipped resource was meant to be, for the card's list of unusable data
SkippedKind = Literal["pain", "round", "condition"]


class SkippedResource(_Fact):
    """A resource that was not used, and why.

    ``resource_type``, ``resource_id`` and ``reason`` (a fixed technical text) are what logs may show.
    The other fields are for the card only, never for logs: what the resource was meant to be
    (``kind``), its date as written, a readable value, and ``reason_key`` (the key of the rule files'
    wording for the reason, ``texts.skipped.reasons``).
    """

    resource_type: str
    resource_id: str | None
    reason: str
    #: True when the data itself is unusable: failed FHIR R4 validation, or valid FHIR that cannot
    #: be used (date not precise to the day, pain outside 0-10, unknown exercise...). Counted on the card.
    invalid: bool = False
    reason_key: str | None = None
    kind: SkippedKind | None = None
    date_text: str | None = None  # the date as written (checked to be date-like), if any
    value: float | None = None  # a readable pain score or reps value, if any
    #: could have belonged to the latest session: dated on or after its date, undated, or linked to
    #: its rounds by ``derivedFrom`` (with no usable session: every skipped round)
    in_session: bool = False
    #: a Condition (kind ``condition``): the display of its red-flag or risk-factor category, None for
    #: a low back pain condition; ``red_flag``: its category is a red flag
    condition: str | None = None
    red_flag: bool = False


class PatientFacts(_Fact):
    """Everything the rules may need, extracted from one hook request's FHIR data."""

    patient_id: str
    conditions: tuple[LbpCondition, ...] = ()
    red_flags: tuple[FlaggedCondition, ...] = ()  # conditions in a ``codes.red_flags`` category
    risk_factors: tuple[FlaggedCondition, ...] = ()  # conditions in a ``codes.red_flag_risks`` category
    pain_scores: tuple[PainScore, ...] = ()
    #: usable pain scores dated after the latest session's day and not associated with it
    pains_after_session: tuple[PainScore, ...] = ()
    rounds: tuple[ExerciseRound, ...] = ()
    latest_session: Session | None = None  # the last of ``sessions``
    #: every session of the history, oldest first (one per date: the highest rung of the date); the
    #: last one is ``latest_session``
    sessions: tuple[Session, ...] = ()
    skipped: tuple[SkippedResource, ...] = ()

    @property
    def onset_condition(self) -> LbpCondition | None:
        """The condition with the most recent documented onset: the latest *latest possible day*
        (``2026-06`` is more recent than ``2026-06-20``); on a tie, the later earliest day."""
        dated = [c for c in self.conditions if c.onset is not None and c.onset_latest is not None]
        return max(dated, key=lambda c: (c.onset_latest, c.onset), default=None)

    @property
    def onset(self) -> dt.date | None:
        """The earliest possible day of the most recent documented onset (see ``onset_condition``)."""
        c = self.onset_condition
        return c.onset if c is not None else None

    @property
    def skipped_invalid(self) -> int:
        return sum(1 for s in self.skipped if s.invalid)

    @property
    def condition_used(self) -> LbpCondition | None:
        """The LBP condition the decision used: the one whose onset counts, else the first (None: none)."""
        onset = self.onset
        for condition in self.conditions:
            if onset is not None and condition.onset == onset:
                return condition
        return self.conditions[0] if self.conditions else None
