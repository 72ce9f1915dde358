"""Data never lost silently and never leaked (issue 12, points 5 and 6), on real databases.

Each test is one row of the issue's findings table: text the database would refuse is a 400 naming the
field; the SQL parameters never reach an error message; a SQLite file made read-only (then writable
again) or deleted while the service runs; audit records queued at shutdown; PostgreSQL hung; /healthz
never waits on the database; hookInstance, patientId, X-Request-Id and 405 ``Allow``.

SQLite files always; PostgreSQL when ``CDS_TEST_DATABASE_URL`` is set (``.ci/run`` starts one).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import uuid
from pathlib import Path

import pytest
from conftest import ROOT, SERVICE_URL, build_app, example_pairs, with_directory
from sqlalchemy import exc as sa_exc, insert, text
from test_feedback_http import AUDIT_KEY, FEEDBACK_URL, OUTCOME_AT, _error, db_url  # noqa: F401 - fixture

from cds.db_text import StoredCoding
from cds.feedback import FeedbackError, FeedbackItem, parse_feedback
from cds.storage import PgSettings, Store, StoreRefused, StoreUnavailable, upgrade
from cds.storage.engine import WATCHDOG, make_engine, pg_connect_args
from cds.storage.models import feedback as feedback_table
from cds.storage.transaction import transaction

CARD = "0b9a6c3e-2f4d-4a51-9c7e-5d8f1e2a3b4c"


def overridden(reason: dict | None = None, comment: str | None = None, card: str | None = None) -> dict:
    item: dict = {"card": card or str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": OUTCOME_AT}
    if reason is not None or comment is not None:
        item["overrideReason"] = {}
        if reason is not None:
            item["overrideReason"]["reason"] = reason
        if comment is not None:
            item["overrideReason"]["userComment"] = comment
    return item


CODING = {"system": "https://lbp-cds.org/fhir/CodeSystem/override-reason", "code": "patient-declined"}

#: (item, the field the 400 names): every kind of text PostgreSQL or UTF-8 refuses, in every stored field
REFUSED = [
    (overridden(comment="fine until here \ud800"), "feedback[0].overrideReason.userComment"),
    (overridden(comment="nul \x00 inside"), "feedback[0].overrideReason.userComment"),
    (overridden(reason={**CODING, "code": "x" * 257}), "feedback[0].overrideReason.reason.code"),
    (overridden(reason={**CODING, "code": "a\x00"}), "feedback[0].overrideReason.reason.code"),
    (overridden(reason={**CODING, "system": "s" * 513}), "feedback[0].overrideReason.reason.system"),
    (overridden(reason={**CODING, "display": "\udfff"}), "feedback[0].overrideReason.reason.display"),
    (overridden(reason={**CODING, "display": "d" * 513}), "feedback[0].overrideReason.reason.display"),
]


# ---------------------------------------------------------------------------------------------------
# text the database would refuse: a 400 naming the field, never a 500


@pytest.mark.parametrize("item, field", REFUSED)
def test_unstorable_text_is_a_400_naming_the_field(db_url, item, field):  # noqa: F811 - fixture
    app = build_app(database_url=db_url, audit_key=AUDIT_KEY)
    client = app.test_client()
    response = client.post(FEEDBACK_URL, json={"feedback": [item]})
    assert response.status_code == 400, response.get_json()
    error = _error(response)
    assert error["field"] == field
    assert "\x00" not in error["message"] and "\ud800" not in error["message"]
    assert response.get_json()["resourceType"] == "OperationOutcome"
    assert app.extensions["lbp_cds"].store.count("feedback") == 0
    app.extensions["lbp_cds"].store.close()


def test_the_longest_storable_values_are_stored(db_url):  # noqa: F811 - fixture
    """The limits are the columns' own: the longest allowed values reach the database and are kept."""
    app = build_app(database_url=db_url, audit_key=AUDIT_KEY)
    client = app.test_client()
    reason = {"system": "s" * 512, "code": "c" * 256, "display": "d" * 512}
    comment = "é\U0001f600" * 5000  # astral characters and a long TEXT are fine
    response = client.post(FEEDBACK_URL, json={"feedback": [overridden(reason=reason, comment=comment)]})
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"received": 1, "stored": 1}
    store = app.extensions["lbp_cds"].store
    with store.engine.connect() as conn:
        row = conn.execute(text("SELECT override_code, override_comment FROM feedback")).one()
    assert (row.override_code, row.override_comment) == ("c" * 256, comment)
    store.close()


