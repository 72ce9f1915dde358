"""The flat fact the rules are written against: one patient, one evaluation date.

Rule conditions and card templates name these fields (see ``FACT_FIELDS``). Unknown values are
``None`` here and simply absent from the engine fact, so a comparison on them never matches.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

from .facts import PatientFacts

#: name -> (type, meaning). The rule checker, the docs and ``cds evaluate`` all read this table.
FACT_FIELDS: dict[str, tuple[type, str]] = {
    "condition_recorded": (bool, "an active, not refuted LBP condition exists (with or without an onset)"),
    "red_flag": (bool, "an active, not refuted condition in a red-flag category (codes.red_flags) exists"),
    "red_flag_risk": (bool, "an active, not refuted condition in a risk-factor category (codes.red_flag_risks) exists"),
    "onset_recorded": (bool, "an active LBP condition with a documented onset (any precision) exists"),
    "onset_known": (bool, "onset_recorded, and the onset is not after the evaluation date"),
    "onset_in_future": (bool, "the most recent onset's earliest possible day is after the evaluation date"),
    "onset_precision_day": (bool, "the most recent onset is written to the day (a date or dateTime)"),
    "onset_precision_month": (bool, "the most recent onset is written to the month only (YYYY-MM)"),
    "onset_precision_year": (bool, "the most recent onset is written to the year only (YYYY)"),
    "onset_days_ago": (int, "days from the most recent onset's earliest possible day to the evaluation date"),
    "onset_latest_days_ago": (int, "days from the most recent onset's latest possible day to the evaluation date "
                                   "(negative when that day is after it)"),
    "session_recorded": (bool, "at least one exercise round was recorded"),
    "session_days_ago": (int, "days from the latest session's date to the evaluation date"),
    "rung": (int, "ladder position of the latest session's exercise (1 = first rung)"),
    "on_first_rung": (bool, "the latest session's exercise is the first rung"),
    "on_top_rung": (bool, "the latest session's exercise is the top rung"),
    "rounds_recorded": (int, "rounds recorded in the latest session (all of them)"),
    "rounds_used": (int, "rounds that decide: the first `rounds` (parameter) of the latest session, in round order"),
    "extra_rounds": (int, "rounds of the latest session beyond the first `rounds`: shown, not used"),
    "min_reps": (float, "fewest reps in a round used of the latest session"),
    "max_reps": (float, "most reps in a round used of the latest session"),
    "pain_recorded": (bool, "a pain score is associated with the latest session"),
    "max_pain": (float, "highest pain score (0-10) associated with the latest session"),
    "exercise": (str, "ladder code of the latest session's exercise"),
    "skipped_in_session": (int, "pain scores and rounds skipped as invalid or unusable that could have belonged "
                                "to the latest session (undated, dated on or after it, or linked to its rounds; "
                                "with no usable session, every skipped round)"),
    "skipped_pain_max": (float, "highest readable value among the pain scores skipped as invalid or unusable"),
    "pain_after_session_max": (float, "highest pain score dated after the latest session's date and not associated "
                                      "with it (recorded later, not linked to its rounds)"),
    "skipped_conditions": (int, "low back pain, red-flag and risk-factor conditions skipped as invalid FHIR"),
    "skipped_red_flags": (int, "conditions coded in a red-flag category (codes.red_flags) skipped as invalid FHIR"),
}

#: the parameter that says how many rounds of a session decide (absent: all rounds decide)
ROUNDS_PARAMETER = "rounds"


class Assessment(BaseModel):
    """What the rule engine is told about the patient. Every field is listed in ``FACT_FIELDS``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    condition_recorded: bool = False
    red_flag: bool = False
    red_flag_risk: bool = False
    onset_recorded: bool = False
    onset_known: bool
    onset_in_future: bool = False
    onset_precision_day: bool = False
    onset_precision_month: bool = False
    onset_precision_year: bool = False
    onset_days_ago: int | None = None
    onset_latest_days_ago: int | None = None
    session_recorded: bool
    session_days_ago: int | None = None
    rung: int | None = None
    on_first_rung: bool = False
    on_top_rung: bool = False
    rounds_recorded: int = 0
    rounds_used: int = 0
    extra_rounds: int = 0
    min_reps: float | None = None
    max_reps: float | None = None
    pain_recorded: bool = False
    max_pain: float | None = None
    exercise: str | None = None
    skipped_in_session: int = 0
    skipped_pain_max: float | None = None
    pain_after_session_max: float | None = None
    skipped_conditions: int = 0
    skipped_red_flags: int = 0

    def engine_fact(self) -> dict[str, Any]:
        """The fact as durable-rules wants it: flat, no None, numbers as float (never Decimal)."""
        out: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            out[name] = float(value) if isinstance(value, int) and not isinstance(value, bool) else value
        return out


def rounds_used(rounds_recorded: int, parameters: Mapping[str, float] | None) -> int:
    """How many rounds decide: the ``rounds`` parameter (whole rounds), at most those recorded; all
    of them when the rule set has no such parameter."""
    limit = (parameters or {}).get(ROUNDS_PARAMETER)
    if limit is None or limit < 1:
        return rounds_recorded
    return min(rounds_recorded, int(limit))


def assess(
    facts: PatientFacts,
    ladder: list[str],
    evaluation_date: dt.date,
    parameters: Mapping[str, float] | None = None,
) -> Assessment:
    """Summarise the extracted facts into the flat assessment the rules read.

    ``parameters`` are the rule set's: only ``rounds`` is read (how many rounds of a session decide).
    Every comparison with a clinical threshold is left to the rule files."""
    condition = facts.onset_condition
    values: dict[str, Any] = {
        "condition_recorded": bool(facts.conditions),
        "red_flag": bool(facts.red_flags),
        "red_flag_risk": bool(facts.risk_factors),
        "onset_known": False,
        "session_recorded": False,
    }
    if condition is not None and condition.onset is not None and condition.onset_latest is not None:
        in_future = condition.onset > evaluation_date
        values.update(
            onset_recorded=True,
            onset_known=not in_future,
            onset_in_future=in_future,
            onset_precision_day=condition.onset_precision == "day",
            onset_precision_month=condition.onset_precision == "month",
            onset_precision_year=condition.onset_precision == "year",
            onset_days_ago=(evaluation_date - condition.onset).days,
            onset_latest_days_ago=(evaluation_date - condition.onset_latest).days,
        )
    session = facts.latest_session
    if session is not None:
        rung = ladder.index(session.exercise) + 1
        reps = session.reps
        used = rounds_used(len(reps), parameters)
        values.update(
            session_recorded=True,
            session_days_ago=(evaluation_date - session.date).days,
            exercise=session.exercise,
            rung=rung,
            on_first_rung=rung == 1,
            on_top_rung=rung == len(ladder),
            rounds_recorded=len(reps),
            rounds_used=used,
            extra_rounds=len(reps) - used,
            min_reps=min(reps[:used]),
            max_reps=max(reps[:used]),
            pain_recorded=session.max_pain is not None,
            max_pain=session.max_pain,
        )
        values["pain_after_session_max"] = max((p.score for p in facts.pains_after_session), default=None)
    values["skipped_in_session"] = sum(1 for s in facts.skipped if s.in_session)
    values["skipped_pain_max"] = max(
        (s.value for s in facts.skipped if s.invalid and s.kind == "pain" and s.value is not None), default=None
    )
    values["skipped_conditions"] = sum(1 for s in facts.skipped if s.kind == "condition")
    values["skipped_red_flags"] = sum(1 for s in facts.skipped if s.kind == "condition" and s.red_flag)
    return Assessment(**values)
