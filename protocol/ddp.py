"""Distributed DP for secure aggregation: clipped float update -> integers in Z_2^32 + Skellam noise.

The coordinator sees only the sum, so the noise must be in the sum, added by the devices in
shares (Kairouz et al. 2021; Agarwal et al. 2021). We use the Skellam mechanism: Skellam(mu) =
Poisson(mu) - Poisson(mu) has variance 2 mu and the sum of independent Skellams is Skellam with
the summed mu, so n devices each adding Skellam(mu) put exactly Skellam(n mu) in the sum. (A sum
of discrete Gaussians is only approximately a discrete Gaussian; Skellam needs no correction.)

Pipeline on a device (clipped to L2 norm C first, as in plain mode):

    q = stochastic_round(s * x)            unbiased; |q_i - s x_i| < 1
    q += Skellam(mu) per coordinate        mu = (z * Delta2)^2 / (2 * n_min)
    y = q mod 2^32                         then masked (protocol.secagg)

Sensitivity of one device in the integer domain: Delta2 <= s C + sqrt(d) (triangle inequality
on the rounding), Delta1 <= min(Delta2^2, sqrt(d) Delta2). With at least n_min survivors
the sum carries Skellam variance >= (z Delta2)^2: central noise multiplier z.

The scale s is chosen so the signed sum cannot wrap: n (sC + 1) + 10 sqrt(n_max) sigma_sum
< 2^31, with a factor 2 to spare; 10 standard deviations of noise make a wrap a < 1e-20 event.
"""

from __future__ import annotations

import math
import secrets

import numpy as np

from protocol.secagg import RING_BITS

HALF_RING = 2 ** (RING_BITS - 1)


def sensitivity_l2(scale: float, clip_norm: float, d: int) -> float:
    """Delta2 of one device's rounded, scaled update."""
    return scale * clip_norm + math.sqrt(d)


def sensitivity_l1(scale: float, clip_norm: float, d: int) -> float:
    """Delta1 <= min(Delta2^2, sqrt(d) Delta2) for integer vectors."""
    d2 = sensitivity_l2(scale, clip_norm, d)
    return min(d2 * d2, math.sqrt(d) * d2)


# numpy's Poisson sampler is exact to here and drifts past it (std 4% high and tails 20 times
# too heavy at 3e14-1e15, measured on 400,000 draws), where a few devices with noise make the
# per-device Skellam parameter that large: a discovery round of 2 devices then "finds" words no
# device voted for (57 in one run). `choose_scale` keeps mu under this; a smaller scale costs only rounding
# (1/s per coordinate: 3e-7 at the smallest scale this gives).
MAX_SAMPLED_MU = 1e13


def choose_scale(clip_norm: float, n: int, noise_multiplier: float, d: int, n_min: int) -> float:
    """The largest scale s (halved for headroom) for which the sum of n devices cannot wrap the ring
    and each device's Skellam parameter stays where numpy samples it exactly (MAX_SAMPLED_MU).

    The noise on the sum has std z Delta2 * sqrt(n / n_min) when all n survive (each of them adds
    its share for the worst case of n_min survivors).
    """
    if clip_norm <= 0 or n < 1 or not 1 <= n_min <= n:
        raise ValueError("need clip_norm > 0 and 1 <= n_min <= n")
    z = noise_multiplier * math.sqrt(n / n_min)
    # n (sC + 1) + 10 z (sC + sqrt(d)) < HALF_RING / 2
    num = HALF_RING / 2 - n - 10 * z * math.sqrt(d)
    den = clip_norm * (n + 10 * z)
    if num <= 0:
        raise ValueError("the ring is too small for this cohort and noise")
    scale = num / den
    if noise_multiplier > 0:   # skellam_mu(z, s, C, d, n_min) <= MAX_SAMPLED_MU
        cap = (math.sqrt(2 * n_min * MAX_SAMPLED_MU) / noise_multiplier - math.sqrt(d)) / clip_norm
        if cap < 1:
            raise ValueError("the noise is too large for this ring and dimension")
        scale = min(scale, cap)
    return scale


