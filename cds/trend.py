"""The session trend of a progression card: the patient's latest sessions, the table and the chart URL.

:func:`session_history` reads the last few sessions (date, exercise, reps per round, highest pain)
from the hook request's prefetch with the same meaning as :mod:`cds.extract` (SPEC section 2: a
session is the rounds of one exercise on one calendar date, the highest rung when several share a
date; a pain score with ``derivedFrom`` belongs to the sessions whose rounds it references, one
without to every session on its date; only counted statuses, the context patient, valid FHIR R4,
dates precise to the day). The latest row is the decision's own session
(``PatientFacts.latest_session``), so the table never disagrees with the card. Extraction keeps only
the latest session, so the earlier ones are read here, cheaply: a raw pre-filter groups candidate
rounds by the date they were written with, and only the dates needed are validated (through the
shared validation cache, which extraction has just filled for these very resources).

:func:`chart_query` turns the sessions into the chart's query string: numbers and dates only, never
an identifier (no patient, resource or rule-set id); :mod:`cds.trend_chart` draws it. Pure core: no
Flask, no I/O. Nothing here logs.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from fhir.resources.R4B.observation import Observation

from .assessment import rounds_used
from .facts import PatientFacts, Session
from .fhir_validation import canonical_bytes, validate
from .ruleset.model import RuleSet
from .ruleset.schema import TREND_MAX_SESSIONS, Codes, Ladder
from .trend_chart import MAX_REPS, MAX_ROUNDS

__all__ = ["TrendSession", "chart_query", "format_value", "session_history"]

#: the prefetch keys of the rounds and pain scores (cds.service.prefetch_templates); other keys are
#: read too when these are absent (a caller's own key names)
_ROUNDS_KEY, _PAIN_KEY = "exerciseRounds", "painScores"


@dataclass(frozen=True, slots=True)
class TrendSession:
    """One session of the trend: its date, rung (1 = first), exercise code, the reps of the rounds
    that decide (the first ``rounds``, in round order) and its highest pain (None: not recorded)."""

    date: dt.date
    rung: int
    exercise: str
    reps: tuple[float, ...]
    max_pain: float | None


def _raw_date(raw: Mapping[str, Any]) -> str | None:
    value = raw.get("effectiveDateTime")
    if value is None:
        period = raw.get("effectivePeriod")
        value = period.get("start") if isinstance(period, dict) else None
    return value[:10] if isinstance(value, str) and len(value) >= 10 else None


def _resources(prefetch: Mapping[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for value in prefetch.values():
        if not isinstance(value, dict):
            continue
        if value.get("resourceType") == "Bundle":
            entries = value.get("entry")
            for entry in entries if isinstance(entries, list) else ():
                resource = entry.get("resource") if isinstance(entry, dict) else None
                if isinstance(resource, dict):
                    out.append(resource)
        else:
            out.append(value)
    return out


def _number(value: Any) -> float | None:
    return round(float(value), 2) if isinstance(value, (Decimal, int, float)) and not isinstance(value, bool) else None


def _day(obs: Observation) -> dt.date | None:
    value = obs.effectiveDateTime
    if value is None and obs.effectivePeriod is not None:
        value = obs.effectivePeriod.start
    if isinstance(value, dt.datetime):
        return value.date()
    return value if isinstance(value, dt.date) else None


def _valid(raw: dict[str, Any], key: bytes | None) -> Observation | None:
    try:
        return validate(Observation, raw, key)
    except (ValueError, TypeError):
        return None


def _has(cc: Any, pair: tuple[str, str]) -> bool:
    return cc is not None and any((c.system, c.code) == pair for c in cc.coding or ())


def _ref_id(reference: str) -> str | None:
    parts = reference.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    return parts[-1] if len(parts) >= 2 and parts[-2] == "Observation" and parts[-1] else None


def _raw_refs(raw: Mapping[str, Any]) -> set[str]:
    """The ids of the Observations a raw pain score's ``derivedFrom`` references."""
    derived = raw.get("derivedFrom")
    refs = (d.get("reference") for d in derived if isinstance(d, dict)) if isinstance(derived, list) else ()
    return {i for i in (_ref_id(r) for r in refs if isinstance(r, str)) if i}


@dataclass(frozen=True, slots=True)
class _Round:
    rid: str
    exercise: str
    reps: float
    date: dt.date
    number: int | None
    time: dt.datetime | None


_Pain = tuple[float, dt.date, frozenset[str]]
_MISSING = object()


