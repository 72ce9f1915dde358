"""Audit: the EHR's criteria id (Epic's ``com.epic.cdshooks.request.criteria-id`` extension) per hook call
(issue 11). A plain token of at most 64 characters, never PHI.

Revision ID: 0003_audit_criteria_id
Revises: 0002_jwt_replay
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_audit_criteria_id"
down_revision = "0002_jwt_replay"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_evaluation") as batch:
        batch.add_column(sa.Column("criteria_id", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_evaluation") as batch:
        batch.drop_column("criteria_id")
