"""A JWT replay store in the database, shared by every instance that uses it (issue 6).

:class:`SqlJtiStore` implements :class:`cds.auth.JtiStore` on the audit's database (``CDS_JTI_STORE=database``)
so a token accepted by one instance is refused by every other one until it expires. One row per key in the
``jwt_replay`` table (Alembic revision ``0002_jwt_replay``): the SHA-256 of the verifier's key (issuer + jti;
never the raw jti) and the instant until which it must be refused.

``check_and_add`` is a single statement: ``INSERT ... ON CONFLICT (key_hash) DO UPDATE SET expires_at =
excluded.expires_at WHERE jwt_replay.expires_at <= now RETURNING key_hash``. A row comes back when the key was
new or its previous entry had expired (it is replaced), none when a live entry exists (a replay). PostgreSQL
serialises conflicting inserts on the primary key; SQLite takes the write lock at ``BEGIN IMMEDIATE`` (see
:func:`cds.storage.engine.write_options`), so concurrent callers, in any number of processes, get exactly one
True per live key.

On PostgreSQL the statement is the request path's one database round trip (issue 13): it runs in autocommit
(a single statement is its own transaction) as a prepared statement on a connection this store keeps checked
out (:class:`_PgConnections`), with no checkout ping, no ``BEGIN``/``COMMIT`` and no SQLAlchemy compilation.
The engine's deadline still applies to each statement (the watchdog of :mod:`cds.storage.engine`). A
connection that fails is dropped with every idle one (a server restart breaks them all); the statement is
retried once on a fresh connection when the failed one was an idle pooled one, and a key whose first attempt
did reach the server is then refused as a replay: the store fails closed, never open.

Expired rows are deleted every ``purge_every`` accepted keys (per process) and by :meth:`Store.purge`
(``cds db purge``). Any database problem raises :class:`StoreUnavailable`; the verifier turns every store
exception into an authentication failure (401): replay protection fails closed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Connection, Engine, delete, exc as sa_exc, func, insert, select

from .engine import WATCHDOG, PgSettings, make_engine
from .models import jwt_replay
from .transaction import UNAVAILABLE, StoreRefused, StoreUnavailable, conflict_insert, first_line, transaction

__all__ = ["SqlJtiStore", "replay_key_hash"]

log = logging.getLogger("cds.auth")

UTC = dt.timezone.utc
# Expiries past this are stored as this instant (9999-12-31T23:59:59Z): "never forgotten".
_MAX_EPOCH = 253_402_300_799.0


def replay_key_hash(key: str) -> str:
    """SHA-256 hex of a replay key: what the table stores instead of the jti."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _instant(epoch: float) -> dt.datetime:
    if not math.isfinite(epoch):
        raise ValueError("expiry must be a finite number of seconds")
    return dt.datetime.fromtimestamp(min(max(epoch, 0.0), _MAX_EPOCH), tz=UTC)


class SqlJtiStore:
    """:class:`cds.auth.JtiStore` in the ``jwt_replay`` table; thread-safe, one per process.

    ``database`` is a SQLAlchemy URL (the store then owns its engine, made with ``pg``, the service's
    ``CDS_DATABASE_*`` settings; :meth:`close` disposes it) or an existing :class:`~sqlalchemy.Engine`. The
    schema comes from :func:`cds.storage.upgrade`; the store never creates tables. ``clock`` (epoch seconds)
    should be the verifier's clock.
    """

    def __init__(
        self,
        database: str | Engine,
        *,
        clock: Callable[[], float] = time.time,
        purge_every: int = 1000,
        pg: PgSettings | None = None,
    ) -> None:
        if purge_every < 1:
            raise ValueError("purge_every must be at least 1")
        self._owns_engine = isinstance(database, str)
        # must_exist: a deleted SQLite file is noticed, never silently replaced by an empty one
        self.engine: Engine = make_engine(database, pg, must_exist=True) if isinstance(database, str) else database
        self._clock = clock
        self._purge_every = purge_every
        self._lock = threading.Lock()
        self._added = 0
        self._pg = _PgConnections(self.engine, pg) if self.engine.dialect.name == "postgresql" else None

    def close(self) -> None:
        if self._pg is not None:
            self._pg.close()
        if self._owns_engine:
            self.engine.dispose()

    def _tx(self) -> AbstractContextManager[Connection]:
        return transaction(self.engine, write=True, what="replay store")

    # -- JtiStore ----------------------------------------------------------------------------------
    def check_and_add(self, jti: str, expires_at: float) -> bool:
        """Record ``jti`` (the verifier's issuer + jti key) until ``expires_at``; False if a live entry
        exists. Raises :class:`StoreUnavailable` when the database cannot answer."""
        if not isinstance(jti, str) or not jti:
            raise ValueError("jti must be a non-empty string")
        key = replay_key_hash(jti)
        now = _instant(self._clock())
        until = _instant(float(expires_at))
        if self._pg is not None:
            fresh = self._pg.upsert(key, until, now)
        else:
            with self._tx() as conn:
                fresh = self._upsert(conn, key, until, now)
        if fresh:
            self._maybe_purge()
        return fresh

    @staticmethod
    def _upsert(conn: Connection, key: str, until: dt.datetime, now: dt.datetime) -> bool:
        ins = conflict_insert(conn, jwt_replay)
        if ins is not None:
            ins = ins.values(key_hash=key, expires_at=until)
            stmt = ins.on_conflict_do_update(
                index_elements=[jwt_replay.c.key_hash],
                set_={"expires_at": ins.excluded.expires_at},
                where=jwt_replay.c.expires_at <= now,
            ).returning(jwt_replay.c.key_hash)
            return conn.execute(stmt).first() is not None
        # Other backends: drop an expired entry, then insert; the primary key refuses a live one.
        conn.execute(delete(jwt_replay).where(jwt_replay.c.key_hash == key, jwt_replay.c.expires_at <= now))
        try:
            with conn.begin_nested():
                conn.execute(insert(jwt_replay), {"key_hash": key, "expires_at": until})
        except sa_exc.IntegrityError:
            return False
        return True

    # -- housekeeping ------------------------------------------------------------------------------
    def _maybe_purge(self) -> None:
        with self._lock:
            self._added += 1
            due = self._added % self._purge_every == 0
        if not due:
            return
        try:
            n = self.purge_expired()
        except Exception as exc:  # noqa: BLE001 - housekeeping must not fail an accepted token
            log.warning("replay store: purge of expired entries failed (%s)", type(exc).__name__)
        else:
            log.debug("replay store: purged %d expired entries", n)

    def purge_expired(self, now: float | None = None) -> int:
        """Delete the entries expired at ``now`` (default: the clock); returns how many."""
        cutoff = _instant(self._clock() if now is None else now)
        with self._tx() as conn:
            return conn.execute(delete(jwt_replay).where(jwt_replay.c.expires_at <= cutoff)).rowcount

    def count(self) -> int:
        """Rows in the table, expired or not (for tests and tools)."""
        with self._tx() as conn:
            return conn.execute(select(func.count()).select_from(jwt_replay)).scalar_one()

    def ping(self) -> bool:
        """True when the database answers and the table exists."""
        try:
            self.count()
            return True
        except Exception:  # noqa: BLE001 - yes or no
            return False