def test_odd_text_in_extensions_is_stored_escaped(db_url):  # noqa: F811 - fixture
    """The whole item is kept as JSON with \\u escapes: a lone surrogate or NUL in an extension is data."""
    app = build_app(database_url=db_url, audit_key=AUDIT_KEY)
    item = {**overridden(), "extension": {"org.example": {"note": "\ud800 and \x00"}}}
    response = app.test_client().post(FEEDBACK_URL, json={"feedback": [item]})
    assert response.status_code == 200, response.get_json()
    store = app.extensions["lbp_cds"].store
    with store.engine.connect() as conn:
        payload = conn.execute(text("SELECT payload FROM feedback")).scalar_one()
    assert "\\ud800 and \\u0000" in payload
    store.close()


def test_request_lengths_are_the_columns_lengths():
    from pydantic import ValidationError

    for field, column in (("system", "override_system"), ("code", "override_code"), ("display", "override_display")):
        length = feedback_table.c[column].type.length
        assert StoredCoding.model_validate({**CODING, field: "x" * length})
        with pytest.raises(ValidationError):
            StoredCoding.model_validate({**CODING, field: "x" * (length + 1)})


def test_refused_text_names_the_problem_not_the_value():
    with pytest.raises(FeedbackError) as e:
        parse_feedback({"feedback": [overridden(comment="secret comment \x00")]})
    assert str(e.value) == (
        "feedback[0].overrideReason.userComment: must not contain a NUL character (at character 16)"
    )
    assert "secret" not in str(e.value)


# ---------------------------------------------------------------------------------------------------
# SQL parameters never in an error


def test_sql_parameters_are_never_in_error_messages(db_url):  # noqa: F811 - fixture
    """A statement the database refuses (NOT NULL violated here): the engine hides the parameters, and
    the store's error (as it would be logged, traceback and all) quotes neither them nor PostgreSQL's
    DETAIL, which repeats the row."""
    upgrade(with_directory(db_url))
    store = Store(db_url)
    secret = "SECRET-COMMENT-1234"
    row = {"content_hash": "h", "override_comment": secret, "service_id": None}
    with pytest.raises(sa_exc.DBAPIError) as raw:
        with store.engine.begin() as conn:
            conn.execute(insert(feedback_table), row)
    assert "parameters hidden" in str(raw.value)
    with pytest.raises(StoreRefused) as e:
        with transaction(store.engine, write=True) as conn:
            conn.execute(insert(feedback_table), row)
    logged = "".join(traceback.format_exception(e.value))
    assert secret not in logged
    assert "IntegrityError" in str(e.value) or "NotNullViolation" in str(e.value)
    store.close()


