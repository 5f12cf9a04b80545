"""Anti-downgrade: the device switches versions only on a fresh, signed rollout statement.

Without it, whoever sits between device and coordinator could replay an old check-in reply
and move the device to a retired or canary-rejected version (each is still validly signed).
The device keeps the newest statement it accepted in ``<data_dir>/rollout_state.json`` and
refuses, before any download:

- a statement that is missing, not signed by the coordinator's key, or for another device;
- an expired one;
- one older (lower `seq`) than the newest it has seen;
- a move to an older version (lower `version_seq`) unless the statement says `rollback`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from cryptography.exceptions import InvalidSignature

from edge_runtime.errors import EdgeError
from edge_runtime.paths import ROLLOUT_STATE_FILE
from protocol.artifact import atomic_write, load_public_key
from protocol.fields import WireError
from protocol.rollout_state import RolloutState

CLOCK_SKEW_S = 300.0

log = logging.getLogger(__name__)


class RolloutRefused(EdgeError):
    """The statement cannot be followed; the message says why (one line)."""


def last_state(data_dir: str | os.PathLike) -> RolloutState | None:
    try:
        return RolloutState.from_dict(json.loads((Path(data_dir) / ROLLOUT_STATE_FILE).read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, WireError) as e:
        # damaged: the signature check still guards; the next statement rewrites it. Said: until
        # then the device's memory of the coordinator's last statement (what it may not go back to) is lost.
        log.warning("%s is unreadable (%s): the last signed rollout statement is forgotten until the next one",
                    ROLLOUT_STATE_FILE, e.__class__.__name__)
        return None


def check(state: RolloutState | None, *, version_id: str, device_id: str, public_key: str,
          data_dir: str | os.PathLike, now: float | None = None, switching: bool = True) -> RolloutState:
    """Raise RolloutRefused unless `state` lets this device use `version_id`; returns it.
    `switching=False`: the device already uses that version, so no move is judged (a kill between
    a rollback's pointer and its statement made every later check-in refuse, as a downgrade, the
    version in use); the statement must still be genuine and fresh to be remembered."""
    if state is None:
        raise RolloutRefused("the reply carries no signed rollout state")
    if state.version_id != version_id or state.device_id != device_id:
        raise RolloutRefused("the signed rollout state is for another version or device")
    try:
        load_public_key(public_key).verify(bytes.fromhex(state.signature), state.signing_bytes())
    except (ValueError, InvalidSignature) as e:
        raise RolloutRefused("the rollout state's signature does not verify") from e
    now = time.time() if now is None else now
    if state.expires_at + CLOCK_SKEW_S < now:
        # A live reply's statement expires days after it is signed: one expired an hour or more is
        # a replay, or one of the two clocks is wrong. (Not judged from `seq`, which a coordinator
        # whose clock went back keeps numbering past its last statement: a coordinator days behind
        # made every device refuse every statement, and its log named no clock.)
        hint = (f"; this device's clock reads {_utc(now)}, {(now - state.expires_at) / 3600:,.0f} h past it: if the "
                "reply is fresh, a clock is wrong: if this device's clock is wrong, set it; if it is right, the "
                "coordinator's is behind") if now - state.expires_at > 3600 else ""
        raise RolloutRefused(f"the rollout state expired at {state.expires_at} ({_utc(state.expires_at)}){hint}")
    last = last_state(data_dir)
    if last is not None:
        if state.seq < last.seq:
            raise RolloutRefused(f"rollout state {state.seq} is older than {last.seq}, already seen (a replay)")
        if switching and state.version_seq < last.version_seq and not state.rollback:
            raise RolloutRefused(f"{version_id} is older than the version in use and the state is no rollback")
    return state


def remember(state: RolloutState, data_dir: str | os.PathLike) -> None:
    """Keep `state` as the newest seen (never replaces a newer one)."""
    last = last_state(data_dir)
    if last is None or state.seq >= last.seq:
        atomic_write(Path(data_dir) / ROLLOUT_STATE_FILE, json.dumps(state.to_dict()).encode())


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))
