"""Streaming weighted federated averaging and the server optimizers, as pure functions.

The mean is accumulated one update at a time in a single float64 vector, so aggregating N
updates needs O(model) memory, not O(N x model). The server optimizers treat the averaged
client delta as a pseudo-gradient (Reddi et al. 2021, "Adaptive Federated Optimization").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def bounded_weight(example_count: int, cap: int) -> float:
    """Weight of one update: its example count, capped so no single device dominates."""
    if example_count < 1:
        raise ValueError(f"example_count must be >= 1, got {example_count}")
    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    return float(min(example_count, cap))


class StreamingMean:
    """Weighted mean of equally sized vectors seen one at a time (float64 accumulator)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self._sum = np.zeros(size, dtype=np.float64)
        self._scratch = np.empty(size, dtype=np.float64)  # reused: no allocation per update
        self.total_weight = 0.0
        self.count = 0

    def add(self, vector: np.ndarray, weight: float) -> None:
        if vector.shape != self._sum.shape:
            raise ValueError(f"vector has shape {vector.shape}, expected {self._sum.shape}")
        if not weight > 0:
            raise ValueError(f"weight must be > 0, got {weight}")
        np.multiply(vector, weight, out=self._scratch)
        self._sum += self._scratch
        self.total_weight += weight
        self.count += 1

    def mean(self) -> np.ndarray:
        if self.count == 0:
            raise ValueError("no updates to average")
        return (self._sum / self.total_weight).astype(np.float32)


def weighted_average(updates: Iterable[tuple[np.ndarray, float]]) -> np.ndarray:
    """Weighted mean of `(vector, weight)` pairs; `updates` may be a generator (streamed)."""
    acc: StreamingMean | None = None
    for vector, weight in updates:
        if acc is None:
            acc = StreamingMean(vector.size)
        acc.add(vector.ravel(), weight)
    if acc is None:
        raise ValueError("no updates to average")
    return acc.mean()


# --- Server optimizers: (weights, mean delta, state) -> (new weights, new state) ---------------

def fedavg(weights: np.ndarray, delta: np.ndarray, *, lr: float = 1.0) -> np.ndarray:
    """Plain FedAvg: move by the averaged client delta (lr=1 is McMahan et al. 2017)."""
    return (weights + lr * delta).astype(np.float32)


