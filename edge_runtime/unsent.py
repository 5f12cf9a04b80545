"""An update charged to the privacy ledger and not yet delivered, kept until it is.

The ledger is charged before an update leaves the device (`agent._train`). From then on, training
again for the same round would release the same text a second time under fresh noise, so the
round is refused instead (`agent._released_before`). The charged bytes therefore wait here, on
disk, until the coordinator has answered them, and the same round asking again gets the same bytes
under the same idempotency key, after a failed upload or after the device restarted.

They were learned from the user's text, so every wipe deletes them (`discard`); a wipe since they
were made, or learning paused when they would leave, keeps them from leaving (`agent._withdrawn`).
They are deleted once their round's deadline has passed (the coordinator takes nothing later, and
may have taken them already: a reply lost to a kill), and a file that cannot be read back whole,
or that another enrollment made, is deleted rather than sent.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.paths import UNSENT_DELTA, UNSENT_META
from protocol import wire
from protocol.artifact import atomic_write, write_leftovers

log = logging.getLogger(__name__)


# How long a charged update is kept for a train task without a time limit, and for one kept by a
# release that recorded no deadline (`load`).
TTL_S = 86400.0


@dataclass(frozen=True)
class Unsent:
    """What `agent._upload` sends, and what it is sent again for."""

    meta: wire.UpdateMeta
    delta: bytes
    wipe_mark: str | None
    counts: dict[str, Any]
    plan: wire.TrainPlan   # sent again only for this very plan: a restored coordinator's round of the
    # same id, on the same version, is another round (its `round_key`), maybe of another noise
    device_id: str
    expires_at: float   # time.time() at the round's deadline, as its task said (`time_limit_s`)

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expires_at


def save(data_dir: str | os.PathLike, u: Unsent) -> bool:
    """Keep `u` on disk (private files); False when it cannot be written (the device keeps it in
    memory only, as a read-only or full disk allows)."""
    folder = Path(data_dir)
    meta = {"meta": u.meta.to_dict(), "plan": u.plan.to_dict(), "wipe_mark": u.wipe_mark, "counts": u.counts,
            "device_id": u.device_id, "expires_at": u.expires_at, "sha256": hashlib.sha256(u.delta).hexdigest()}
    try:   # the bytes first: a meta file always names a whole delta
        atomic_write(folder / UNSENT_DELTA, u.delta)
        atomic_write(folder / UNSENT_META, json.dumps(meta).encode())
    except OSError as e:
        log.warning("the charged update of round %d is kept in memory only: %s", u.meta.round_id, e.strerror or e)
        discard(folder)
        return False
    return True


def load(data_dir: str | os.PathLike, device_id: str) -> Unsent | None:
    """The update left undelivered by an earlier run of this device, or None. A file this release
    cannot read whole, or one another enrollment left, is deleted: it must never be sent, and
    the round it was for refuses this device anyway (`agent._released_before`)."""
    folder = Path(data_dir)
    try:
        raw = (folder / UNSENT_META).read_bytes()
    except FileNotFoundError:
        with contextlib.suppress(OSError):
            (folder / UNSENT_DELTA).unlink(missing_ok=True)   # a save cut short before its meta file
        return None
    except OSError as e:
        log.warning("the undelivered update cannot be read (%s); it is not sent", e.strerror or e)
        return None
    try:
        d = json.loads(raw)
        delta = (folder / UNSENT_DELTA).read_bytes()
        if hashlib.sha256(delta).hexdigest() != d["sha256"]:
            raise ValueError("its bytes do not match their digest")
        u = Unsent(meta=wire.UpdateMeta.from_dict(d["meta"]), delta=delta, wipe_mark=d["wipe_mark"],
                   counts=dict(d["counts"]), plan=wire.TrainPlan.from_dict(d["plan"]), device_id=str(d["device_id"]),
                   expires_at=_expires_at(folder, d))
    except (OSError, ValueError, KeyError, TypeError) as e:   # WireError is a ValueError
        log.warning("the undelivered update left by an earlier run is damaged (%s); deleted, not sent", e)
        discard(folder)
        return None
    if u.device_id != device_id:
        log.info("an undelivered update of device %s, enrolled before this one, was deleted", u.device_id)
        discard(folder)
        return None
    if u.expired():
        log.info("the undelivered update of round %d was deleted: the round's deadline has passed", u.meta.round_id)
        discard(folder)
        return None
    return u


def waiting_round(data_dir: str | os.PathLike) -> int | None:
    """The round a kept update waits for until its deadline (`status`), without reading its bytes."""
    try:
        d = json.loads((Path(data_dir) / UNSENT_META).read_bytes())
        return int(d["meta"]["round_id"]) if time.time() < _expires_at(Path(data_dir), d) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _expires_at(folder: Path, d: dict[str, Any]) -> float:
    """The kept update's deadline. The release that first kept updates (7 December 2026, before
    its deadlines) wrote none: its file read as damaged, so the charged update was deleted unsent
    and `status` said none waited. It is kept `TTL_S` from when it was saved, the most any deadline
    gives (its round refuses it later anyway)."""
    if "expires_at" not in d:
        return (folder / UNSENT_META).stat().st_mtime + TTL_S
    return float(d["expires_at"])


def discard(data_dir: str | os.PathLike) -> bool:
    """Delete the kept update, if any: delivered, refused, withdrawn, expired, or wiped with the
    text. False (logged) when a file could not be deleted (a disk gone read-only): the callers go
    on, since a wipe's other steps, and an answered upload's outcome, must not depend on it."""
    gone = True
    folder = Path(data_dir)
    for name in (UNSENT_META, UNSENT_DELTA):   # the meta first: without it the bytes are never sent
        # and the temporary file `atomic_write` renames into place, which a kill or a power cut
        # during `save` leaves beside it: the same bytes, never read, never deleted otherwise
        for path in (folder / name, *write_leftovers(folder / name)):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as e:
                log.error("could not delete %s: %s", path.name, e.strerror or e)
                gone = False
    return gone