class _Reader:
    """What one rule set's ``codes`` and ``ladder`` make of an Observation. An EHR sends the same
    history at every chart opening, so what a resource gave is memoised by its exact content
    (``canonical_bytes``: the validation cache's key), in a bounded LRU per reader."""

    MEMO_SIZE = 4096

    def __init__(self, codes: Codes, ladder: Ladder) -> None:
        self.memo: OrderedDict[tuple[str, bytes], Any] = OrderedDict()
        self.lock = threading.Lock()
        self.status = frozenset(codes.observation_status)
        self.reps_codes = frozenset((c.system, c.code) for c in codes.reps_codes)
        self.pain_codes = frozenset((c.system, c.code) for c in codes.pain_codes)
        self.exercise_comp = (codes.exercise_component.system, codes.exercise_component.code)
        self.round_comp = (codes.round_component.system, codes.round_component.code)
        self.answers_system = codes.pain_answers.system
        self.answers = codes.pain_answers.values
        self.ladder_system = ladder.system
        self.rung = {code: i + 1 for i, code in enumerate(ladder.codes)}

    def kind(self, raw: Any) -> str | None:
        """"round" or "pain" for an Observation with one of those codes (the cheap first look), else None."""
        if not isinstance(raw, dict) or raw.get("resourceType") != "Observation":
            return None
        code = raw.get("code")
        coding = code.get("coding") if isinstance(code, dict) else None
        if not isinstance(coding, list):
            return None
        found = None
        for c in coding:
            if isinstance(c, dict) and isinstance(c.get("system"), str) and isinstance(c.get("code"), str):
                pair = (c["system"], c["code"])
                if pair in self.reps_codes:
                    return "round"  # a reps code wins, as in extraction
                if pair in self.pain_codes:
                    found = "pain"
        return found

    def counted(self, raw: Mapping[str, Any], patient_id: str) -> bool:
        """The rest of the raw filter: an id, a counted status, the context patient."""
        status = raw.get("status")
        if not isinstance(raw.get("id"), str) or not isinstance(status, str) or status not in self.status:
            return False
        subject = raw.get("subject")
        ref = subject.get("reference") if isinstance(subject, dict) else None
        return isinstance(ref, str) and (ref == f"Patient/{patient_id}"
                                         or ("://" in ref and ref.endswith(f"/Patient/{patient_id}")))

    def memoised(self, kind: str, raw: dict[str, Any], read: Callable[[dict[str, Any], bytes | None], Any]) -> Any:
        key = canonical_bytes(raw)
        if key is None:
            return read(raw, None)
        memo_key = (kind, key)
        found = self.memo.get(memo_key, _MISSING)
        if found is _MISSING:
            found = read(raw, key)
            with self.lock:
                self.memo[memo_key] = found
                if len(self.memo) > self.MEMO_SIZE:
                    self.memo.popitem(last=False)
        return found

    def round(self, raw: dict[str, Any]) -> _Round | None:
        return self.memoised("round", raw, self.read_round)

    def pain(self, raw: dict[str, Any]) -> _Pain | None:
        return self.memoised("pain", raw, self.read_pain)

    def read_round(self, raw: dict[str, Any], key: bytes | None) -> _Round | None:
        obs = _valid(raw, key)
        day = _day(obs) if obs is not None else None
        if obs is None or day is None:
            return None
        reps = _number(obs.valueQuantity.value) if obs.valueQuantity is not None else None
        if reps is None:
            reps = _number(obs.valueInteger)
        if reps is None or reps < 0:
            return None
        components = obs.component or ()
        exercise = next(
            (coding.code for comp in components if _has(comp.code, self.exercise_comp)
             and comp.valueCodeableConcept is not None for coding in comp.valueCodeableConcept.coding or ()
             if coding.system == self.ladder_system and coding.code in self.rung),
            None,
        )
        if exercise is None:
            return None
        number = next((int(comp.valueInteger) for comp in components
                       if comp.valueInteger is not None and _has(comp.code, self.round_comp)), None)
        value = obs.effectiveDateTime or (obs.effectivePeriod.start if obs.effectivePeriod is not None else None)
        time = value if isinstance(value, dt.datetime) else None
        return _Round(str(obs.id), exercise, reps, day, number, time)

    def read_pain(self, raw: dict[str, Any], key: bytes | None) -> _Pain | None:
        obs = _valid(raw, key)
        day = _day(obs) if obs is not None else None
        if obs is None or day is None:
            return None
        score = _number(obs.valueQuantity.value) if obs.valueQuantity is not None else None
        if score is None:
            score = _number(obs.valueInteger)
        if score is None and obs.valueCodeableConcept is not None:
            score = next((float(self.answers[c.code]) for c in obs.valueCodeableConcept.coding or ()
                          if c.system == self.answers_system and c.code in self.answers), None)
        if score is None or not 0 <= score <= 10:
            return None
        refs = frozenset(r for r in (_ref_id(d.reference) for d in obs.derivedFrom or () if d.reference) if r)
        return score, day, refs