def fedavgm(weights: np.ndarray, delta: np.ndarray, momentum_buf: np.ndarray | None, *,
            lr: float = 1.0, momentum: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """FedAvg with server momentum (Hsu et al. 2019; Hard et al. 2018 used Nesterov-free 0.9)."""
    buf = delta.astype(np.float32) if momentum_buf is None else (momentum * momentum_buf + delta).astype(np.float32)
    return (weights + lr * buf).astype(np.float32), buf


def fedadam(weights: np.ndarray, delta: np.ndarray, m: np.ndarray | None, v: np.ndarray | None, *,
            lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99,
            eps: float = 1e-3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FedAdam (Reddi et al. 2021): Adam on the pseudo-gradient; eps is their tau."""
    m = np.zeros_like(delta) if m is None else m
    v = np.zeros_like(delta) if v is None else v
    m = (beta1 * m + (1 - beta1) * delta).astype(np.float32)
    v = (beta2 * v + (1 - beta2) * np.square(delta)).astype(np.float32)
    return (weights + lr * m / (np.sqrt(v) + eps)).astype(np.float32), m, v


SERVER_OPTIMIZERS = ("fedavg", "fedavgm", "fedadam")   # the settings' choices (coordinator.config)


def apply_server_optimizer(name: str, weights: np.ndarray, delta: np.ndarray, state: Mapping[str, np.ndarray], *,
                           lr: float, momentum: float = 0.9, beta1: float = 0.9, beta2: float = 0.99,
                           eps: float = 1e-3) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Dispatch by name; `state` holds the optimizer's vectors from the parent version."""
    if weights.shape != delta.shape:
        raise ValueError(f"weights {weights.shape} and delta {delta.shape} differ in shape")
    if name == "fedavg":
        return fedavg(weights, delta, lr=lr), {}
    if name == "fedavgm":
        new, buf = fedavgm(weights, delta, state.get("momentum"), lr=lr, momentum=momentum)
        return new, {"momentum": buf}
    if name == "fedadam":
        new, m, v = fedadam(weights, delta, state.get("m"), state.get("v"), lr=lr, beta1=beta1, beta2=beta2, eps=eps)
        return new, {"m": m, "v": v}
    raise ValueError(f"unknown server optimizer {name!r}")


# --- Robust aggregation -----------------------------------------------------------------------
# A device within the norm bound can still push the mean its way (k attackers at the clip bound
# move it by up to k*C/n). Coordinate-wise median and trimmed mean (Yin et al. 2018, "Byzantine-
# Robust Distributed Learning") bound what a minority can do per coordinate. They need every
# update at once: each is held as the float16 it arrived as (2 bytes a weight: 100 updates of
# the default model's 1.36M weights are 272 MB) and the statistic is taken over slices of
# `SLICE` coordinates. Stacked whole in float32 they would take 3 copies, 1.6 GB for 100.
# They weigh devices equally (example counts are ignored: an inflated count buys nothing).

AGGREGATORS = ("mean", "trimmed_mean", "median")
SLICE = 1 << 16   # coordinates a robust statistic is taken over at a time


def coordinate_median(vectors: np.ndarray) -> np.ndarray:
    """Per-coordinate median of the rows of `vectors` (n x d)."""
    return np.median(vectors, axis=0).astype(np.float32)


def coordinate_trimmed_mean(vectors: np.ndarray, trim: float) -> np.ndarray:
    """Per-coordinate mean after dropping the `trim` share of largest and of smallest values."""
    from scipy.stats import trim_mean

    if not 0 <= trim < 0.5:
        raise ValueError(f"trim must be in [0, 0.5), got {trim}")
    return np.asarray(trim_mean(vectors, trim, axis=0), dtype=np.float32)


def _compact(v: np.ndarray) -> np.ndarray:
    """`v` flat, as float16 when that holds it exactly (an update's wire form), else float32."""
    row = v.ravel().astype(np.float32, copy=False)
    with np.errstate(over="ignore"):
        half = row.astype(np.float16)
    return half if np.array_equal(half, row) else row.copy()


def aggregate(name: str, updates: Iterable[tuple[np.ndarray, float]], *, trim: float = 0.1) -> np.ndarray:
    """The round's delta from `(vector, weight)` pairs under aggregator `name`."""
    if name == "mean":
        return weighted_average(updates)
    if name not in AGGREGATORS:
        raise ValueError(f"aggregator must be one of {AGGREGATORS}, got {name!r}")
    if name == "trimmed_mean" and not 0 <= trim < 0.5:
        raise ValueError(f"trim must be in [0, 0.5), got {trim}")
    rows = [_compact(v) for v, _ in updates]
    if not rows:
        raise ValueError("no updates to aggregate")
    d = rows[0].size
    if any(r.size != d for r in rows):
        raise ValueError("updates differ in size")
    out = np.empty(d, dtype=np.float32)
    for j in range(0, d, SLICE):
        block = np.stack([r[j:j + SLICE] for r in rows]).astype(np.float32, copy=False)
        out[j:j + SLICE] = coordinate_median(block) if name == "median" else coordinate_trimmed_mean(block, trim)
    return out


# --- One round's server step: mean -> server optimizer -> finite check -> stats ---------------
# Pure: the round's glue (coordinator.rounds) reads the blobs, calls this, and writes the result.

@dataclass(frozen=True)
class RoundStep:
    """What a round's updates make of the base weights."""

    weights: np.ndarray | None       # new flat weights; None when not finite (the round fails)
    state: dict[str, np.ndarray]     # the server optimizer's state for the new version
    stats: dict[str, Any]            # updates, examples, mean_delta_norm, sampling_rate


def round_step(base: np.ndarray, mean_delta: np.ndarray, state: Mapping[str, np.ndarray],
               example_counts: Sequence[int], *, sampling_rate: float, optimizer: str, lr: float, momentum: float = 0.9,
               beta1: float = 0.9, beta2: float = 0.99, eps: float = 1e-3) -> RoundStep:
    """Apply the round's mean update with the server optimizer, refuse a non-finite result, and
    compute the round's numbers; `sampling_rate` is the round's q for privacy (queries.sampling_rate)."""
    new, new_state = apply_server_optimizer(optimizer, base, mean_delta, state, lr=lr, momentum=momentum,
                                            beta1=beta1, beta2=beta2, eps=eps)
    n = len(example_counts)
    stats = {"updates": n, "examples": int(sum(example_counts)), "mean_delta_norm": float(np.linalg.norm(mean_delta)),
             "sampling_rate": sampling_rate}
    if not np.all(np.isfinite(new)):
        return RoundStep(None, {}, stats)
    return RoundStep(new, new_state, stats)
