"""The signed rollout state: which version one device should use, and how new that order is.

A check-in reply travels over a network a man-in-the-middle may control. Manifests are signed,
so he cannot invent a version, but he could replay an old reply and move a device back to a
retired or canary-rejected version. So every reply carries this statement, signed by the
coordinator's Ed25519 key and bound to the device:

* `seq` is when the coordinator signed it, in milliseconds (a device refuses a lower one than it
  has seen: a replay);
* `version_seq` orders versions; moving to an older one needs `rollback` (the coordinator
  sets it when it deliberately sends the device back, e.g. after a rejected canary, or when
  the device runs a version it does not hold, e.g. after a restore from a backup);
* `expires_at` bounds how long a captured statement stays usable.

The signature covers a domain-separated canonical JSON of every field but itself, so a
manifest signature can never pass for a rollout signature. Standard library only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from protocol.fields import MAX_INT, WireError, _bool, _int, _str

DOMAIN = b"fedkeys-rollout-state-v1\n"


class Channel(StrEnum):
    """Which rollout channel a version is served on (protocol.wire re-exports it)."""

    STABLE = "stable"
    CANARY = "canary"


CHANNELS = tuple(c.value for c in Channel)


@dataclass(frozen=True)
class RolloutState:
    device_id: str
    version_id: str
    channel: str          # stable | canary
    seq: int              # when the coordinator signed it, ms since the epoch (monotonic)
    version_seq: int      # the version's place in version history (newer: higher)
    rollback: bool        # a deliberate move to an older version
    expires_at: int       # unix seconds
    signature: str = ""   # hex Ed25519 over signing_bytes()

    def __post_init__(self) -> None:
        if self.channel not in CHANNELS:
            raise WireError(f"'channel' must be one of {list(CHANNELS)}")

    def signing_bytes(self) -> bytes:
        d = asdict(self)
        d.pop("signature")
        return DOMAIN + json.dumps(d, sort_keys=True, separators=(",", ":")).encode()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RolloutState:
        return cls(device_id=_str(d, "device_id"), version_id=_str(d, "version_id"), channel=_str(d, "channel"),
                   seq=_int(d, "seq", lo=0, hi=2**62), version_seq=_int(d, "version_seq", lo=0, hi=MAX_INT),
                   rollback=_bool(d, "rollback"), expires_at=_int(d, "expires_at", lo=0, hi=2**40),
                   signature=_str(d, "signature", max_len=256))
