"""FHIR prefetch JSON -> :class:`~cds.facts.PatientFacts` (SPEC section 2).

Two stages, so the cost follows what the rules need rather than the length of the history:

1. A cheap filter on the raw JSON dicts (about a microsecond each): resource type, code
   (``system|code`` against ``codes``; a Condition is a red flag, a risk factor, LBP or skipped),
   subject, status and, for Observations, the presence of a date. Resources rejected here for
   status, subject or code are *skipped* with a reason.
2. Every resource that passed the filter is validated with the ``fhir.resources`` R4B models
   (about 0.15 ms each the first time) and turned into a fact, so every invalid or unusable
   resource is logged and counted, whether or not it could change the decision:

   - every LBP Condition (the most recent onset counts: the latest *latest possible day*, since an
     onset may be written to the year or month), and every Condition in a red-flag or risk-factor
     category of the rule files (``codes.red_flags``, ``codes.red_flag_risks``; codes matched exactly
     or by ``match: prefix``, see :class:`CodeList`);
   - every exercise round; each date with a usable round is a session (``PatientFacts.sessions``,
     oldest first: the highest rung of the date), the latest session is the most recent one;
   - every pain score; those of a session are the ones referencing one of its rounds in
     ``derivedFrom``, and those without an Observation ``derivedFrom`` on its date.

A resource whose data cannot be used -- it fails validation, its effective date is missing or not
precise to the day, a value is missing or out of range, the exercise is missing or unknown -- is
skipped with ``invalid=True`` (counted on the card). Such a skip also carries, for the card only,
what it was meant to be, its date as written and a readable value, and whether it could have
belonged to the latest session. Logs and skip reasons name the resource type and id only: never a
patient id, a subject reference or a clinical value. Each request logs one INFO line with the number
of skipped resources by reason (no ids); each skipped resource is logged at DEBUG.

An EHR sends the same history at every chart opening, so a whole prefetch seen before for the same
patient and rule set (from its third call: see ``_ExtractionMemo``) costs one exact content key
(:func:`prefetch_key`: one ``marshal.dumps`` of the whole prefetch, about 0.5 ms for two years of
history) and a lookup in ``fact_memo.extractions``; its skips are logged and counted again from the
memo entry. When the prefetch changed (a new session), an Observation seen before costs one exact
content key (``cds.fhir_validation.canonical_bytes``: ``marshal.dumps``, about 1.5 us) and a lookup
in :data:`fact_memo`, which remembers what the raw filter found (all but the subject, which is
checked every time) and the fact or skip it gave; a cached skip is logged and counted again.
Conditions (few) use the validation cache of
``cds.fhir_validation`` directly.
"""

from __future__ import annotations

import datetime as dt
import logging
import marshal
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.observation import Observation

from .errors import CdsError
from .facts import ExerciseRound, FlaggedCondition, LbpCondition, PainScore, PatientFacts, Session, SkippedResource
from .fhir_validation import canonical_bytes, validate
from .ruleset.schema import Codes, ConditionCategory, ConditionCoding, Ladder

__all__ = ["CodeList", "PrefetchShapeError", "PrefetchTooLarge", "extract"]

log = logging.getLogger("cds.extract")

# Skip reasons. Fixed texts: they must never carry patient data or clinical values.
R_OPERATION_OUTCOME_BUNDLE = "OperationOutcome in Bundle"
R_OPERATION_OUTCOME = "OperationOutcome in prefetch"
R_UNSUPPORTED = "unsupported resource type"
R_NESTED_BUNDLE = "nested Bundle is not supported"
R_NOT_RESOURCE = "Bundle entry resource is not a FHIR resource (no string resourceType)"
R_NO_RESOURCE = "Bundle entry without a resource"
R_NO_ID = "resource has no id"
R_DUPLICATE = "duplicate of an earlier resource with the same type and id"
R_SUBJECT = "subject is not the context patient"
R_OBS_CODE = "code is neither a pain score nor an exercise round"
R_OBS_STATUS = "status is not one of the counted observation statuses"
R_COND_CODE = "code is not a counted condition"
R_COND_CLINICAL = "clinicalStatus is not one of the counted clinical statuses"
R_COND_VERIFICATION = "verificationStatus is excluded"
R_NO_DATE = "no effectiveDateTime or effectivePeriod.start"
R_PARTIAL_DATE = "effective date is not a full calendar date"
R_NO_REPS = "no reps value (valueQuantity.value or valueInteger)"
R_NEGATIVE_REPS = "reps value is negative"
R_REPS_TOO_LARGE = "reps value too large to evaluate"
R_NO_EXERCISE = "exercise component is missing"
R_UNKNOWN_EXERCISE = "exercise is not a known ladder code"
R_NO_PAIN = "no usable pain value (valueQuantity.value, valueInteger or a known answer code)"
R_PAIN_RANGE = "pain score outside the 0-10 scale"
R_INVALID = "failed FHIR R4 validation"
R_UNEXPECTED = "unexpected structure"

#: the key of each data-level skip reason: the rule files word it (``texts.skipped.reasons``)
REASON_KEYS: dict[str, str] = {
    R_INVALID: "invalid",
    R_NO_DATE: "no_date",
    R_PARTIAL_DATE: "partial_date",
    R_NO_REPS: "no_value",
    R_NO_PAIN: "no_value",
    R_NEGATIVE_REPS: "value_out_of_range",
    R_REPS_TOO_LARGE: "value_out_of_range",
    R_PAIN_RANGE: "value_out_of_range",
    R_NO_EXERCISE: "no_exercise",
    R_UNKNOWN_EXERCISE: "unknown_exercise",
}

#: a date as written that may be shown on a card: digits and the dateTime punctuation only
_DATE_TEXT = re.compile(r"[0-9][0-9T:+\-.Z]{0,34}")
_PARTIAL = re.compile(r"([0-9]{4})(?:-([0-9]{2})(?:-([0-9]{2}))?)?")


_PLAIN = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_LOC_PART = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}|[0-9]{1,6}")


def _printable(text: str) -> str:
    """A FHIR id or type as is; anything else quoted and cut short, so input cannot forge log lines."""
    return text if _PLAIN.fullmatch(text) else repr(text[:64])


def _safe_loc(loc: tuple[Any, ...]) -> list[str]:
    return [str(p) if _LOC_PART.fullmatch(str(p)) else "?" for p in loc]


