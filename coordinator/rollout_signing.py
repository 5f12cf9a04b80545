"""Signing the rollout state each check-in names (see `protocol.rollout_state`).

The sequence number is the signing time in milliseconds: a statement signed later is newer, on
any number of workers, without a counter of its own, and a replayed one is older. It was
`max(decision id) + max(version seq)`, which went back with the database: after a restore from a
backup, every device that had checked in since refused the restored coordinator's statements as
replays and stayed on a version that coordinator no longer knew.

A clock stepped back did the same, for as long as it had been ahead: an operator probe ran the
service an hour fast, then right, and every device refused every switch (a rollback too) for
that hour, with nothing said on the coordinator. So the numbers are the clock plus an offset
(`SequenceClock`): the database keeps a lease, a number at least as high as any statement
signed (written once a minute per process), and a clock found behind it moves the offset past
it, so the numbers go on from where they were.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from coordinator.models import Setting, Version
from protocol.rollout_state import RolloutState

log = logging.getLogger(__name__)
LEASE_MS = 60_000                        # a process writes its lease once a minute
LEASE_KEY, OFFSET_KEY = "rollout_seq_lease", "rollout_seq_offset"   # settings rows


class SequenceClock:
    """Rollout sequence numbers: strictly increasing in a process, never below one any process
    signed before (the database's lease), whatever the wall clock does. One per process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._offset = 0          # ms added to the wall clock
        self._lease: int | None = None   # numbers below it may be signed without writing
        self._last = 0

    def next(self, s: Session) -> int:
        """The next number; renews the lease in `s` (the check-in's transaction) when due."""
        with self._lock:
            now = int(time.time() * 1000)
            seq = now + self._offset
            if self._lease is None or seq >= self._lease or seq < self._last - 1000:
                self._renew(s, now)
                seq = now + self._offset
            seq = max(seq, self._last + 1)
            self._last = seq
            return seq

    def _renew(self, s: Session, now: int) -> None:
        rows = {k: s.get(Setting, k, with_for_update=True) for k in (LEASE_KEY, OFFSET_KEY)}
        lease, offset = (int(rows[k].value) if rows[k] is not None else 0 for k in (LEASE_KEY, OFFSET_KEY))
        offset = max(offset, self._offset)
        behind = max(lease - LEASE_MS, self._last) - (now + offset)   # ms under what was signed
        if behind > 1000:   # the clock went back (a second's jitter is not that)
            offset = max(lease, self._last) + 1 - now
            log.warning("the clock is %.0f s behind the rollout statements already signed: they go on from "
                        "there (offset %.0f s), so devices do not refuse them as replays", behind / 1000, offset / 1000)
        lease = max(lease, now + offset + LEASE_MS)
        for k, v in ((LEASE_KEY, lease), (OFFSET_KEY, offset)):
            if rows[k] is None:
                s.add(Setting(key=k, value=str(v)))
            else:
                rows[k].value = str(v)
        self._offset, self._lease = offset, lease

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
    state = RolloutState(device_id=device_id, version_id=use.id, channel=channel, seq=coord.rollout_seq.next(s),
                         version_seq=use.seq, rollback=rollback, expires_at=int(now + coord.config.rollout_state_ttl_s))
    return RolloutState(**{**state.to_dict(), "signature": coord.signing_key.sign(state.signing_bytes()).hex()})
