"""How a round ends without a candidate, written once.

A round fails when too few updates arrive by its deadline (or `close-round --force`), when a
secure phase runs short of devices, when its aggregate is not finite, and when the stable version
changes under it. Every one of those leaves the same record: status, time and reason on the
round (which `/metrics` counts from the database), one log line, and, for a secure round, its phase marked failed
and the shares its devices revealed deleted, as they are after a sum (`coordinator.secagg`).

However a round ends, aggregated or failed, what single devices sent it is deleted once that
commits (`forget_contributions`): each plain update is one device's noised update, kept before
only to be averaged, and then for good."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import delete, event, select
from sqlalchemy.orm import Session

from coordinator.models import Round, Update, utcnow
from coordinator.models_secagg import SecAggMember, SecAggReveal, SecAggRound
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
    forget_contributions(coord, s, r)
    log.warning("round %d failed: %s", r.id, reason)


def forget_contributions(coord: Coordinator, s: Session, r: Round) -> None:
    """Delete the files of what single devices sent round `r` (plain updates, secure rounds' masked
    vectors) once the caller's transaction commits; the rows stay (norms, counts, who took part).
    The store is content-addressed, so bytes that a row of another open round names stay."""
    mine = set(s.scalars(select(Update.blob_sha256).where(Update.round_id == r.id)))
    mine |= set(s.scalars(select(SecAggMember.masked_sha256).where(SecAggMember.round_id == r.id,
                                                                  SecAggMember.masked_sha256.is_not(None))))
    if not mine:
        return
    others = (select(Round.id).where(Round.status == RoundStatus.OPEN, Round.id != r.id)).scalar_subquery()
    kept = set(s.scalars(select(Update.blob_sha256).where(Update.round_id.in_(others),
                                                          Update.blob_sha256.in_(mine))))
    kept |= set(s.scalars(select(SecAggMember.masked_sha256).where(SecAggMember.round_id.in_(others),
                                                                   SecAggMember.masked_sha256.in_(mine))))
    gone = sorted(mine - kept)

    def discard(_session: Session) -> None:
        for digest in gone:
            coord.blobs.discard(digest)

    event.listen(s, "after_commit", discard, once=True)