class PrefetchShapeError(CdsError, ValueError):
    """A prefetch value that is not a FHIR resource or Bundle at all (the request is a 400)."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"prefetch.{key}: {message}")


class PrefetchTooLarge(PrefetchShapeError):
    """A prefetch Bundle with more entries than the service accepts per key (the request is a 413)."""


#: Bundle entries accepted per prefetch key (CDS_MAX_ENTRIES_PER_KEY); more is PrefetchTooLarge.
MAX_ENTRIES_PER_KEY = 1000


class _Malformed(Exception):
    """The raw JSON has an unexpected type where the raw filter looks; let FHIR validation judge."""


@dataclass(slots=True)
class _Candidate:
    order: int  # position in the prefetch (resource order)
    raw: dict[str, Any]
    rtype: str
    rid: str
    date_key: str = ""  # first 10 characters of the raw date string
    obs_refs: frozenset[str] = frozenset()  # ids of Observations referenced in derivedFrom
    kind: str | None = None  # "pain" | "round" | "condition" once the raw filter has classified it
    #: a Condition's red-flag or risk-factor category (None: low back pain), and whether it is a red flag
    category: str | None = None
    red_flag: bool = False
    key: bytes | None = None  # the exact content key (``canonical_bytes``) of an Observation, if plain JSON
    seen: _Seen | None = None  # an Observation's memo entry (raw features and, once converted, outcome)


# --- raw JSON helpers (no validation; raise _Malformed on a wrong JSON type) ----------------------


def _codings(cc: Any) -> list[tuple[Any, Any]]:
    if cc is None:
        return []
    if not isinstance(cc, dict):
        raise _Malformed
    coding = cc.get("coding")
    if coding is None:
        return []
    if not isinstance(coding, list):
        raise _Malformed
    out = []
    for c in coding:
        if not isinstance(c, dict):
            raise _Malformed
        system, code = c.get("system"), c.get("code")
        if not isinstance(system, (str, type(None))) or not isinstance(code, (str, type(None))):
            raise _Malformed
        out.append((system, code))
    return out


def _raw_nested(raw: Mapping[str, Any], key: str, sub: str) -> Any:
    """``raw[key][sub]`` of the raw JSON, None when either is absent; _Malformed when ``key`` is no object."""
    outer = raw.get(key)
    if outer is None:
        return None
    if not isinstance(outer, dict):
        raise _Malformed
    return outer.get(sub)


def _raw_date_key(raw: Mapping[str, Any]) -> str | None:
    value = raw.get("effectiveDateTime")
    if value is None:
        value = _raw_nested(raw, "effectivePeriod", "start")
        if value is None:
            return None
    if not isinstance(value, str) or not value:
        raise _Malformed
    return value[:10]


def _observation_id(reference: str) -> str | None:
    """``Observation/round-1`` (relative, absolute or versioned) -> ``round-1``; else None."""
    parts = reference.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2 and parts[-2] == "Observation" and parts[-1]:
        return parts[-1]
    return None


def _raw_observation_refs(raw: Mapping[str, Any]) -> frozenset[str]:
    derived = raw.get("derivedFrom")
    if derived is None:
        return frozenset()
    if not isinstance(derived, list):
        raise _Malformed
    ids = set()
    for ref in derived:
        if not isinstance(ref, dict):
            raise _Malformed
        reference = ref.get("reference")
        if reference is None:
            continue
        if not isinstance(reference, str):
            raise _Malformed
        oid = _observation_id(reference)
        if oid:
            ids.add(oid)
    return frozenset(ids)


def _raw_date_text(raw: Mapping[str, Any], element: str = "effective") -> str | None:
    """``<element>DateTime`` (else ``<element>Period.start``) as written, when it is a date-like string
    (safe to show); else None. ``effective`` for an Observation, ``onset`` for a Condition."""
    value = raw.get(f"{element}DateTime")
    if value is None:
        period = raw.get(f"{element}Period")
        value = period.get("start") if isinstance(period, dict) else None
    return value if isinstance(value, str) and _DATE_TEXT.fullmatch(value) else None


def date_bounds(text: str | None) -> tuple[dt.date, dt.date, str] | None:
    """(earliest, latest possible day, precision) of a date as written: ``YYYY``, ``YYYY-MM``,
    ``YYYY-MM-DD`` or a dateTime (its date part, as written). None when it is no such date."""
    if text is None:
        return None
    m = _PARTIAL.match(text)
    if m is None or (len(text) > 10 and m.group(3) is None) or (m.group(3) is None and m.end() != len(text)):
        return None
    year, month, day = int(m.group(1)), m.group(2), m.group(3)
    try:
        if month is None:
            return dt.date(year, 1, 1), dt.date(year, 12, 31), "year"
        if day is None:
            first = dt.date(year, int(month), 1)
            following = dt.date(year + (first.month == 12), first.month % 12 + 1, 1)
            return first, following - dt.timedelta(days=1), "month"
        d = dt.date(year, int(month), int(day))
        return d, d, "day"
    except ValueError:
        return None


def _raw_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    f = float(value)
    return round(f, 2) if f == f and abs(f) < 1e15 else None


def _raw_value(raw: Mapping[str, Any], answers_system: str, answers: Mapping[str, int]) -> float | None:
    """A readable value of a raw Observation (for the card's list of unusable data), or None."""
    quantity = raw.get("valueQuantity")
    if isinstance(quantity, dict):
        number = _raw_number(quantity.get("value"))
        if number is not None:
            return number
    number = _raw_number(raw.get("valueInteger"))
    if number is not None:
        return number
    concept = raw.get("valueCodeableConcept")
    coding = concept.get("coding") if isinstance(concept, dict) else None
    for c in coding if isinstance(coding, list) else ():
        if isinstance(c, dict) and c.get("system") == answers_system and isinstance(c.get("code"), str):
            if c["code"] in answers:
                return float(answers[c["code"]])
    return None


# --- validated-model helpers -----------------------------------------------------------------------


def _calendar_date(value: Any) -> dt.date | None:
    """The date as written, in its own offset; None for partial dates (year, year-month)."""
    if isinstance(value, dt.datetime):
        return value.date()  # keeps the written offset: no timezone conversion
    if isinstance(value, dt.date):
        return value
    return None


def _onset(value: Any) -> tuple[dt.date, dt.date, str, str] | None:
    """(earliest, latest possible day, precision, text as written) of a validated onset.

    fhir.resources gives a full date as ``date``, a dateTime as ``datetime`` (in its written offset)
    and a year or year-month as the string written (``"2026"``, ``"2026-06"``)."""
    day = _calendar_date(value)
    if day is not None:
        return day, day, "day", day.isoformat()
    if isinstance(value, str):
        bounds = date_bounds(value)
        if bounds is not None:
            return bounds[0], bounds[1], bounds[2], value
    return None


#: Largest reps value the rule engine can compare exactly (durable-rules reads numbers from JSON text
#: and fails on exponent notation, which Python writes from 1e16 up). A technical limit, not a clinical one.
MAX_ENGINE_NUMBER = 1e12


def _number(value: Any) -> float | None:
    """fhir.resources gives Decimal (and int); facts carry float, rounded to 2 decimals.

    Reps are counts and pain a 0-10 score: two decimals is beyond any clinical meaning, and it keeps
    tiny values (1e-05) out of the exponent notation the rule engine cannot read.
    """
    return round(float(value), 2) if isinstance(value, (Decimal, int, float)) else None


def _numeric_value(obs: Observation) -> float | None:
    """``valueQuantity.value``, else ``valueInteger`` (the SPEC's forms for reps and pain)."""
    value = _number(obs.valueQuantity.value) if obs.valueQuantity is not None else None
    return value if value is not None else _number(obs.valueInteger)


class CodeList:
    """A rule-file list of Condition codes, matched like :meth:`ConditionCoding.matches` (exact codes
    by a set lookup, ``match: prefix`` entries one by one)."""

    def __init__(self, codings: list[ConditionCoding]) -> None:
        self.exact = {(c.system, c.code): c for c in codings if c.match == "exact"}
        self.prefixes = [c for c in codings if c.match != "exact"]

    def match(self, system: Any, code: Any) -> ConditionCoding | None:
        """The list's entry that ``system|code`` matches (exact, else the first prefix entry), or None."""
        found = self.exact.get((system, code))
        if found is not None:
            return found
        return next((c for c in self.prefixes if c.matches(system, code)), None)

    def any(self, pairs: list[tuple[Any, Any]]) -> bool:
        return any(self.match(system, code) is not None for system, code in pairs)


@dataclass(frozen=True, slots=True)
class _Flag:
    """A candidate Condition in a red-flag (``red_flag=True``) or risk-factor category."""

    candidate: _Candidate
    category: ConditionCategory
    red_flag: bool


def _has(cc: Any, pair: tuple[str, str]) -> bool:
    return cc is not None and any((c.system, c.code) == pair for c in cc.coding or ())


#: what turning one Observation into a fact gave: the fact, or the skip record (with its card details)
_Outcome = ExerciseRound | PainScore | SkippedResource | None


@dataclass(slots=True)
class _Seen:
    """What one Observation's JSON gives under one rule set, apart from the subject (per patient):
    the raw filter's features and, once it has been turned into a fact, the outcome."""

    kind: str | None  # "pain" | "round"; None: neither code (skipped, the rest is not looked at)
    subject: str | None = None  # ``subject.reference`` as written (the patient is checked per call)
    status_ok: bool = False
    date_key: str | None = None  # None: no effective date
    obs_refs: frozenset[str] = frozenset()  # pain scores: ids of Observations in derivedFrom
    outcome: _Outcome = None
    converted: bool = False  # ``outcome`` is set (a fact or a single data-level skip)
    reason: str = ""  # the skip reason of a skip ``outcome`` (without its detail), for the counts


class _FactMemo:
    """Observation JSON -> :class:`_Seen`, memoised by the resource's exact content, per rule-set codes.

    Every hook call looks at every Observation of the history and turns every candidate into a fact
    (so every unusable one is counted); an EHR sends the same history at each chart opening, so what
    a resource seen before gave is reused: one ``marshal.dumps`` and a dict lookup instead of the raw
    filter, the validation-cache lookup and reading the validated model again. Only the subject check
    (it depends on the patient) runs every time. An entry depends only on the resource's JSON and the
    rule set's ``codes`` and ``ladder``: one bounded LRU per (codes, ladder) pair, which the entry
    holds so their ids stay unique. Keys are the exact serialisation (``canonical_bytes``, see
    ``cds.fhir_validation``: no digest, so no collision argument and no hashing cost; about 1 KB per
    entry); skips are replayed, so each call still logs and counts them.
    """

    def __init__(self, maxsize: int = 4096, configs: int = 4) -> None:
        self.maxsize = maxsize
        self.configs = configs
        self._lock = threading.Lock()
        self._by_config: OrderedDict[tuple[int, int], tuple[Codes, Ladder, OrderedDict[bytes, _Seen]]]
        self._by_config = OrderedDict()
        self.extractions = _ExtractionMemo()

    def table(self, codes: Codes, ladder: Ladder) -> OrderedDict[bytes, _Seen]:
        key = (id(codes), id(ladder))
        with self._lock:
            entry = self._by_config.get(key)
            if entry is None or entry[0] is not codes or entry[1] is not ladder:
                entry = (codes, ladder, OrderedDict())
                self._by_config[key] = entry
                while len(self._by_config) > self.configs:
                    self._by_config.popitem(last=False)
            self._by_config.move_to_end(key)
            return entry[2]

    @staticmethod
    def get(table: OrderedDict[bytes, _Seen], key: bytes) -> _Seen | None:
        # no lock: each OrderedDict operation is atomic; only ``put`` (insert and evict) takes it
        seen = table.get(key)
        if seen is not None:
            try:
                table.move_to_end(key)
            except KeyError:  # evicted by another thread in between: still a valid entry
                pass
        return seen

    def put(self, table: OrderedDict[bytes, _Seen], key: bytes, seen: _Seen) -> None:
        with self._lock:
            table[key] = seen
            if len(table) > self.maxsize:
                table.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._by_config.clear()
        self.extractions.clear()


@dataclass(frozen=True, slots=True)
class _Extracted:
    """One whole extraction: its facts and what it logged (replayed on every hit)."""

    codes: Codes  # held, so that the ids in the memo key stay unique while the entry lives
    ladder: Ladder
    facts: PatientFacts
    counts: tuple[tuple[str, int], ...]  # skips by reason, for the INFO summary line
    lines: tuple[tuple[str, str | None, str], ...]  # every skip (type, id, reason): the DEBUG lines


def prefetch_key(prefetch: Mapping[str, Any]) -> bytes | None:
    """An exact content key of a whole prefetch (in key order), or None when it is not plain JSON.

    ``marshal`` format 4 (one C call; less than half the time of format 2, and shorter): equal bytes
    load back to equal values, so a hit is exact. Its bytes also record which objects are referenced
    more than once, so the same JSON can give other bytes when the request's objects are shared
    differently (another parser, or a caller holding on to parts of it): that is a miss, never a wrong
    hit. Each request parsed afresh from the same JSON text gives the same bytes."""
    try:
        return marshal.dumps(list(prefetch.items()), 4)
    except (TypeError, ValueError, RecursionError):
        return None


def _outline(patient_id: str, resources: list[tuple[Any, bool]]) -> tuple[Any, ...]:
    """A cheap outline of a prefetch (patient, number of resources, the ids of the first and last
    two): prefetches with the same content have the same outline. Only decides whether the exact
    key is worth computing; it never decides a hit."""

    def rid(i: int) -> str | None:
        raw = resources[i][0]
        value = raw.get("id") if isinstance(raw, dict) else None
        return value if isinstance(value, str) else None

    n = len(resources)
    return (patient_id, n, *(rid(i) for i in (0, 1, n - 2, n - 1) if 0 <= i < n))


class _ExtractionMemo:
    """(rule-set codes and ladder, patient id, whole prefetch content) -> the whole extraction.

    The EHR sends the same prefetch at each chart opening of a patient, and extraction is a pure
    function of the prefetch, the patient id and the rule set's ``codes`` and ``ladder``; the logging
    is replayed on every hit (each skip at DEBUG, the INFO summary), so every invalid or unusable
    resource is still logged and counted on every call. One exact key (:func:`prefetch_key`) per call
    instead of one per resource: on a miss, the per-resource memo below does the work. Bounded LRU:
    ``maxsize`` entries and ``max_bytes`` of keys in all (an entry's key is the size of its prefetch).

    The key is a pass over the whole prefetch (about 0.5 ms for two years of history), wasted on a
    prefetch never seen before (after a new session, say). So it is computed only when the prefetch's
    :func:`_outline` was seen before (:meth:`seen`): a prefetch is memoised at its second call and
    served from the memo from its third; a first call costs what it did without this memo.
    """

    def __init__(self, maxsize: int = 512, max_bytes: int = 32 * 2**20, outlines: int = 4096) -> None:
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self.outlines = outlines
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[int, int, str, bytes], _Extracted] = OrderedDict()
        self._bytes = 0
        self._outlines: OrderedDict[tuple[Any, ...], None] = OrderedDict()

    def seen(self, outline: tuple[Any, ...]) -> bool:
        """Whether this outline was seen before (and remember it, LRU-bounded)."""
        with self._lock:
            if outline in self._outlines:
                self._outlines.move_to_end(outline)
                return True
            self._outlines[outline] = None
            if len(self._outlines) > self.outlines:
                self._outlines.popitem(last=False)
            return False

    def get(self, codes: Codes, ladder: Ladder, patient_id: str, key: bytes) -> _Extracted | None:
        full = (id(codes), id(ladder), patient_id, key)
        with self._lock:
            entry = self._entries.get(full)
            if entry is None or entry.codes is not codes or entry.ladder is not ladder:
                return None
            self._entries.move_to_end(full)
            return entry

    def put(self, patient_id: str, key: bytes, entry: _Extracted) -> None:
        if len(key) > self.max_bytes // 4:
            return  # one huge prefetch may not push out every other patient
        full = (id(entry.codes), id(entry.ladder), patient_id, key)
        with self._lock:
            if full in self._entries:
                return
            self._entries[full] = entry
            self._bytes += len(key)
            while len(self._entries) > self.maxsize or self._bytes > self.max_bytes:
                (_, _, _, old), _ = self._entries.popitem(last=False)
                self._bytes -= len(old)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            self._outlines.clear()


