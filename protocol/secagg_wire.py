"""Wire messages of a secure-aggregation round (the `secure_aggregation` round mode).

A device that got a train task whose plan has ``secure_aggregation: true`` trains (no Gaussian
noise of its own), then walks these steps, polling each GET until ``ready``:

    POST /v1/secagg/<round>/keys     SecAggKeys            two X25519 public keys
    GET  /v1/secagg/<round>/roster   SecAggRoster          its index, k, t, scale, mu, neighbours' keys
    POST /v1/secagg/<round>/shares   SecAggShares          its seed shares, encrypted per neighbour
    GET  /v1/secagg/<round>/inbox    SecAggInbox           the shares neighbours encrypted to it
    POST /v1/secagg/<round>/masked   raw uint32 LE vector  its masked, noised, quantized update
    GET  /v1/secagg/<round>/unmask   SecAggUnmaskRequest   which neighbours survived / dropped
    POST /v1/secagg/<round>/unmask   SecAggReveal          self-mask shares of survivors, key shares of dropped

Every GET that is not ready yet answers 200 ``{"ready": false, "phase": ..., "retry_after": s}``.
Byte strings travel as lowercase hex. Standard library only, like protocol.wire.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from protocol.wire import (
    MIN_RETRY_AFTER_S,
    PROTOCOL_VERSION,
    WireError,
    _bool,
    _check_version,
    _float,
    _int,
    _req,
    _str,
)

PATH_SECAGG = "/v1/secagg/{round_id}/{step}"
STEPS = ("keys", "roster", "shares", "inbox", "masked", "unmask")
MASKED_MEDIA_TYPE = "application/octet-stream"
MAX_NEIGHBOURS = 4096


def secagg_path(round_id: int, step: str) -> str:
    if step not in STEPS:
        raise WireError(f"unknown secure-aggregation step {step!r}")
    return PATH_SECAGG.format(round_id=int(round_id), step=step)


def _hex(d: Mapping[str, Any], key: str, nbytes: int) -> bytes:
    v = _str(d, key, max_len=2 * nbytes)
    if len(v) != 2 * nbytes or any(c not in "0123456789abcdef" for c in v):
        raise WireError(f"{key!r} must be {2 * nbytes} lowercase hex characters")
    return bytes.fromhex(v)


def _list(d: Mapping[str, Any], key: str, max_len: int = MAX_NEIGHBOURS) -> list:
    v = _req(d, key)
    if not isinstance(v, list) or len(v) > max_len:
        raise WireError(f"{key!r} must be a list of at most {max_len} items")
    return v


def _indices(d: Mapping[str, Any], key: str) -> tuple[int, ...]:
    out = []
    for x in _list(d, key):
        if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < 2**16:
            raise WireError(f"{key!r} must list device indices 0-65535")
        out.append(x)
    if len(set(out)) != len(out):
        raise WireError(f"{key!r} lists an index twice")
    return tuple(out)


MAX_POLL_S = 60.0   # the longest wait between a device's polls, whatever either side's setting


def poll_wait(retry_after: Any) -> float:
    """Seconds between polls: `retry_after` within [MIN_RETRY_AFTER_S, MAX_POLL_S]. The
    coordinator sends it so; a device takes it so, since 0 (or a negative or NaN) would have it
    poll in a tight loop until the round's deadline, up to an hour."""
    try:
        wait = float(retry_after)
    except (TypeError, ValueError, OverflowError):
        return MIN_RETRY_AFTER_S
    return min(max(wait, MIN_RETRY_AFTER_S), MAX_POLL_S) if math.isfinite(wait) else MIN_RETRY_AFTER_S


def wait(phase: str, retry_after: float) -> dict[str, Any]:
    """The answer to a GET whose step is not ready yet."""
    return {"protocol_version": PROTOCOL_VERSION, "ready": False, "phase": phase, "retry_after": retry_after}


def is_ready(d: Mapping[str, Any]) -> bool:
    _check_version(d)
    return _bool(d, "ready")


