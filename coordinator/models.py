"""Database tables (SQLAlchemy 2.0). The schema itself comes from Alembic migrations.

Big bytes live in the blob store; rows hold their sha256.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)  # stored naive UTC: same on SQLite and PostgreSQL


class Base(DeclarativeBase):
    pass


class EnrollmentKey(Base):
    __tablename__ = "enrollment_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(128), default="")
    uses_left: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None: unlimited (keys before 0002)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)  # None: keys before 0002


class Device(Base):
    __tablename__ = "devices"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    enrollment_key_id: Mapped[int] = mapped_column(ForeignKey("enrollment_keys.id"))
    platform: Mapped[str] = mapped_column(String(128), default="")
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # sha256 of the device's own id for the enrollment that made it (`EnrollRequest.request_id`)
    enroll_request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True, index=True)


class Version(Base):
    __tablename__ = "versions"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, unique=True)        # creation order
    parent_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    status: Mapped[str] = mapped_column(String(16))               # stable | candidate | rejected | retired
    manifest_json: Mapped[str] = mapped_column(Text)              # signed manifest, canonical JSON
    weights_sha256: Mapped[str] = mapped_column(String(64))
    graph_sha256: Mapped[str] = mapped_column(String(64))
    tokenizer_sha256: Mapped[str] = mapped_column(String(64))
    opt_state_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)  # server optimizer state
    round_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    epsilon: Mapped[float] = mapped_column(Float, default=0.0)
    epsilon_local: Mapped[float | None] = mapped_column(Float, nullable=True)   # privacy_json's, for listing
    delta: Mapped[float] = mapped_column(Float, default=0.0)
    privacy_json: Mapped[str] = mapped_column(Text, default="{}")   # the lineage's history, counted (privacy.entries)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    files_pruned: Mapped[bool] = mapped_column(Boolean, default=False)   # coordinator.retention deleted them


class Round(Base):
    __tablename__ = "rounds"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    base_version_id: Mapped[str] = mapped_column(ForeignKey("versions.id"))
    status: Mapped[str] = mapped_column(String(16))               # open | done | failed
    plan_json: Mapped[str] = mapped_column(Text)
    goal_count: Mapped[int] = mapped_column(Integer)
    max_selected: Mapped[int] = mapped_column(Integer)
    min_count: Mapped[int] = mapped_column(Integer)
    population: Mapped[int] = mapped_column(Integer, default=0)
    deadline: Mapped[datetime] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    result_version_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    selection_ends_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)  # None: no window
    drawn_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Assignment(Base):
    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("round_id", "device_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"))
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    assigned_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    selected: Mapped[bool] = mapped_column(Boolean, default=True)   # False: checked in, awaiting the draw


class Update(Base):
    __tablename__ = "updates"
    __table_args__ = (UniqueConstraint("round_id", "device_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"))
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    idempotency_key: Mapped[str] = mapped_column(String(128))
    blob_sha256: Mapped[str] = mapped_column(String(64))
    example_count: Mapped[int] = mapped_column(Integer)
    encoding: Mapped[str] = mapped_column(String(16))
    l2_norm: Mapped[float] = mapped_column(Float)
    received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Rejection(Base):
    """Every rejected update, with its reason: the audit trail for "why was mine refused"."""

    __tablename__ = "rejections"
    # A round's selection asks whether a device's upload was refused (`selection.select_device`)
    __table_args__ = (Index("ix_rejections_round_device", "round_id", "device_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    device_id: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Evaluation(Base):
    __tablename__ = "evaluations"
    __table_args__ = (UniqueConstraint("candidate_version_id", "device_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    candidate_version_id: Mapped[str] = mapped_column(ForeignKey("versions.id"))
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    report_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Decision(Base):
    __tablename__ = "decisions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[str] = mapped_column(ForeignKey("versions.id"))
    # promote | reject | pin | unpin | rollback | import | retire | prune | restore
    action: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(16))       # auto | admin
    reason: Mapped[str] = mapped_column(Text)
    numbers_json: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Setting(Base):
    """Small persistent switches (e.g. `pinned`: automatic promotion off)."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
