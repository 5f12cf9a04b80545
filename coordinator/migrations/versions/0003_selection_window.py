"""Round selection by a check-in window and a random draw (not first come, first served).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.add_column(sa.Column("selection_ends_at", sa.DateTime, nullable=True))  # NULL: no window
        batch.add_column(sa.Column("drawn_at", sa.DateTime, nullable=True))
    with op.batch_alter_table("assignments") as batch:
        batch.add_column(sa.Column("selected", sa.Boolean, nullable=False, server_default=sa.true()))


def downgrade() -> None:
    with op.batch_alter_table("assignments") as batch:
        batch.drop_column("selected")
    with op.batch_alter_table("rounds") as batch:
        batch.drop_column("drawn_at")
        batch.drop_column("selection_ends_at")
