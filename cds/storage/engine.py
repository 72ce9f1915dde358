"""Engine construction shared by the Store and the migration runner."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass

from sqlalchemy import Engine, create_engine, event, exc as sa_exc
from sqlalchemy.engine import make_url

from ..config import Settings

log = logging.getLogger("cds.storage")

SQLITE_BUSY_TIMEOUT_MS = 30_000
PG_CONNECT_TIMEOUT_S = 5


@dataclass(frozen=True)
class PgSettings:
    """PostgreSQL connection settings (``CDS_DATABASE_*``, see :mod:`cds.config` and docs/operations.md).

    ``statement_timeout_s``: the server cancels a statement running longer (0: no limit);
    ``keepalives_*``: TCP keepalives, so a server or network that vanished is noticed in about
    ``idle + interval * count`` seconds instead of the kernel's two hours;
    ``pool_timeout_s``: how long a request waits for a pooled connection before it is a 503.
    """

    connect_timeout_s: int = PG_CONNECT_TIMEOUT_S
    statement_timeout_s: float = 5.0
    keepalives_idle_s: int = 30
    keepalives_interval_s: int = 10
    keepalives_count: int = 3
    pool_timeout_s: float = 5.0

    @property
    def deadline_s(self) -> float | None:
        """Wall-clock limit of one use of a connection (checkout to checkin), enforced by this process:
        a server that stopped answering (hung, SIGSTOP, a half-open network) cannot cancel a statement
        itself, so past this the connection's socket is shut down (:class:`_Watchdog`). None: no limit."""
        return None if self.statement_timeout_s <= 0 else self.statement_timeout_s + 2.0


def pg_settings(settings: Settings) -> PgSettings:
    """The :class:`PgSettings` of the service's configuration (``CDS_DATABASE_*``)."""
    return PgSettings(
        connect_timeout_s=settings.database_connect_timeout,
        statement_timeout_s=settings.database_statement_timeout,
        keepalives_idle_s=settings.database_keepalives_idle,
        keepalives_interval_s=settings.database_keepalives_interval,
        keepalives_count=settings.database_keepalives_count,
        pool_timeout_s=settings.database_pool_timeout,
    )


def pg_connect_args(settings: PgSettings, query: dict) -> dict:
    """libpq parameters for :class:`PgSettings`; a parameter already in the URL's query string wins."""
    args: dict = {
        "connect_timeout": settings.connect_timeout_s,
        "keepalives": 1,
        "keepalives_idle": settings.keepalives_idle_s,
        "keepalives_interval": settings.keepalives_interval_s,
        "keepalives_count": settings.keepalives_count,
    }
    args = {k: v for k, v in args.items() if k not in query}
    if settings.statement_timeout_s > 0:
        timeout = f"-c statement_timeout={int(settings.statement_timeout_s * 1000)}"
        # the URL's own ``options`` (e.g. a search_path) are kept: libpq takes one options string
        args["options"] = f"{query['options']} {timeout}" if "options" in query else timeout
    return args


