"""The round state machine: open a round, close it at its goal or deadline, aggregate it.

A round is `open` until it has `goal_count` accepted updates (then it aggregates at once) or
its deadline passes (then it aggregates with at least `min_count`, or fails). Closing is lazy:
on device requests, admin calls and `tick`. The math of aggregation is
`aggregation.round_step`; this module reads the update blobs for it and writes its result as a
signed candidate version.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import secrets
import threading
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.orm import Session

from coordinator import (
    aggregation,
    canary,
    discovery,
    queries,
    retention,
    round_end,
    round_mean,
    schedule,
    secagg,
    versions,
    views,
)
from coordinator.config import round_values_fault
from coordinator.db import retryable, sqlstate
from coordinator.errors import ApiError, bad_request, not_found
from coordinator.models import Device, EnrollmentKey, Evaluation, Round, Version, utcnow
from coordinator.models_secagg import SecAggRound
from coordinator.states import RoundStatus, SecAggPhase
from protocol import artifact, wire
from protocol.artifact import sha256_bytes
from protocol.plan import PLAN_FIELD_NAMES, beyond_default_devices, check_plan_values

if TYPE_CHECKING:
    from coordinator.service import Coordinator

log = logging.getLogger(__name__)

# What start_round may override (the rest of a round's settings are the config's).
ROUND_SETTINGS = ("goal_count", "min_count", "overselect", "round_duration_s", "selection_window_s",
                  *PLAN_FIELD_NAMES)


def _typed(values: dict[str, Any], name: str, kind: type) -> Any:
    """A round setting of its type, as the plan's fields are checked: JSON `true` was taken as
    goal_count 1 (a one-device round, whose update is released alone), 2.9 as 2 and "3" as 3."""
    v = values[name]
    if isinstance(v, bool) or not isinstance(v, (int,) if kind is int else (int, float)):
        raise ValueError(f"'{name}' must be {'an integer' if kind is int else 'a number'}")
    return v


def start_round(coord: Coordinator, /, **overrides: Any) -> int:
    """Open a round on the stable version; overrides: goal_count, min_count, overselect,
    round_duration_s, selection_window_s and any TrainPlan field."""
    c = coord.config
    unknown = set(overrides) - set(ROUND_SETTINGS)
    if unknown:
        raise bad_request(f"unknown round settings {sorted(unknown)}")
    # A round that reached its goal but whose aggregation a crash interrupted must not block
    # the next one until some device happens to check in.
    coord._local.manual = True
    try:
        safe_maintenance(coord, wait=True)   # a round being averaged: its close ends before this one opens
    finally:
        coord._local.manual = False
    o = {k: getattr(c, k) for k in ROUND_SETTINGS} | {k: v for k, v in overrides.items() if v is not None}
    try:
        goal, min_count = (_typed(o, k, int) for k in ("goal_count", "min_count"))
        over, duration, window = (float(_typed(o, k, float)) for k in ("overselect", "round_duration_s",
                                                                       "selection_window_s"))
        if fault := round_values_fault(goal, min_count, over, duration, window):
            raise ValueError(fault)
        if min_count > goal:
            log.warning("min_count %d is above goal_count %d: the round uses %d", min_count, goal, goal)
            min_count = goal
        plan_values = check_plan_values({k: o[k] for k in PLAN_FIELD_NAMES})  # the one plan rule
        if plan_values["secure_aggregation"] and goal < 2:   # its cohort would freeze at one device
            raise ValueError("secure_aggregation needs goal_count >= 2: a sum of one device's update is that update")
        for why in beyond_default_devices(plan_values):   # allowed: a device may raise its own limits
            log.warning("round plan: %s; devices with default settings will refuse this round", why)
        if plan_values["secure_aggregation"] and c.aggregator != "mean":
            raise ValueError(f"secure_aggregation needs aggregator = mean (it is {c.aggregator})")
        with coord.tx(decides=True) as s:
            stable = queries.stable(s)
            if stable is None:
                raise ApiError(409, wire.E_CONFLICT, "no stable version: import one first")
            if queries.open_round(s) is not None:
                raise ApiError(409, wire.E_CONFLICT, "a round is already open")
            # An upload is at least 2 bytes a parameter (float16; a secure round's masked vector 4):
            # under the body limit every selected device would train, charge its privacy ledger and
            # be refused (413), with the round at 0 accepted until its deadline.
            secure = bool(plan_values["secure_aggregation"])
            smallest = (4 if secure else 2) * queries.manifest(stable).num_params
            if c.max_body_bytes < smallest:
                raise ValueError(f"max_body_bytes {c.max_body_bytes:,} is under the smallest update of {stable.id} "
                                 f"({smallest:,} bytes, {'a masked vector' if secure else 'float16'}): every device "
                                 "would spend its privacy on an upload refused as too large; raise max_body_bytes")
            if plan_values.get("discover_words") and not discovery.dictionary(coord, stable):
                raise ValueError(f"{stable.id} has no word-list words outside its softmax: nothing to discover")
            r = Round(base_version_id=stable.id, status=RoundStatus.OPEN, plan_json="{}", goal_count=goal,
                      max_selected=max(goal, math.ceil(goal * over)), min_count=min_count,
                      population=0,   # the devices in its check-in draw, set at the draw (selection)
                      deadline=utcnow() + timedelta(seconds=duration), reason="",
                      selection_ends_at=utcnow() + timedelta(seconds=window) if window > 0 else None)
            s.add(r)
            s.flush()
            plan = wire.TrainPlan(round_id=r.id, round_key=secrets.token_hex(8), **plan_values)
            r.plan_json = json.dumps(plan.to_dict())
            rid = r.id
    except (ValueError, TypeError, OverflowError) as e:   # OverflowError: int(1e999)
        if isinstance(e, ApiError):
            raise
        raise bad_request(f"invalid round settings: {e}") from e
    log.info("round %d open on %s: goal %d, select up to %d, min %d", rid, stable.id, goal,
             max(goal, math.ceil(goal * over)), min_count)
    return rid


CLOCK_AHEAD_S = 60.0   # a round's time further ahead of the clock than this was stamped by a clock that ran fast


def restamp_ahead(coord: Coordinator) -> None:
    """Move back the times a clock that ran ahead stamped, once it is set right (NTP after a boot
    or a virtual machine's resume). Left, the open round's check-in window and deadline came the
    clock's lead late (a device checking in during the window was told to come back in 5 hours,
    for a clock 5 hours fast), a secure round's step did not time out, no scheduled round opened
    until the clock caught up with the last one's close, versions retired or rejected meanwhile
    sorted as the most recently decided (`retention` deleted the files of every one decided
    after the correction, the stable version just retired too, which then could not be rolled
    back to), canary tasks held their places as long, enrollment keys made then enrolled devices
    as much past their expiry, and devices seen then counted as active (and were not seen again)
    as long. The open round, an enrollment key and a version decision move back by the step (the
    round keeps the time it had left, a key its lifetime, versions their order); the other times
    become now. Only once this process saw its host's clock step back since it started (fall
    behind the monotonic one by over a second from the highest difference seen): that step set it
    right (time synchronisation steps a clock only towards its reference). Times ahead found at a
    start are left: which clock was wrong cannot be told then (a host started before its time is
    synchronised reads behind, and moving them back would end the open round early once it is);
    nor is this a read on every request. A round opened by the fast clock longer ago than its lead
    no longer reads ahead, and keeps its late deadline (docs/reliability.md)."""
    skew = time.time() - time.monotonic()
    if skew >= coord.clock_skew - 1.0:
        coord.clock_skew = max(coord.clock_skew, skew)   # a step forward (a resume too) raises the mark
        return
    step = timedelta(seconds=coord.clock_skew - skew)   # how far ahead the clock read before the step
    now = utcnow()
    ahead = now + timedelta(seconds=CLOCK_AHEAD_S)
    opened = and_(Round.status == RoundStatus.OPEN, Round.created_at > ahead)
    issued = and_(Evaluation.report_json == queries.EVALUATION_ISSUED, Evaluation.created_at > ahead)
    stamped = (opened, Round.closed_at > ahead, SecAggRound.phase_started_at > ahead, Version.decided_at > ahead,
               issued, EnrollmentKey.created_at > ahead, Device.last_seen_at > ahead)

    def back(t: datetime) -> timedelta:
        """How far a time stamped ahead moves back: the step (a time stamped before it, by this
        host's clock), or to now at least (one stamped by a clock further ahead)."""
        return max(step, t - now)

    with coord._sessions() as s:   # read first: rare
        found = s.scalar(select(or_(*(exists().where(c) for c in stamped))))
    if found:
        with coord.tx() as s:
            for r in s.scalars(select(Round).where(opened).with_for_update()):
                lead = back(r.created_at)
                log.warning("round %d was opened by a clock %.0f s ahead of this one: its check-in window and "
                            "deadline move back as much", r.id, lead.total_seconds())
                r.created_at, r.deadline = r.created_at - lead, r.deadline - lead
                if r.selection_ends_at is not None:
                    r.selection_ends_at -= lead
            for k in s.scalars(select(EnrollmentKey).where(EnrollmentKey.created_at > ahead).with_for_update()):
                lead = back(k.created_at)   # its lifetime as made (enrolling for the clock's lead longer)
                k.created_at -= lead
                if k.expires_at is not None:
                    k.expires_at -= lead
            for v in s.scalars(select(Version).where(Version.decided_at > ahead).with_for_update()):
                v.decided_at -= back(v.decided_at)   # each by its own lead: their order is what retention keeps
            n = (s.execute(update(Round).where(Round.closed_at > ahead).values(closed_at=now)).rowcount
                 + s.execute(update(SecAggRound).where(SecAggRound.phase_started_at > ahead)
                             .values(phase_started_at=now)).rowcount
                 + s.execute(update(Evaluation).where(issued).values(created_at=now)).rowcount
                 + s.execute(update(Device).where(Device.last_seen_at > ahead).values(last_seen_at=now)).rowcount)
            if n:
                log.warning("%d round closes, secure-round steps, canary tasks and device check-ins were stamped by a "
                            "clock ahead of this one: stamped now", n)
    coord.clock_skew = skew   # only once done: a database out of reach now leaves the step to the next request


def maintenance(coord: Coordinator, *, wait: bool = False) -> None:
    """Close rounds that reached their goal or deadline (lazily, on requests and `tick`). `wait`
    (an operator's command): for a close under way elsewhere, which a device's request leaves be."""
    restamp_ahead(coord)
    secagg.advance_open(coord)
    with coord._sessions() as s:
        rows = s.execute(select(Round.id, Round.deadline, Round.goal_count)
                         .where(Round.status == RoundStatus.OPEN)).all()
        # A secure round whose sum is final is due too: the unmask's own close can fail (a kill,
        # a full disk), and the round then stayed open until its deadline, blocking the next.
        summed = {rid for rid, _, _ in rows
                  if (row := s.get(SecAggRound, rid)) is not None and row.phase == SecAggPhase.SUMMED}
        counts = {rid: queries.accepted(s, rid) for rid, _, _ in rows}
        due = [rid for rid, deadline, goal in rows if utcnow() >= deadline or counts[rid] >= goal or rid in summed]
    failed: Exception | None = None
    for rid in due:
        try:
            # a final sum of fewer than the goal is fine; a close under way elsewhere is left to it
            if not wait and rid not in summed and close_off_request(coord, rid, counts[rid]):
                continue
            coord.close_round(rid, force=rid in summed, wait=wait)
        except Exception as e:   # one round that cannot close must not hold up the canary's decision
            failed = failed or e
            _say_close_failed(coord, rid, e)
    canary.decide_if_asked(coord)
    try:
        retention.prune(coord)   # after the decisions, which retire and reject versions; the service's only
    except Exception as e:   # a file it cannot delete must not hold up the next round
        failed = failed or e
    if not getattr(coord._local, "manual", False):  # round_interval_s > 0: the next round opens itself
        schedule.open_if_due(coord)
    if failed is not None:   # then said: `tick` fails, a device's request logs it (safe_maintenance)
        raise failed


def _say_close_failed(coord: Coordinator, rid: int, e: Exception) -> None:
    """The open round's reason says that closing it failed, and why (a close sets its own reason
    when it succeeds). Otherwise a round whose base version's files are gone stays "open" with no
    reason in `status` and on the dashboard, and overdue for ever. Best effort: the
    database may be what fails."""
    if retryable(e) is not None:   # the database busy or away: writing would wait as long again
        return
    if disk_full(e):
        line = "closing failed: the data directory's disk is full; retried on every request"
    else:
        line = f"closing failed, retried on every request: {_one_line(e)}"
    try:
        with coord.tx() as s:   # only while open: another worker may have closed it meanwhile
            s.execute(update(Round).where(Round.id == rid, Round.status == RoundStatus.OPEN, Round.reason != line)
                      .values(reason=line))
    except Exception:   # noqa: BLE001 - the first failure is raised and logged by the caller
        pass


def _one_line(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first}"[:300]


FULL_DISK_SAID_EVERY_S = 60.0
_full_disk_said = [-math.inf]
# The same maintenance failure again is one line this often: a close that fails on every
# request would write its traceback each time, 931 lines for 30 check-ins.
FAILURE_SAID_EVERY_S = 600.0


OFF_REQUEST_AT = 50   # accepted updates from which a device's request closes a round on a thread of its own


def close_off_request(coord: Coordinator, round_id: int, accepted: int) -> bool:
    """Close `round_id` on a thread of its own when a device's request would carry a long close,
    and say whether it did. A request that started a close would carry its mean: the upload that
    reached a goal of 1,000 would get its receipt after 24 s, and a check-in after the deadline
    could pass the devices' 30 s timeout. A small round (under `OFF_REQUEST_AT`
    updates: well under a second) still closes in the request, and a command's (not serving:
    a thread would die with it) always does. A worker stopped mid-close leaves the round open,
    due, for the next request's maintenance."""
    if not coord.serving or accepted < OFF_REQUEST_AT:
        return False
    key = (id(coord), round_id)
    # else one more thread would find it claimed: here, or (for a few seconds) in another worker
    if not round_mean.under_way(coord, round_id) and time.monotonic() >= _elsewhere.get(key, -math.inf):
        threading.Thread(target=_close_logged, args=(coord, round_id), name=f"close-{round_id}", daemon=True).start()
    return True


ELSEWHERE_S = 5.0   # a close found under way in another process is not tried again from here for this long
_elsewhere: dict[tuple[int, int], float] = {}


def _close_logged(coord: Coordinator, round_id: int) -> None:
    """A close off the request, failing as maintenance fails: the round's reason says why, and a
    repeated failure is logged with its traceback once (`say_maintenance_failed`)."""
    try:
        if coord.close_round(round_id, wait=False) is None:   # another worker is closing it
            _elsewhere[(id(coord), round_id)] = time.monotonic() + ELSEWHERE_S
    except Exception as e:   # the updates are safe; the next request's maintenance tries again
        _say_close_failed(coord, round_id, e)
        say_maintenance_failed(coord, e)


def say_maintenance_failed(coord: Coordinator, e: Exception) -> None:
    """Count and log a failure of maintenance (inside its `except`), as `safe_maintenance` says."""
    said = coord.maintenance_failing
    coord.metrics.maintenance_failures.inc()
    if disk_full(e):
        say_disk_full("round maintenance failed", e, coord.config.data_dir)
        return
    what, now = _one_line(e), time.monotonic()
    said["times"] += 1
    if what != said["what"]:
        said.update(what=what, at=now, times=1)
        log.exception("round maintenance failed; will retry on the next request")
    elif now - said["at"] >= FAILURE_SAID_EVERY_S:
        said["at"] = now
        log.error("round maintenance still failing (%d times since it was logged with its traceback): %s; "
                  "will retry on the next request", said["times"], what)


def safe_maintenance(coord: Coordinator, *, wait: bool = False) -> None:
    """Maintenance on a device's request must never turn into that device's error. A full disk is
    said in one line a minute, naming the data directory: its traceback would come on every check-in,
    50 a minute, and not say what to do. Another failure is said with its
    traceback once, then in one line every FAILURE_SAID_EVERY_S while it repeats, and counted
    (`fedkeys_maintenance_failures_total`)."""
    said = coord.maintenance_failing
    try:
        coord.maintenance(wait=wait)
    except Exception as e:
        say_maintenance_failed(coord, e)
    else:
        if said["what"] is not None:
            log.info("round maintenance works again after %d failures", said["times"])
            said.update(what=None, at=-math.inf, times=0)


def note_failure(what: str, e: BaseException, data_dir: str, then: str, logger: logging.Logger = log) -> None:
    """Log, from inside its `except`, that `what` failed with `e` and what happens `then`: a full
    disk in one line a minute (`say_disk_full`), anything else with its traceback."""
    if disk_full(e):
        say_disk_full(what, e, data_dir)
    else:
        logger.exception("%s; %s", what, then)


def say_disk_full(what: str, e: BaseException, data_dir: str) -> None:
    """Log `what` failed on a full disk, once a minute per process whatever fails (maintenance,
    a check-in, an upload): a traceback a request flooded the log with 600 lines in 30 s."""
    if time.monotonic() - _full_disk_said[0] >= FULL_DISK_SAID_EVERY_S:
        _full_disk_said[0] = time.monotonic()
        log.error("%s: the disk is full (%s; data directory %s); free space, and it goes on where it stopped",
                  what, e.__class__.__name__, data_dir)


def disk_full(e: BaseException) -> bool:
    """Whether `e` (or what it wraps) is the disk out of space: ENOSPC, SQLite's "database or
    disk is full", or PostgreSQL's disk_full (53100)."""
    for _ in range(8):   # the chain of causes, a few deep
        if (isinstance(e, OSError) and e.errno == errno.ENOSPC or "database or disk is full" in str(e)
                or sqlstate(e) == "53100"):
            return True
        if (e := e.__cause__ or e.__context__) is None:
            return False
    return False


LATE_SAID_S = 300.0


def _late_by(r: Round) -> str:
    """How late a failing round is closed, when it is late enough to matter: a clock stepped an
    hour forward fails the open round as "only 1 accepted updates", which reads as the devices'
    fault. Rounds close on requests, so minutes late is no clock."""
    late = (utcnow() - r.deadline).total_seconds()
    return f" (closed {late / 60:.0f} minutes after its deadline: no request came, or the clock stepped)" \
        if late >= LATE_SAID_S else ""


def close_round(coord: Coordinator, round_id: int, *, force: bool = False, wait: bool = True) -> dict[str, Any] | None:
    """Aggregate if the round has enough updates (goal, or min at/after the deadline), or fail it.
    The mean is computed before the close's locks (`round_mean`), by one close at a time: another
    waits for it, or with `wait` False (maintenance on every request) answers None at once."""
    if not 1 <= round_id <= wire.MAX_INT:
        raise not_found(f"no round {round_id}")
    with round_mean.claim(coord, round_id, wait=wait) as mine:
        if not mine:
            return None
        t0 = time.perf_counter()   # after the claim: waiting for another worker's close is not aggregating
        return _close(coord, round_id, force, round_mean.early_mean(coord, round_id, force=force), t0)


def _close(coord: Coordinator, round_id: int, force: bool, early: round_mean.EarlyMean | None,
           t0: float) -> dict[str, Any]:
    with coord.tx(decides=True) as s:
        r = s.get(Round, round_id, with_for_update=True)
        if r is None:
            raise not_found(f"no round {round_id}")
        if r.status != RoundStatus.OPEN:
            return views.round_dict(coord, s, r)
        n = queries.accepted(s, r.id)
        past = utcnow() >= r.deadline
        if queries.averages_now(r, n, force=force):
            _aggregate(coord, s, r, early)
            coord.metrics.aggregation_seconds.observe(time.perf_counter() - t0)
            round_end.forget_contributions(coord, s, r)   # averaged (or failed): single updates go
        elif past or force:
            phase = queries.secure_phase(s, r)   # a secure round's updates are counted only once summed
            by = "its deadline" if past else "a forced close"
            round_end.fail_round(coord, s, r, (f"only {n} accepted updates, minimum {r.min_count}" if phase is None
                                               else f"secure aggregation: not finished by {by} (at its {phase} step)")
                                 + _late_by(r))
        return views.round_dict(coord, s, r)


def _server_state(coord: Coordinator, base: Version) -> dict[str, np.ndarray]:
    """The server optimizer's state that `base`'s round left (momentum, Adam's moments), or none.
    It is not part of a version's export, so nothing can restore it: lost or damaged, the step
    starts the optimizer afresh (as on an imported version) rather than failing every round."""
    digest = base.opt_state_sha256
    if digest is None:
        return {}
    try:
        data = coord.blobs.get(digest)
        if sha256_bytes(data) != digest:
            raise artifact.ArtifactError("its sha256 does not match")
        return artifact.decode_weights(data)
    except (OSError, artifact.ArtifactError) as e:
        log.warning("version %s: its server optimizer state is lost or damaged (%s); this round's step "
                    "starts the optimizer afresh", base.id, e)
        return {}


def _aggregate(coord: Coordinator, s: Session, r: Round, early: round_mean.EarlyMean | None = None) -> None:
    """The I/O around aggregation.round_step: read the base and the updates, write the candidate.
    `early`: the mean computed before the lock (`round_mean`), used if the round's updates are the same."""
    plan = wire.TrainPlan.from_dict(json.loads(r.plan_json))
    if plan.discover_words:   # a vote, not a training round: no update to average
        discovery.close(coord, s, r, plan)
        return
    c = coord.config
    base = s.get(Version, r.base_version_id)
    manifest = queries.manifest(base)
    tensors = manifest.tensors
    rows = round_mean.update_rows(s, r.id)
    updates = [(digest, count) for _, digest, count in rows]
    if early is not None and not plan.secure_aggregation and early.rows == tuple(rows):
        mean_delta, note = early.mean, {}
    else:
        try:
            mean_delta, updates, note = secagg.round_mean(coord, s, r, plan, updates,
                                                          lambda: round_mean.plain_mean(coord, r.id, updates, tensors))
        except FileNotFoundError:   # lost from the data directory: no close could ever read it
            round_end.fail_round(coord, s, r, "an accepted update's file is missing from the data directory")
            return
        except secagg.MalformedSum as e:   # the same sum at every retry: the round ends, saying why
            round_end.fail_round(coord, s, r, f"secure aggregation: {e}")
            return
    base_vec = artifact.flatten(artifact.decode_weights(coord.blobs.get(base.weights_sha256)), tensors)
    opt_state = _server_state(coord, base)
    step = aggregation.round_step(
        base_vec, mean_delta, opt_state, [cnt for _, cnt in updates],
        sampling_rate=queries.sampling_rate(r),
        optimizer=c.server_optimizer, lr=c.server_learning_rate, momentum=c.server_momentum, beta1=c.adam_beta1,
        beta2=c.adam_beta2, eps=c.adam_epsilon)
    if step.weights is None:
        round_end.fail_round(coord, s, r, "aggregate is not finite")
        return
    new_weights = artifact.unflatten(step.weights, tensors)
    state_sha = coord.blobs.put(artifact.encode_weights(step.state)) if step.state else None
    metrics = {"updates": step.stats["updates"], "examples": step.stats["examples"],
               "mean_delta_norm": step.stats["mean_delta_norm"], "server_optimizer": c.server_optimizer,
               "aggregator": "secure_sum" if plan.secure_aggregation else c.aggregator}
    vid, priv = versions.write_candidate(coord, s, r, base, manifest, new_weights, plan,
                                         sampling_rate=step.stats["sampling_rate"], metrics=metrics, note=note,
                                         q8_parent=manifest.weights_q8_sha256, state_sha=state_sha)
    r.reason = f"aggregated {len(updates)} updates"
    log.info("round %d done: %d updates -> version %s (epsilon_local %.3g, sampled eps %.3g at delta %g)", r.id,
             len(updates), vid, priv["epsilon_local"], priv["epsilon"], c.privacy_delta)
