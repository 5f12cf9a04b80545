"""An index on rejections by round and device.

A device whose upload a round refused (a norm too large, a stale base) was handed the round's
train task again at every check-in until the deadline, and refused it each time (its text was
released once already). Selection now asks whether the device's upload was refused in the
round, on every check-in of a device without an update: this index keeps that a look-up, as
the table only grows.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_rejections_round_device", "rejections", ["round_id", "device_id"])


def downgrade() -> None:
    op.drop_index("ix_rejections_round_device", table_name="rejections")
