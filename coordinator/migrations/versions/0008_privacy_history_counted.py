"""Each version's privacy history counted: one `[q, sigma, rounds]` per distinct release.

Every version's record holds its lineage's whole history, and it held one `[q, sigma]` a round,
so the database grew with the rounds squared (about 1 GB after 10,000 rounds; deploy/README.md,
"Disk"). The accountant composes the rounds in any order, so `coordinator.privacy.entries` keeps
a count per distinct release instead, and this revision rewrites the records already held. The
epsilons are unchanged (the same rounds composed). Signed manifests keep what they said when they
were made; the code reads both forms (`coordinator.privacy.counted`).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

import json
import logging
from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

log = logging.getLogger(__name__)


def upgrade() -> None:
    from coordinator import privacy

    _rewrite(lambda history: None if all(isinstance(e, list) and len(e) == 3 for e in history)
             else privacy.entries(privacy.counted(history)))


def downgrade() -> None:
    """Counted entries written out one round each again, as the releases before read them."""
    _rewrite(lambda history: None if not any(isinstance(e, list) and len(e) == 3 for e in history)
             else [[e[0], e[1]] for e in history for _ in range(e[2] if len(e) == 3 else 1)])


def _rewrite(change: Callable[[list], list | None]) -> None:
    """Every version's record with its history changed by `change` (None: left as it is), one
    record at a time: together they may hold the rounds squared. An unreadable record is left as
    it is, and the code that reads it says so."""
    versions = sa.table("versions", sa.column("id", sa.String), sa.column("privacy_json", sa.Text))
    conn = op.get_bind()
    for vid in conn.execute(sa.select(versions.c.id)).scalars().all():
        raw = conn.execute(sa.select(versions.c.privacy_json).where(versions.c.id == vid)).scalar()
        try:
            record = json.loads(raw or "{}")
            history = record.get("history") if isinstance(record, dict) else None
            if not isinstance(history, list) or (changed := change(history)) is None:
                continue
            record["history"] = changed
        except (TypeError, ValueError) as e:
            log.warning("version %s: its privacy record is not readable (%s); left as it is", vid, e)
            continue
        conn.execute(versions.update().where(versions.c.id == vid).values(privacy_json=json.dumps(record)))