def skellam_mu(noise_multiplier: float, scale: float, clip_norm: float, d: int, n_min: int) -> float:
    """Per-device Skellam parameter: n_min devices' shares give variance (z Delta2)^2."""
    d2 = sensitivity_l2(scale, clip_norm, d)
    return (noise_multiplier * d2) ** 2 / (2 * n_min)


def _rng(seed: int | None) -> np.random.Generator:
    """numpy's PCG64DXSM keyed with 128 bits from `secrets`.

    Why not the ChaCha20 stream of edge_runtime.update: Poisson sampling needs numpy's tested
    samplers (a hand-written Poisson sampler would be the risk), and numpy cannot take a ChaCha
    bit generator without another compiled package. The usual objection to PCG (its state can be
    recovered from its raw outputs) does not apply here: no one sees this noise alone, only
    summed with other devices' noise and updates, behind masks.
    """
    return np.random.Generator(np.random.PCG64DXSM(secrets.randbits(128) if seed is None else seed))


def stochastic_round(x: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    """int64 vector q with E[q] = scale * x and |q - scale * x| < 1 per coordinate."""
    v = np.asarray(x, np.float64) * scale
    lo = np.floor(v)
    return (lo + (rng.random(v.shape) < (v - lo))).astype(np.int64)


def skellam(mu: float, d: int, rng: np.random.Generator) -> np.ndarray:
    if mu < 0:
        raise ValueError("mu must be >= 0")
    if mu == 0:
        return np.zeros(d, np.int64)
    return rng.poisson(mu, d).astype(np.int64) - rng.poisson(mu, d).astype(np.int64)


def encode(x: np.ndarray, scale: float, mu: float, seed: int | None = None) -> np.ndarray:
    """A clipped float update as a noised element of Z_2^32 (uint32)."""
    rng = _rng(seed)
    q = stochastic_round(x, scale, rng) + skellam(mu, x.size, rng)
    return q.astype(np.uint32)  # two's complement wrap: q mod 2^32


def decode_sum(ring_sum: np.ndarray, scale: float, count: int) -> np.ndarray:
    """The mean update (float32) from the unmasked sum in Z_2^32 of `count` devices."""
    if count < 1:
        raise ValueError("no devices in the sum")
    signed = ring_sum.astype(np.uint32).view(np.int32).astype(np.float64)
    return (signed / (scale * count)).astype(np.float32)


def mean_error_bound(scale: float) -> float:
    """Worst case |decoded mean - true mean| per coordinate without noise: each device's
    rounding moves a coordinate by < 1/scale, so their average does too."""
    return 1.0 / scale


def mean_norm_bound(clip_norm: float, scale: float, mu: float, count: int, d: int) -> float:
    """An L2 norm the decoded mean of `count` honest devices' vectors stays under: each vector is
    clipped to `clip_norm` and rounded (< 1/scale per coordinate), and the sum's Skellam noise
    (variance 2 mu count per coordinate, scaled) has a norm that concentrates near its root mean
    square; twice that, plus six of one coordinate's deviations, leaves honest rounds far inside
    (tests/protocol/test_secagg_math.py). A masked vector of the right length but not made by
    `encode` (random bytes, NaN floats) reads as about 2^31 / (scale count) per coordinate, which
    `choose_scale`'s filling of the ring makes (count + 10 z) / count clip norms against the
    noise's z / count: several times outside, which the coordinator, seeing no vector alone, can
    still tell. It is no defence against a device that scales a well-formed vector to just inside."""
    if count < 1:
        raise ValueError("no devices in the sum")
    noise_coord = math.sqrt(2.0 * mu * count) / (scale * count)
    return clip_norm + math.sqrt(d) / scale + 2.0 * math.sqrt(d) * noise_coord + 6.0 * noise_coord
