"""Typed facts extracted from a patient's FHIR data, and the flat assessment the rule engine sees.

Data flows one way: FHIR JSON -> :class:`PatientFacts` (``cds.extract``) -> :class:`Assessment`
(``cds.assessment``) -> rule engine -> decisions -> cards. Nothing here knows about HTTP or Flask.
"""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field


class _Fact(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LbpCondition(_Fact):
    """An active, non-refuted low back pain Condition with its onset (if documented)."""

    resource_id: str
    onset: dt.date | None = None


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


class Session(_Fact):
    """The rounds of one exercise on one calendar date, with the pain scores that belong to it."""

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


class SkippedResource(_Fact):
    """A resource that was not used, and why. Never carries clinical values or patient ids."""

    resource_type: str
    resource_id: str | None
    reason: str
    invalid: bool = False  # True when it failed FHIR R4 validation (counted on the card)


class PatientFacts(_Fact):
    """Everything the rules may need, extracted from one hook request's FHIR data."""

    patient_id: str
    conditions: tuple[LbpCondition, ...] = ()
    red_flags: tuple[FlaggedCondition, ...] = ()  # conditions in a ``codes.red_flags`` category
    risk_factors: tuple[FlaggedCondition, ...] = ()  # conditions in a ``codes.red_flag_risks`` category
    pain_scores: tuple[PainScore, ...] = ()
    rounds: tuple[ExerciseRound, ...] = ()
    latest_session: Session | None = None
    skipped: tuple[SkippedResource, ...] = ()

    @property
    def onset(self) -> dt.date | None:
        """The most recent documented onset among matching conditions."""
        return max((c.onset for c in self.conditions if c.onset), default=None)

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
