"""Tables of secure-aggregation rounds. They hold public keys, encrypted shares, masked vectors
(blob digests) and, at the end, the sum: never an individual update."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from coordinator.models import Base, utcnow


class SecAggRound(Base):
    __tablename__ = "secagg_rounds"
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), primary_key=True)
    phase: Mapped[str] = mapped_column(String(16))          # keys | shares | masked | unmask | summed | failed
    phase_started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    params_json: Mapped[str] = mapped_column(Text, default="{}")   # n, k, t, n_min, seed, dim, scale, mu
    survivors: Mapped[int] = mapped_column(Integer, default=0)
    sum_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    stats_json: Mapped[str] = mapped_column(Text, default="{}")    # unmask time, bytes: numbers only


class SecAggMember(Base):
    __tablename__ = "secagg_members"
    __table_args__ = (UniqueConstraint("round_id", "device_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"))
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    idx: Mapped[int | None] = mapped_column(Integer, nullable=True)   # position in the frozen cohort
    enc_pk: Mapped[str] = mapped_column(String(64))
    mask_pk: Mapped[str] = mapped_column(String(64))
    shared: Mapped[bool] = mapped_column(Boolean, default=False)
    masked_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seed_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)   # its self-mask seed's commitment
    revealed: Mapped[bool] = mapped_column(Boolean, default=False)


class SecAggShare(Base):
    """One encrypted share, relayed from sender to recipient (the coordinator cannot read it)."""

    __tablename__ = "secagg_shares"
    __table_args__ = (UniqueConstraint("round_id", "sender", "recipient"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"))
    sender: Mapped[int] = mapped_column(Integer)
    recipient: Mapped[int] = mapped_column(Integer)
    ciphertext: Mapped[str] = mapped_column(Text)


class SecAggReveal(Base):
    """A share revealed in the unmask step; deleted once the sum is computed."""

    __tablename__ = "secagg_reveals"
    __table_args__ = (UniqueConstraint("round_id", "revealer", "owner", "kind"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"))
    revealer: Mapped[int] = mapped_column(Integer)
    owner: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(8))     # self | key
    share: Mapped[str] = mapped_column(Text)
