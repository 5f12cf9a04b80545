"""Central epsilon of secure rounds with distributed Skellam noise (the coordinator sees only the sum).

Two numbers, both from `dp-accounting`:

* against the coordinator (it knows who took part: no amplification by sampling) — the exact
  RDP of the multi-dimensional Skellam mechanism (Agarwal, Kairouz, Liu, NeurIPS 2021):

      eps(alpha) <= alpha D2^2 / (4 mu) + min( ((2 alpha - 1) D2^2 + 6 D1) / (16 mu^2), 3 D1 / (4 mu) )

  for a sum carrying Skellam(mu) per coordinate (variance 2 mu), L2/L1 sensitivities D2, D1;
  composed over rounds and converted with dp_accounting's RDP -> (eps, delta) conversion.
* against observers of released models, with Poisson-sampling amplification — dp-accounting's
  sampled Gaussian at the same variance (central noise multiplier z = sqrt(2 mu) / D2). This is
  an approximation: there is no sampled-Skellam event in dp-accounting; `skellam_vs_gaussian`
  shows how small the Skellam correction term is at our parameters (it vanishes as mu grows).

The version record (coordinator.privacy.summarize) uses the Gaussian form for both numbers, so
plain and secure rounds compose in one history; this module is what the docs' table uses to
show the exact Skellam value agrees.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from coordinator.privacy import ORDERS, RoundPrivacy, epsilon
from protocol import ddp


def skellam_rdp(mu: float, d1: float, d2: float, orders: Sequence[int] = ORDERS) -> list[float]:
    """RDP of one release of the sum with Skellam(mu) noise per coordinate."""
    if mu <= 0:
        return [math.inf for _ in orders]
    return [a * d2 * d2 / (4 * mu) + min(((2 * a - 1) * d2 * d2 + 6 * d1) / (16 * mu * mu), 3 * d1 / (4 * mu))
            for a in orders]


def central_epsilon_exact(rounds: int, mu: float, d1: float, d2: float, delta: float) -> float:
    """Epsilon against the coordinator after `rounds` secure rounds (no sampling amplification)."""
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    per = skellam_rdp(mu, d1, d2)
    if any(math.isinf(x) for x in per):
        return math.inf
    eps, _ = rdp.compute_epsilon(list(ORDERS), [rounds * x for x in per], delta)
    return float(eps)


def central_epsilon(rounds: int, noise_multiplier: float, delta: float, sampling_rate: float = 1.0) -> float:
    """Gaussian-RDP epsilon at central noise multiplier z (sampled when sampling_rate < 1)."""
    return epsilon([RoundPrivacy(sampling_rate, noise_multiplier)] * rounds, delta)


def skellam_vs_gaussian(noise_multiplier: float, scale: float, clip_norm: float, dim: int, rounds: int,
                        delta: float) -> tuple[float, float]:
    """(exact Skellam epsilon, Gaussian epsilon) against the coordinator, same variance."""
    d2, d1 = ddp.sensitivity_l2(scale, clip_norm, dim), ddp.sensitivity_l1(scale, clip_norm, dim)
    mu_sum = (noise_multiplier * d2) ** 2 / 2
    return (central_epsilon_exact(rounds, mu_sum, d1, d2, delta),
            central_epsilon(rounds, noise_multiplier, delta))