def test_an_over_long_value_the_api_would_refuse_leaks_nothing_on_postgresql(db_url):  # noqa: F811
    """What the finding was: PostgreSQL refusing an over-long code wrote the parameters to the log."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite does not enforce VARCHAR lengths")
    store = Store(db_url)
    item = parse_feedback({"feedback": [overridden(CODING, "SECRET-COMMENT")]}).feedback[0]
    reason = item.overrideReason
    assert reason is not None and reason.reason is not None
    object.__setattr__(reason.reason, "code", "x" * 300)  # past the validation, as a bug would be
    with pytest.raises(StoreRefused) as e:
        store.record_feedback("svc", [item])
    logged = "".join(traceback.format_exception(e.value))
    assert "SECRET-COMMENT" not in logged and "xxxxxxxxxx" not in logged
    assert "StringDataRightTruncation" in str(e.value)
    store.close()


# ---------------------------------------------------------------------------------------------------
# SQLite read-only, then writable again; SQLite deleted while running


def _make_read_only(path: Path, read_only: bool) -> None:
    """chmod is no obstacle to root: root makes the file immutable instead (chattr +i)."""
    if os.geteuid() == 0:
        flag = "+i" if read_only else "-i"
        result = subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"chattr {flag} not possible here: {result.stderr.strip()}")
    else:
        path.chmod(0o444 if read_only else 0o644)


def test_sqlite_read_only_then_writable_again(tmp_path):
    path = tmp_path / "cds.sqlite3"
    app = build_app(database_url=f"sqlite:///{path}", audit_key=AUDIT_KEY)
    client = app.test_client()
    store = app.extensions["lbp_cds"].store
    # several pooled connections, as under load
    for _ in range(4):
        assert client.post(FEEDBACK_URL, json={"feedback": [overridden()]}).status_code == 200
    _make_read_only(path, True)
    try:
        store.engine.dispose()  # connections opened from now on open the file read-only
        statuses = [client.post(FEEDBACK_URL, json={"feedback": [overridden()]}).status_code for _ in range(8)]
        assert statuses == [503] * 8
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.get_json()["checks"]["database"] is False
    finally:
        _make_read_only(path, False)
    # at once: no connection opened while read-only is used again
    statuses = [client.post(FEEDBACK_URL, json={"feedback": [overridden()]}).status_code for _ in range(32)]
    assert statuses == [200] * 32
    assert client.get("/readyz").status_code == 200
    assert store.count("feedback") == 4 + 32
    store.close()


def test_sqlite_read_only_connections_are_discarded_after_one_failure(tmp_path):
    """The pool is disposed when the database is unusable: a connection opened read-only is not kept."""
    path = tmp_path / "cds.sqlite3"
    upgrade(f"sqlite:///{path}")
    store = Store(f"sqlite:///{path}")
    assert store.ping()
    _make_read_only(path, True)
    try:
        store.engine.dispose()
        with pytest.raises(StoreUnavailable, match="readonly"):
            store.record_feedback("svc", [FeedbackItem.model_validate(overridden())])
        assert store.engine.pool.checkedin() == 0  # the read-only connection was thrown away
    finally:
        _make_read_only(path, False)
    assert store.record_feedback("svc", [FeedbackItem.model_validate(overridden())]) == 1
    store.close()


def test_sqlite_file_deleted_while_running_is_never_acknowledged(tmp_path):
    path = tmp_path / "cds.sqlite3"
    app = build_app(database_url=f"sqlite:///{path}", audit_key=AUDIT_KEY)
    client = app.test_client()
    assert client.post(FEEDBACK_URL, json={"feedback": [overridden()]}).status_code == 200
    assert client.get("/readyz").status_code == 200
    for f in tmp_path.glob("cds.sqlite3*"):
        f.unlink()  # the folder stays: nothing must create an empty database in it
    statuses = [client.post(FEEDBACK_URL, json={"feedback": [overridden()]}).status_code for _ in range(25)]
    assert statuses == [503] * 25
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["checks"]["database"] is False
    assert not path.exists()
    # the operator restores the database (here: a fresh one): used at once
    upgrade(f"sqlite:///{path}")
    assert client.post(FEEDBACK_URL, json={"feedback": [overridden()]}).status_code == 200
    assert client.get("/readyz").status_code == 200
    app.extensions["lbp_cds"].store.close()


def test_readiness_probe_is_a_write_and_is_cached(tmp_path, monkeypatch):
    path = tmp_path / "cds.sqlite3"
    app = build_app(database_url=f"sqlite:///{path}", audit_key=AUDIT_KEY)
    client = app.test_client()
    store = app.extensions["lbp_cds"].store
    calls = []
    real = Store.problem
    monkeypatch.setattr(Store, "problem", lambda self: calls.append(1) or real(self))
    for _ in range(5):
        assert client.get("/readyz").status_code == 200
    assert len(calls) == 1  # one probe for five calls within a second
    with store.engine.connect() as conn:
        [(probed_at,)] = conn.execute(text("SELECT probed_at FROM readiness_probe")).all()
    assert probed_at is not None
    monkeypatch.setattr(Store, "READY_CACHE_S", 0.0)
    client.get("/readyz")
    assert len(calls) == 2
    store.close()


# ---------------------------------------------------------------------------------------------------
# audit records queued at shutdown


class _SlowStore:
    """A store whose writes wait until released (a database that is slow)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.written = 0

    def record_evaluations(self, records) -> list[int]:
        self.release.wait(30)
        self.written += len(records)
        return list(range(self.written - len(records) + 1, self.written + 1))


def _record(i: int):
    from cds.storage import AuditRecord

    return AuditRecord(
        hook_instance=str(uuid.UUID(int=i)), service_id="svc", ruleset_name="lbp", ruleset_version="1",
        ruleset_sha256="a" * 64,
    )


