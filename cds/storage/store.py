"""The store: decision audit, feedback, retention and the feedback report, over any SQLAlchemy URL."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import Connection, delete, func, insert, select, text, update

from ..feedback import FeedbackItem
from .engine import PgSettings, make_engine, sqlite_file
from .models import audit_card, audit_evaluation, audit_suggestion, feedback, jwt_replay, readiness_probe
from .transaction import StoreUnavailable, conflict_insert, transaction

UNKNOWN = "(unknown)"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


# ---------------------------------------------------------------------------------------------------
# Audit input


class AuditCard(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    card_uuid: str
    rule_id: str
    decision: str
    indicator: str
    suggestion_uuids: tuple[str, ...] = ()


class AuditRecord(BaseModel):
    """One hook call, as the audit keeps it. ``patient_hash`` comes from :func:`hash_patient_id`; it is
    checked to look like one, so a raw identifier cannot be stored by mistake."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hook_instance: str
    service_id: str
    evaluated_at: dt.datetime = Field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))
    ruleset_name: str
    ruleset_version: str
    ruleset_sha256: str
    patient_hash: str | None = None
    #: the EHR's id of the rule that fired the hook (Epic's ``criteria-id`` extension): a plain token
    criteria_id: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9._:\-]+$")
    cards: tuple[AuditCard, ...] = ()

    @field_validator("patient_hash")
    @classmethod
    def _looks_hashed(cls, v: str | None) -> str | None:
        if v is not None and not _HEX64.match(v):
            raise ValueError("patient_hash must be the 64-hex HMAC from hash_patient_id(), never a raw id")
        return v

    @field_validator("evaluated_at")
    @classmethod
    def _utc(cls, v: dt.datetime) -> dt.datetime:
        return v.replace(tzinfo=dt.timezone.utc) if v.tzinfo is None else v.astimezone(dt.timezone.utc)


# ---------------------------------------------------------------------------------------------------
# Report output


@dataclass(frozen=True)
class ReasonCount:
    code: str
    display: str | None
    system: str | None
    count: int

    @property
    def label(self) -> str:
        return self.display or self.code


@dataclass(frozen=True)
class ReportRow:
    """Per rule and rule-set version. ``shown`` counts cards; ``accepted``/``overridden`` count cards by
    their latest reported outcome (a card reported twice counts once); ``feedback_reports`` counts every
    stored report. Feedback for a card the audit does not know is reported under rule ``(unknown)``."""

    rule_id: str
    ruleset_name: str
    ruleset_version: str
    shown: int = 0
    accepted: int = 0
    overridden: int = 0
    feedback_reports: int = 0
    override_reasons: tuple[ReasonCount, ...] = field(default=())

    @property
    def acceptance_rate(self) -> float | None:
        """accepted / (accepted + overridden): of the cards clinicians responded to, the share accepted."""
        answered = self.accepted + self.overridden
        return None if answered == 0 else self.accepted / answered

    @property
    def no_feedback(self) -> int:
        return max(self.shown - self.accepted - self.overridden, 0)

    def to_dict(self) -> dict:
        return {
            "rule_id": self.rule_id,
            "ruleset_name": self.ruleset_name,
            "ruleset_version": self.ruleset_version,
            "shown": self.shown,
            "accepted": self.accepted,
            "overridden": self.overridden,
            "no_feedback": self.no_feedback,
            "feedback_reports": self.feedback_reports,
            "acceptance_rate": self.acceptance_rate,
            "override_reasons": [
                {"system": r.system, "code": r.code, "display": r.display, "count": r.count}
                for r in self.override_reasons
            ],
        }


@dataclass(frozen=True)
class PurgeResult:
    evaluations: int
    feedback: int
    replay_entries: int = 0  # expired JWT replay-store rows (CDS_JTI_STORE=database)


def retention_cutoff(days: int, now: dt.datetime | None = None) -> dt.datetime:
    """The instant before which records are purged when keeping ``days`` days."""
    if days < 1:
        raise ValueError("retention must be at least one day")
    now = now or dt.datetime.now(dt.timezone.utc)
    return now - dt.timedelta(days=days)


# ---------------------------------------------------------------------------------------------------


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


