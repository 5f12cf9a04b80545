"""The mean of a plain round's updates, computed before its close takes the locks.

Averaging a round's updates takes 16 s at 1,000 of them, 34 s with the median at 450 (in a
population of 5,000 devices). Inside the close's transaction, which holds the process's lock, the
decisions' advisory lock and the round's row, every other request of the service would wait,
`/healthz` and the scrapes too, and check-ins would run past the devices' 30 s timeout. The
updates of a round that is due no longer change (an upload past its goal or deadline is refused),
so their mean is computed first, holding no lock, and the close uses it when the round still holds
the same updates; otherwise (an upload came in between, a forced close) it averages them again
inside. One close computes it at a time: per round, per process and, on PostgreSQL, across
the service's processes.
"""

from __future__ import annotations

import fcntl
import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import select, text

from coordinator import aggregation, queries
from coordinator.models import Round, Update, Version
from coordinator.states import RoundStatus
from protocol import artifact, wire

if TYPE_CHECKING:
    from coordinator.service import Coordinator

CLOSING_LOCKS = 7201360   # PostgreSQL advisory lock namespace: (CLOSING_LOCKS, round id) while its mean is computed
CLOSING_LOCK_FILE = ".closing.lock"   # SQLite: the data directory's file locked for the same
_claimed: set[tuple[int, int]] = set()   # (id of the Coordinator, round id) being closed in this process
_released = threading.Condition()


@dataclass(frozen=True)
class EarlyMean:
    """A round's mean update over the updates `rows` (`update_rows`), computed before its close.
    Whole rows, not ids: SQLite gives a deleted update's id to the next one (on matching ids a
    revoked device's update would be averaged in and its successor's left out)."""
    rows: tuple[tuple[int, str, int], ...]
    mean: np.ndarray


def stream(coord: Coordinator, round_id: int, rows: Sequence[tuple[str, int]],
           tensors: list[artifact.TensorSpec]) -> Iterator[tuple[np.ndarray, float]]:
    """(flat update, bounded weight) for each (blob sha256, example count), one decoded at a time."""
    for digest, count in rows:
        vec = artifact.flatten(artifact.decode_weights(coord.uploads.get(round_id, digest)), tensors)
        yield vec, aggregation.bounded_weight(count, coord.config.max_example_weight)


def plain_mean(coord: Coordinator, round_id: int, rows: Sequence[tuple[str, int]],
               tensors: list[artifact.TensorSpec]) -> np.ndarray:
    """The configured aggregator (mean, trimmed_mean, median) over a plain round's stored updates."""
    c = coord.config
    return aggregation.aggregate(c.aggregator, stream(coord, round_id, rows, tensors), trim=c.trim_fraction)


def update_rows(s, round_id: int) -> list[tuple[int, str, int]]:
    """(id, blob sha256, example count) of a round's stored updates, in the order they came."""
    return [tuple(row) for row in s.execute(select(Update.id, Update.blob_sha256, Update.example_count)
                                            .where(Update.round_id == round_id).order_by(Update.id)).all()]


def under_way(coord: Coordinator, round_id: int) -> bool:
    """Whether a thread of this process is closing `round_id` now."""
    with _released:
        return (id(coord), round_id) in _claimed


@contextmanager
def claim(coord: Coordinator, round_id: int, *, wait: bool) -> Iterator[bool]:
    """Hold the right to close `round_id`: no other thread of this process, and no other process
    (PostgreSQL: an advisory lock; SQLite: a lock on a file of the data directory), closes it
    meanwhile. `wait`: until the close under way ends; else False at once."""
    key = (id(coord), round_id)
    with _released:
        while wait and key in _claimed:
            _released.wait()
        mine = key not in _claimed
        _claimed.add(key)
    if not mine:
        yield False
        return
    try:
        across = _advisory_lock if coord.engine.dialect.name == "postgresql" else _file_lock
        with across(coord, round_id, wait) as got:
            yield got
    finally:
        with _released:
            _claimed.discard(key)
            _released.notify_all()


@contextmanager
def _advisory_lock(coord: Coordinator, round_id: int, wait: bool) -> Iterator[bool]:
    with coord.engine.connect() as conn:   # a session-level lock, held to the end of the close
        args = {"ns": CLOSING_LOCKS, "id": round_id}
        if wait:
            conn.execute(text("SELECT pg_advisory_lock(:ns, :id)"), args)
        got = wait or bool(conn.execute(text("SELECT pg_try_advisory_lock(:ns, :id)"), args).scalar())
        conn.commit()   # no transaction stays open while the mean is computed
        try:
            yield got
        finally:
            if got:
                try:
                    conn.execute(text("SELECT pg_advisory_unlock(:ns, :id)"), args)
                    conn.commit()
                except Exception:
                    conn.invalidate()   # closed, so the session's lock goes with it, not back to the pool
                    raise


@contextmanager
def _file_lock(coord: Coordinator, round_id: int, wait: bool) -> Iterator[bool]:
    """SQLite under several gunicorn workers: without it each would compute its own mean. One file
    for every round: one round is open at a time."""
    path = Path(coord.config.data_dir) / CLOSING_LOCK_FILE
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def early_mean(coord: Coordinator, round_id: int, *, force: bool) -> EarlyMean | None:
    """The mean of a plain round that is due to aggregate, computed holding no lock; None for any
    other round (open, secure, a vote, closed) or when its updates cannot be read now (the close
    that decides says why)."""
    import dp_accounting.rdp  # noqa: F401  the accountant's first import (1-2 s), outside the lock too

    with coord._sessions() as s:
        r = s.get(Round, round_id)
        if r is None or r.status != RoundStatus.OPEN:
            return None
        plan = wire.TrainPlan.from_dict(json.loads(r.plan_json))
        if plan.discover_words or plan.secure_aggregation or not queries.averages_now(
                r, queries.accepted(s, r.id), force=force):
            return None
        rows = update_rows(s, r.id)
        tensors = queries.manifest(s.get(Version, r.base_version_id)).tensors
    try:
        mean = plain_mean(coord, round_id, [(d, k) for _, d, k in rows], tensors)
    except Exception:   # deleted by another process's close meanwhile, or unreadable: the close inside decides
        return None
    return EarlyMean(tuple(rows), mean)
