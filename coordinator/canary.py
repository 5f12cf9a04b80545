"""Canary evaluation as server-issued tasks, and the decisions they feed.

A report is accepted only for a task this coordinator issued to that device for that
candidate (an `evaluations` row created at issue time with an empty report), once, and only
within the task's bounds (windows x sequence length scored tokens, `max_eval_words` words).
So an enrolled device cannot vote unasked, vote twice, or claim a billion tokens; the pure
decision in `rollout` then gives each device's difference the same weight.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from coordinator import deployment, enrollment, queries, rollout, versions
from coordinator.errors import ApiError, bad_request
from coordinator.models import Evaluation, Setting, Version, utcnow
from coordinator.views import _json_safe
from protocol import artifact, wire

if TYPE_CHECKING:
    from coordinator.service import Coordinator

log = logging.getLogger(__name__)
ISSUED = queries.EVALUATION_ISSUED
DECIDE_PENDING = "decide_pending"   # Setting: an unpin asked the service to decide the pending candidate
# Tasks out at once per report the decision waits for, and how long an unreported one holds its
# place. Handing tasks to the whole cohort wastes devices: at 5,000 devices ~250 canaries would
# evaluate two versions on their text for a decision taken on the first 5 reports.
TASKS_PER_REPORT = 2
TASK_LEASE = timedelta(minutes=10)


def _issued(s: Session, cand_id: str, device_id: str) -> Evaluation | None:
    return s.scalar(select(Evaluation).where(Evaluation.candidate_version_id == cand_id,
                                             Evaluation.device_id == device_id))


def evaluate_task(coord: Coordinator, s: Session, device_id: str, cand: Version, stable: Version,
                  retry_after: float) -> wire.Task | None:
    """The evaluate task for a canary device, issuing it (once per candidate) if needed; None
    once the device has reported, or while `TASKS_PER_REPORT` x `canary_min_reports` others
    are out."""
    row = _issued(s, cand.id, device_id)
    if row is None:
        if _outstanding(s, cand.id) >= TASKS_PER_REPORT * coord.config.canary_min_reports:
            return None   # enough canaries are at it; this one is asked if they fall short
        s.add(Evaluation(candidate_version_id=cand.id, device_id=device_id, report_json=ISSUED))
    elif row.report_json != ISSUED:
        return None
    elif row.created_at < utcnow() - TASK_LEASE:
        # Its place lapsed: the device is asked again (it may hold a report it could not deliver,
        # which it sends only when asked), and its lease starts anew, so it counts against the cap
        # again; uncounted, every lapsed task could come back on top of the cap.
        row.created_at = utcnow()
    c = coord.config
    return wire.Task(kind=wire.TaskKind.EVALUATE, retry_after=retry_after, use_version_id=cand.id,
                     use_channel=wire.Channel.CANARY, candidate_version_id=cand.id,
                     evaluate_version_ids=(cand.id, stable.id),
                     max_eval_examples=c.max_eval_examples, max_eval_words=c.max_eval_words)


def _outstanding(s: Session, cand_id: str) -> int:
    """Tasks of `cand_id` issued within `TASK_LEASE` and not reported yet. One that is never
    reported (the device left) stops counting after the lease, so the canary cannot stall on it;
    two check-ins at the same moment may both take the last place (a soft cap)."""
    return int(s.scalar(select(func.count()).select_from(Evaluation).where(
        Evaluation.candidate_version_id == cand_id, Evaluation.report_json == ISSUED,
        Evaluation.created_at >= utcnow() - TASK_LEASE)) or 0)


def _seq_len(v: Version) -> int:
    try:
        return artifact.Manifest.from_dict(json.loads(v.manifest_json)).architecture().model.seq_len
    except (artifact.ArtifactError, ValueError):
        return 1024  # imported before `checked_architecture` refused such manifests: a generous but finite bound


def _check_bounds(coord: Coordinator, cand: Version, report: wire.EvaluationReport) -> None:
    max_tokens = coord.config.max_eval_examples * _seq_len(cand)
    for m in report.results:
        if m.count > max_tokens:
            raise bad_request(f"{m.version_id}: count {m.count:g} exceeds the task's {max_tokens} tokens")
        if m.words > coord.config.max_eval_words:
            raise bad_request(f"{m.version_id}: {m.words} words exceed the task's {coord.config.max_eval_words}")


def report_evaluation(coord: Coordinator, device_id: str, report: wire.EvaluationReport) -> wire.EvaluationReceipt:
    with coord.tx(decides=True) as s:
        enrollment.still_authorized(s, device_id)   # revoked after this request's authentication
        cand, stable = queries.candidate(s), queries.stable(s)
        if cand is None or cand.id != report.candidate_version_id:
            raise ApiError(409, wire.E_NOT_EVALUATING, f"{report.candidate_version_id} is not in canary")
        row = _issued(s, cand.id, device_id)
        if row is None:
            raise ApiError(403, wire.E_FORBIDDEN, f"no evaluation task of {cand.id} was issued to this device")
        if not rollout.in_canary(device_id, coord.config.canary_fraction):   # the service restarted with less
            raise ApiError(403, wire.E_FORBIDDEN, f"this device is no longer in the canary cohort (canary_fraction "
                                                  f"is {coord.config.canary_fraction:g}): its report is not counted")
        if row.report_json != ISSUED:
            raise ApiError(409, wire.E_DUPLICATE, f"this device already reported on {cand.id}")
        by_id = {m.version_id: m for m in report.results}
        if cand.id not in by_id or stable.id not in by_id:
            raise bad_request(f"report must include metrics for {cand.id} and {stable.id}")
        if len(by_id) != len(report.results) or set(by_id) - {cand.id, stable.id}:   # stored, never read
            raise bad_request(f"report must hold metrics for {cand.id} and {stable.id} only, once each")
        _check_bounds(coord, cand, report)
        row.report_json = json.dumps(report.to_dict())
        s.flush()
        auto_decide(coord, s, cand, stable)
    return wire.EvaluationReceipt(candidate_version_id=report.candidate_version_id)


def ask_at_start(coord: Coordinator) -> None:
    """The service starts: the pending candidate is decided on the reports already in, with the
    settings it starts with. Restarted with a lower `canary_min_reports` after every canary had
    reported, it waited for good: decisions came only with a report or an unpin. An upsert: every
    gunicorn worker runs this as it starts."""
    with coord.tx() as s:
        if queries.candidate(s) is not None:
            s.execute(deployment.upsert(coord.engine)(Setting).values(key=DECIDE_PENDING, value="1")
                      .on_conflict_do_update(index_elements=[Setting.key], set_={"value": "1"}))


def decide_if_asked(coord: Coordinator) -> None:
    """Decide the pending candidate on the reports already in, once, when an unpin asked for it:
    while pinned a favoured candidate waits, and no further report may come to decide it (the
    scheduler opens no round while a candidate is pending). Only in the service, whose settings
    decide (an admin command's may differ); called from its maintenance."""
    if not coord.serving:
        return
    with coord._sessions() as s:   # every check-in runs this: a plain read first, the lock only when asked
        row = s.get(Setting, DECIDE_PENDING)
        if row is None or row.value != "1":
            return
    with coord.tx(decides=True) as s:
        row = s.get(Setting, DECIDE_PENDING, with_for_update=True)   # one worker decides
        if row is None or row.value != "1":
            return
        row.value = "0"
        cand, stable = queries.candidate(s), queries.stable(s)
        if cand is not None and stable is not None:
            auto_decide(coord, s, cand, stable)


def canary_reports(s: Session, cand: Version, stable_id: str) -> list[tuple[wire.VersionMetrics, ...]]:
    out = []
    for eid, rj in s.execute(select(Evaluation.id, Evaluation.report_json).where(
            Evaluation.candidate_version_id == cand.id, Evaluation.report_json != ISSUED)):
        try:
            rep = wire.EvaluationReport.from_dict(json.loads(rj))
        except (ValueError, wire.WireError) as e:   # stored by an older release, refused by this one's
            log.warning("canary report %s is left out: %s", eid, e)   # wire (a token count of 1e-296)
            continue
        by_id = {m.version_id: m for m in rep.results}
        if stable_id in by_id:  # reports against an older stable do not count
            out.append((by_id[cand.id], by_id[stable_id]))
    return out


def verdict(coord: Coordinator, s: Session, cand: Version, stable: Version) -> rollout.CanaryDecision:
    """What the canary says of `cand` against `stable` now, with its numbers."""
    return rollout.decide(canary_reports(s, cand, stable.id), min_reports=coord.config.canary_min_reports,
                          tolerance=coord.config.canary_tolerance)


def never_decides(coord: Coordinator, s: Session, d: rollout.CanaryDecision) -> str | None:
    """Why a waiting canary can never decide, or None. With a cohort smaller than
    `canary_min_reports` the candidate waits for ever, the scheduler opens no round meanwhile,
    and the dashboard's "2 of 5 canary devices scored words" reads as progress."""
    if d.action != rollout.WAIT:
        return None
    needed = coord.config.canary_min_reports
    if (cohort := queries.short_cohort(s, coord.config.canary_fraction, needed)) is None:
        return None
    return (f"can never decide: the canary cohort has {cohort} enrolled devices (canary_fraction "
            f"{coord.config.canary_fraction:g}), fewer than canary_min_reports {needed}; lower it, raise "
            "canary_fraction, enroll devices, or promote or reject the candidate by hand")


_SAID_NEVER: set[str] = set()   # candidates whose stuck canary this process has logged


def _say_stuck(candidate_id: str, why: str) -> None:
    if candidate_id not in _SAID_NEVER:
        _SAID_NEVER.add(candidate_id)
        log.warning("candidate %s: %s", candidate_id, why)


def canary_comparison(coord: Coordinator) -> dict[str, Any]:
    with coord._sessions() as s:
        cand, stable = queries.candidate(s), queries.stable(s)
        if cand is None or stable is None:
            return {"candidate_version_id": None, "stable_version_id": stable.id if stable else None}
        d = verdict(coord, s, cand, stable)
        if (stuck := never_decides(coord, s, d)) is not None:
            _say_stuck(cand.id, stuck)
        return {"candidate_version_id": cand.id, "stable_version_id": stable.id, "would": d.action,
                "reason": f"{d.reason}; {stuck}" if stuck else d.reason, "never_decides": stuck is not None,
                "numbers": _json_safe(d.numbers), "pinned": queries.pinned(s)}


def auto_decide(coord: Coordinator, s: Session, cand: Version, stable: Version) -> None:
    d = verdict(coord, s, cand, stable)
    if d.action == rollout.WAIT:
        if cand.id not in _SAID_NEVER and (stuck := never_decides(coord, s, d)) is not None:
            _say_stuck(cand.id, stuck)
        return
    if d.action == rollout.PROMOTE and queries.pinned(s):
        return
    versions.apply_decision(coord, s, cand, d.action, "auto", d.reason, d.numbers)
