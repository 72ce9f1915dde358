"""Initial schema: decision audit (evaluations, cards, suggestions) and feedback.

Revision ID: 0001_initial
Revises:
Create Date: 2025-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_evaluation",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("hook_instance", sa.String(length=128), nullable=False),
        sa.Column("service_id", sa.String(length=128), nullable=False),
        sa.Column("evaluated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ruleset_name", sa.String(length=128), nullable=False),
        sa.Column("ruleset_version", sa.String(length=64), nullable=False),
        sa.Column("ruleset_sha256", sa.String(length=64), nullable=False),
        sa.Column("patient_hash", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_evaluation")),
    )
    op.create_index("ix_audit_evaluation_evaluated_at", "audit_evaluation", ["evaluated_at"])
    op.create_index("ix_audit_evaluation_hook_instance", "audit_evaluation", ["hook_instance"])

    op.create_table(
        "audit_card",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("evaluation_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("card_uuid", sa.String(length=36), nullable=False),
        sa.Column("rule_id", sa.String(length=128), nullable=False),
        sa.Column("decision", sa.String(length=64), nullable=False),
        sa.Column("indicator", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["evaluation_id"],
            ["audit_evaluation.id"],
            name=op.f("fk_audit_card_evaluation_id_audit_evaluation"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_card")),
        sa.UniqueConstraint("card_uuid", name=op.f("uq_audit_card_card_uuid")),
    )
    op.create_index("ix_audit_card_evaluation_id", "audit_card", ["evaluation_id"])

    op.create_table(
        "audit_suggestion",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("card_id", sa.Integer(), nullable=False),
        sa.Column("suggestion_uuid", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["card_id"], ["audit_card.id"], name=op.f("fk_audit_suggestion_card_id_audit_card"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_suggestion")),
    )
    op.create_index("ix_audit_suggestion_card_id", "audit_suggestion", ["card_id"])

    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("service_id", sa.String(length=128), nullable=False),
        sa.Column("card_uuid", sa.String(length=36), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("outcome_timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("accepted_suggestions", sa.Text(), nullable=True),
        sa.Column("override_system", sa.String(length=512), nullable=True),
        sa.Column("override_code", sa.String(length=256), nullable=True),
        sa.Column("override_display", sa.String(length=512), nullable=True),
        sa.Column("override_comment", sa.Text(), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback")),
        sa.UniqueConstraint("content_hash", name=op.f("uq_feedback_content_hash")),
    )
    op.create_index("ix_feedback_card_uuid", "feedback", ["card_uuid"])
    op.create_index("ix_feedback_received_at", "feedback", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_feedback_received_at", table_name="feedback")
    op.drop_index("ix_feedback_card_uuid", table_name="feedback")
    op.drop_table("feedback")
    op.drop_index("ix_audit_suggestion_card_id", table_name="audit_suggestion")
    op.drop_table("audit_suggestion")
    op.drop_index("ix_audit_card_evaluation_id", table_name="audit_card")
    op.drop_table("audit_card")
    op.drop_index("ix_audit_evaluation_hook_instance", table_name="audit_evaluation")
    op.drop_index("ix_audit_evaluation_evaluated_at", table_name="audit_evaluation")
    op.drop_table("audit_evaluation")