_NO_TIME = dt.datetime.min.replace(tzinfo=dt.timezone.utc)


def _ordered(rounds: list[tuple[_Round, int]]) -> list[_Round]:
    """Rounds (with their resource positions) in order, as extraction orders them: round number, then
    time, then resource order."""
    ordered = sorted(rounds, key=lambda rp: (rp[0].number is None, rp[0].number or 0, rp[0].time is None,
                                             rp[0].time or _NO_TIME, rp[1]))
    return [r for r, _ in ordered]


_readers: OrderedDict[int, tuple[Any, _Reader]] = OrderedDict()
_readers_lock = threading.Lock()


def _reader(ruleset: RuleSet) -> _Reader:
    """The reader of a rule set's document (one per document, the last few kept)."""
    doc = ruleset.document
    with _readers_lock:
        entry = _readers.get(id(doc))
        if entry is None or entry[0] is not doc:
            entry = (doc, _Reader(doc.codes, doc.ladder))
            _readers[id(doc)] = entry
            while len(_readers) > 4:
                _readers.popitem(last=False)
        return entry[1]


def session_history(
    prefetch: Mapping[str, Any], facts: PatientFacts, ruleset: RuleSet, limit: int | None = None,
) -> list[TrendSession]:
    """The last ``limit`` sessions (default ``texts.trend.sessions``), oldest first, the latest being
    ``facts.latest_session``; empty without a latest session."""
    latest = facts.latest_session
    if latest is None:
        return []
    doc = ruleset.document
    if limit is None:
        limit = doc.texts.trend.sessions if doc.texts.trend is not None else TREND_MAX_SESSIONS
    reader = _reader(ruleset)
    patient = facts.patient_id
    resources = _resources({k: prefetch[k] for k in (_ROUNDS_KEY, _PAIN_KEY) if k in prefetch} or prefetch)
    by_date: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    pains: list[dict[str, Any]] = []
    before = latest.date.isoformat()  # the latest session is the decision's own
    for position, raw in enumerate(resources):
        kind = reader.kind(raw)
        if kind == "round":
            key = _raw_date(raw)
            if key is not None and key < before:
                by_date.setdefault(key, []).append((position, raw))
        elif kind == "pain":
            pains.append(raw)

    sessions: list[tuple[dt.date, str, list[_Round]]] = []
    for key in sorted(by_date, reverse=True):
        if len(sessions) >= limit - 1:
            break
        found = ((reader.round(raw), pos) for pos, raw in by_date[key] if reader.counted(raw, patient))
        usable = [(r, pos) for r, pos in found if r is not None]
        for day in sorted({r.date for r, _ in usable}, reverse=True):  # the written date is the day
            on_day = [(r, pos) for r, pos in usable if r.date == day]
            exercise = max((r.exercise for r, _ in on_day), key=reader.rung.__getitem__)
            sessions.append((day, exercise, _ordered([(r, pos) for r, pos in on_day if r.exercise == exercise])))
    sessions = sessions[: limit - 1]

    parameters = doc.parameters
    dates = {day.isoformat() for day, _, _ in sessions}
    round_ids = {r.rid for _, _, rounds in sessions for r in rounds}
    candidates = []
    for raw in pains:  # linked by derivedFrom to a round of these sessions, else dated on one of them
        refs = _raw_refs(raw)
        if (refs & round_ids if refs else _raw_date(raw) in dates) and reader.counted(raw, patient):
            candidates.append(raw)
    wanted = [p for p in map(reader.pain, candidates) if p is not None]
    out = []
    for day, exercise, rounds in sessions:
        ids = {r.rid for r in rounds}
        scores = [score for score, on, refs in wanted if (bool(refs & ids) if refs else on == day)]
        used = rounds_used(len(rounds), parameters)
        out.append(TrendSession(day, reader.rung[exercise], exercise, tuple(r.reps for r in rounds[:used]),
                                max(scores, default=None)))
    out.reverse()
    out.append(_latest(latest, reader.rung[latest.exercise], parameters))
    return out


def _latest(session: Session, rung: int, parameters: Mapping[str, float]) -> TrendSession:
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