#: the process-wide memo of Observation outcomes, and of whole extractions (``fact_memo.extractions``);
#: tests clear both with ``fact_memo.clear()``
fact_memo = _FactMemo()


def _log_skip(line: tuple[str, str | None, str]) -> None:
    rtype, rid, text = line
    log.debug("skipped %s %s: %s", _printable(rtype), "(no id)" if rid is None else _printable(rid), text)


def _log_summary(counts: Mapping[str, int]) -> None:
    """One INFO line per request: how many resources were skipped, by reason (no ids, no values)."""
    if counts:
        by_reason = "; ".join(f"{reason}: {n}" for reason, n in counts.items())
        log.info("skipped %d resource(s): %s", sum(counts.values()), by_reason)


class _Extractor:
    def __init__(self, patient_id: str, codes: Codes, ladder: Ladder) -> None:
        self.codes = codes
        self.subject_rel = f"Patient/{patient_id}"
        self.subject_abs_suffix = f"/Patient/{patient_id}"
        self.lbp = CodeList(codes.lbp_condition)
        # red flags first, then risk factors, each in file order: the first category matching counts
        self.categories = [(cat, CodeList(cat.codes), True) for cat in codes.red_flags]
        self.categories += [(cat, CodeList(cat.codes), False) for cat in codes.red_flag_risks]
        self.clinical = frozenset(codes.condition_clinical_status)
        self.verification_excluded = frozenset(codes.condition_verification_excluded)
        self.obs_status = frozenset(codes.observation_status)
        self.pain = frozenset((c.system, c.code) for c in codes.pain_codes)
        self.reps = frozenset((c.system, c.code) for c in codes.reps_codes)
        self.exercise_comp = (codes.exercise_component.system, codes.exercise_component.code)
        self.round_comp = (codes.round_component.system, codes.round_component.code)
        self.answers_system = codes.pain_answers.system
        self.answers = codes.pain_answers.values
        self.ladder_system = ladder.system
        self.rung = {code: i for i, code in enumerate(ladder.codes)}
        self.skipped: list[SkippedResource] = []
        self.conditions: list[_Candidate] = []
        self.flags: list[_Flag] = []
        self.rounds: list[_Candidate] = []
        self.pains: list[_Candidate] = []
        self.seen: set[tuple[str, str]] = set()
        #: (index in ``skipped``, candidate) of the pain scores and rounds skipped as unusable
        self.data_skips: list[tuple[int, _Candidate]] = []
        self.memo = fact_memo.table(codes, ladder)
        #: skips by reason (without the detail), for the one summary line per request
        self.counts: dict[str, int] = {}
        #: (type, id, reason with detail) of every skip, in order: the DEBUG lines
        self.lines: list[tuple[str, str | None, str]] = []
        self.debug = log.isEnabledFor(logging.DEBUG)
        self.last_reason = ""  # of the last data-level skip
        #: validated Conditions by resource position (None: invalid, already skipped)
        self.condition_models: dict[int, Any] = {}

    # -- bookkeeping

    def logged(self, rtype: str, rid: str | None, reason: str, detail: str = "") -> None:
        """Count a skip for the summary line; the resource itself is logged at DEBUG only (and
        remembered, so a memoised extraction logs it again: :data:`fact_memo`)."""
        self.counts[reason] = self.counts.get(reason, 0) + 1
        line = (rtype, rid, reason + detail)
        self.lines.append(line)
        if self.debug:
            _log_skip(line)

    def log_summary(self) -> None:
        _log_summary(self.counts)

    def skip(self, rtype: str, rid: str | None, reason: str, *, invalid: bool = False) -> None:
        self.logged(rtype, rid, reason)
        self.skipped.append(SkippedResource(resource_type=rtype, resource_id=rid, reason=reason, invalid=invalid))

    def skip_data(self, c: _Candidate, reason: str, *, detail: str = "") -> None:
        """Skip a candidate whose data is unusable (counted as invalid), with what the card may show."""
        self.logged(c.rtype, c.rid, reason, detail)
        self.last_reason = reason
        kind = c.kind if c.kind in ("pain", "round", "condition") else None
        observation = kind in ("pain", "round")
        self.skipped.append(
            SkippedResource(
                resource_type=c.rtype,
                resource_id=c.rid,
                reason=reason + detail,
                invalid=True,
                reason_key=REASON_KEYS.get(reason),
                kind=kind,
                date_text=_raw_date_text(c.raw, "effective" if observation else "onset") if kind else None,
                value=_raw_value(c.raw, self.answers_system, self.answers) if observation else None,
                condition=c.category,
                red_flag=c.red_flag,
            )
        )
        if observation:
            self.data_skips.append((len(self.skipped) - 1, c))

    def validate(self, model: type[Observation] | type[Condition], c: _Candidate) -> Any:
        """The validated model, or None (skipped as invalid). The error text is never logged: it quotes values.
        A Condition that is both a low back pain condition and a flagged one is validated (and, when invalid,
        skipped and counted) once."""
        if model is Condition:
            if c.order not in self.condition_models:
                self.condition_models[c.order] = self._validate(model, c)
            return self.condition_models[c.order]
        return self._validate(model, c)

    def _validate(self, model: type[Observation] | type[Condition], c: _Candidate) -> Any:
        try:
            return validate(model, c.raw, c.key if model is Observation else None, by_element=True)
        except (ValueError, TypeError) as exc:  # pydantic.ValidationError is a ValueError
            where = ""
            errors = getattr(exc, "errors", None)
            if callable(errors):
                # field paths only (never the input values the error message quotes)
                locs = sorted({".".join(_safe_loc(e.get("loc", ()))) for e in errors()})
                if locs:
                    where = " at " + ", ".join(locs[:3]) + (", ..." if len(locs) > 3 else "")
            self.skip_data(c, R_INVALID, detail=where)
            return None

    def is_subject(self, raw: Mapping[str, Any]) -> bool:
        ref = _raw_nested(raw, "subject", "reference")
        if ref is None:
            return False
        if not isinstance(ref, str):
            raise _Malformed
        return self.is_patient(ref)

    def is_patient(self, ref: str) -> bool:
        """``subject.reference`` names the context patient (relative, or absolute on any base)."""
        return ref == self.subject_rel or ("://" in ref and ref.endswith(self.subject_abs_suffix))

    # -- stage 1: raw filter

    def add(self, order: int, raw: Any, *, in_bundle: bool) -> None:
        if not isinstance(raw, dict) or not isinstance(raw.get("resourceType"), str):
            if raw is None:
                self.skip("unknown", None, R_NO_RESOURCE)
            else:
                self.skip("unknown", None, R_NOT_RESOURCE, invalid=True)
            return
        rtype = raw["resourceType"]
        rid = raw.get("id")
        if rid is not None and not isinstance(rid, str):
            rid = None  # FHIR ids are strings; validation will reject it if it is looked at
        if rtype == "Patient":
            return  # fine, but not a fact
        if rtype == "OperationOutcome":
            self.skip(rtype, rid, R_OPERATION_OUTCOME_BUNDLE if in_bundle else R_OPERATION_OUTCOME)
            return
        if rtype == "Bundle":
            self.skip(rtype, rid, R_NESTED_BUNDLE)
            return
        if rtype not in ("Observation", "Condition"):
            self.skip(rtype, rid, R_UNSUPPORTED)
            return
        if not rid:
            self.skip(rtype, rid, R_NO_ID, invalid="id" in raw)  # an empty or non-string id is invalid FHIR
            return
        if (rtype, rid) in self.seen:
            self.skip(rtype, rid, R_DUPLICATE)
            return
        self.seen.add((rtype, rid))
        c = _Candidate(order, raw, rtype, rid)
        try:
            reason = self.filter_observation(c) if rtype == "Observation" else self.filter_condition(c)
        except _Malformed:
            # the raw filter cannot read it: it is almost certainly invalid FHIR, let validation say so
            model = Observation if rtype == "Observation" else Condition
            if self.validate(model, c) is not None:
                self.skip(rtype, rid, R_UNEXPECTED)
            return
        if reason:
            self.skip(rtype, rid, reason)

    def observation_features(self, raw: Mapping[str, Any]) -> _Seen:
        """The raw filter's findings on an Observation, apart from the subject (per patient). Raises
        _Malformed where :meth:`filter_observation_uncached` might; the caller then runs that one."""
        kind = self.observation_kind(raw)
        if kind is None:
            return _Seen(None)
        subject = _raw_nested(raw, "subject", "reference")
        status = raw.get("status")
        if not isinstance(subject, (str, type(None))) or not isinstance(status, (str, type(None))):
            raise _Malformed
        date_key = _raw_date_key(raw)
        refs = _raw_observation_refs(raw) if kind == "pain" else frozenset()
        return _Seen(kind, subject, status in self.obs_status, date_key, refs)

    def filter_observation(self, c: _Candidate) -> str | None:
        """The raw filter, from the memo when this JSON was seen before (the subject is always checked)."""
        raw = c.raw
        key = c.key = canonical_bytes(raw)
        seen = fact_memo.get(self.memo, key) if key is not None else None
        if seen is None:
            try:
                seen = self.observation_features(raw)
            except _Malformed:
                c.key = None  # the uncached filter decides, in its own order of checks
                return self.filter_observation_uncached(c)
            if key is not None and seen.kind is not None:  # a code the rules ignore is cheaper to re-read
                fact_memo.put(self.memo, key, seen)
        if seen.kind is None:
            return R_OBS_CODE
        c.kind, c.seen = seen.kind, seen
        if seen.subject is None or not self.is_patient(seen.subject):  # as is_subject, on the remembered reference
            return R_SUBJECT
        if not seen.status_ok:
            return R_OBS_STATUS
        self.admit_observation(c, seen.kind, seen.date_key, seen.obs_refs)
        return None

    def filter_observation_uncached(self, c: _Candidate) -> str | None:
        """The raw filter without the memo, for JSON the feature reader cannot read: the checks one at a
        time, in their order, so the first one that fails gives the skip reason (or _Malformed)."""
        raw = c.raw
        kind = c.kind = self.observation_kind(raw)
        if kind is None:
            return R_OBS_CODE
        if not self.is_subject(raw):
            return R_SUBJECT
        status = raw.get("status")
        if not isinstance(status, (str, type(None))):
            raise _Malformed
        if status not in self.obs_status:
            return R_OBS_STATUS
        date_key = _raw_date_key(raw)
        refs = _raw_observation_refs(raw) if kind == "pain" and date_key is not None else frozenset()
        self.admit_observation(c, kind, date_key, refs)
        return None

    def observation_kind(self, raw: Mapping[str, Any]) -> str | None:
        """"round" or "pain" by the Observation's code (the rule files' code lists), else None."""
        pairs = _codings(raw.get("code"))
        if not self.reps.isdisjoint(pairs):
            return "round"
        if not self.pain.isdisjoint(pairs):
            return "pain"
        return None

    def admit_observation(self, c: _Candidate, kind: str, date_key: str | None, refs: frozenset[str]) -> None:
        """A pain score or round that passed the raw filter: a candidate of its kind, or, without an
        effective date, skipped as unusable (or as invalid when it is not valid FHIR)."""
        if date_key is None:
            if self.validate(Observation, c) is not None:  # an invalid one is reported as invalid
                self.skip_data(c, R_NO_DATE)
            return
        c.date_key, c.obs_refs = date_key, refs
        (self.rounds if kind == "round" else self.pains).append(c)

    def filter_condition(self, c: _Candidate) -> str | None:
        """A Condition is a red flag or a risk factor (the first category matching), and an LBP condition
        when it is coded so (also beside a flagged code: its onset counts), or skipped; the
        subject and status filters apply to all three."""
        raw = c.raw
        pairs = _codings(raw.get("code"))
        category = next(((cat, red) for cat, codes, red in self.categories if codes.any(pairs)), None)
        if category is None and not self.lbp.any(pairs):
            return R_COND_CODE
        if not self.is_subject(raw):
            return R_SUBJECT
        if not any(code in self.clinical for _, code in _codings(raw.get("clinicalStatus"))):
            return R_COND_CLINICAL
        if any(code in self.verification_excluded for _, code in _codings(raw.get("verificationStatus"))):
            return R_COND_VERIFICATION
        c.kind = "condition"  # a skip from here on is listed on the card: it could have changed the decision
        if category is None or self.lbp.any(pairs):  # coded low back pain too: its onset counts as well
            self.conditions.append(c)
        if category is not None:
            c.category, c.red_flag = category[0].display, category[1]
            self.flags.append(_Flag(c, *category))
        return None

    # -- stage 2: validate what can matter

    def lbp_conditions(self) -> list[LbpCondition]:
        out = []
        for c in self.conditions:
            cond = self.validate(Condition, c)
            if cond is None:
                continue
            onset = cond.onsetDateTime
            if onset is None and cond.onsetPeriod is not None:
                onset = cond.onsetPeriod.start
            parsed = _onset(onset)
            if parsed is None:
                out.append(LbpCondition(resource_id=c.rid))
                continue
            earliest, latest, precision, text = parsed
            out.append(
                LbpCondition(
                    resource_id=c.rid, onset=earliest, onset_latest=latest,
                    onset_precision=precision,
                    onset_text=text,
                )
            )
        return out

    def flagged_conditions(self) -> tuple[list[FlaggedCondition], list[FlaggedCondition]]:
        """(red flags, risk factors): the flagged Conditions that pass FHIR validation, in resource order."""
        red: list[FlaggedCondition] = []
        risk: list[FlaggedCondition] = []
        for flag in self.flags:
            cond = self.validate(Condition, flag.candidate)
            if cond is None:
                continue
            codes = CodeList(flag.category.codes)
            code = cond.code
            text = code.text if code is not None and code.text else None
            if text is None and code is not None:
                text = next((cd.display for cd in code.coding or () if cd.display and codes.match(cd.system, cd.code)),
                            None)
            if text is None and code is not None:
                # no words in the record: the rule files' display of the code it matched, else the code
                # itself (never the category again: the card shows the category beside it)
                for cd in code.coding or ():
                    listed = codes.match(cd.system, cd.code) if cd.code else None
                    if listed is not None:
                        text = listed.display or cd.code
                        break
            fact = FlaggedCondition(
                resource_id=flag.candidate.rid,
                category=flag.category.id,
                category_display=flag.category.display,
                text=" ".join((text or flag.category.display).split()),
            )
            (red if flag.red_flag else risk).append(fact)
        return red, risk

    def effective_date(self, obs: Observation, c: _Candidate) -> dt.date | None:
        value = obs.effectiveDateTime
        if value is None and obs.effectivePeriod is not None:
            value = obs.effectivePeriod.start
        if value is None:
            self.skip_data(c, R_NO_DATE)
            return None
        day = _calendar_date(value)
        if day is None:
            self.skip_data(c, R_PARTIAL_DATE)
        return day

    def dated_observation(self, c: _Candidate) -> tuple[Observation, dt.date] | None:
        """The validated Observation and its calendar date, or None (skipped with the reason)."""
        obs = self.validate(Observation, c)
        if obs is None:
            return None
        day = self.effective_date(obs, c)
        return None if day is None else (obs, day)

    def exercise_round(self, c: _Candidate) -> ExerciseRound | None:
        dated = self.dated_observation(c)
        if dated is None:
            return None
        obs, day = dated
        reps = _numeric_value(obs)
        if reps is None:
            self.skip_data(c, R_NO_REPS)
            return None
        if reps < 0:
            self.skip_data(c, R_NEGATIVE_REPS)
            return None
        if reps > MAX_ENGINE_NUMBER:
            self.skip_data(c, R_REPS_TOO_LARGE)
            return None
        components = obs.component or ()
        exercise_components = [comp for comp in components if _has(comp.code, self.exercise_comp)]
        if not exercise_components:
            self.skip_data(c, R_NO_EXERCISE)
            return None
        exercise = next(
            (
                coding.code
                for comp in exercise_components
                if comp.valueCodeableConcept is not None
                for coding in comp.valueCodeableConcept.coding or ()
                if coding.system == self.ladder_system and coding.code in self.rung
            ),
            None,
        )
        if exercise is None:
            self.skip_data(c, R_UNKNOWN_EXERCISE)
            return None
        round_number = next(
            (
                int(comp.valueInteger)
                for comp in components
                if comp.valueInteger is not None and _has(comp.code, self.round_comp)
            ),
            None,
        )
        value = obs.effectiveDateTime
        if value is None and obs.effectivePeriod is not None:
            value = obs.effectivePeriod.start
        time = value if isinstance(value, dt.datetime) else None
        return ExerciseRound(
            resource_id=c.rid, exercise=exercise, reps=reps, date=day, round_number=round_number, recorded_at=time
        )

    def memoised(self, c: _Candidate, convert: Callable[[_Candidate], Any]) -> Any:
        """``convert(c)`` (a fact, or None after skipping ``c``), memoised in the candidate's memo entry
        (its content): a cached skip is replayed (logged, counted, and described for the card again)."""
        seen = c.seen
        if seen is not None and seen.converted:
            outcome = seen.outcome
            if isinstance(outcome, SkippedResource):
                self.logged(c.rtype, c.rid, seen.reason, outcome.reason[len(seen.reason):])
                self.skipped.append(outcome)
                self.data_skips.append((len(self.skipped) - 1, c))
                return None
            return outcome
        before = len(self.skipped)
        fact = convert(c)
        if seen is None or c.key is None:
            return fact  # not plain JSON: nothing is memoised for it
        if fact is not None:
            seen.outcome = fact
        elif len(self.skipped) == before + 1 and self.data_skips and self.data_skips[-1][0] == before:
            seen.outcome = self.skipped[before]  # a single data-level skip: replayable
            seen.reason = self.last_reason
        else:
            return None  # anything else is converted afresh each time
        seen.converted = True
        return fact

    def usable_rounds(self) -> tuple[list[ExerciseRound], dict[str, int]]:
        """Every usable round, in resource order, and each one's position in the prefetch. Every round
        is turned into a fact (validated: the caches make a known one cheap), so every unusable one is
        reported."""
        usable: list[ExerciseRound] = []
        positions: dict[str, int] = {}
        for c in self.rounds:
            r = self.memoised(c, self.exercise_round)
            if r is not None:
                usable.append(r)
                positions[r.resource_id] = c.order
        return usable, positions

    def pain_score(self, c: _Candidate) -> PainScore | None:
        dated = self.dated_observation(c)
        if dated is None:
            return None
        obs, day = dated
        score = _numeric_value(obs)
        if score is None and obs.valueCodeableConcept is not None:
            score = next(
                (
                    float(self.answers[coding.code])
                    for coding in obs.valueCodeableConcept.coding or ()
                    if coding.system == self.answers_system and coding.code in self.answers
                ),
                None,
            )
        if score is None:
            self.skip_data(c, R_NO_PAIN)
            return None
        if not 0 <= score <= 10:
            self.skip_data(c, R_PAIN_RANGE)
            return None
        refs = (_observation_id(ref.reference) for ref in obs.derivedFrom or () if ref.reference)
        derived = tuple(dict.fromkeys(r for r in refs if r))
        return PainScore(resource_id=c.rid, score=score, date=day, derived_from=derived)

    def all_pains(self) -> list[PainScore]:
        """Every usable pain score (each one validated, so every unusable one is reported)."""
        return [p for p in (self.memoised(c, self.pain_score) for c in self.pains) if p is not None]

    def sessions(
        self, rounds: list[ExerciseRound], positions: Mapping[str, int], pains: list[PainScore],
    ) -> tuple[list[Session], list[ExerciseRound]]:
        """Every session, oldest first, and every usable round of the latest date (resource order).

        A session is the rounds of the highest rung of one date, in round order, with the pain scores
        linked by derivedFrom to one of its rounds, else (no derivedFrom) dated on its date, in resource
        order. One pass over the rounds and one over the pains (indexed by date and by referenced round
        id): no per-date scan of every pain score."""
        by_date: dict[dt.date, list[ExerciseRound]] = {}
        for r in rounds:
            on_date = by_date.get(r.date)
            if on_date is None:
                by_date[r.date] = [r]
            else:
                on_date.append(r)
        if not by_date:
            return [], []
        by_ref: dict[str, list[int]] = {}
        by_day: dict[dt.date, list[int]] = {}
        for i, p in enumerate(pains):
            if p.derived_from:
                for ref in p.derived_from:
                    by_ref.setdefault(ref, []).append(i)
            else:
                by_day.setdefault(p.date, []).append(i)
        rung = self.rung
        ladder_key = tuple(rung)
        memo = session_memo
        memo_get = memo.get
        out: list[Session] = []
        for day in sorted(by_date):
            on_day = by_date[day]
            candidates = by_day.get(day, [])  # its pain scores are among these
            if by_ref:
                refs = [i for r in on_day for i in by_ref.get(r.resource_id, ())]
                if refs:
                    candidates = sorted(set(candidates).union(refs))
            key = (ladder_key, tuple(map(id, on_day)), tuple([id(pains[i]) for i in candidates]) if candidates else ())
            session = memo_get(key)
            if session is None:
                session = _session(day, on_day, [pains[i] for i in candidates], rung, positions)
                memo.put(key, (tuple(on_day), tuple(pains[i] for i in candidates)), session)
            out.append(session)
        return out, by_date[max(by_date)]

    def mark_in_session(self, session: Session | None) -> None:
        """Flag the unusable pain scores and rounds that could have belonged to the latest session:
        undated (or an unreadable date), dated on or after its date, or linked to its rounds; with no
        usable session, every unusable round (it could have been the session)."""
        round_ids = {r.resource_id for r in session.rounds} if session is not None else set()
        for index, c in self.data_skips:
            bounds = date_bounds(_raw_date_text(c.raw))
            if session is None:
                could = c.kind == "round"
            elif c.kind == "pain" and c.obs_refs:
                could = bool(c.obs_refs & round_ids)
            else:
                could = bounds is None or bounds[1] >= session.date
            if could:
                self.skipped[index] = self.skipped[index].model_copy(update={"in_session": True})


