"""Each version's epsilon against the coordinator as a column, beside `epsilon`.

It was read from `privacy_json`, which holds the version's whole lineage's per-round history: the
dashboard parsed every version's record (and manifest) on each 5-second refresh, the rounds
squared (2.7 s at 2,000 versions). `coordinator.views.version_summaries` reads this column instead.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

import json
import math

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN, as 0006: SQLite's batch mode would copy and drop `versions`.
    op.add_column("versions", sa.Column("epsilon_local", sa.Float, nullable=True))
    versions = sa.table("versions", sa.column("id", sa.String), sa.column("epsilon", sa.Float),
                        sa.column("privacy_json", sa.Text), sa.column("epsilon_local", sa.Float))
    conn = op.get_bind()
    # One record at a time: together they hold the rounds squared (about 1 GB after 10,000 rounds).
    for vid in conn.execute(sa.select(versions.c.id)).scalars().all():
        epsilon, privacy_json = conn.execute(sa.select(versions.c.epsilon, versions.c.privacy_json)
                                             .where(versions.c.id == vid)).one()
        conn.execute(versions.update().where(versions.c.id == vid)
                     .values(epsilon_local=epsilon_local(privacy_json, epsilon)))


def epsilon_local(privacy_json: str | None, epsilon: float) -> float:
    """The record's epsilon_local ("inf" as the JSON keeps it), else the version's epsilon."""
    try:
        value = float((json.loads(privacy_json or "{}") or {}).get("epsilon_local", epsilon))
    except (TypeError, ValueError, AttributeError):
        return epsilon
    return value if not math.isnan(value) else epsilon


def downgrade() -> None:
    op.drop_column("versions", "epsilon_local")
