"""The device's own privacy floor and ε ledger: it does not take the coordinator's word.

A coordinator is trusted with noised updates, never with text. A hostile or broken one could
send a plan with no noise, a huge clip bound and many epochs and get back a memorised update
whose embedding rows decode to what was typed. So before training, the device checks the plan
against a floor from its *local* config (`PlanFloor`) and against its own ledger of every
update it has released (`PrivacyLedger`), and refuses plans outside either.

Accounting. Against the coordinator there is no amplification by sampling: it sees each
device's update. Each release is a Gaussian mechanism with L2 sensitivity C (the clip) and
noise std σ·C, i.e. μ = 1/σ Gaussian differential privacy; k releases compose exactly to
μ = sqrt(Σ 1/σ_i²) (Dong, Roth & Su 2019), and μ-GDP converts to (ε, δ) exactly by the
analytic Gaussian formula δ(ε) = Φ(-ε/μ + μ/2) - e^ε Φ(-ε/μ - μ/2) (Balle & Wang 2018).
Hand-written (a few lines of `math`) because this full-participation case has that closed
form and `dp-accounting` would put scipy on every device; tests check it against
`dp-accounting`'s PLD accountant. The figure is exact, so it is at most the coordinator's
RDP-based `epsilon_local` for the same rounds. In a secure-aggregation round the device adds
no Gaussian noise of its own; the plan's `noise_multiplier` is then the std of the (Skellam)
noise on the sum, which is all the coordinator sees once at least n_min devices survive (the
device refuses to reveal shares below that), so the release is charged at the same σ and the
floor applies to it unchanged; the entry is marked `secure_aggregation`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge_runtime.errors import EdgeError
from edge_runtime.paths import EVALUATIONS_FILE, LEDGER_FILE
from protocol.artifact import atomic_write
from protocol.plan import DEVICE_DEFAULT_FLOOR, TrainPlan, floor_breaches, number
from protocol.wire import Task

log = logging.getLogger(__name__)



class LedgerError(EdgeError, RuntimeError):
    """The ledger file is unreadable: the device cannot know what it spent, so it trains no more."""


@dataclass(frozen=True)
class PlanFloor:
    """Limits a plan must respect whatever the coordinator says (from EdgeConfig)."""

    min_noise_multiplier: float = DEVICE_DEFAULT_FLOOR["min_noise_multiplier"]
    max_clip_norm: float = DEVICE_DEFAULT_FLOOR["max_clip_norm"]
    max_epochs: int = DEVICE_DEFAULT_FLOOR["max_epochs"]
    max_examples: int = DEVICE_DEFAULT_FLOOR["max_examples"]

    @classmethod
    def from_config(cls, config: Any) -> PlanFloor:
        return cls(min_noise_multiplier=config.min_noise_multiplier, max_clip_norm=config.max_clip_norm,
                   max_epochs=config.max_epochs, max_examples=config.max_train_examples)

    def refusal(self, plan: TrainPlan) -> str | None:
        """Why `plan` is outside the floor (one line), or None if it is inside."""
        breaches = floor_breaches(plan.to_dict(), asdict(self))
        if not breaches:
            return None
        name, value, side, limit = breaches[0]
        bound = "minimum" if side == "below" else "maximum"
        return f"{name} {number(value)} {side} this device's {bound} {number(limit)}"


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _gdp_delta(eps: float, mu: float) -> float:
    a = _phi(-eps / mu + mu / 2)
    b = _phi(-eps / mu - mu / 2)
    return a - (math.exp(eps + math.log(b)) if b > 0 else 0.0)


def gaussian_epsilon(noise_multipliers: Sequence[float], delta: float) -> float:
    """ε at `delta` after one full-participation Gaussian release per entry (any σ=0: inf)."""
    if not 0 < delta < 1:
        raise ValueError("delta must be in (0, 1)")
    if not noise_multipliers:
        return 0.0
    if any(s <= 0 or s * s == 0 for s in noise_multipliers):   # (s * s underflows under 1e-162)
        return math.inf
    mu = math.sqrt(sum(1.0 / (s * s) for s in noise_multipliers))
    if _gdp_delta(0.0, mu) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while _gdp_delta(hi, mu) > delta:
        lo, hi = hi, hi * 2
        if hi > 1e7:
            return math.inf
    for _ in range(200):  # bisection: δ(ε) decreases in ε
        mid = (lo + hi) / 2
        if _gdp_delta(mid, mu) > delta:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-9 * max(1.0, hi):
            break
    return hi


class PrivacyLedger:
    """Every update this device released, in `<data_dir>/privacy_ledger.json` (fsynced).

    An entry is written *before* the update leaves the device, so a crash or a lost reply can
    only over-count. Entries hold round ids, σ and times: never text.
    """

    def __init__(self, data_dir: str | os.PathLike, *, budget: float, delta: float) -> None:
        self.path = Path(data_dir) / LEDGER_FILE
        self.budget, self.delta = budget, delta

    def entries(self) -> list[dict[str, Any]]:
        def check(d: dict[str, Any]) -> list[dict[str, Any]]:
            entries = d["releases"]
            if not isinstance(entries, list) or not all(
                    isinstance(e, dict) and isinstance(e.get("noise_multiplier"), (int, float)) for e in entries):
                raise ValueError("bad entries")
            # One flipped bit in a σ ("2.0" -> "6.0") kept the file valid JSON and lowered the epsilon
            # spent (2.25 read as 0.69); a file written before the checksum has none and is read as is.
            if "sha256" in d and d["sha256"] != _digest(entries):
                raise ValueError("checksum differs")
            return entries

        return _read_entries(self.path, check, "refusing to train")

    def spent(self) -> float:
        return gaussian_epsilon([float(e["noise_multiplier"]) for e in self.entries()], self.delta)

    def refusal(self, plan: TrainPlan) -> str | None:
        """Why training under `plan` would overspend the local budget, or None."""
        after = gaussian_epsilon([float(e["noise_multiplier"]) for e in self.entries()] + [plan.noise_multiplier],
                                 self.delta)
        if after > self.budget:
            return f"local privacy budget: epsilon would reach {after:.3g} > {self.budget:g} (delta {self.delta:g})"
        return None

    def charge(self, plan: TrainPlan, *, base_version_id: str | None = None) -> float:
        """Record one release under `plan` (trained from `base_version_id`, when given, and its
        `round_key`: a round id alone repeats after the coordinator is restored from a backup);
        returns ε spent so far, including it."""
        entries = self.entries()
        entries.append({"round_id": plan.round_id, "noise_multiplier": plan.noise_multiplier,
                        "clip_norm": plan.clip_norm, "at": round(time.time()),
                        **({"base_version_id": base_version_id} if base_version_id else {}),
                        **({"round_key": plan.round_key} if plan.round_key else {}),
                        **({"secure_aggregation": True} if plan.secure_aggregation else {})})
        atomic_write(self.path, json.dumps({"delta": self.delta, "releases": entries, "sha256": _digest(entries)},
                                           indent=1).encode())
        eps = gaussian_epsilon([float(e["noise_multiplier"]) for e in entries], self.delta)
        log.info("privacy ledger: %d releases, local epsilon %.3g of budget %g", len(entries), eps, self.budget)
        return eps


def _read_entries(path: Path, check: Callable[[dict[str, Any]], list[dict[str, Any]]],
                  refusing: str) -> list[dict[str, Any]]:
    """`check` of the JSON object in `path` (its entries, or ValueError/KeyError/TypeError), []
    when there is no file; an unreadable or damaged file is a LedgerError: the device cannot know
    what it released or answered, so it does no more of it."""
    try:
        return check(json.loads(path.read_text()))
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LedgerError(f"{path} is damaged ({e.__class__.__name__}); {refusing}") from e


def _digest(entries: list[dict[str, Any]]) -> str:
    """sha256 of the releases' canonical JSON."""
    return hashlib.sha256(json.dumps(entries, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


DAY_S = 86_400.0
# Entries kept: a candidate is answered once however long ago (with the newest 1,000 only, a
# candidate answered 21 days before at the default 48 a day could be asked and answered again).
# 100,000 entries of a version id and a time are about 6 MB: 5.7 years at 48 a day.
KEPT_EVALUATIONS = 100_000


class EvaluationRecord:
    """The canary candidates this device evaluated, in `<data_dir>/evaluations.json`.

    A canary report is exact counts over the device's held-out text, outside the ε ledger
    (docs/privacy.md, "Canary evaluations are not noised"): a version can be built to ask a
    question of that text. The coordinator issues one evaluation per candidate and device, but
    a device that took its word for it could be made to answer the same questions again, and for
    four crafted versions per task. So the device answers each candidate once (recorded
    before its report goes, so a lost reply cannot buy a second answer), for the candidate and one
    other version at most, and at most `per_day` candidates in 24 hours. The report itself is kept
    until the coordinator asks about another candidate (`pending`, `asked_about`), also once
    delivered: asked again after a report lost in transit, or by a coordinator restored from a
    backup taken before it arrived, the device sends the same counts again, which tell nothing
    new, instead of leaving the canary a report short (after a restore, one short for each such
    device, and a small cohort's candidate never decided). Refused for good, or scored on text
    wiped since, it goes (`drop`). Entries hold version ids, times and those counts: never text."""

    def __init__(self, data_dir: str | os.PathLike, *, per_day: float) -> None:
        self.path = Path(data_dir) / EVALUATIONS_FILE
        self.per_day = per_day

    def entries(self) -> list[dict[str, Any]]:
        def check(d: dict[str, Any]) -> list[dict[str, Any]]:
            entries = d["evaluated"]
            if not isinstance(entries, list) or not all(
                    isinstance(e, dict) and isinstance(e.get("candidate"), str)
                    and isinstance(e.get("at"), (int, float)) for e in entries):
                raise ValueError("bad entries")
            return entries

        return _read_entries(self.path, check, "refusing to evaluate")

    def refusal(self, task: Task, now: float | None = None) -> str | None:
        """Why the device does not answer this evaluate task, or None."""
        cand, ids = task.candidate_version_id, task.evaluate_version_ids
        if cand not in ids or len(ids) > 2 or len(set(ids)) != len(ids):
            return (f"an evaluation names the candidate and at most one other version, once each; this one names "
                    f"{len(ids)}")
        entries = self.entries()
        if _answered(entries, cand):
            return f"{cand} was evaluated on this device already"
        recent = _answered_today(entries, now)
        if recent >= self.per_day:
            return f"{recent} evaluations in the last 24 hours, the most this device answers (max_evaluations_per_day)"
        return None

    def can_answer(self, now: float | None = None) -> bool:
        """Whether an evaluate task could get an answer now: a report kept for its resend, or a
        candidate under today's cap. The check-in says so (`can_evaluate`): at the cap the
        coordinator handed this device the candidate's task at every check-in, which it refused."""
        try:
            entries = self.entries()
        except LedgerError:   # it cannot tell what it answered: it answers nothing
            return False
        if any(isinstance(e.get("report"), dict) and not e.get("delivered") for e in entries):
            return True
        return _answered_today(entries, now) < self.per_day

    def answered(self, candidate: str) -> bool:
        """Whether this device answered `candidate` (False when it cannot tell)."""
        try:
            return _answered(self.entries(), candidate)
        except LedgerError:
            return False

    def record(self, candidate: str, now: float | None = None, report: dict[str, Any] | None = None,
               wipe_mark: str | None = None) -> None:
        """`candidate` answered (before its `report` goes; the report kept until `delivered`, with
        the text cache's `wipe_mark` it was scored under)."""
        entries = self.entries()[-(KEPT_EVALUATIONS - 1):]
        entry: dict[str, Any] = {"candidate": candidate, "at": round(time.time() if now is None else now, 3)}
        if report is not None:
            entry |= {"report": report, "wipe_mark": wipe_mark}
        entries.append(entry)
        self._write(entries)

    def pending(self, task: Task) -> tuple[dict[str, Any], str | None] | None:
        """The report this device made for `task`'s candidate and did not see delivered, and the
        wipe mark it was scored under, when the task names the same versions: the answer to send
        again. None otherwise (a damaged entry too: then `refusal` says the candidate was answered)."""
        for e in self.entries():
            report = e.get("report")
            if e["candidate"] != task.candidate_version_id or not isinstance(report, dict):
                continue
            results = report.get("results")
            ids = [r.get("version_id") for r in results if isinstance(r, dict)] if isinstance(results, list) else []
            mark = e.get("wipe_mark")
            if sorted(ids) != sorted(task.evaluate_version_ids) or not (mark is None or isinstance(mark, str)):
                return None
            return report, mark
        return None

    def delivered(self, candidate: str) -> None:
        """The coordinator has `candidate`'s report: kept for a coordinator that asks again (one
        restored from a backup), but no reason to say at the daily cap that it can answer."""
        entries = self.entries()
        if any("report" in e and not e.get("delivered") for e in entries if e["candidate"] == candidate):
            self._write([e | {"delivered": True} if e["candidate"] == candidate and "report" in e else e
                         for e in entries])

    def drop(self, candidate: str) -> None:
        """`candidate`'s report is never to be sent (refused for good, unreadable, or scored on
        text wiped since): not kept."""
        self._drop_reports(lambda e: e["candidate"] == candidate)

    def asked_about(self, candidate: str) -> None:
        """The coordinator asks about `candidate`, and it asks only about the candidate it is
        deciding: a report kept for another one will not be asked for again, so it is not kept.
        Kept, it said at the daily cap that the device could answer (`can_answer`), and the
        device was handed tasks it refused at every check-in."""
        self._drop_reports(lambda e: e["candidate"] != candidate)

    def _drop_reports(self, which: Callable[[dict[str, Any]], bool]) -> None:
        """Remove the kept report (and its delivered mark) of each entry `which` selects; the file
        is written only if one had a report."""
        entries = self.entries()
        if any("report" in e for e in entries if which(e)):
            self._write([{k: v for k, v in e.items() if k not in ("report", "delivered")} if which(e) else e
                         for e in entries])

    def _write(self, entries: list[dict[str, Any]]) -> None:
        atomic_write(self.path, json.dumps({"evaluated": entries}, indent=1).encode())


def _answered(entries: list[dict[str, Any]], candidate: str) -> bool:
    """Whether an `EvaluationRecord`'s entries hold `candidate` (answered once, never again)."""
    return any(e["candidate"] == candidate for e in entries)


def _answered_today(entries: list[dict[str, Any]], now: float | None) -> int:
    """How many of an `EvaluationRecord`'s entries were answered in the 24 hours before `now`."""
    now = time.time() if now is None else now
    return sum(now - DAY_S < e["at"] <= now for e in entries)
