"""Engine construction shared by the Store and the migration runner."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

SQLITE_BUSY_TIMEOUT_MS = 30_000
PG_CONNECT_TIMEOUT_S = 5


def make_engine(url: str) -> Engine:
    """An engine for any SQLAlchemy URL.

    SQLite: WAL journal, a busy timeout, foreign keys on, usable from several threads; transactions are
    begun explicitly (``BEGIN``, or ``BEGIN IMMEDIATE`` for writes, see :func:`write_options`) so that
    concurrent writers from several processes wait for each other instead of failing.
    PostgreSQL (psycopg): a connect timeout so an unreachable server fails fast.
    """
    u = make_url(url)
    kwargs: dict = {"pool_pre_ping": True, "future": True}
    if u.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    elif u.get_backend_name() == "postgresql":
        if "connect_timeout" not in u.query:
            kwargs["connect_args"] = {"connect_timeout": PG_CONNECT_TIMEOUT_S}
    engine = create_engine(u, **kwargs)
    if engine.dialect.name == "sqlite":
        _sqlite_events(engine)
    return engine


def _sqlite_events(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # pragma: no cover - exercised by every SQLite test
        # Take transaction control away from the sqlite3 module (it would BEGIN lazily and never for
        # SELECT); SQLAlchemy's "begin" event below emits BEGIN itself.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # pragma: no cover - exercised by every SQLite test
        mode = conn.get_execution_options().get("sqlite_begin", "")
        conn.exec_driver_sql(f"BEGIN {mode}".strip())


def write_options() -> dict:
    """Execution options for a connection that will write: on SQLite the transaction takes the write lock
    at BEGIN (waiting up to the busy timeout), which avoids lock-upgrade deadlocks between processes."""
    return {"sqlite_begin": "IMMEDIATE"}
