"""When the coordinator opens the next round by itself (setting round_interval_s > 0).

`next_round_due` is pure, so the rule is testable without a clock: the first round is always an operator's
`start-round`; after that a new round opens `round_interval_s` after the last one closed, but
never while a round is open or a candidate is still in its canary (its verdict decides what
the next round trains on).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from coordinator import queries
from coordinator.errors import ApiError
from coordinator.models import Round, utcnow
from coordinator.states import RoundStatus

if TYPE_CHECKING:
    from coordinator.service import Coordinator

log = logging.getLogger(__name__)
REFUSAL_SAID_S = 600.0   # a scheduled round's lasting refusal is logged once in this many seconds
_refused_said: tuple[str, float] | None = None   # the last refusal said, and when (time.monotonic)


def next_round_due(now: datetime, *, interval_s: float, last_closed_at: datetime | None, round_open: bool,
                   has_stable: bool, candidate_pending: bool) -> bool:
    if interval_s <= 0 or round_open or not has_stable or candidate_pending or last_closed_at is None:
        return False
    return now >= last_closed_at + timedelta(seconds=interval_s)


def open_if_due(coord: Coordinator) -> None:
    """Open the next round on `coord` if `next_round_due` says so (called from maintenance)."""
    global _refused_said
    if coord.config.round_interval_s <= 0:
        return
    with coord._sessions() as s:
        due = next_round_due(
            utcnow(), interval_s=coord.config.round_interval_s,
            last_closed_at=s.scalar(select(func.max(Round.closed_at))),
            round_open=s.scalar(select(Round.id).where(Round.status == RoundStatus.OPEN)) is not None,
            has_stable=queries.stable(s) is not None, candidate_pending=queries.candidate(s) is not None)
    if not due:
        return
    try:
        rid = coord.start_round()
    except ApiError as e:   # another worker opened it first, the stable version changed, or the settings refuse it
        # Maintenance runs on every check-in: a refusal that lasts (a body limit no update fits in)
        # is said once a while, not on every pass.
        now = time.monotonic()
        if _refused_said is None or _refused_said[0] != e.message or _refused_said[1] <= now - REFUSAL_SAID_S:
            _refused_said = (e.message, now)
            log.info("scheduled round not opened: %s", e.message)
        return
    _refused_said = None
    log.info("round %d opened on schedule (round_interval_s %g)", rid, coord.config.round_interval_s)
