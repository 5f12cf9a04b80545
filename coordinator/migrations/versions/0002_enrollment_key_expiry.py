"""Enrollment keys expire: a leaked key stops minting devices after its lifetime.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("enrollment_keys") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime, nullable=True))  # NULL: keys made before 0002


def downgrade() -> None:
    with op.batch_alter_table("enrollment_keys") as batch:
        batch.drop_column("expires_at")
