"""Checks an uploaded update against the manifest and the round's plan (pure, no I/O).

An update is the clipped, noised weight delta: names, shapes and dtype must match the
manifest and the declared encoding, every value must be finite, and its L2 norm may exceed
the clip bound only by what the Gaussian noise can plausibly add.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from coordinator.errors import CoordinatorError
from protocol import wire
from protocol.artifact import ArtifactError, TensorSpec, check_weights, flatten

NOISE_SLACK_SIGMAS = 6.0   # P(||z|| > sigma*C*(sqrt(d) + 6)) <= exp(-18): honest devices never trip it
FLOAT16_REL_TOL = 1e-3     # float16 rounding (2^-11 relative per value) on top of the bound


class UpdateRejected(CoordinatorError, ValueError):
    """An update failed validation; `code` is a wire E_* code the device can act on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


MAX_SAFETENSORS_HEADER_BYTES = 64 * 1024   # a few tensors' names, dtypes, shapes: ~1 kB in practice


def check_header_size(body: bytes) -> None:
    """Refuse a safetensors body whose JSON header is implausibly large *before* parsing it (a
    61 MB header of 950k empty tensors took 36 s and 1.9 GB to reject after parsing)."""
    if len(body) < 8:
        raise UpdateRejected(wire.E_MALFORMED, "body is shorter than a safetensors header")
    n = int.from_bytes(body[:8], "little")
    if n > MAX_SAFETENSORS_HEADER_BYTES:
        raise UpdateRejected(wire.E_MALFORMED, f"safetensors header of {n} bytes; at most "
                                               f"{MAX_SAFETENSORS_HEADER_BYTES} accepted")


def norm_bound(clip_norm: float, noise_multiplier: float, num_params: int) -> float:
    """Largest L2 norm an honest clipped-and-noised update can plausibly have."""
    noise = noise_multiplier * clip_norm * (math.sqrt(num_params) + NOISE_SLACK_SIGMAS)
    return (clip_norm + noise) * (1 + FLOAT16_REL_TOL)


def validate_update(weights: Mapping[str, np.ndarray], tensors: list[TensorSpec], *, encoding: str,
                    example_count: int, plan: wire.TrainPlan) -> tuple[np.ndarray, float]:
    """Return the update as one float32 vector in manifest order and its L2 norm, or raise."""
    if plan.secure_aggregation:   # an individual update must never be stored in a secure round
        raise UpdateRejected(wire.E_BAD_REQUEST, f"round {plan.round_id} uses secure aggregation: "
                                                 "send a masked vector to /v1/secagg, not an update")
    if not 1 <= example_count <= plan.max_examples:
        raise UpdateRejected(wire.E_EXAMPLE_COUNT,
                             f"example_count {example_count} outside [1, {plan.max_examples}]")
    try:
        check_weights(weights, tensors, dtypes=(encoding,))
    except ArtifactError as e:
        raise UpdateRejected(wire.E_MALFORMED, str(e)) from e
    vector = flatten(weights, tensors)
    norm = float(np.linalg.norm(vector.astype(np.float64)))
    bound = norm_bound(plan.clip_norm, plan.noise_multiplier, vector.size)
    if not norm <= bound:
        raise UpdateRejected(wire.E_NORM, f"L2 norm {norm:.4g} exceeds bound {bound:.4g} "
                                          f"(clip {plan.clip_norm}, noise multiplier {plan.noise_multiplier})")
    return vector, norm
