"""The update a device sends: its weight delta, clipped and noised, compactly encoded.

    delta = trained - base                 (flat float32, manifest order)
    delta *= min(1, C / ||delta||_2)        (bound any one device's influence: clip to C)
    delta += N(0, (noise_multiplier * C)^2 I)

Clipping plus Gaussian noise is what the coordinator's privacy accounting assumes (DP-FedAvg,
McMahan et al. 2018). The noise must be unpredictable to the coordinator: if it could
reproduce the noise it could subtract it. So it comes from ChaCha20 (via `cryptography`)
keyed with 32 bytes from `secrets` — a CSPRNG whose output cannot be predicted from earlier
output — rather than numpy's generators (PCG64/MT19937 are statistical PRNGs whose state
can be recovered from outputs; and an unseeded `np.random` call is one global, shared,
forkable state). Tests pass a fixed key for reproducibility.

Known limitation: floating-point Gaussian sampling is not an exact DP mechanism (Mironov,
CCS 2012, for the Laplace case); a discrete Gaussian would close that gap.

Encoding: float16 halves the upload. Its cost is measured (`relative_error`) on every update;
when it exceeds `max_rel_error` (tiny deltas fall into float16's subnormal range) the update
is sent as float32 instead, so the encoding is "float16 or better", never silently worse.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from protocol.artifact import (
    Manifest,
    TensorSpec,
    decode_weights,
    encode_weights,
    flatten,
    unflatten,
)

FLOAT16_MAX = float(np.finfo(np.float16).max)
DEFAULT_MAX_REL_ERROR = 1e-3


class NoiseSource:
    """Standard normal samples from a ChaCha20 keystream (Box-Muller on 53-bit uniforms)."""

    def __init__(self, key: bytes | None = None) -> None:
        if key is None:
            key = secrets.token_bytes(32)
        if len(key) != 32:
            raise ValueError("ChaCha20 needs a 32-byte key")
        # 16-byte nonce = 4-byte block counter + 12-byte nonce; a fresh key per source makes a
        # zero nonce safe. The encryptor keeps its position, so successive calls continue the stream.
        self._stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()

    def uniform(self, n: int) -> np.ndarray:
        """n uniforms in the open interval (0, 1), float64."""
        words = np.frombuffer(self._stream.update(bytes(8 * n)), dtype="<u8")
        return ((words >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53

    def normal(self, n: int) -> np.ndarray:
        """n independent N(0, 1) samples, float64."""
        m = (n + 1) // 2
        u1, u2 = self.uniform(m), self.uniform(m)
        r = np.sqrt(-2.0 * np.log(u1))
        z = np.concatenate([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)])
        return z[:n]


@dataclass(frozen=True)
class ClipResult:
    vector: np.ndarray
    norm: float          # L2 norm before clipping (local diagnostics only; never sent)
    clipped: bool


def weight_delta(trained: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray],
                 tensors: list[TensorSpec]) -> np.ndarray:
    """trained - base as one float32 vector in manifest order."""
    return flatten(trained, tensors) - flatten(base, tensors)


def clip_l2(vector: np.ndarray, clip_norm: float) -> ClipResult:
    """Scale `vector` down to L2 norm `clip_norm` if it is longer (never up)."""
    if clip_norm <= 0:
        raise ValueError(f"clip_norm must be > 0, got {clip_norm}")
    norm = float(np.linalg.norm(vector.astype(np.float64)))
    if not math.isfinite(norm):
        raise ValueError("delta contains NaN or Inf; refusing to build an update")
    if norm <= clip_norm:
        return ClipResult(vector.astype(np.float32), norm, False)
    return ClipResult((vector * (clip_norm / norm)).astype(np.float32), norm, True)


def add_noise(vector: np.ndarray, std: float, source: NoiseSource) -> np.ndarray:
    if std < 0:
        raise ValueError(f"noise std must be >= 0, got {std}")
    if std == 0:
        return vector.astype(np.float32)
    return (vector.astype(np.float64) + std * source.normal(vector.size)).astype(np.float32)


def privatize(delta: np.ndarray, clip_norm: float, noise_multiplier: float,
              source: NoiseSource | None = None) -> tuple[np.ndarray, ClipResult]:
    """Clip to `clip_norm`, then add N(0, (noise_multiplier * clip_norm)^2) per coordinate."""
    if noise_multiplier < 0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    c = clip_l2(delta, clip_norm)
    return add_noise(c.vector, noise_multiplier * clip_norm, source or NoiseSource()), c


def relative_error(original: np.ndarray, decoded: np.ndarray) -> float:
    """||original - decoded|| / ||original|| (0 for an all-zero original decoded exactly)."""
    o = original.astype(np.float64)
    diff = float(np.linalg.norm(o - decoded.astype(np.float64)))
    ref = float(np.linalg.norm(o))
    if ref == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / ref


def encode_delta(vector: np.ndarray, tensors: list[TensorSpec], encoding: str = "float16") -> bytes:
    """The delta as safetensors, one tensor per manifest entry, in `encoding`."""
    if encoding not in ("float16", "float32"):
        raise ValueError(f"unknown encoding {encoding!r}")
    return encode_weights(unflatten(vector.astype(np.float32), tensors), dtype=encoding)


def decode_delta(data: bytes, tensors: list[TensorSpec]) -> np.ndarray:
    """Inverse of encode_delta: one float32 vector in manifest order."""
    return flatten(decode_weights(data), tensors)


def encoding_error(vector: np.ndarray, tensors: list[TensorSpec], encoding: str = "float16") -> float:
    """Measured relative L2 error of sending `vector` in `encoding`."""
    return relative_error(vector, decode_delta(encode_delta(vector, tensors, encoding), tensors))


@dataclass(frozen=True)
class Update:
    """What is uploaded (delta, example_count, base_version_id, encoding) plus local diagnostics."""

    delta: bytes
    example_count: int
    base_version_id: str
    encoding: str
    rel_error: float          # measured cost of the encoding
    norm_before_clip: float   # diagnostics, not sent
    clipped: bool
    vector: np.ndarray | None = field(default=None, repr=False)   # the float delta; secure mode masks it


def build_update(trained: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray], manifest: Manifest, *,
                 example_count: int, clip_norm: float, noise_multiplier: float,
                 source: NoiseSource | None = None,
                 max_rel_error: float = DEFAULT_MAX_REL_ERROR) -> Update:
    """Delta from `base` (the version training started from), clipped, noised and encoded."""
    if example_count < 1:
        raise ValueError("an update needs at least one example")
    delta = weight_delta(trained, base, manifest.tensors)
    noised, clip = privatize(delta, clip_norm, noise_multiplier, source)
    data, encoding, err = b"", "float16", math.inf
    if float(np.max(np.abs(noised), initial=0.0)) < FLOAT16_MAX:
        data = encode_delta(noised, manifest.tensors, "float16")
        err = relative_error(noised, decode_delta(data, manifest.tensors))
    if err > max_rel_error:
        encoding = "float32"
        data = encode_delta(noised, manifest.tensors, "float32")
        err = 0.0  # float32 is the vector's own precision: exact
    return Update(delta=data, example_count=example_count, base_version_id=manifest.version_id,
                  encoding=encoding, rel_error=err, norm_before_clip=clip.norm, clipped=clip.clipped, vector=noised)
