"""Storage of the decision audit and of clinicians' feedback (SQLAlchemy + Alembic).

Typical wiring::

    from cds.storage import Store, StoreUnavailable, AuditRecord, AuditCard, hash_patient_id, upgrade

    upgrade(url)                 # at start-up (Docker entrypoint; the app for SQLite dev)
    store = Store(url)           # one per process
    store.record_evaluation(AuditRecord(...))   # or AuditWriter(store).submit(record): off the request path
    store.record_feedback(service_id, parse_feedback(body).feedback)
    rows = store.report(since)   # → cds.report.format_report(rows, "table")
    JwtVerifier(issuers, jti_store=SqlJtiStore(url))   # replay protection shared by every instance
"""

from .background import AuditWriter
from .engine import PgSettings, pg_settings
from .hashing import hash_patient_id
from .migrate import current_revision, downgrade, head_revision, upgrade
from .replay import SqlJtiStore
from .store import (
    UNKNOWN,
    AuditCard,
    AuditRecord,
    PurgeResult,
    ReasonCount,
    ReportRow,
    Store,
    retention_cutoff,
)
from .transaction import StoreRefused, StoreUnavailable

__all__ = [
    "UNKNOWN",
    "AuditCard",
    "AuditRecord",
    "AuditWriter",
    "PgSettings",
    "PurgeResult",
    "ReasonCount",
    "ReportRow",
    "SqlJtiStore",
    "Store",
    "StoreRefused",
    "StoreUnavailable",
    "current_revision",
    "downgrade",
    "hash_patient_id",
    "pg_settings",
    "head_revision",
    "retention_cutoff",
    "upgrade",
]
