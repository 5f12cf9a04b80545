"""Signing the rollout state each check-in names (see `protocol.rollout_state`).

The sequence number is the signing time in milliseconds: a statement signed later is newer, on
any number of workers, without a counter of its own, and a replayed one is older. It was
`max(decision id) + max(version seq)`, which went back with the database: after a restore from a
backup, every device that had checked in since refused the restored coordinator's statements as
replays and stayed on a version that coordinator no longer knew (a clock stepped back by the same
span would do that too, for that span).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from coordinator.models import Version
from protocol.rollout_state import RolloutState

if TYPE_CHECKING:
    from coordinator.service import Coordinator


def signed_state(coord: Coordinator, s: Session, device_id: str, use: Version, channel: str,
                 current_version_id: str | None) -> RolloutState:
    """The signed statement "device `device_id` uses `use`"; `rollback` when that moves the
    device from a newer version to an older one, or from one this coordinator cannot place."""
    current = s.get(Version, current_version_id[:128]) if current_version_id else None
    # A version this coordinator does not hold (made after the backup it was restored from), or
    # none (a device whose pointer was lost): the move is allowed whatever its place, or the device
    # would keep a model no one can reject, or refuse stable after a rejected candidate for good.
    rollback = current.seq > use.seq if current is not None else True
    now = time.time()
    state = RolloutState(device_id=device_id, version_id=use.id, channel=channel, seq=int(now * 1000),
                         version_seq=use.seq, rollback=rollback, expires_at=int(now + coord.config.rollout_state_ttl_s))
    return RolloutState(**{**state.to_dict(), "signature": coord.signing_key.sign(state.signing_bytes()).hex()})
