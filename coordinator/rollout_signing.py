"""Signing the rollout state each check-in names (see `protocol.rollout_state`).

The sequence number is the signing time in milliseconds: a statement signed later is newer, on
any number of workers, without a counter of its own, and a replayed one is older. It was
`max(decision id) + max(version seq)`, which went back with the database: after a restore from a
backup, every device that had checked in since refused the restored coordinator's statements as
replays and stayed on a version that coordinator no longer knew.

A clock stepped back would do the same, for as long as it had been ahead: a service run an
hour fast, then set right, would have every device refuse every switch (a rollback too) for
that hour, with nothing said on the coordinator. So the numbers are the clock plus an offset
(`SequenceClock`): the database keeps a lease, a number at least as high as any statement
signed (renewed every few seconds, in a transaction of its own), and a clock found behind it
moves the offset past it, so the numbers go on from where they were.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from coordinator import deployment
from coordinator.models import Setting, Version
from protocol.rollout_state import RolloutState

if TYPE_CHECKING:
    from coordinator.service import Coordinator

log = logging.getLogger(__name__)
LEASE_MS = 10_000                        # how far the lease runs ahead; renewed at half of it
LEASE_KEY, OFFSET_KEY = "rollout_seq_lease", "rollout_seq_offset"   # settings rows


class SequenceClock:
    """Rollout sequence numbers: strictly increasing in a process, and after the wall clock went
    back, above every number any process signed before (a step of under half the lease's span,
    5 s, may leave another process's numbers that much ahead). One per process.

    `renew` runs in its own short transaction before a check-in's (`checkin.checkin`), and the
    process takes the new lease and offset only once it committed; `next` never writes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._offset = 0                 # ms added to the wall clock
        self._lease: int | None = None   # what the database holds: no number signed reaches it
        self._last = 0
        self._skew: float | None = None  # time.time() - time.monotonic() at the last renewal

    def due(self) -> bool:
        """Whether `renew` should run: no lease yet, half of it used, or this host's clock stepped
        back since the last renewal (the wall clock fell behind the monotonic one)."""
        with self._lock:
            now = int(time.time() * 1000)
            return (self._lease is None or now + self._offset >= self._lease - LEASE_MS // 2
                    or self._stepped_back())

    def _stepped_back(self) -> bool:
        return self._skew is not None and time.time() - time.monotonic() < self._skew - 1.0

    def renew(self, coord: Coordinator) -> None:
        """Extend the database's lease past the numbers about to be signed; a clock behind what
        was signed (here, or in the lease another process wrote) moves the offset past it. The
        clock's lock is not held across the transaction: a check-in holds the coordinator's
        lock and then asks `next` for a number."""
        with self._lock:
            mine, last = self._offset, self._last
        with coord.tx() as s:
            insert = deployment.upsert(s.get_bind())   # rows made once; workers may race to it
            for k in (LEASE_KEY, OFFSET_KEY):
                s.execute(insert(Setting).values(key=k, value="0").on_conflict_do_nothing())
            rows = {k: s.get(Setting, k, with_for_update=True) for k in (LEASE_KEY, OFFSET_KEY)}
            lease, offset = (int(rows[k].value) for k in (LEASE_KEY, OFFSET_KEY))
            now = int(time.time() * 1000)
            offset = max(offset, mine)
            # The lease's writer signed from `lease - LEASE_MS` on with the offset it wrote: a clock
            # plus that offset below it went back, and goes on past the lease, which no number
            # reached. A process that sees the step after another moved the offset finds the clock
            # plus the new offset inside the lease's span, and takes it as it is: the numbers of the
            # two go on together (jumping past the lease again put one 10 s ahead of the other).
            if now + offset < lease - LEASE_MS:
                log.warning("the clock is %.1f s behind the rollout statements already signed: they go on from "
                            "there, so devices do not refuse them as replays", (lease - now - offset) / 1000)
                offset = lease + 1 - now
            offset = max(offset, last + 1 - now)   # this process's own, whatever the others wrote
            lease = max(lease, now + offset + LEASE_MS)
            rows[LEASE_KEY].value, rows[OFFSET_KEY].value = str(lease), str(offset)
        with self._lock:   # committed: the process signs under it from now on
            self._offset, self._lease = max(self._offset, offset), max(self._lease or 0, lease)
            self._skew = time.time() - time.monotonic()

    def next(self) -> int:
        with self._lock:
            seq = max(int(time.time() * 1000) + self._offset, self._last + 1)
            self._last = seq
            return seq


def signed_state(coord: Coordinator, s: Session, device_id: str, use: Version, channel: str,
                 current_version_id: str | None) -> RolloutState:
    """The signed statement "device `device_id` uses `use`"; `rollback` when that moves the
    device from a newer version to an older one, or from one this coordinator cannot place."""
    current = s.get(Version, current_version_id[:128]) if current_version_id else None
    # A version this coordinator does not hold (made after the backup it was restored from), or
    # none (a device whose pointer was lost): the move is allowed whatever its place, or the device
    # would keep a model no one can reject, or refuse stable after a rejected candidate for good.
    rollback = current.seq > use.seq if current is not None else True
    if current is None and current_version_id:
        _say_unknown(current_version_id[:128])
    now = time.time()
    state = RolloutState(device_id=device_id, version_id=use.id, channel=channel, seq=coord.rollout_seq.next(),
                         version_seq=use.seq, rollback=rollback, expires_at=int(now + coord.config.rollout_state_ttl_s))
    return RolloutState(**{**state.to_dict(), "signature": coord.signing_key.sign(state.signing_bytes()).hex()})


_UNKNOWN_SAID: set[str] = set()   # versions devices ran that this process has said it does not hold


def _say_unknown(version_id: str) -> None:
    """Say once per version (and process) that a device runs a version this coordinator does not
    hold. That is how a restore from a backup shows: the devices are moved to its stable version,
    and the rounds held after the backup are missing from the ε against the coordinator it
    reports (a probe: the devices' ledgers held 11 releases, the restored coordinator said 10)."""
    if version_id in _UNKNOWN_SAID:
        return
    if len(_UNKNOWN_SAID) >= 1000:   # bounded, and not full for good: a device naming made-up versions
        _UNKNOWN_SAID.clear()         # would otherwise silence a real restore's line
    _UNKNOWN_SAID.add(version_id)
    log.warning("a device runs version %r, which this coordinator does not hold: was it restored from a backup "
                "older than that version? Devices are moved to its versions; the rounds after the backup are "
                "missing from the epsilon it reports (fedkeys_epsilon_against_coordinator)", version_id)
