"""The enrollment request that made a device, so a retry of it gets the same device.

A device whose enrollment answer was lost (a reply cut off, a timeout after the coordinator
committed) enrolled again as a second device, using a second use of the key; with a single-use
key it could never enroll without an operator. Devices now send a random id of
their own for an enrollment, the same on every retry; the coordinator keeps its sha256. NULL for
devices from before, and for devices that send none.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN, as 0006: SQLite's batch mode would copy and drop the table.
    op.add_column("devices", sa.Column("enroll_request_hash", sa.String(64), nullable=True))
    op.create_index("ix_devices_enroll_request_hash", "devices", ["enroll_request_hash"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_devices_enroll_request_hash", table_name="devices")
    op.drop_column("devices", "enroll_request_hash")