_NO_TIME = dt.datetime.min.replace(tzinfo=dt.timezone.utc)


def _session(
    day: dt.date, on_day: list[ExerciseRound], candidates: list[PainScore], rung: Mapping[str, int],
    positions: Mapping[str, int],
) -> Session:
    """The session of one date from its usable rounds (resource order) and the pain scores that may
    belong to it (resource order): the highest rung's rounds in round order, with the pain scores
    linked by derivedFrom to one of them, or without derivedFrom (those are dated on ``day``)."""
    exercise = on_day[0].exercise
    if len(on_day) > 1:
        exercise = max({r.exercise for r in on_day}, key=rung.__getitem__)
        on_day = sorted((r for r in on_day if r.exercise == exercise), key=lambda r: _round_order(r, positions))
    ids = {r.resource_id for r in on_day}
    pains = tuple(p for p in candidates if not p.derived_from or not ids.isdisjoint(p.derived_from))
    return Session(exercise=exercise, date=day, rounds=tuple(on_day), pain_scores=pains)


class _SessionMemo:
    """Session facts by the identity of the round and pain facts they are built from (and the ladder).

    The round and pain facts of a resource seen before are the very objects :data:`fact_memo` keeps,
    so when a new session is added to a history, every older date finds its Session here instead of
    being grouped, sorted and validated again. An entry keeps the facts of its key alive, so an ``id``
    in a key can never belong to another object while the entry exists. Bounded (the oldest entries
    go first); thread-safe."""

    def __init__(self, maxsize: int = 16384) -> None:
        self.maxsize = maxsize
        self._lock = threading.Lock()
        self._entries: dict[tuple[Any, ...], tuple[tuple[Any, ...], Session]] = {}

    def get(self, key: tuple[Any, ...]) -> Session | None:
        found = self._entries.get(key)  # no LRU refresh (a lock per date): a hot entry evicted comes back
        return found[1] if found is not None else None

    def put(self, key: tuple[Any, ...], keep: tuple[Any, ...], session: Session) -> None:
        with self._lock:
            self._entries[key] = (keep, session)
            while len(self._entries) > self.maxsize:
                del self._entries[next(iter(self._entries))]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