def test_shutdown_waits_then_logs_and_counts_what_is_left(caplog):
    from cds.audit import AuditObserver

    store = _SlowStore()
    observer = AuditObserver(store, b"k" * 32, shutdown_timeout=0.3)  # type: ignore[arg-type]
    writer = observer.writer
    published = []
    writer.after_shutdown = lambda: published.append(observer.failures)
    for i in range(100):
        assert writer.submit(_record(i))
    started = time.monotonic()
    assert writer.shutdown() == 100
    assert 0.3 <= time.monotonic() - started < 5
    assert writer.abandoned == 100 and observer.failures == 100  # the cds_audit_failures gauge
    assert published == [100]  # multiprocess metrics: written to the gauge's file before the worker exits
    [line] = [r.getMessage() for r in caplog.records if r.name == "cds.audit"]
    assert line.startswith("shutdown: 100 audit record(s) not written after waiting 0.3 s")
    store.release.set()
    assert writer.flush(10)
    assert writer.shutdown() == 0  # drained: nothing to report


SHUTDOWN_SCRIPT = textwrap.dedent(
    """
    import logging, sqlite3, sys, uuid
    from cds.storage import AuditRecord, AuditWriter, Store, upgrade
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
    path = sys.argv[1]
    url = "sqlite:///" + path
    upgrade(url)
    store = Store(url)
    writer = AuditWriter(store, shutdown_timeout=float(sys.argv[2]))
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock: the database is slow
    for i in range(100):
        writer.submit(AuditRecord(hook_instance=str(uuid.UUID(int=i)), service_id="svc", ruleset_name="lbp",
                                  ruleset_version="1", ruleset_sha256="a" * 64))
    if sys.argv[3] == "release":
        import threading
        threading.Timer(0.5, lambda: blocker.execute("ROLLBACK")).start()
    print("submitted", flush=True)
    # the interpreter exits here, as a gunicorn worker does after SIGTERM
    """
)


@pytest.mark.parametrize("release", ["stay-slow", "release"])
def test_queued_audit_is_flushed_or_counted_at_interpreter_exit(tmp_path, release):
    script = tmp_path / "shutdown.py"
    script.write_text(SHUTDOWN_SCRIPT)
    db = tmp_path / "cds.sqlite3"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(script), str(db), "3", release], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
    assert "submitted" in result.stdout
    store = Store(f"sqlite:///{db}")
    if release == "stay-slow":
        assert "shutdown: 100 audit record(s) not written after waiting 3.0 s" in result.stderr
        assert store.count("audit_evaluation") == 0
        assert time.monotonic() - started < 30  # the timeout, not the 30 s busy timeout
    else:
        assert "not written" not in result.stderr
        assert store.count("audit_evaluation") == 100  # flushed before exit: nothing lost
    store.close()


# ---------------------------------------------------------------------------------------------------
# PostgreSQL: statement timeout, keepalives, a hung server


def test_pg_connect_args_defaults_and_url_options_kept():
    args = pg_connect_args(PgSettings(), {"options": "-csearch_path=s1"})
    assert args == {
        "connect_timeout": 5, "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
        "keepalives_count": 3, "options": "-csearch_path=s1 -c statement_timeout=5000",
    }
    assert "options" not in pg_connect_args(PgSettings(statement_timeout_s=0), {})
    assert pg_connect_args(PgSettings(), {"connect_timeout": "2"}).get("connect_timeout") is None  # the URL's wins


def test_database_settings_come_from_the_environment():
    from cds.config import load_settings
    from cds.storage import pg_settings

    s = load_settings({"CDS_DATABASE_STATEMENT_TIMEOUT": "2.5", "CDS_DATABASE_KEEPALIVES_IDLE": "7",
                       "CDS_AUDIT_SHUTDOWN_TIMEOUT": "4"}, development=True)
    pg = pg_settings(s)
    assert (pg.statement_timeout_s, pg.keepalives_idle_s, pg.deadline_s) == (2.5, 7, 4.5)
    assert s.audit_shutdown_timeout == 4


