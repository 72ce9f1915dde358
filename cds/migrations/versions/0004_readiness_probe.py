"""Readiness probe: one row that ``/readyz`` rewrites, so readiness proves the database takes writes (issue 12).

Revision ID: 0004_readiness_probe
Revises: 0003_audit_criteria_id
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_readiness_probe"
down_revision = "0003_audit_criteria_id"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "readiness_probe",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("probed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_readiness_probe")),
    )


def downgrade() -> None:
    op.drop_table("readiness_probe")
