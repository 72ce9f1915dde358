"""Storage on real databases: a temporary SQLite file always, PostgreSQL too when CDS_TEST_DATABASE_URL is
set (each PostgreSQL test gets a fresh schema, dropped afterwards)."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import socket
import sqlite3
import uuid

import pytest
from conftest import with_directory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from cds.feedback import FeedbackItem
from cds.storage import (
    UNKNOWN,
    AuditCard,
    AuditRecord,
    Store,
    StoreUnavailable,
    current_revision,
    downgrade,
    hash_patient_id,
    head_revision,
    retention_cutoff,
    upgrade,
)

PG_URL = os.environ.get("CDS_TEST_DATABASE_URL")
KEY = b"test-key-0123456789abcdef"
UTC = dt.timezone.utc
T0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
TABLES = ("audit_evaluation", "audit_card", "audit_suggestion", "feedback")


# ---------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture
def db_url(empty_db_url):
    """URL of an empty database (not migrated), SQLite or PostgreSQL (conftest)."""
    return with_directory(empty_db_url)


@pytest.fixture
def store(db_url):
    upgrade(db_url)
    s = Store(db_url)
    yield s
    s.close()


def u() -> str:
    return str(uuid.uuid4())


def card(rule_id: str, decision: str = "continue", indicator: str = "info", suggestions: int = 1) -> AuditCard:
    return AuditCard(
        card_uuid=u(),
        rule_id=rule_id,
        decision=decision,
        indicator=indicator,
        suggestion_uuids=tuple(u() for _ in range(suggestions)),
    )


def audit(cards, version="1.0.0", at=T0, patient="Patient/example-123") -> AuditRecord:
    return AuditRecord(
        hook_instance=u(),
        service_id="lbp-progression",
        evaluated_at=at,
        ruleset_name="lbp",
        ruleset_version=version,
        ruleset_sha256="a" * 64,
        patient_hash=hash_patient_id(KEY, patient),
        cards=tuple(cards),
    )


def accepted(c: AuditCard | str, at=T0, suggestion: str | None = None) -> FeedbackItem:
    cid = c if isinstance(c, str) else c.card_uuid
    sid = suggestion or (c.suggestion_uuids[0] if isinstance(c, AuditCard) and c.suggestion_uuids else u())
    return FeedbackItem.model_validate(
        {"card": cid, "outcome": "accepted", "acceptedSuggestions": [{"id": sid}], "outcomeTimestamp": at.isoformat()}
    )


def overridden(c: AuditCard | str, code: str | None = None, at=T0, comment: str | None = None) -> FeedbackItem:
    cid = c if isinstance(c, str) else c.card_uuid
    data = {"card": cid, "outcome": "overridden", "outcomeTimestamp": at.isoformat()}
    if code:
        data["overrideReason"] = {
            "reason": {"system": "http://example.org/override", "code": code, "display": code.replace("-", " ")}
        }
        if comment:
            data["overrideReason"]["userComment"] = comment
    return FeedbackItem.model_validate(data)


# ---------------------------------------------------------------------------------------------------
# migrations


def test_migrations_create_schema_on_empty_db(db_url):
    assert current_revision(db_url) is None
    upgrade(db_url)
    assert current_revision(db_url) == head_revision()
    upgrade(db_url)  # idempotent
    engine = create_engine(db_url)
    try:
        names = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert set(TABLES) | {"alembic_version"} <= names
    downgrade(db_url)
    assert current_revision(db_url) is None
    upgrade(db_url)
    assert Store(db_url).ping()


def test_sqlite_uses_wal(tmp_path):
    url = f"sqlite:///{tmp_path / 'w.db'}"
    upgrade(url)
    with sqlite3.connect(tmp_path / "w.db") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_store_does_not_create_tables(db_url):
    s = Store(db_url)
    assert s.ping() is False  # reachable but not migrated: not ready
    with pytest.raises(StoreUnavailable):
        s.record_feedback("svc", [accepted(u())])
    s.close()


# ---------------------------------------------------------------------------------------------------
# audit, feedback, report


def test_audit_feedback_report_numbers(store):
    a1, a2, a3, b1, b2 = card("r-a"), card("r-a"), card("r-a"), card("r-b", "step-up"), card("r-b")
    store.record_evaluation(audit([a1, b1]))
    store.record_evaluation(audit([a2, b2]))
    store.record_evaluation(audit([a3]))
    n1 = card("r-a")
    store.record_evaluation(audit([n1], version="1.1.0"))
    assert store.count("audit_evaluation") == 4
    assert store.count("audit_card") == 6
    assert store.count("audit_suggestion") == 6

    items = [
        accepted(a1),
        overridden(a2, "not-relevant"),
        accepted(a3, at=T0),
        overridden(a3, "patient-declined", at=T0 + dt.timedelta(minutes=5)),  # latest outcome wins
        overridden(b1, "not-relevant"),
        accepted(n1),
        accepted(u()),  # unknown card
    ]
    assert store.record_feedback("lbp-progression", items) == 7

    rows = {(r.ruleset_version, r.rule_id): r for r in store.report()}
    assert set(rows) == {("1.0.0", "r-a"), ("1.0.0", "r-b"), ("1.1.0", "r-a"), (UNKNOWN, UNKNOWN)}
    ra = rows[("1.0.0", "r-a")]
    assert (ra.shown, ra.accepted, ra.overridden, ra.feedback_reports) == (3, 1, 2, 4)
    assert ra.acceptance_rate == pytest.approx(1 / 3)
    assert [(r.code, r.count) for r in ra.override_reasons] == [("not-relevant", 1), ("patient-declined", 1)]
    rb = rows[("1.0.0", "r-b")]
    assert (rb.shown, rb.accepted, rb.overridden, rb.no_feedback) == (2, 0, 1, 1)
    assert [(r.code, r.display, r.count) for r in rb.override_reasons] == [("not-relevant", "not relevant", 1)]
    rn = rows[("1.1.0", "r-a")]
    assert (rn.shown, rn.accepted, rn.overridden, rn.acceptance_rate) == (1, 1, 0, 1.0)
    unk = rows[(UNKNOWN, UNKNOWN)]
    assert (unk.shown, unk.accepted, unk.overridden) == (0, 1, 0)
    assert store.report()[-1].rule_id == UNKNOWN  # unknown row last


def test_report_since(store):
    old, new = card("r-a"), card("r-a")
    store.record_evaluation(audit([old], at=T0 - dt.timedelta(days=30)))
    store.record_evaluation(audit([new], at=T0))
    store.record_feedback("svc", [accepted(old), overridden(new, "x")])
    rows = store.report(since=T0 - dt.timedelta(days=1))
    assert [(r.rule_id, r.shown, r.accepted, r.overridden) for r in rows] == [("r-a", 1, 0, 1)]
    all_rows = store.report()
    assert [(r.rule_id, r.shown, r.accepted, r.overridden) for r in all_rows] == [("r-a", 2, 1, 1)]


def test_repeated_identical_report_is_stored_once(store):
    c = card("r-a")
    store.record_evaluation(audit([c]))
    item = overridden(c, "not-relevant", comment="already doing it")
    assert store.record_feedback("svc", [item]) == 1
    assert store.record_feedback("svc", [item]) == 0
    # the same content in another representation (upper-case uuid, other offset) is the same report
    same = FeedbackItem.model_validate(
        {
            "card": c.card_uuid.upper(),
            "outcome": "overridden",
            "overrideReason": item.overrideReason.model_dump(exclude_none=True),
            "outcomeTimestamp": T0.astimezone(dt.timezone(dt.timedelta(hours=2))).isoformat(),
        }
    )
    assert store.record_feedback("svc", [same, same]) == 0
    assert store.count("feedback") == 1
    r = store.report()[0]
    assert (r.overridden, r.feedback_reports) == (1, 1)


def test_same_card_different_content_stored_again(store):
    c = card("r-a")
    store.record_evaluation(audit([c]))
    assert store.record_feedback("svc", [accepted(c)]) == 1
    assert store.record_feedback("svc", [overridden(c, "not-relevant", at=T0 + dt.timedelta(seconds=1))]) == 1
    assert store.record_feedback("svc", [overridden(c, "other", at=T0 + dt.timedelta(seconds=1))]) == 1
    assert store.count("feedback") == 3
    r = store.report()[0]
    assert (r.shown, r.accepted, r.overridden, r.feedback_reports) == (1, 0, 1, 3)


def test_unknown_card_feedback_is_stored(store):
    cid = u()
    assert store.record_feedback("svc", [overridden(cid, "not-relevant")]) == 1
    [row] = store.report()
    assert (row.rule_id, row.ruleset_version, row.shown, row.overridden) == (UNKNOWN, UNKNOWN, 0, 1)
    assert row.override_reasons[0].code == "not-relevant"


def test_audit_without_cards_and_patient(store):
    rec = AuditRecord(
        hook_instance=u(), service_id="svc", ruleset_name="lbp", ruleset_version="1", ruleset_sha256="b" * 64
    )
    store.record_evaluation(rec)
    assert store.count("audit_evaluation") == 1
    assert store.report() == []


def test_purge(store):
    old, new = card("r-a"), card("r-b")
    store.record_evaluation(audit([old], at=T0 - dt.timedelta(days=100)))
    store.record_evaluation(audit([new], at=T0))
    store.record_feedback("svc", [accepted(old), accepted(new)])
    # feedback is aged by when it was received (now); purge nothing of it with a past cutoff
    res = store.purge(T0 - dt.timedelta(days=90))
    assert (res.evaluations, res.feedback) == (1, 0)
    assert store.count("audit_evaluation") == 1
    assert store.count("audit_card") == 1
    assert store.count("audit_suggestion") == 1
    assert store.count("feedback") == 2
    res = store.purge_retention(1, now=dt.datetime.now(UTC) + dt.timedelta(days=2))
    assert (res.evaluations, res.feedback) == (1, 2)
    assert all(store.count(t) == 0 for t in TABLES)


def test_retention_cutoff():
    assert retention_cutoff(30, now=T0) == T0 - dt.timedelta(days=30)
    with pytest.raises(ValueError):
        retention_cutoff(0)


# ---------------------------------------------------------------------------------------------------
# privacy


def test_hash_patient_id():
    h = hash_patient_id(KEY, "Patient/123")
    assert len(h) == 64 and h == hash_patient_id(KEY, "Patient/123")
    assert h != hash_patient_id(KEY, "Patient/124")
    assert h != hash_patient_id(b"another-key-0123456789", "Patient/123")
    with pytest.raises(ValueError):
        hash_patient_id(b"short", "Patient/123")


def test_audit_record_refuses_raw_patient_id():
    with pytest.raises(ValueError):
        AuditRecord.model_validate({**audit([]).model_dump(), "patient_hash": "Patient/example-123"})


def _dump(store: Store, db_url: str, tmp_path) -> str:
    parts = []
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            for t in TABLES:
                parts += [repr(tuple(row)) for row in conn.execute(text(f"SELECT * FROM {t}"))]
    finally:
        engine.dispose()
    if db_url.startswith("sqlite"):
        path = make_url(db_url).database
        with sqlite3.connect(path) as con:
            parts += list(con.iterdump())
        for suffix in ("", "-wal"):
            if os.path.exists(path + suffix):
                with open(path + suffix, "rb") as fh:
                    parts.append(fh.read().decode("latin-1"))
    return "\n".join(parts)


def test_no_raw_patient_id_stored(store, db_url, tmp_path):
    pid = "PATIENT-SECRET-98765"
    c = card("r-a")
    store.record_evaluation(audit([c], patient=pid))
    store.record_feedback("svc", [accepted(c)])
    dump = _dump(store, db_url, tmp_path)
    assert c.card_uuid in dump  # the dump does see the data
    assert hash_patient_id(KEY, pid) in dump
    assert pid not in dump and pid.lower() not in dump
    assert "98765" not in dump


# ---------------------------------------------------------------------------------------------------
# database down


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sqlite_unreachable(tmp_path):
    url = f"sqlite:///{tmp_path / 'no-such-dir' / 'deeper' / 'cds.db'}"
    s = Store(url)
    assert s.ping() is False
    with pytest.raises(StoreUnavailable):
        s.record_feedback("svc", [accepted(u())])
    with pytest.raises(StoreUnavailable):
        s.record_evaluation(audit([card("r-a")]))
    with pytest.raises(StoreUnavailable):
        s.report()
    with pytest.raises(StoreUnavailable):
        upgrade(url)


def test_postgresql_unreachable():
    pytest.importorskip("psycopg")
    url = f"postgresql+psycopg://cds:cds@127.0.0.1:{_closed_port()}/cds"
    s = Store(url)
    assert s.ping() is False
    with pytest.raises(StoreUnavailable):
        s.record_feedback("svc", [accepted(u())])
    with pytest.raises(StoreUnavailable):
        s.record_evaluation(audit([card("r-a")]))
    with pytest.raises(StoreUnavailable):
        upgrade(url)


def test_database_goes_away(tmp_path):
    """A store that worked, then its file vanished with its directory: unavailable, not a crash."""
    d = tmp_path / "gone"
    d.mkdir()
    url = f"sqlite:///{d / 'cds.db'}"
    upgrade(url)
    s = Store(url)
    assert s.ping()
    s.close()
    for f in d.iterdir():
        f.unlink()
    d.rmdir()
    assert s.ping() is False
    with pytest.raises(StoreUnavailable):
        s.record_feedback("svc", [accepted(u())])


# ---------------------------------------------------------------------------------------------------
# two processes at once


N_PER_PROCESS = 200


def _writer(url: str, barrier, worker: int) -> None:
    s = Store(url)
    items = [
        accepted(str(uuid.UUID(int=worker << 64 | i)), at=T0 + dt.timedelta(seconds=i)) for i in range(N_PER_PROCESS)
    ]
    barrier.wait(timeout=60)
    stored = 0
    for item in items:  # one transaction each: maximum contention
        stored += s.record_feedback("svc", [item])
    s.close()
    if stored != N_PER_PROCESS:
        raise SystemExit(3)


def test_two_processes_writing_at_once_lose_nothing(store, db_url):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(db_url, barrier, w)) for w in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    assert [p.exitcode for p in procs] == [0, 0]
    assert store.count("feedback") == 2 * N_PER_PROCESS
    [row] = store.report()
    assert (row.rule_id, row.accepted) == (UNKNOWN, 2 * N_PER_PROCESS)


# ---------------------------------------------------------------------------------------------------
# background audit writer


def test_audit_writer_stores_in_background(store):
    from cds.storage import AuditWriter

    w = AuditWriter(store)
    cards = [card("r-a") for _ in range(20)]
    for c in cards:
        assert w.submit(audit([c]))
    assert w.flush(timeout=30)
    assert (w.written, w.failed, w.dropped) == (20, 0, 0)
    assert store.count("audit_card") == 20
    w.close()


def _audit_rows(store) -> list[tuple]:
    """Every audit row with its links resolved (no row ids): what the audit holds, in insertion order."""
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            "SELECT e.hook_instance, e.ruleset_version, e.patient_hash, c.position, c.card_uuid, c.rule_id, "
            "c.decision, c.indicator, s.suggestion_uuid FROM audit_evaluation e "
            "LEFT JOIN audit_card c ON c.evaluation_id = e.id LEFT JOIN audit_suggestion s ON s.card_id = c.id "
            "ORDER BY e.id, c.position, s.suggestion_uuid"
        ))]


def test_a_batch_stores_exactly_what_one_call_each_stores(db_url, tmp_path):
    records = [
        audit([card("r-a", suggestions=2), card("r-b", "step-up", "warning", suggestions=0)]),
        audit([]),  # a call without cards (outside the programme)
        audit([card("r-c", suggestions=1)], version="1.1.0", patient="Patient/other"),
        audit([card("r-a", suggestions=3), card("r-a", suggestions=1), card("r-d", suggestions=0)]),
    ]
    upgrade(db_url)
    one_by_one = Store(db_url)
    ids = [one_by_one.record_evaluation(r) for r in records]
    expected = _audit_rows(one_by_one)
    one_by_one.close()
    other_url = with_directory(f"sqlite:///{tmp_path / 'batch' / 'audit.db'}")
    upgrade(other_url)
    batched = Store(other_url)
    batch_ids = batched.record_evaluations(records)
    assert len(batch_ids) == 4 and batch_ids == sorted(batch_ids)  # in the order given
    assert _audit_rows(batched) == expected
    assert len(expected) == 3 + 1 + 1 + 5  # one row per suggestion, or per card / call without
    assert batched.record_evaluations([]) == []
    batched.close()
    assert len(ids) == 4


class _CountingStore(Store):
    """A real store whose first write waits until released (a slow commit), counting the calls."""

    def __init__(self, url):
        super().__init__(url)
        import threading

        self.release = threading.Event()
        self.batches: list[int] = []

    def record_evaluations(self, audits):
        self.release.wait(30)
        self.batches.append(len(audits))
        return super().record_evaluations(audits)


def test_audit_writer_writes_what_queued_meanwhile_in_one_transaction(db_url):
    from cds.storage import AuditWriter

    upgrade(db_url)
    store = _CountingStore(db_url)
    w = AuditWriter(store, batch_max=40)
    for _ in range(61):
        assert w.submit(audit([card("r-a")]))
    store.release.set()
    assert w.flush(timeout=30)
    assert (w.written, w.failed, w.dropped) == (61, 0, 0)
    assert sum(store.batches) == 61 and max(store.batches) <= 40
    assert len(store.batches) <= 4  # the first record alone at most, then batches of up to 40
    assert store.count("audit_card") == 61
    w.close()
    store.close()


def test_one_bad_record_in_a_batch_does_not_lose_the_others(db_url, caplog):
    from cds.storage import AuditWriter

    upgrade(db_url)
    store = _CountingStore(db_url)
    w = AuditWriter(store)
    shared = card("r-a")
    records = [audit([card("r-a")]), audit([shared]), audit([shared]), audit([card("r-b")])]  # a card uuid twice
    for r in records:
        assert w.submit(r)
    store.release.set()
    assert w.flush(timeout=30)
    assert (w.written, w.failed) == (3, 1)
    assert store.count("audit_evaluation") == 3 and store.count("audit_card") == 3
    assert [r.getMessage() for r in caplog.records if r.name == "cds.audit"] == ["audit not stored: StoreRefused"]
    w.close()
    store.close()


def test_audit_writer_survives_a_database_that_is_down(tmp_path, caplog):
    from cds.storage import AuditWriter

    w = AuditWriter(Store(f"sqlite:///{tmp_path / 'missing' / 'x.db'}"), maxsize=2)
    rec = audit([card("r-a")], patient="PATIENT-SECRET-1")
    assert w.submit(rec) is True
    assert w.flush(timeout=30)
    assert w.failed == 1
    assert "database unavailable" in caplog.text
    assert "PATIENT-SECRET-1" not in caplog.text
    w.close()
