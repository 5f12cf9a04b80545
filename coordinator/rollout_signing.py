"""Signing the rollout state each check-in names (see `protocol.rollout_state`).

The sequence number is derived from rows that are only ever added: every change of the
rollout adds a version (import, aggregation) or a decision (promote, reject, rollback, pin,
supersede), so `max(decision id) + max(version seq)` grows with every change and never
goes back, on any number of workers, without a counter of its own.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from coordinator.models import Decision, Version
from protocol.rollout_state import RolloutState

if TYPE_CHECKING:
    from coordinator.service import Coordinator


def rollout_seq(s: Session) -> int:
    return int(s.scalar(select(func.max(Decision.id))) or 0) + int(s.scalar(select(func.max(Version.seq))) or 0)


def signed_state(coord: Coordinator, s: Session, device_id: str, use: Version, channel: str,
                 current_version_id: str | None) -> RolloutState:
    """The signed statement "device `device_id` uses `use`"; `rollback` when that moves the
    device from a newer version to an older one."""
    current = s.get(Version, current_version_id[:128]) if current_version_id else None
    state = RolloutState(device_id=device_id, version_id=use.id, channel=channel, seq=rollout_seq(s),
                         version_seq=use.seq, rollback=current is not None and current.seq > use.seq,
                         expires_at=int(time.time() + coord.config.rollout_state_ttl_s))
    return RolloutState(**{**state.to_dict(), "signature": coord.signing_key.sign(state.signing_bytes()).hex()})