class Store:
    """Thread-safe; one per process (engines hold a connection pool). Build it from a URL; run
    :func:`cds.storage.upgrade` first (the store never creates tables itself)."""

    #: how long a readiness answer is reused (``/readyz`` may be polled often; the probe writes)
    READY_CACHE_S = 1.0

    def __init__(self, url: str, pg: PgSettings | None = None):
        self.url = url
        self.engine = make_engine(url, pg, must_exist=True)
        self._file = sqlite_file(url)
        self._ready_lock = threading.Lock()
        self._ready: tuple[float, str | None] | None = None  # (monotonic time, problem or None)

    def close(self) -> None:
        self.engine.dispose()

    # -- plumbing ----------------------------------------------------------------------------------
    @contextmanager
    def _tx(self, write: bool) -> Iterator[Connection]:
        try:
            with transaction(self.engine, write=write) as conn:
                yield conn
        except StoreUnavailable as exc:
            self._ready = (time.monotonic(), str(exc))  # /readyz says so at once, not after its cache
            raise
        cached = self._ready
        if cached is not None and cached[1] is not None:
            self._ready = None  # it works again: the next /readyz probes instead of repeating the failure

    def ping(self) -> bool:
        """True when the database takes a write now and the schema is in place (:meth:`problem`, not cached)."""
        return self.problem() is None

    def ready(self) -> bool:
        """:meth:`ping` for ``/readyz``: the answer is reused for :attr:`READY_CACHE_S` seconds, and
        callers arriving while a probe runs wait for it (they never start one of their own)."""
        now = time.monotonic()
        cached = self._ready
        if cached is not None and now - cached[0] < self.READY_CACHE_S:
            return cached[1] is None
        with self._ready_lock:
            cached = self._ready
            if cached is None or time.monotonic() - cached[0] >= self.READY_CACHE_S:
                cached = self._ready = (time.monotonic(), self.problem())
        return cached[1] is None

    def problem(self) -> str | None:
        """Why the database cannot take the service's writes now, or None: the write probe.

        A SQLite file must exist and be writable (with its folder, for the WAL files); then, on every
        backend, one committed write to ``readiness_probe`` (so a read-only, deleted, full or locked
        database, or one not migrated, is noticed, not only one that does not answer). A failure disposes
        the pool (:func:`~cds.storage.transaction.transaction`). The message names no value."""
        if self._file is not None:
            if not os.path.exists(self._file):
                return "database file missing"
            if not (os.access(self._file, os.W_OK) and os.access(os.path.dirname(self._file), os.W_OK)):
                self.engine.dispose()  # connections opened now would be read-only for ever
                return "database file or its folder is read-only"
        try:
            with self._tx(write=True) as conn:
                now = dt.datetime.now(dt.timezone.utc)
                ins = conflict_insert(conn, readiness_probe)
                if ins is not None:
                    conn.execute(
                        ins.values(id=1, probed_at=now).on_conflict_do_update(
                            index_elements=["id"], set_={"probed_at": now}
                        )
                    )
                elif not conn.execute(update(readiness_probe).where(readiness_probe.c.id == 1).values(probed_at=now)).rowcount:
                    conn.execute(insert(readiness_probe).values(id=1, probed_at=now))
        except StoreUnavailable as exc:
            return str(exc)
        except Exception as exc:  # noqa: BLE001 - readiness answers yes or no (the class names the problem)
            self.engine.dispose()
            return f"database write failed: {type(exc).__name__}"
        return None

    # -- audit -------------------------------------------------------------------------------------
    def record_evaluation(self, audit: AuditRecord) -> int:
        """Store one hook call with its cards; returns the evaluation's row id."""
        return self.record_evaluations([audit])[0]

    def record_evaluations(self, audits: Sequence[AuditRecord]) -> list[int]:
        """Store hook calls with their cards in one transaction (all or none); returns the evaluations'
        row ids in the order given. Three statements whatever the number of calls (evaluations, cards,
        suggestions, each an INSERT of many rows with RETURNING in parameter order), so the background
        writer's cost per record falls with the batch instead of paying a transaction per hook call."""
        if not audits:
            return []
        with self._tx(write=True) as conn:
            eval_ids: list[int] = list(
                conn.execute(
                    insert(audit_evaluation).returning(audit_evaluation.c.id, sort_by_parameter_order=True),
                    [
                        {
                            "hook_instance": audit.hook_instance,
                            "service_id": audit.service_id,
                            "evaluated_at": audit.evaluated_at,
                            "ruleset_name": audit.ruleset_name,
                            "ruleset_version": audit.ruleset_version,
                            "ruleset_sha256": audit.ruleset_sha256,
                            "patient_hash": audit.patient_hash,
                            "criteria_id": audit.criteria_id,
                        }
                        for audit in audits
                    ],
                ).scalars()
            )
            cards = [
                (eval_id, pos, card)
                for eval_id, audit in zip(eval_ids, audits, strict=True)
                for pos, card in enumerate(audit.cards)
            ]
            if not cards:
                return eval_ids
            card_ids: list[int] = list(
                conn.execute(
                    insert(audit_card).returning(audit_card.c.id, sort_by_parameter_order=True),
                    [
                        {
                            "evaluation_id": eval_id,
                            "position": pos,
                            "card_uuid": card.card_uuid.lower(),
                            "rule_id": card.rule_id,
                            "decision": card.decision,
                            "indicator": card.indicator,
                        }
                        for eval_id, pos, card in cards
                    ],
                ).scalars()
            )
            suggestions = [
                {"card_id": card_id, "suggestion_uuid": s.lower()}
                for card_id, (_, _, card) in zip(card_ids, cards, strict=True)
                for s in card.suggestion_uuids
            ]
            if suggestions:
                conn.execute(insert(audit_suggestion), suggestions)
            return eval_ids

    # -- feedback ----------------------------------------------------------------------------------
    def record_feedback(self, service_id: str, items: Sequence[FeedbackItem]) -> int:
        """Store feedback items in one transaction. Returns how many were new: an item identical to one
        already stored (same service, card, outcome, timestamp, suggestions, reason) is not stored twice;
        the same card with different content is stored again. Unknown card uuids are stored too.
        Raises :class:`~cds.storage.transaction.StoreUnavailable` when nothing could be stored."""
        now = dt.datetime.now(dt.timezone.utc)
        rows = []
        seen: set[str] = set()
        for item in items:
            h = item.content_hash(service_id)
            if h in seen:
                continue
            seen.add(h)
            coding = item.overrideReason.reason if item.overrideReason else None
            rows.append(
                {
                    "content_hash": h,
                    "service_id": service_id,
                    "card_uuid": item.card,
                    "outcome": item.outcome,
                    "outcome_timestamp": item.outcomeTimestamp,
                    "received_at": now,
                    "accepted_suggestions": json.dumps(list(item.suggestion_ids))
                    if item.acceptedSuggestions is not None
                    else None,
                    "override_system": coding.system if coding else None,
                    "override_code": coding.code if coding else None,
                    "override_display": coding.display if coding else None,
                    "override_comment": item.overrideReason.userComment if item.overrideReason else None,
                    "payload": json.dumps(item.canonical(), sort_keys=True, separators=(",", ":")),
                }
            )
        if not rows:
            return 0
        with self._tx(write=True) as conn:
            ins = conflict_insert(conn, feedback)
            if ins is not None:
                stmt = ins.on_conflict_do_nothing(index_elements=["content_hash"]).returning(feedback.c.id)
                # RETURNING yields a row only for an inserted item (rowcount is unreliable here).
                return sum(len(conn.execute(stmt, row).all()) for row in rows)
            # Other backends: look first, then insert (the unique index still guards the race).
            existing: set[str] = set(
                conn.execute(
                    select(feedback.c.content_hash).where(feedback.c.content_hash.in_([r["content_hash"] for r in rows]))
                ).scalars()
            )
            new = [r for r in rows if r["content_hash"] not in existing]
            if new:
                conn.execute(insert(feedback), new)
            return len(new)

    # -- retention ---------------------------------------------------------------------------------
    def purge(self, older_than: dt.datetime) -> PurgeResult:
        """Delete evaluations (with their cards and suggestions) evaluated before ``older_than`` and
        feedback received before it, and the JWT replay entries that have expired by now (whatever
        ``older_than``: an entry is kept exactly as long as its token could be replayed)."""
        cutoff = _utc(older_than)
        now = dt.datetime.now(dt.timezone.utc)
        with self._tx(write=True) as conn:
            old_evals = select(audit_evaluation.c.id).where(audit_evaluation.c.evaluated_at < cutoff)
            old_cards = select(audit_card.c.id).where(audit_card.c.evaluation_id.in_(old_evals))
            conn.execute(delete(audit_suggestion).where(audit_suggestion.c.card_id.in_(old_cards)))
            conn.execute(delete(audit_card).where(audit_card.c.evaluation_id.in_(old_evals)))
            n_eval = conn.execute(delete(audit_evaluation).where(audit_evaluation.c.evaluated_at < cutoff)).rowcount
            n_fb = conn.execute(delete(feedback).where(feedback.c.received_at < cutoff)).rowcount
            n_replay = conn.execute(delete(jwt_replay).where(jwt_replay.c.expires_at <= now)).rowcount
        return PurgeResult(evaluations=n_eval, feedback=n_fb, replay_entries=n_replay)

    def purge_retention(self, days: int, now: dt.datetime | None = None) -> PurgeResult:
        return self.purge(retention_cutoff(days, now))

    # -- report ------------------------------------------------------------------------------------
    def report(self, since: dt.datetime | None = None) -> list[ReportRow]:
        """Per rule id and rule-set version: cards shown (evaluated at/after ``since``), their outcomes
        by latest feedback, and override reasons. Feedback for unknown cards (received at/after
        ``since``) forms the ``(unknown)`` row. Sorted by rule-set name, version, rule id."""
        since = _utc(since) if since is not None else None
        key_cols = (audit_evaluation.c.ruleset_name, audit_evaluation.c.ruleset_version, audit_card.c.rule_id)
        with self._tx(write=False) as conn:
            shown_q = (
                select(*key_cols, func.count(audit_card.c.id).label("shown"))
                .select_from(audit_card.join(audit_evaluation, audit_card.c.evaluation_id == audit_evaluation.c.id))
                .group_by(*key_cols)
            )
            if since is not None:
                shown_q = shown_q.where(audit_evaluation.c.evaluated_at >= since)
            shown: dict[tuple[str, str, str], int] = {
                (row.ruleset_name, row.ruleset_version, row.rule_id): row.shown for row in conn.execute(shown_q)
            }

            joined = feedback.outerjoin(audit_card, feedback.c.card_uuid == audit_card.c.card_uuid).outerjoin(
                audit_evaluation, audit_card.c.evaluation_id == audit_evaluation.c.id
            )
            fb_q = select(
                feedback.c.id,
                feedback.c.card_uuid,
                feedback.c.outcome,
                feedback.c.outcome_timestamp,
                feedback.c.override_system,
                feedback.c.override_code,
                feedback.c.override_display,
                audit_evaluation.c.ruleset_name,
                audit_evaluation.c.ruleset_version,
                audit_card.c.rule_id,
                audit_evaluation.c.evaluated_at,
                feedback.c.received_at,
            ).select_from(joined)
            fb_rows = conn.execute(fb_q.order_by(feedback.c.outcome_timestamp, feedback.c.id)).all()

        latest: dict[str, tuple] = {}  # card uuid → row of its latest outcome (rows are in time order)
        reports: Counter[tuple[str, str, str]] = Counter()
        for row in fb_rows:
            if row.rule_id is None:
                if since is not None and row.received_at < since:
                    continue
                key = (UNKNOWN, UNKNOWN, UNKNOWN)
            else:
                if since is not None and row.evaluated_at < since:
                    continue
                key = (row.ruleset_name, row.ruleset_version, row.rule_id)
            latest[row.card_uuid] = (key, row)
            reports[key] += 1

        accepted: Counter = Counter()
        overridden: Counter = Counter()
        reasons: dict[tuple, Counter] = defaultdict(Counter)
        for key, row in latest.values():
            if row.outcome == "accepted":
                accepted[key] += 1
            else:
                overridden[key] += 1
                if row.override_code:
                    reasons[key][(row.override_code, row.override_display, row.override_system)] += 1

        keys = set(shown) | set(reports)
        out = []
        for key in sorted(keys, key=lambda k: (k[0] == UNKNOWN, k)):
            name, version, rule = key
            reason_counts = tuple(
                ReasonCount(code=c, display=d, system=s, count=n)
                for (c, d, s), n in sorted(reasons[key].items(), key=lambda kv: (-kv[1], kv[0][0]))
            )
            out.append(
                ReportRow(
                    rule_id=rule,
                    ruleset_name=name,
                    ruleset_version=version,
                    shown=shown.get(key, 0),
                    accepted=accepted[key],
                    overridden=overridden[key],
                    feedback_reports=reports[key],
                    override_reasons=reason_counts,
                )
            )
        return out

    # -- introspection for tests and tools ---------------------------------------------------------
    def count(self, table: str) -> int:
        with self._tx(write=False) as conn:
            return conn.execute(text(f"SELECT count(*) FROM {_table_name(table)}")).scalar_one()


def _table_name(name: str) -> str:
    allowed = {t.name for t in (audit_evaluation, audit_card, audit_suggestion, feedback, jwt_replay)}
    if name not in allowed:
        raise ValueError(f"unknown table {name!r}")
    return name

