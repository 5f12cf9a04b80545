"""A device's check-in: which version to use, and whether to train, evaluate or come back later.

Pace steering lives here too: every answer says when to come back (`retry_after`, jittered so
devices do not return all at once, sooner while an open round is short of devices).
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING

from coordinator import canary, enrollment, queries, rollout, rollout_signing, rounds, selection
from coordinator.db import retryable
from coordinator.models import Device, utcnow
from protocol import wire

if TYPE_CHECKING:
    from coordinator.service import Coordinator


def retry_after(coord: Coordinator, base: float | None = None) -> float:
    """Pace steering: the interval, jittered so devices do not come back all at once."""
    base = coord.config.checkin_interval_s if base is None else base
    j = coord.config.checkin_jitter
    value = base * (1 + coord._rng.uniform(-j, j))
    return round(min(max(value, wire.MIN_RETRY_AFTER_S), wire.MAX_RETRY_AFTER_S), 1)


# "Active" is seen within a day (dashboard, gauges): the time a check-in was seen is written once in
# this span, not on every check-in. An idle device's check-in then writes nothing, so it answers
# on a full disk too (otherwise no device could hear of a rollback there), and a population
# checking in every minute costs the database a write per device per minute less.
LAST_SEEN_EVERY = timedelta(minutes=5)
log = logging.getLogger(__name__)


def checkin(coord: Coordinator, device_id: str, req: wire.CheckinRequest) -> wire.Task:
    rounds.safe_maintenance(coord)
    if coord.rollout_seq.due():   # before the check-in's transaction: a write of its own
        _renew_rollout_lease(coord)
    task = _task(coord, device_id, req)
    coord.metrics.checkins.labels(task.kind).inc()
    return task


def _renew_rollout_lease(coord: Coordinator) -> None:
    """A lease that cannot be written now (a full disk, a database gone read-only) leaves the
    numbers on the clock and the last lease; the check-in goes on, and it is tried again."""
    try:
        coord.rollout_seq.renew(coord)
    except Exception as e:
        if rounds.disk_full(e):
            rounds.say_disk_full("renewing the rollout statements' lease", e, coord.config.data_dir)
        elif (trouble := retryable(e)) is None:
            raise
        else:
            log.warning("could not renew the rollout statements' lease: the database is %s", trouble[0])


def _task(coord: Coordinator, device_id: str, req: wire.CheckinRequest) -> wire.Task:
    c = coord.config
    with coord.tx() as s:
        enrollment.still_authorized(s, device_id)   # revoked after this request's authentication
        device = s.get(Device, device_id)
        if device.last_seen_at is None or utcnow() - device.last_seen_at >= LAST_SEEN_EVERY:
            device.last_seen_at = utcnow()
        stable, cand = queries.stable(s), queries.candidate(s)
        if stable is None:
            return wire.Task(kind=wire.TaskKind.COME_BACK, retry_after=retry_after(coord))
        in_cohort = cand is not None and rollout.in_canary(device_id, c.canary_fraction)
        use = cand.id if in_cohort else stable.id
        channel = wire.Channel.CANARY if in_cohort else wire.Channel.STABLE
        state = rollout_signing.signed_state(coord, s, device_id, cand if in_cohort else stable, channel,
                                             req.current_version_id)
        if in_cohort and req.eligible and req.can_evaluate:
            task = canary.evaluate_task(coord, s, device_id, cand, stable, retry_after(coord))
            if task is not None:
                return replace(task, rollout=state)
        r = queries.open_round(s, for_update=True)
        if r is not None and req.eligible and req.can_train and utcnow() < r.deadline:
            now = utcnow()
            verdict, wait = selection.select_device(s, r, device_id, now)
            if verdict == selection.TRAIN:  # new, or the same task again after a lost reply
                remaining = (r.deadline - now).total_seconds()
                return wire.Task(kind=wire.TaskKind.TRAIN, retry_after=retry_after(coord), use_version_id=use,
                                 use_channel=channel, rollout=state, base_version_id=r.base_version_id,
                                 plan=wire.TrainPlan.from_dict(json.loads(r.plan_json)),
                                 time_limit_s=round(max(remaining, 0.0), 1))
            if verdict == selection.WAIT:   # registered for the draw: back right after the window
                back = min(max(wait + coord._rng.uniform(0.5, 5.0), wire.MIN_RETRY_AFTER_S), wire.MAX_RETRY_AFTER_S)
                return wire.Task(kind=wire.TaskKind.COME_BACK, use_version_id=use, use_channel=channel,
                                 rollout=state, retry_after=round(back, 1))
        # An open round still short of devices: ask eligible devices back sooner.
        busy = r is not None and utcnow() < r.deadline
        return wire.Task(kind=wire.TaskKind.COME_BACK, use_version_id=use, use_channel=channel, rollout=state,
                         retry_after=retry_after(coord, c.checkin_interval_s / 4 if busy else None))
