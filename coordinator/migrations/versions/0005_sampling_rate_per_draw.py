"""Sampling rates from before each round's own draw, taken as 1.

Until this revision a round's sampling rate q was its accepted updates over every device that
had ever contributed (or a configured population_size), smaller than a device's real chance of
taking part. New rounds take their draw's rate (`queries.sampling_rate`); the versions already
made would pass their too-small q on to every version trained from them, so their recorded
histories take q = 1 (an upper bound on any device's chance) and their sampled epsilon is
recomputed. Their signed manifests keep what they said when they were made. Open rounds already
drawn held a population of the old meaning: 0 now, which reads q = 1.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

import json
import math

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    from coordinator import privacy

    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT id, privacy_json, delta FROM versions")).all()
    for vid, raw, delta in rows:
        record = json.loads(raw or "{}")
        history = privacy.counted(record.get("history"))   # [q, z] here; counted, as 0008 writes, read too
        if not history or all(r.sampling_rate == 1.0 for r in history):
            continue
        rounds = [privacy.RoundPrivacy(1.0, r.noise_multiplier) for r, n in history.items() for _ in range(n)]
        record.update(privacy.summarize(rounds, float(delta)))
        conn.execute(sa.text("UPDATE versions SET privacy_json = :p, epsilon = :e WHERE id = :id"),
                     {"p": json.dumps({k: str(v) if isinstance(v, float) and not math.isfinite(v) else v
                                       for k, v in record.items()}),
                      "e": record["epsilon"], "id": vid})
    conn.execute(sa.text("UPDATE rounds SET population = 0 WHERE status = 'open' AND drawn_at IS NOT NULL"))


def downgrade() -> None:
    """The rates before this revision are not kept: a downgrade leaves q = 1, an upper bound."""