session_memo = _SessionMemo()


def _round_order(r: ExerciseRound, positions: Mapping[str, int]) -> tuple[Any, ...]:
    """Rounds in order: by the ``round`` component, else by time (``effectiveDateTime``), else by
    resource order; numbered rounds before unnumbered ones, timed before untimed."""
    return (
        r.round_number is None, r.round_number or 0,
        r.recorded_at is None, r.recorded_at or _NO_TIME,
        positions[r.resource_id],
    )


def _unwrap(key: str, value: Any, max_entries: int = MAX_ENTRIES_PER_KEY) -> list[tuple[Any, bool]]:
    """(resource, in_bundle) pairs of one prefetch value; PrefetchShapeError for a wrong shape,
    PrefetchTooLarge for a Bundle of more than ``max_entries`` entries (checked before any work)."""
    if not isinstance(value, dict):
        raise PrefetchShapeError(key, "not a FHIR resource or Bundle (expected a JSON object)")
    rtype = value.get("resourceType")
    if rtype is None:
        raise PrefetchShapeError(key, "not a FHIR resource or Bundle (no resourceType)")
    if not isinstance(rtype, str):
        raise PrefetchShapeError(key, "not a FHIR resource or Bundle (resourceType is not a string)")
    if rtype != "Bundle":
        return [(value, False)]
    entries = value.get("entry", [])
    if not isinstance(entries, list):
        raise PrefetchShapeError(key, "Bundle entry is not a list")
    if len(entries) > max_entries:
        raise PrefetchTooLarge(key, f"the Bundle has {len(entries)} entries, more than the {max_entries} accepted")
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise PrefetchShapeError(key, f"Bundle entry[{i}] is not an object")
        out.append((entry.get("resource"), True))
    return out


