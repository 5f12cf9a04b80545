"""Canary cohort and the promote/reject decision, as pure functions.

The cohort is a stable hash of the device id, so the same devices stay canaries across
candidates and a device never flips between cohorts. The decision is a robust pool of
per-device differences (median of word-level top-3, candidate minus stable): a device's
report counts once, whatever counts it claims.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from coordinator.states import VersionAction
from protocol.wire import VersionMetrics

PROMOTE, REJECT, WAIT = VersionAction.PROMOTE, VersionAction.REJECT, "wait"   # the canary's verdicts


def in_canary(device_id: str, fraction: float) -> bool:
    """True for a stable `fraction` of device ids (sha256 of the id as a uniform number)."""
    h = int.from_bytes(hashlib.sha256(device_id.encode()).digest()[:8], "big")
    return h / 2**64 < fraction


@dataclass(frozen=True)
class CanaryDecision:
    action: str                    # promote | reject | wait
    reason: str
    numbers: dict = field(default_factory=dict)


def device_difference(cand: VersionMetrics, stable: VersionMetrics) -> float:
    """One canary device's word-level top-3 difference, candidate minus stable (both scored words)."""
    return cand.word_top3 / cand.words - stable.word_top3 / stable.words


def _rates(metrics: Sequence[VersionMetrics]) -> dict[str, float]:
    """Per-device means (each device weighs the same, however much it typed), for display."""
    scored = [m for m in metrics if m.words > 0]
    piece = [m for m in metrics if m.count > 0]
    mean = lambda xs: statistics.fmean(xs) if xs else math.nan  # noqa: E731
    return {"devices": len(scored), "word_top3_acc": mean([m.word_top3 / m.words for m in scored]),
            "word_top1_acc": mean([m.word_top1 / m.words for m in scored]),
            "ksr": mean([m.saved / m.typed for m in scored if m.typed]),
            "top3_acc": mean([m.top3 / m.count for m in piece]), "loss": mean([m.loss_sum / m.count for m in piece])}


# A candidate whose next-token loss on the canaries' held-out text is this many times the stable
# version's (median over devices) is broken, whatever its strip's words measured: the keyboard's
# n-gram and the user's own words keep a random-weights LSTM's strip within one word of the
# stable one's over a canary's ~10 words, and such a candidate would be promoted (measured:
# loss 50.1 against 3.4, word top-3 6.7% against 19.2%). A round's honest candidate moves the
# loss by a few percent.
BROKEN_LOSS_RATIO = 1.5


def loss_ratio(cand: VersionMetrics, stable: VersionMetrics) -> float:
    """One canary device's next-token loss per token, candidate over stable."""
    return (cand.loss_sum / cand.count) / (stable.loss_sum / stable.count)


def trimmed_mean(values: Sequence[float], trim: float = 0.2) -> float:
    """Mean after dropping the `trim` share of values at each end (at least one kept)."""
    v = sorted(values)
    k = min(int(len(v) * trim), (len(v) - 1) // 2)
    return statistics.fmean(v[k:len(v) - k]) if v else math.nan


def decide(reports: Sequence[tuple[VersionMetrics, VersionMetrics]], *, min_reports: int,
           tolerance: float) -> CanaryDecision:
    """Given (candidate, stable) metrics per canary device, promote, reject or wait.

    A candidate whose median next-token loss is past `BROKEN_LOSS_RATIO` times the stable's is
    rejected first. Otherwise each device contributes one number, its word-level top-3
    difference, and the decision reads their median: no device outweighs another by claiming a
    large count, and fewer than half of the canaries cannot move the verdict past what the
    honest ones measured. Wait for `min_reports` devices that scored words, then promote iff
    median >= -bar, where the bar is `tolerance` but never less than one word of a canary's own
    text (the median over canaries of 1 / words scored): a device cannot tell a candidate one
    word worse from one that is equal, and with a 0.5-point tolerance over ~150 words a single
    flipped word rejected candidates held-out users saw as better (docs/quality.md).
    (Non-finite values never get here: the wire refuses them.)
    """
    if min_reports < 1 or tolerance < 0:
        raise ValueError("min_reports must be >= 1 and tolerance >= 0")
    scored = [(c, s) for c, s in reports if c.words > 0 and s.words > 0]   # no words scored: no vote
    diffs = [device_difference(c, s) for c, s in scored]
    numbers: dict = {"reports": len(reports), "devices_scored": len(diffs), "min_reports": min_reports,
                     "tolerance": tolerance, "candidate": _rates([r[0] for r in reports]),
                     "stable": _rates([r[1] for r in reports])}
    if len(diffs) < min_reports:
        return CanaryDecision(WAIT, f"{len(diffs)} of {min_reports} canary devices scored words", numbers)
    losses = [loss_ratio(c, s) for c, s in scored if c.count > 0 and s.count > 0 and s.loss_sum > 0]
    if losses:
        numbers["loss_ratio"] = statistics.median(losses)
        if numbers["loss_ratio"] > BROKEN_LOSS_RATIO:
            return CanaryDecision(REJECT, f"median per-device next-token loss {numbers['loss_ratio']:.2f} times the "
                                          f"stable version's (> {BROKEN_LOSS_RATIO:g}) over {len(losses)} devices: "
                                          "the model is broken", numbers)
    med = statistics.median(diffs)
    one_word = statistics.median(1 / min(c.words, s.words) for c, s in scored)
    bar = max(tolerance, one_word)
    numbers.update(word_top3_diff=med, trimmed_mean_diff=trimmed_mean(diffs), one_word=one_word, bar=bar,
                   devices_worse=sum(d < -bar for d in diffs))
    # A bar above the tolerance is said as what it is: the report read "-0.0067" against a
    # tolerance of 0.005 with nothing saying why.
    why = (f" (one word of a canary's {round(1 / one_word):,} scored words, above the tolerance {tolerance:g})"
           if one_word > tolerance else "")
    if med >= -bar - 1e-12:  # exactly at the bar passes, float rounding aside
        return CanaryDecision(PROMOTE, f"median per-device word top-3 difference {med:+.4f} >= -{bar:.4f}{why} "
                                       f"over {len(diffs)} devices", numbers)
    return CanaryDecision(REJECT, f"median per-device word top-3 difference {med:+.4f} < -{bar:.4f}{why} "
                                  f"over {len(diffs)} devices", numbers)
