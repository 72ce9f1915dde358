"""The session trend of a progression card: the patient's latest sessions, the table and the chart URL.

:func:`session_history` reads the last few sessions (date, rung, exercise, reps of the rounds that
decide, highest pain) from ``PatientFacts.sessions``: extraction is the one reader of the history
(SPEC section 2: a session is the rounds of one exercise on one calendar date, the highest rung when
several share a date; a pain score with ``derivedFrom`` belongs to the sessions whose rounds it
references, one without to every session on its date). The latest row is the decision's own session
(``PatientFacts.latest_session``), so the table never disagrees with the card.

:func:`chart_query` turns the sessions into the chart's query string: numbers and dates only, never
an identifier (no patient, resource or rule-set id); :mod:`cds.trend_chart` draws it. Pure core: no
Flask, no I/O. Nothing here logs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .assessment import rounds_used
from .facts import PatientFacts, Session
from .ruleset.model import RuleSet
from .ruleset.schema import TREND_MAX_SESSIONS
from .trend_chart import MAX_REPS, MAX_ROUNDS

__all__ = ["TrendSession", "chart_query", "format_value", "session_history"]

@dataclass(frozen=True, slots=True)
class TrendSession:
    """One session of the trend: its date, rung (1 = first), exercise code, the reps of the rounds
    that decide (the first ``rounds``, in round order) and its highest pain (None: not recorded)."""

    date: dt.date
    rung: int
    exercise: str
    reps: tuple[float, ...]
    max_pain: float | None


def session_history(facts: PatientFacts, ruleset: RuleSet, limit: int | None = None) -> list[TrendSession]:
    """The last ``limit`` sessions (default ``texts.trend.sessions``) of ``facts.sessions``, oldest
    first, the latest being ``facts.latest_session``; empty without a latest session (facts built
    without ``sessions``: the latest session alone)."""
    latest = facts.latest_session
    if latest is None:
        return []
    history = facts.sessions or (latest,)
    doc = ruleset.document
    if limit is None:
        limit = doc.texts.trend.sessions if doc.texts.trend is not None else TREND_MAX_SESSIONS
    if limit <= 0:
        return []
    rung = {code: i + 1 for i, code in enumerate(doc.ladder.codes)}
    parameters = doc.parameters
    return [_trend_session(s, rung[s.exercise], parameters) for s in history[-limit:]]


def _trend_session(session: Session, rung: int, parameters: Mapping[str, float]) -> TrendSession:
    reps = session.reps
    used = rounds_used(len(reps), parameters)
    return TrendSession(session.date, rung, session.exercise, tuple(reps[:used]), session.max_pain)


def format_value(value: float) -> str:
    """A number as the chart URL carries it: at most one decimal, no trailing ``.0``."""
    rounded = round(float(value), 1)
    return str(int(rounded)) if rounded.is_integer() else f"{rounded:.1f}"


def chart_query(sessions: Sequence[TrendSession], ruleset: RuleSet) -> str:
    """The chart's query string: ``d`` dates, ``g`` rungs, ``r`` reps per round (``_`` between rounds),
    ``p`` highest pain (``-``: not recorded), one value per session separated by ``,``; ``lo``/``hi``
    the target range and ``gate`` the pain gate, from the parameters ``texts.trend`` names."""
    trend = ruleset.document.texts.trend
    params = ruleset.document.parameters
    query = [
        ("d", ",".join(s.date.isoformat() for s in sessions)),
        ("g", ",".join(str(s.rung) for s in sessions)),
        # within what the chart accepts: the first MAX_ROUNDS rounds, reps up to MAX_REPS (the table has all)
        ("r", ",".join("_".join(format_value(min(v, MAX_REPS)) for v in s.reps[:MAX_ROUNDS]) for s in sessions)),
        ("p", ",".join("-" if s.max_pain is None else format_value(s.max_pain) for s in sessions)),
    ]
    if trend is not None:
        for key, name in (("lo", trend.target_low), ("hi", trend.target_high), ("gate", trend.pain_gate)):
            if name is not None and name in params:
                query.append((key, format_value(params[name])))
    # digits, '-', '.', ',' and '_' only: nothing to percent-encode
    return "&".join(f"{key}={value}" for key, value in query)