@dataclass(frozen=True)
class SecAggKeys:
    enc_pk: bytes        # X25519 public key that share ciphertexts to this device are agreed with
    mask_pk: bytes       # X25519 public key that pairwise masks are agreed with

    def to_dict(self) -> dict[str, Any]:
        return {"protocol_version": PROTOCOL_VERSION, "enc_pk": self.enc_pk.hex(), "mask_pk": self.mask_pk.hex()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SecAggKeys:
        _check_version(d)
        return cls(enc_pk=_hex(d, "enc_pk", 32), mask_pk=_hex(d, "mask_pk", 32))


@dataclass(frozen=True)
class Neighbour:
    index: int
    enc_pk: bytes
    mask_pk: bytes


@dataclass(frozen=True)
class SecAggRoster:
    """The frozen cohort as one device needs it (SecAgg+: only its k neighbours)."""

    round_id: int
    index: int
    n: int
    k: int
    t: int
    n_min: int               # the coordinator aborts below this many survivors
    graph_seed: bytes
    dim: int
    scale: float
    mu: float                # this device's Skellam parameter
    neighbours: tuple[Neighbour, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"protocol_version": PROTOCOL_VERSION, "ready": True, "round_id": self.round_id,
                "index": self.index, "n": self.n, "k": self.k, "t": self.t, "n_min": self.n_min,
                "graph_seed": self.graph_seed.hex(), "dim": self.dim, "scale": self.scale, "mu": self.mu,
                "neighbours": [{"index": nb.index, "enc_pk": nb.enc_pk.hex(), "mask_pk": nb.mask_pk.hex()}
                               for nb in self.neighbours]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SecAggRoster:
        _check_version(d)
        nbs = tuple(Neighbour(_int(x, "index", lo=0, hi=2**16 - 1), _hex(x, "enc_pk", 32), _hex(x, "mask_pk", 32))
                    for x in _list(d, "neighbours"))
        r = cls(round_id=_int(d, "round_id", lo=1), index=_int(d, "index", lo=0), n=_int(d, "n", lo=2, hi=2**16),
                k=_int(d, "k", lo=1), t=_int(d, "t", lo=1), n_min=_int(d, "n_min", lo=1),
                graph_seed=_hex(d, "graph_seed", 32), dim=_int(d, "dim", lo=1, hi=2**28),
                scale=_float(d, "scale", lo=0.0), mu=_float(d, "mu", lo=0.0), neighbours=nbs)
        if not (r.index < r.n and r.k < r.n and r.t <= r.k and r.n_min <= r.n and r.scale > 0):
            raise WireError("inconsistent roster sizes")
        return r


@dataclass(frozen=True)
class SecAggShares:
    """Sender -> coordinator: one ciphertext per neighbour (recipient index -> bytes), and sha256 of
    the sender's self-mask seed, which a recovered seed must match: without it a survivor's forged
    share recovered another seed, and the round summed to noise under "done". A sha256 of 32
    random bytes tells nothing of them. Optional: devices of releases before 6 December 2026 send none."""

    shares: dict[int, bytes]
    seed_sha256: bytes | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"protocol_version": PROTOCOL_VERSION,
                "shares": [{"to": j, "ct": ct.hex()} for j, ct in sorted(self.shares.items())],
                **({"seed_sha256": self.seed_sha256.hex()} if self.seed_sha256 is not None else {})}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], ct_bytes: int) -> SecAggShares:
        _check_version(d)
        out = {}
        for x in _list(d, "shares"):
            j = _int(x, "to", lo=0, hi=2**16 - 1)
            if j in out:
                raise WireError("two shares for one recipient")
            out[j] = _hex(x, "ct", ct_bytes)
        return cls(out, _hex(d, "seed_sha256", 32) if d.get("seed_sha256") is not None else None)


@dataclass(frozen=True)
class SecAggInbox:
    """Coordinator -> recipient: the shares of every neighbour that took part (sender -> bytes)."""

    shares: dict[int, bytes]

    def to_dict(self) -> dict[str, Any]:
        return {"protocol_version": PROTOCOL_VERSION, "ready": True,
                "shares": [{"from": i, "ct": ct.hex()} for i, ct in sorted(self.shares.items())]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], ct_bytes: int) -> SecAggInbox:
        _check_version(d)
        out = {}
        for x in _list(d, "shares"):
            i = _int(x, "from", lo=0, hi=2**16 - 1)
            if i in out:
                raise WireError("two shares from one sender")
            out[i] = _hex(x, "ct", ct_bytes)
        return cls(out)


@dataclass(frozen=True)
class SecAggUnmaskRequest:
    """Coordinator -> device: of your neighbours, who sent a masked vector and who did not."""

    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    survivor_count: int          # in the whole cohort

    def to_dict(self) -> dict[str, Any]:
        return {"protocol_version": PROTOCOL_VERSION, "ready": True, "survivors": list(self.survivors),
                "dropped": list(self.dropped), "survivor_count": self.survivor_count}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SecAggUnmaskRequest:
        _check_version(d)
        return cls(survivors=_indices(d, "survivors"), dropped=_indices(d, "dropped"),
                   survivor_count=_int(d, "survivor_count", lo=0))


@dataclass(frozen=True)
class SecAggReveal:
    """Device -> coordinator: owner index -> its share, of self-mask seeds and of mask keys."""

    self_shares: dict[int, bytes]
    key_shares: dict[int, bytes]

    def to_dict(self) -> dict[str, Any]:
        return {"protocol_version": PROTOCOL_VERSION,
                "self_shares": [{"of": i, "share": s.hex()} for i, s in sorted(self.self_shares.items())],
                "key_shares": [{"of": i, "share": s.hex()} for i, s in sorted(self.key_shares.items())]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], share_bytes: int) -> SecAggReveal:
        _check_version(d)
        parts = []
        for key in ("self_shares", "key_shares"):
            out = {}
            for x in _list(d, key):
                i = _int(x, "of", lo=0, hi=2**16 - 1)
                if i in out:
                    raise WireError(f"{key!r} lists a device twice")
                out[i] = _hex(x, "share", share_bytes)
            parts.append(out)
        if set(parts[0]) & set(parts[1]):
            raise WireError("both kinds of shares for the same device")
        return cls(*parts)
