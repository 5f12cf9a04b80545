"""A secure round's self-mask seed commitment, per member.

A survivor could reveal a forged share of a neighbour's self-mask seed: with one honest share it
interpolated to another seed, nothing checked it, and the round closed "done" on a random sum.
Devices now send sha256 of their seed with their shares, and the coordinator keeps only a
recovered seed that matches it (`coordinator.secagg._recovered`), as it checks a mask key against
its public key. NULL for a device from before: its seed is taken unchecked, as it was.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN, as 0006: SQLite's batch mode would copy and drop the table.
    op.add_column("secagg_members", sa.Column("seed_sha256", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_column("secagg_members", "seed_sha256")
