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
    _date_retirements()


def _date_retirements() -> None:
    """Retention keeps the most recently retired versions, by `decided_at`. Until 4 December an
    import as stable retired the stable version without setting it (it kept the time it became
    stable), so the newest rollback target could sort as the oldest and lose its files first.
    A version retires at the first change of the stable version after it became stable: that
    time, read from the decisions, is given to each retired version dated earlier."""
    versions = sa.table("versions", sa.column("id", sa.String), sa.column("status", sa.String),
                        sa.column("decided_at", sa.DateTime))
    decisions = sa.table("decisions", sa.column("id", sa.Integer), sa.column("version_id", sa.String),
                         sa.column("action", sa.String), sa.column("reason", sa.Text),
                         sa.column("created_at", sa.DateTime))
    conn = op.get_bind()
    made_stable = sa.or_(decisions.c.action.in_(("promote", "pin", "rollback")),
                         sa.and_(decisions.c.action == "import", decisions.c.reason.like("% as stable")))
    events = conn.execute(sa.select(decisions.c.created_at, decisions.c.version_id).where(made_stable)
                          .order_by(decisions.c.created_at, decisions.c.id)).all()
    retired = conn.execute(sa.select(versions.c.id, versions.c.decided_at)
                           .where(versions.c.status == "retired")).all()
    for vid, decided_at in retired:
        became = max((t for t, v in events if v == vid), default=None)
        if became is None:
            continue   # no record of it becoming stable: its own date is all there is
        ended = next((t for t, v in events if v != vid and t >= became), None)
        if ended is not None and (decided_at is None or decided_at < ended):
            conn.execute(versions.update().where(versions.c.id == vid).values(decided_at=ended))


def downgrade() -> None:
    op.drop_column("versions", "files_pruned")
