"""Who trains in a round: a check-in window, then a random draw (Bonawitz et al. 2019).

First come, first served lets whoever polls fastest (e.g. a sybil farm watching the public
dashboard) take every slot. So for `selection_window_s` after a round opens, eligible devices
that check in are only registered (an `assignments` row with `selected=False`) and asked
back when the window closes; the first check-in after that draws `max_selected` of them
uniformly at random (`secrets.SystemRandom`: unpredictable to devices), under the round's
row lock so several workers draw once. Devices arriving after a draw that took everyone in
it take any slots left, in order; after a draw among more devices than slots, nobody outside it
does (the round's sampling rate counts on it). A window of 0 is the old first-come selection,
for drivers that run rounds synchronously (simulation, benchmarks, tests).
"""

from __future__ import annotations

import secrets
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from coordinator.models import Assignment, Rejection, Round, Update
from coordinator.models_secagg import SecAggMember, SecAggRound
from coordinator.states import SecAggPhase

TRAIN, WAIT, NONE = "train", "wait", "none"
_rng = secrets.SystemRandom()


def selected_count(s: Session, round_id: int) -> int:
    return int(s.scalar(select(func.count()).select_from(Assignment).where(
        Assignment.round_id == round_id, Assignment.selected.is_(True))) or 0)


def waiting_count(s: Session, round_id: int) -> int:
    return int(s.scalar(select(func.count()).select_from(Assignment).where(
        Assignment.round_id == round_id, Assignment.selected.is_(False))) or 0)


def is_selected(s: Session, round_id: int, device_id: str) -> bool:
    return s.scalar(select(Assignment.id).where(Assignment.round_id == round_id, Assignment.device_id == device_id,
                                                Assignment.selected.is_(True))) is not None


def _draw(s: Session, r: Round, now: datetime) -> None:
    waiting = list(s.scalars(select(Assignment).where(Assignment.round_id == r.id, Assignment.selected.is_(False))
                             .order_by(Assignment.id)))
    k = max(0, min(len(waiting), r.max_selected - selected_count(s, r.id)))
    for a in _rng.sample(waiting, k):
        a.selected = True
    r.drawn_at = now
    r.population = len(waiting)   # what the round's sampling rate is measured against (queries.sampling_rate)


def select_device(s: Session, r: Round, device_id: str, now: datetime) -> tuple[str, float | None]:
    """(TRAIN, None): give the device the round's task; (WAIT, seconds): come back when the
    window closes; (NONE, None): not this round. `r` is locked FOR UPDATE by the caller."""
    row = s.scalar(select(Assignment).where(Assignment.round_id == r.id, Assignment.device_id == device_id))
    if r.selection_ends_at is not None and now < r.selection_ends_at:
        if row is None:
            s.add(Assignment(round_id=r.id, device_id=device_id, selected=False))
        return WAIT, (r.selection_ends_at - now).total_seconds()
    if r.selection_ends_at is not None and r.drawn_at is None:
        _draw(s, r, now)
        s.flush()
        if row is not None:
            s.refresh(row)
    uploaded = s.scalar(select(Update.id).where(Update.round_id == r.id, Update.device_id == device_id)) \
        or s.scalar(select(SecAggMember.id).where(SecAggMember.round_id == r.id, SecAggMember.device_id == device_id))
    if uploaded is not None:   # contributed already (a plain update, or joined the secure round's cohort)
        return NONE, None
    phase = s.scalar(select(SecAggRound.phase).where(SecAggRound.round_id == r.id))
    if phase is None and s.scalar(select(Rejection.id).where(Rejection.round_id == r.id,
                                                             Rejection.device_id == device_id).limit(1)) is not None:
        # Its upload was refused: a device never trains a round twice (its text would be released
        # again), so it refused the task at every check-in until the deadline.
        return NONE, None
    if phase is not None and phase != SecAggPhase.KEYS:
        # A secure round's cohort is fixed: a device outside it would train only to have its keys
        # refused as late, and be handed the task again at its next check-in.
        return NONE, None
    if row is not None:
        return (TRAIN, None) if row.selected else (NONE, None)
    if r.drawn_at is not None and r.population > r.max_selected:
        # The draw filled every slot from more devices than slots: a slot freed since (a revoked
        # device's) is not given to a device outside the draw, whose chance would then be 1 where
        # the round's sampling rate says slots / drawn (queries.sampling_rate).
        return NONE, None
    if selected_count(s, r.id) < r.max_selected:   # after a draw that took everyone: leftover slots, first come
        s.add(Assignment(round_id=r.id, device_id=device_id, selected=True))
        return TRAIN, None
    return NONE, None