def sqlite_file(url: str) -> str | None:
    """The database file of a SQLite URL (None: in-memory or not SQLite)."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:" or u.query.get("uri"):
        return None
    return os.path.abspath(u.database)


def make_engine(url: str, pg: PgSettings | None = None, *, must_exist: bool = False) -> Engine:
    """An engine for any SQLAlchemy URL.

    Every engine hides the statements' parameters from its error messages (``hide_parameters``): a
    driver error logged or raised never carries a comment, a code or a hash.

    SQLite: WAL journal, a busy timeout, foreign keys on, usable from several threads; transactions are
    begun explicitly (``BEGIN``, or ``BEGIN IMMEDIATE`` for writes, see :func:`write_options`) so that
    concurrent writers from several processes wait for each other instead of failing. ``must_exist``
    (the Store): the file is never created by connecting, and a pooled connection whose file was deleted
    or replaced since it connected is discarded at checkout (it would write into a file nobody sees).
    PostgreSQL (psycopg): connect timeout, statement timeout and TCP keepalives (:class:`PgSettings`).
    """
    u = make_url(url)
    kwargs: dict = {"pool_pre_ping": True, "hide_parameters": True}
    pg_deadline: float | None = None
    if u.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    elif u.get_backend_name() == "postgresql":
        pg = pg or PgSettings()
        kwargs["connect_args"] = pg_connect_args(pg, dict(u.query))
        if "options" in u.query and "options" in kwargs["connect_args"]:
            u = u.difference_update_query(["options"])  # merged into connect_args["options"]
        kwargs["pool_timeout"] = pg.pool_timeout_s
        pg_deadline = pg.deadline_s
        if pg_deadline is not None:
            kwargs["pool_pre_ping"] = False  # the checkout event below pings under the deadline instead
    engine = create_engine(u, **kwargs)
    if engine.dialect.name == "sqlite":
        _sqlite_events(engine, sqlite_file(url) if must_exist else None)
    elif pg_deadline is not None:
        _deadline_events(engine, pg_deadline)
    return engine


class _Watchdog:
    """One daemon thread per process that shuts down the socket of a connection used past its deadline.

    The blocked driver call then sees the connection closed and fails (SQLAlchemy invalidates that
    connection; :func:`~cds.storage.transaction.transaction` makes it a ``StoreUnavailable``): a request
    waits at most the deadline, never for as long as a hung server stays hung.
    """

    TICK_S = 0.2

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deadlines: dict[int, tuple[float, int]] = {}  # id(dbapi connection) -> (monotonic deadline, fd)
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self.expired = 0  # connections cut so far (tests)

    def watch(self, dbapi_conn, seconds: float) -> None:
        try:
            fd = dbapi_conn.fileno()
        except Exception:  # noqa: BLE001 - a closed connection: nothing to watch
            return
        with self._lock:
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._deadlines.clear()  # a forked child does not watch its parent's connections
                self._thread = threading.Thread(target=self._run, name="cds-db-watchdog", daemon=True)
                self._thread.start()
            self._deadlines[id(dbapi_conn)] = (time.monotonic() + seconds, fd)

    def release(self, dbapi_conn) -> None:
        with self._lock:
            self._deadlines.pop(id(dbapi_conn), None)

    def _run(self) -> None:  # pragma: no cover - a thread; its effect is tested
        while True:
            time.sleep(self.TICK_S)
            now = time.monotonic()
            with self._lock:  # held while cutting, so a connection being released cannot be closed meanwhile
                for key, (deadline, fd) in list(self._deadlines.items()):
                    if now >= deadline:
                        del self._deadlines[key]
                        self._cut(fd)

    def _cut(self, fd: int) -> None:
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
            self.expired += 1
            log.error("database did not answer within its deadline: connection closed")
        except OSError:
            pass
        finally:
            sock.close()


WATCHDOG = _Watchdog()


def _deadline_events(engine: Engine, seconds: float) -> None:
    @event.listens_for(engine, "checkout")
    def _watch(dbapi_conn, conn_rec, proxy):
        WATCHDOG.watch(dbapi_conn, seconds)
        try:  # the pre-ping, under the deadline
            cur = dbapi_conn.cursor()
            try:
                cur.execute("SELECT 1")
            finally:
                cur.close()
        except Exception as exc:  # noqa: BLE001 - like pool_pre_ping: a connection that cannot ping is gone
            WATCHDOG.release(dbapi_conn)
            raise sa_exc.DisconnectionError("database connection lost") from exc  # the pool reconnects

    @event.listens_for(engine, "checkin")
    def _release(dbapi_conn, conn_rec):
        if dbapi_conn is not None:
            WATCHDOG.release(dbapi_conn)

    @event.listens_for(engine, "close")
    def _closed(dbapi_conn, conn_rec):
        WATCHDOG.release(dbapi_conn)


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _sqlite_events(engine: Engine, path: str | None) -> None:
    if path is not None:

        @event.listens_for(engine, "do_connect")
        def _open_existing(dialect, conn_rec, cargs, cparams):  # pragma: no cover - every SQLite Store test
            # mode=rw: a missing file is an error ("unable to open database file"), never a new empty one
            from urllib.parse import quote

            cargs[:] = [f"file:{quote(path)}?mode=rw"]
            cparams["uri"] = True
            conn_rec.info["cds_file_id"] = _file_id(path)

        @event.listens_for(engine, "checkout")
        def _same_file(dbapi_conn, conn_rec, proxy):  # pragma: no cover - every SQLite Store test
            if _file_id(path) != conn_rec.info.get("cds_file_id"):
                # the pool retries with a fresh connection, which opens whatever is at the path now
                raise sa_exc.DisconnectionError("database file deleted or replaced")

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
