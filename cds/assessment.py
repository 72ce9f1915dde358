"""The flat fact the rules are written against: one patient, one evaluation date.

Rule conditions and card templates name these fields (see ``FACT_FIELDS``). Unknown values are
``None`` here and simply absent from the engine fact, so a comparison on them never matches.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict

from .facts import PatientFacts

#: name -> (type, meaning). The rule checker, the docs and ``cds evaluate`` all read this table.
FACT_FIELDS: dict[str, tuple[type, str]] = {
    "condition_recorded": (bool, "an active, not refuted LBP condition exists (with or without an onset)"),
    "red_flag": (bool, "an active, not refuted condition in a red-flag category (codes.red_flags) exists"),
    "red_flag_risk": (bool, "an active, not refuted condition in a risk-factor category (codes.red_flag_risks) exists"),
    "onset_known": (bool, "an active LBP condition with a documented onset exists"),
    "onset_days_ago": (int, "days from the most recent documented onset to the evaluation date"),
    "session_recorded": (bool, "at least one exercise round was recorded"),
    "rung": (int, "ladder position of the latest session's exercise (1 = first rung)"),
    "on_first_rung": (bool, "the latest session's exercise is the first rung"),
    "on_top_rung": (bool, "the latest session's exercise is the top rung"),
    "rounds_recorded": (int, "rounds recorded in the latest session"),
    "min_reps": (float, "fewest reps in a round of the latest session"),
    "max_reps": (float, "most reps in a round of the latest session"),
    "pain_recorded": (bool, "a pain score is associated with the latest session"),
    "max_pain": (float, "highest pain score (0-10) associated with the latest session"),
    "exercise": (str, "ladder code of the latest session's exercise"),
}


class Assessment(BaseModel):
    """What the rule engine is told about the patient. Every field is listed in ``FACT_FIELDS``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    condition_recorded: bool = False
    red_flag: bool = False
    red_flag_risk: bool = False
    onset_known: bool
    onset_days_ago: int | None = None
    session_recorded: bool
    rung: int | None = None
    on_first_rung: bool = False
    on_top_rung: bool = False
    rounds_recorded: int = 0
    min_reps: float | None = None
    max_reps: float | None = None
    pain_recorded: bool = False
    max_pain: float | None = None
    exercise: str | None = None

    def engine_fact(self) -> dict[str, Any]:
        """The fact as durable-rules wants it: flat, no None, numbers as float (never Decimal)."""
        out: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            out[name] = float(value) if isinstance(value, int) and not isinstance(value, bool) else value
        return out


def assess(facts: PatientFacts, ladder: list[str], evaluation_date: dt.date) -> Assessment:
    """Summarise the extracted facts into the flat assessment the rules read."""
    onset = facts.onset
    session = facts.latest_session
    values: dict[str, Any] = {
        "condition_recorded": bool(facts.conditions),
        "red_flag": bool(facts.red_flags),
        "red_flag_risk": bool(facts.risk_factors),
        "onset_known": onset is not None,
        "onset_days_ago": (evaluation_date - onset).days if onset else None,
        "session_recorded": session is not None,
    }
    if session is not None:
        rung = ladder.index(session.exercise) + 1
        reps = session.reps
        values.update(
            exercise=session.exercise,
            rung=rung,
            on_first_rung=rung == 1,
            on_top_rung=rung == len(ladder),
            rounds_recorded=len(reps),
            min_reps=min(reps),
            max_reps=max(reps),
            pain_recorded=session.max_pain is not None,
            max_pain=session.max_pain,
        )
    return Assessment(**values)
