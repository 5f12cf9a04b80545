"""Canary cohort and the promote/reject decision, as pure functions.

The cohort is a stable hash of the device id, so the same devices stay canaries across
candidates and a device never flips between cohorts. The decision pools the canary reports
(sum of hits / sum of scored tokens) for candidate and stable.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from protocol.wire import VersionMetrics

PROMOTE, REJECT, WAIT = "promote", "reject", "wait"


def in_canary(device_id: str, fraction: float) -> bool:
    """True for a stable `fraction` of device ids (sha256 of the id as a uniform number)."""
    h = int.from_bytes(hashlib.sha256(device_id.encode()).digest()[:8], "big")
    return h / 2**64 < fraction


@dataclass(frozen=True)
class CanaryDecision:
    action: str                    # promote | reject | wait
    reason: str
    numbers: dict = field(default_factory=dict)


def _pool(metrics: Sequence[VersionMetrics]) -> dict[str, float]:
    count = sum(m.count for m in metrics)
    top1 = sum(m.top1 for m in metrics)
    top3 = sum(m.top3 for m in metrics)
    loss = sum(m.loss_sum for m in metrics)
    return {"count": count, "top1_acc": top1 / count if count else math.nan,
            "top3_acc": top3 / count if count else math.nan, "loss": loss / count if count else math.nan}


def decide(reports: Sequence[tuple[VersionMetrics, VersionMetrics]], *, min_reports: int,
           tolerance: float) -> CanaryDecision:
    """Given (candidate, stable) metrics per canary device, promote, reject or wait.

    Any non-finite value rejects at once (a broken candidate should roll back fast). Otherwise
    wait for `min_reports`, then promote iff candidate top-3 >= stable top-3 - tolerance.
    """
    if min_reports < 1 or tolerance < 0:
        raise ValueError("min_reports must be >= 1 and tolerance >= 0")
    for cand, stable in reports:
        values = (cand.loss_sum, cand.top1, cand.top3, cand.count,
                  stable.loss_sum, stable.top1, stable.top3, stable.count)
        if not all(math.isfinite(v) for v in values):
            return CanaryDecision(REJECT, "a canary device reported a non-finite metric", {"reports": len(reports)})
    c = _pool([r[0] for r in reports])
    s = _pool([r[1] for r in reports])
    numbers = {"reports": len(reports), "min_reports": min_reports, "tolerance": tolerance,
               "candidate": c, "stable": s}
    if len(reports) < min_reports:
        return CanaryDecision(WAIT, f"{len(reports)} of {min_reports} canary reports", numbers)
    if c["count"] <= 0 or s["count"] <= 0:
        return CanaryDecision(WAIT, "canary reports scored no tokens", numbers)
    diff = c["top3_acc"] - s["top3_acc"]
    numbers["top3_diff"] = diff
    if diff >= -tolerance - 1e-12:  # exactly at the tolerance passes, float rounding aside
        return CanaryDecision(PROMOTE, f"candidate top-3 {c['top3_acc']:.4f} vs stable {s['top3_acc']:.4f} "
                                       f"(diff {diff:+.4f} >= -{tolerance})", numbers)
    return CanaryDecision(REJECT, f"candidate top-3 {c['top3_acc']:.4f} worse than stable {s['top3_acc']:.4f} "
                                  f"by {-diff:.4f} > {tolerance}", numbers)