_PG_UPSERT = (
    "INSERT INTO jwt_replay (key_hash, expires_at) VALUES (%s, %s) ON CONFLICT (key_hash) DO UPDATE SET "
    "expires_at = excluded.expires_at WHERE jwt_replay.expires_at <= %s RETURNING key_hash"
)


class _PgConnections:
    """PostgreSQL connections of the replay store, kept checked out of its engine's pool between calls.

    A LIFO list of idle ones (the most recently used first: warm, prepared); a caller takes one, runs the
    prepared upsert in autocommit and gives it back. There are at most as many as concurrent calls, within
    the engine's pool limits (past them the pool's timeout makes it a :class:`StoreUnavailable`).
    """

    def __init__(self, engine: Engine, pg: PgSettings | None) -> None:
        self._engine = engine
        self._idle: list = []  # PoolProxiedConnection
        self._lock = threading.Lock()
        self._deadline = (pg or PgSettings()).deadline_s  # the engine's own, when it was made by make_engine
        self._closed = False
        self._pid = os.getpid()

    def _fresh(self):
        import psycopg

        try:
            proxied = self._engine.raw_connection()  # the engine's checkout ping runs once, here
        except (*UNAVAILABLE, psycopg.OperationalError, psycopg.InterfaceError) as exc:  # the pool raises the driver's
            raise StoreUnavailable(f"replay store unavailable: {type(exc).__name__}: {first_line(exc)}") from exc
        raw: Any = proxied.dbapi_connection
        WATCHDOG.release(raw)  # watched per statement from now on, not for as long as it is held
        try:
            raw.rollback()  # the checkout ping opened a transaction
            raw.autocommit = True
        except Exception as exc:
            proxied.invalidate()
            raise StoreUnavailable(f"replay store unavailable: {type(exc).__name__}") from exc
        return proxied

    def _drop_all(self, failed) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for proxied in (failed, *idle):
            try:
                proxied.invalidate()  # closed, never handed back to the pool
            except Exception:  # noqa: BLE001 - already broken
                pass

    def upsert(self, key: str, until: dt.datetime, now: dt.datetime) -> bool:
        import psycopg

        for attempt in (1, 2):
            with self._lock:
                if self._pid != os.getpid():  # a forked worker never uses its parent's sockets
                    self._pid, self._idle = os.getpid(), []
                proxied = self._idle.pop() if self._idle else None
            reused = proxied is not None
            if proxied is None:
                proxied = self._fresh()
            raw = proxied.dbapi_connection
            if self._deadline is not None:
                WATCHDOG.watch(raw, self._deadline)
            try:
                row = raw.execute(_PG_UPSERT, (key, until, now), prepare=True).fetchone()
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                WATCHDOG.release(raw)
                self._drop_all(proxied)
                if reused and attempt == 1:
                    continue  # a connection the server dropped while it was idle: once more on a fresh one
                raise StoreUnavailable(f"replay store unavailable: {type(exc).__name__}: {first_line(exc)}") from exc
            except psycopg.Error as exc:
                WATCHDOG.release(raw)
                self._give_back(proxied)
                if getattr(exc, "sqlstate", None) == "42P01":  # undefined_table: not migrated
                    raise StoreUnavailable(f"replay store schema missing: {first_line(exc)}") from exc
                state = getattr(exc, "sqlstate", None)
                raise StoreRefused(
                    f"replay store refused the statement: {type(exc).__name__}" + (f" (SQLSTATE {state})" if state else "")
                ) from None
            WATCHDOG.release(raw)
            self._give_back(proxied)
            return row is not None
        raise AssertionError("unreachable")  # pragma: no cover

    def _give_back(self, proxied) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(proxied)
                return
        proxied.invalidate()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for proxied in idle:
            try:
                proxied.invalidate()
            except Exception:  # noqa: BLE001 - closing
                pass
