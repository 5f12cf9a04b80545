"""When the coordinator opens the next round by itself (setting round_interval_s > 0).

Pure, so the rule is testable without a clock: the first round is always an operator's
`start-round`; after that a new round opens `round_interval_s` after the last one closed, but
never while a round is open or a candidate is still in its canary (its verdict decides what
the next round trains on).
"""

from __future__ import annotations

from datetime import datetime, timedelta


def next_round_due(now: datetime, *, interval_s: float, last_closed_at: datetime | None, round_open: bool,
                   has_stable: bool, candidate_pending: bool) -> bool:
    if interval_s <= 0 or round_open or not has_stable or candidate_pending or last_closed_at is None:
        return False
    return now >= last_closed_at + timedelta(seconds=interval_s)
