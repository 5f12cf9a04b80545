"""How a round ends without a candidate, written once.

A round fails when too few updates arrive by its deadline (or `close-round --force`), when a
secure phase runs short of devices, when its aggregate is not finite, and when the stable version
changes under it. Every one of those leaves the same record: status, time and reason on the
round (which `/metrics` counts from the database), one log line, and, for a secure round, its phase marked failed
and the shares its devices revealed deleted, as they are after a sum (`coordinator.secagg`)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import delete, event
from sqlalchemy.orm import Session

from coordinator.models import Round, utcnow
from coordinator.models_secagg import SecAggReveal, SecAggRound
from coordinator.states import RoundStatus, SecAggPhase

if TYPE_CHECKING:
    from coordinator.service import Coordinator

log = logging.getLogger(__name__)


def fail_round(coord: Coordinator, s: Session, r: Round, reason: str, now: datetime | None = None) -> None:
    """Fail the open round `r` for `reason`, inside the caller's transaction."""
    r.status, r.closed_at, r.reason = RoundStatus.FAILED, now or utcnow(), reason
    row = s.get(SecAggRound, r.id)
    if row is not None:
        if row.phase != SecAggPhase.SUMMED:   # a summed round keeps saying it was summed
            row.phase = SecAggPhase.FAILED
        s.execute(delete(SecAggReveal).where(SecAggReveal.round_id == r.id))
        if (digest := row.sum_sha256) is not None:
            # A sum no candidate will be made from is not kept (a discovery round's vote histogram
            # shows, at low noise, one device's rare word): gone once the failure is committed.
            row.sum_sha256 = None
            event.listen(s, "after_commit", lambda _session: coord.blobs.discard(digest), once=True)
    log.warning("round %d failed: %s", r.id, reason)
