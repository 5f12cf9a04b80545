"""Secure-aggregation rounds: members and their public keys, relayed encrypted shares, reveals.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "secagg_rounds",
        sa.Column("round_id", sa.Integer, sa.ForeignKey("rounds.id"), primary_key=True),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("phase_started_at", sa.DateTime, nullable=False),
        sa.Column("params_json", sa.Text, nullable=False),
        sa.Column("survivors", sa.Integer, nullable=False),
        sa.Column("sum_sha256", sa.String(64), nullable=True),
        sa.Column("stats_json", sa.Text, nullable=False),
    )
    op.create_table(
        "secagg_members",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("round_id", sa.Integer, sa.ForeignKey("rounds.id"), nullable=False),
        sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.id"), nullable=False),
        sa.Column("idx", sa.Integer, nullable=True),
        sa.Column("enc_pk", sa.String(64), nullable=False),
        sa.Column("mask_pk", sa.String(64), nullable=False),
        sa.Column("shared", sa.Boolean, nullable=False),
        sa.Column("masked_sha256", sa.String(64), nullable=True),
        sa.Column("revealed", sa.Boolean, nullable=False),
        sa.UniqueConstraint("round_id", "device_id"),
    )
    op.create_table(
        "secagg_shares",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("round_id", sa.Integer, sa.ForeignKey("rounds.id"), nullable=False),
        sa.Column("sender", sa.Integer, nullable=False),
        sa.Column("recipient", sa.Integer, nullable=False),
        sa.Column("ciphertext", sa.Text, nullable=False),
        sa.UniqueConstraint("round_id", "sender", "recipient"),
    )
    op.create_table(
        "secagg_reveals",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("round_id", sa.Integer, sa.ForeignKey("rounds.id"), nullable=False),
        sa.Column("revealer", sa.Integer, nullable=False),
        sa.Column("owner", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("share", sa.Text, nullable=False),
        sa.UniqueConstraint("round_id", "revealer", "owner", "kind"),
    )


def downgrade() -> None:
    for t in ("secagg_reveals", "secagg_shares", "secagg_members", "secagg_rounds"):
        op.drop_table(t)
