"""Database schema (SQLAlchemy Core tables). Alembic revisions in ``cds/migrations`` create it; the
application never calls ``create_all``.

No raw patient identifier, no clinical value is stored: the patient is a keyed hash, cards are rule ids,
decisions and UUIDs.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)

from ..db_text import OVERRIDE_CODE_LENGTH, OVERRIDE_DISPLAY_LENGTH, OVERRIDE_SYSTEM_LENGTH

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite has no time zones: stored as naive UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        value = value.astimezone(dt.timezone.utc)
        if dialect.name == "sqlite":
            value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: dt.datetime | None, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)


audit_evaluation = Table(
    "audit_evaluation",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("hook_instance", String(128), nullable=False),
    Column("service_id", String(128), nullable=False),
    Column("evaluated_at", UTCDateTime(), nullable=False),
    Column("ruleset_name", String(128), nullable=False),
    Column("ruleset_version", String(64), nullable=False),
    Column("ruleset_sha256", String(64), nullable=False),
    Column("patient_hash", String(64), nullable=True),  # HMAC-SHA256 hex; never the raw id
    Column("criteria_id", String(64), nullable=True),  # Epic's criteria-id extension (a plain token)
    Index("ix_audit_evaluation_evaluated_at", "evaluated_at"),
    Index("ix_audit_evaluation_hook_instance", "hook_instance"),
)

audit_card = Table(
    "audit_card",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "evaluation_id",
        Integer,
        ForeignKey("audit_evaluation.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("position", Integer, nullable=False),
    Column("card_uuid", String(36), nullable=False, unique=True),
    Column("rule_id", String(128), nullable=False),
    Column("decision", String(64), nullable=False),
    Column("indicator", String(16), nullable=False),
    Index("ix_audit_card_evaluation_id", "evaluation_id"),
)

audit_suggestion = Table(
    "audit_suggestion",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("card_id", Integer, ForeignKey("audit_card.id", ondelete="CASCADE"), nullable=False),
    Column("suggestion_uuid", String(36), nullable=False),
    Index("ix_audit_suggestion_card_id", "card_id"),
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("content_hash", String(64), nullable=False, unique=True),  # idempotency key
    Column("service_id", String(128), nullable=False),
    Column("card_uuid", String(36), nullable=False),  # joins audit_card.card_uuid (no FK: may be unknown)
    Column("outcome", String(16), nullable=False),
    Column("outcome_timestamp", UTCDateTime(), nullable=False),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("accepted_suggestions", Text, nullable=True),  # JSON array of suggestion uuids
    # lengths shared with the request types that fill them (cds.db_text.StoredCoding)
    Column("override_system", String(OVERRIDE_SYSTEM_LENGTH), nullable=True),
    Column("override_code", String(OVERRIDE_CODE_LENGTH), nullable=True),
    Column("override_display", String(OVERRIDE_DISPLAY_LENGTH), nullable=True),
    Column("override_comment", Text, nullable=True),
    Column("payload", Text, nullable=False),  # the whole item, normalised JSON (nothing is discarded)
    Index("ix_feedback_card_uuid", "card_uuid"),
    Index("ix_feedback_received_at", "received_at"),
)

jwt_replay = Table(
    "jwt_replay",
    metadata,
    # SHA-256 hex of the JWT verifier's replay key (issuer + jti): never the raw jti
    Column("key_hash", String(64), primary_key=True),
    Column("expires_at", UTCDateTime(), nullable=False),
    Index("ix_jwt_replay_expires_at", "expires_at"),
)

readiness_probe = Table(
    "readiness_probe",
    metadata,
    # one row (id 1), rewritten by the readiness check: proof that the database takes writes
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("probed_at", UTCDateTime(), nullable=False),
)
