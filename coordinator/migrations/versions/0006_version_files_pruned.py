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
    import as stable retired the stable version without setting it (it kept its promotion's
    time, or none), so the newest rollback target could sort as the oldest and lose its files.
    A retired version's time becomes at least its last decision's and the next version's
    creation (it retired no earlier than a newer version existed)."""
    versions = sa.table("versions", sa.column("id", sa.String), sa.column("seq", sa.Integer),
                        sa.column("status", sa.String), sa.column("decided_at", sa.DateTime),
                        sa.column("created_at", sa.DateTime))
    decisions = sa.table("decisions", sa.column("version_id", sa.String), sa.column("created_at", sa.DateTime))
    conn = op.get_bind()
    rows = conn.execute(sa.select(versions.c.id, versions.c.status, versions.c.decided_at, versions.c.created_at)
                        .order_by(versions.c.seq.desc())).all()
    last = dict(conn.execute(sa.select(decisions.c.version_id, sa.func.max(decisions.c.created_at))
                             .group_by(decisions.c.version_id)).all())
    newer = None   # the earliest creation among versions of a higher seq
    for vid, status, decided_at, created_at in rows:
        if status == "retired":
            known = [t for t in (decided_at, last.get(vid), newer) if t is not None]
            if known and max(known) != decided_at:
                conn.execute(versions.update().where(versions.c.id == vid).values(decided_at=max(known)))
        if created_at is not None:
            newer = created_at if newer is None else min(newer, created_at)


def downgrade() -> None:
    op.drop_column("versions", "files_pruned")