def extract(
    prefetch: Mapping[str, Any], *, patient_id: str, codes: Codes, ladder: Ladder,
    max_entries_per_key: int = MAX_ENTRIES_PER_KEY,
) -> PatientFacts:
    """Extract the facts the rules need from one hook request's prefetch.

    ``prefetch`` maps prefetch keys to a FHIR resource, a Bundle, or None (no data). Raises
    :class:`PrefetchShapeError` for a value that is not a resource or Bundle at all; any problem with
    an individual resource is recorded in ``PatientFacts.skipped`` instead.
    """
    resources: list[tuple[Any, bool]] = []
    for key, value in prefetch.items():
        if value is not None:
            resources.extend(_unwrap(key, value, max_entries_per_key))  # every shape before any work

    # the whole-prefetch key costs a pass over the whole prefetch: only for an outline seen before
    content_key = prefetch_key(prefetch) if fact_memo.extractions.seen(_outline(patient_id, resources)) else None
    if content_key is not None:
        known = fact_memo.extractions.get(codes, ladder, patient_id, content_key)
        if known is not None:
            if log.isEnabledFor(logging.DEBUG):
                for line in known.lines:
                    _log_skip(line)
            _log_summary(dict(known.counts))
            return known.facts

    ex = _Extractor(patient_id, codes, ladder)
    for order, (raw, in_bundle) in enumerate(resources):
        ex.add(order, raw, in_bundle=in_bundle)

    conditions = ex.lbp_conditions()
    red_flags, risk_factors = ex.flagged_conditions()
    rounds, positions = ex.usable_rounds()
    pains = ex.all_pains()
    sessions, latest_rounds = ex.sessions(rounds, positions, pains)
    session = sessions[-1] if sessions else None
    # pain recorded after the latest session's day and not linked to it: the rules may want to know
    associated = {p.resource_id for p in session.pain_scores} if session is not None else set()
    later = tuple(p for p in pains if session is not None and p.date > session.date and p.resource_id not in associated)
    ex.mark_in_session(session)
    ex.log_summary()
    facts = PatientFacts(
        patient_id=patient_id,
        conditions=tuple(conditions),
        red_flags=tuple(red_flags),
        risk_factors=tuple(risk_factors),
        pain_scores=session.pain_scores if session is not None else (),
        pains_after_session=later,
        rounds=tuple(latest_rounds),
        latest_session=session,
        sessions=tuple(sessions),
        skipped=tuple(ex.skipped),
    )
    if content_key is not None:
        fact_memo.extractions.put(
            patient_id, content_key, _Extracted(codes, ladder, facts, tuple(ex.counts.items()), tuple(ex.lines))
        )
    return facts
