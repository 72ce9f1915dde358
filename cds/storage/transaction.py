"""The one way the stores talk to the database: a transaction that turns "the database cannot be used right
now" into :class:`StoreUnavailable`, and the dialect's ``INSERT ... ON CONFLICT`` where there is one.

Used by :class:`~cds.storage.store.Store` (audit, feedback, retention, report), by
:class:`~cds.storage.replay.SqlJtiStore` (JWT replay keys) and by the migration runner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, Table, exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite

from ..errors import CdsError
from .engine import write_options

__all__ = ["StoreRefused", "StoreUnavailable", "conflict_insert", "first_line", "transaction"]


class StoreUnavailable(CdsError, RuntimeError):
    """The database cannot be reached or used right now (connection refused, file cannot be opened,
    locked past the busy timeout, schema missing). Feedback → 503; hook calls log it and carry on."""


class StoreRefused(CdsError, RuntimeError):
    """The database refused a statement (a constraint, a value it cannot hold): a bug, since requests are
    validated first. The message names the error class and SQLSTATE only: the driver's text is not kept
    (PostgreSQL's DETAIL quotes the row, values included, whatever ``hide_parameters`` says)."""


#: errors that mean "not now" (not a bug in the statement): connection, driver interface, pool timeout
UNAVAILABLE = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)


def first_line(exc: BaseException) -> str:
    """The first line of the driver's message (or the class name when it has none)."""
    orig = getattr(exc, "orig", None) or exc
    return str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__


@contextmanager
def transaction(engine: Engine, *, write: bool, what: str = "database") -> Iterator[Connection]:
    """A connection inside one transaction, committed on success, rolled back on an exception.

    ``write=True`` takes SQLite's write lock at ``BEGIN`` (:func:`~cds.storage.engine.write_options`).
    When the database cannot be used, the engine's pool is disposed (every pooled connection is
    invalidated), so a database that recovers is used again at once.
    A database that cannot be used, or (PostgreSQL) a missing table, raises :class:`StoreUnavailable`
    whose message starts with ``what`` (``"database unavailable: ..."``, ``"database schema missing: ..."``).
    """
    try:
        with engine.connect() as conn:
            if write:
                conn.execution_options(**write_options())
            with conn.begin():
                yield conn
    except UNAVAILABLE as exc:
        cause = getattr(exc, "orig", None) or exc  # a pool TimeoutError is no DBAPIError: it has no .orig
        if not isinstance(exc, sa_exc.TimeoutError):
            # The other pooled connections are likely broken the same way (SQLite opened read-only while the
            # file was, a server restarted, a file deleted): drop them all, so the next request reconnects
            # instead of failing until each one has been tried. Checked-out connections close on return.
            engine.dispose()
        raise StoreUnavailable(f"{what} unavailable: {type(cause).__name__}: {first_line(exc)}") from exc
    except sa_exc.ProgrammingError as exc:
        # PostgreSQL: relation missing (not migrated) is an availability problem, not a client error.
        if getattr(exc.orig, "sqlstate", None) == "42P01":  # undefined_table
            raise StoreUnavailable(f"{what} schema missing: {first_line(exc)}") from exc
        raise _refused(what, exc) from None
    except sa_exc.DBAPIError as exc:
        raise _refused(what, exc) from None


def _refused(what: str, exc: sa_exc.DBAPIError) -> StoreRefused:
    orig = exc.orig
    state = getattr(orig, "sqlstate", None)
    return StoreRefused(f"{what} refused the statement: {type(orig).__name__}" + (f" (SQLSTATE {state})" if state else ""))


def conflict_insert(conn: Connection, table: Table) -> Any | None:
    """``INSERT`` into ``table`` with ``.on_conflict_do_nothing`` / ``.on_conflict_do_update`` on the
    dialects that have them (SQLite, PostgreSQL); None on the others, which then look before inserting
    and rely on the unique index for the race."""
    make: Callable[[Table], Any] | None = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}.get(
        conn.dialect.name
    )
    return make(table) if make is not None else None