def _pg_only(db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only")


def test_pg_sessions_have_the_statement_timeout_and_keepalives(db_url):  # noqa: F811 - fixture
    _pg_only(db_url)
    store = Store(db_url, PgSettings(statement_timeout_s=1.5, keepalives_idle_s=17))
    with store.engine.connect() as conn:
        assert conn.execute(text("SHOW statement_timeout")).scalar_one() == "1500ms"
        params = conn.connection.dbapi_connection.info.get_parameters()  # type: ignore[union-attr]
        assert (params["keepalives"], params["keepalives_idle"]) == ("1", "17")
        assert conn.execute(text("SHOW search_path")).scalar_one().startswith("t_")  # URL options kept
        with pytest.raises(Exception, match="statement timeout"):
            conn.execute(text("SELECT pg_sleep(3)"))
    store.close()


def test_pg_statement_timeout_is_a_503_for_feedback(db_url, monkeypatch):  # noqa: F811 - fixture
    _pg_only(db_url)
    app = build_app(database_url=db_url, audit_key=AUDIT_KEY, database_statement_timeout=0.5)
    client = app.test_client()
    store = app.extensions["lbp_cds"].store
    # a lock held elsewhere: the insert waits, and the server cancels it after 0.5 s
    blocker = make_engine(db_url, PgSettings(statement_timeout_s=0))
    with blocker.connect() as other:
        other.execute(text("LOCK TABLE feedback IN ACCESS EXCLUSIVE MODE"))
        started = time.monotonic()
        response = client.post(FEEDBACK_URL, json={"feedback": [overridden()]})
        assert response.status_code == 503
        assert time.monotonic() - started < 5
        other.rollback()
    blocker.dispose()
    assert client.post(FEEDBACK_URL, json={"feedback": [overridden()]}).status_code == 200
    store.close()


def test_pg_backend_hung_the_request_does_not_hang(db_url):  # noqa: F811 - fixture
    """SIGSTOP on the server process of the pooled connection: it cannot answer or cancel anything. The
    watchdog cuts the connection at the deadline; the store reconnects and the write is stored."""
    _pg_only(db_url)
    store = Store(db_url, PgSettings(statement_timeout_s=0.5))
    item = lambda: FeedbackItem.model_validate(overridden())  # noqa: E731
    assert store.record_feedback("svc", [item()]) == 1
    with store.engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    try:
        os.kill(pid, signal.SIGSTOP)
    except PermissionError:
        pytest.skip("cannot signal the PostgreSQL server here")
    before = WATCHDOG.expired
    started = time.monotonic()
    try:
        stored = store.record_feedback("svc", [item()])
    finally:
        os.kill(pid, signal.SIGCONT)
    assert time.monotonic() - started < 10
    assert stored == 1 and WATCHDOG.expired == before + 1
    assert store.count("feedback") == 2
    store.close()


def test_pg_server_that_never_answers_is_a_prompt_store_unavailable():
    """A server that accepts connections and never answers (hung postmaster): the connect timeout."""
    pytest.importorskip("psycopg")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    try:
        store = Store(f"postgresql+psycopg://cds:cds@127.0.0.1:{port}/cds", PgSettings(connect_timeout_s=1))
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.record_feedback("svc", [FeedbackItem.model_validate(overridden())])
        assert time.monotonic() - started < 5
        assert store.ping() is False
        store.close()
    finally:
        listener.close()


# ---------------------------------------------------------------------------------------------------
# /healthz never touches the database


class _Untouchable:
    def __getattr__(self, name):
        raise AssertionError(f"/healthz used the store ({name})")


def test_healthz_never_touches_the_database(tmp_path):
    app = build_app(database_url=f"sqlite:///{tmp_path / 'cds.sqlite3'}", audit_key=AUDIT_KEY)
    state = app.extensions["lbp_cds"]
    real, state.store = state.store, _Untouchable()
    try:
        response = app.test_client().get("/healthz")
        assert response.status_code == 200 and response.get_json() == {"status": "ok"}
    finally:
        state.store = real
        real.close()


# ---------------------------------------------------------------------------------------------------
# small things: hookInstance, patientId, X-Request-Id, 405 Allow


def _request(**changes):
    _, request, _ = next(p for p in example_pairs() if p[0] == "bird-dog-20-18")
    body = {**request, "context": dict(request["context"])}
    for key, value in changes.items():
        if key == "patientId":
            body["context"]["patientId"] = value
        else:
            body[key] = value
    return body


@pytest.mark.parametrize("value", ["not-a-uuid", "x" * 10_000, CARD + "0", "{" + CARD + "}", ""])
def test_hook_instance_must_be_a_uuid(client, value):
    response = client.post(SERVICE_URL, json=_request(hookInstance=value))
    assert response.status_code == 400
    assert _error(response)["message"].startswith("hookInstance:")
    assert _error(response)["field"] == "hookInstance"


def test_hook_instance_uuid_in_either_case_is_accepted(client):
    assert client.post(SERVICE_URL, json=_request(hookInstance=CARD.upper())).status_code == 200


@pytest.mark.parametrize("value", [".", ".."])
def test_patient_id_dot_segments_are_refused(client, value):
    response = client.post(SERVICE_URL, json=_request(patientId=value))
    assert response.status_code == 400
    assert _error(response)["message"].startswith("context.patientId:")
    assert _error(response)["field"] == "context.patientId"


def test_patient_ids_with_dots_are_still_ids(client):
    from cds.cdshooks import PatientViewContext

    for pid in ("...", ".a", "a.", "a.b", "x" * 64):
        assert PatientViewContext.model_validate({"userId": "u", "patientId": pid}).patient_id == pid


@pytest.mark.parametrize("bad", ["café-42", "x²", "٣", "ａｂｃ"])
def test_non_ascii_request_id_is_replaced_never_echoed(client, bad):
    raw = bad.encode("utf-8").decode("latin-1")  # what arrives on the wire, as WSGI decodes it
    response = client.get("/healthz", headers={"X-Request-Id": raw})
    rid = response.headers["X-Request-Id"]
    assert rid != raw and len(rid) == 32 and rid.isascii() and rid.isalnum()


def test_ascii_request_id_is_kept(client):
    assert client.get("/healthz", headers={"X-Request-Id": "EHR-call-0042"}).headers["X-Request-Id"] == "EHR-call-0042"


@pytest.mark.parametrize(
    "method, url, allowed",
    [("put", SERVICE_URL, {"POST"}), ("delete", "/healthz", {"GET", "HEAD"}), ("post", "/cds-services", {"GET"})],
)
def test_405_says_which_methods_are_allowed(client, method, url, allowed):
    response = getattr(client, method)(url)
    assert response.status_code == 405
    assert allowed <= {m.strip() for m in response.headers["Allow"].split(",")}
    assert _error(response) == {"message": "method not allowed", "code": "not-supported"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_under_gunicorn_while_the_database_is_slow(tmp_path):
    """The finding as observed: gunicorn (the image's server), SIGTERM while the database is slow. The
    worker waits CDS_AUDIT_SHUTDOWN_TIMEOUT for the audit queue, then logs how many records are lost."""
    import json
    import sqlite3
    import urllib.request

    from conftest import EVALUATION_DATE, RULES_DIR

    pytest.importorskip("gunicorn")
    db = tmp_path / "cds.sqlite3"
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CDS_")},
        "PYTHONPATH": str(ROOT), "CDS_DATABASE_URL": f"sqlite:///{db}", "CDS_AUDIT_KEY": AUDIT_KEY,
        "CDS_AUTH": "off", "CDS_RULES_DIR": str(RULES_DIR), "CDS_RULES_POLL_SECONDS": "0",
        "CDS_EVALUATION_DATE": EVALUATION_DATE.isoformat(), "CDS_AUDIT_SHUTDOWN_TIMEOUT": "1",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--worker-class", "gthread",
         "--threads", "4", "--graceful-timeout", "20", "cds.wsgi:app"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError("the server did not become ready")
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock: every audit write waits
        _, request, _ = next(p for p in example_pairs() if p[0] == "bird-dog-20-18")
        for _ in range(20):
            req = urllib.request.Request(base + SERVICE_URL, data=json.dumps(request).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
            with urllib.request.urlopen(req, timeout=10) as r:
                assert r.status == 200  # cards are answered: the audit is off the request path
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=30)
        elapsed = time.monotonic() - started
        blocker.execute("ROLLBACK")
        blocker.close()
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert "shutdown: 20 audit record(s) not written after waiting 1.0 s" in stderr, stderr[-2000:]
    assert elapsed < 15
    assert AUDIT_KEY not in stderr
