"""Versions whose files were deleted to bound the data directory (`coordinator.retention`).

Every version kept its weights (about 6.8 MB each, float32 and the download form) for ever: a
coordinator making a version every few minutes filled its disk. Old retired and rejected
versions now lose their files; their rows, manifests and privacy records stay, marked here.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN: SQLite's batch mode would copy and drop `versions`, which rounds,
    # decisions and evaluations reference (a foreign key failure).
    op.add_column("versions", sa.Column("files_pruned", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    op.drop_column("versions", "files_pruned")
