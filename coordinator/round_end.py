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

import contextlib
import logging
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import delete, event, select
from sqlalchemy.orm import Session

from coordinator import queries
from coordinator.models import Round, Update, Version, utcnow
from coordinator.models_secagg import SecAggMember, SecAggReveal, SecAggRound
from coordinator.states import RoundStatus, SecAggPhase
from protocol.artifact import sha256_bytes

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
            discard_sum(coord, s, r.id, digest)
    forget_contributions(coord, s, r)
    log.warning("round %d failed: %s", r.id, reason)


def discard_sum(coord: Coordinator, s: Session, round_id: int, digest: str) -> None:
    """Delete a secure round's unmasked sum once the caller's transaction commits: kept with the
    round's uploads, or among the blobs by a release before 8 December 2026."""
    def gone(_session: Session) -> None:
        coord.uploads.discard(round_id, digest)
        coord.blobs.discard(digest)
    event.listen(s, "after_commit", gone, once=True)


def forget_contributions(coord: Coordinator, s: Session, r: Round) -> None:
    """Delete what single devices sent round `r` (plain updates, secure rounds' masked vectors:
    `coord.uploads`, a store of their own) once the caller's transaction commits; the rows stay
    (norms, counts, who took part)."""
    rid = r.id
    event.listen(s, "after_commit", lambda _session: coord.uploads.discard_round(rid), once=True)


def store_upload(coord: Coordinator, round_id: int, body: bytes) -> str | None:
    """Write what one device sent round `round_id` (`coord.uploads`) and return its sha256, or
    None if the round ended while the bytes were written: its `forget_contributions` deleted the
    folder under them, and the upload is late (a 409 for the caller, never a 500)."""
    try:
        return coord.uploads.put(round_id, body)
    except FileNotFoundError:
        with coord._sessions() as s:
            if s.get(Round, round_id).status == RoundStatus.OPEN:
                raise
        drop_refused_upload(coord, round_id, sha256_bytes(body))
        return None


def keep_upload(coord: Coordinator, round_id: int, digest: str, body: bytes) -> None:
    """In the transaction that makes a row name `digest` (its round's row locked): the bytes are
    on disk. Equal bytes another upload stored and then dropped (`drop_refused_upload`: two
    devices' identical updates, one of them refused) are one file, which may have gone since this
    upload wrote it; a row naming a missing file left its round unable to close."""
    if not coord.uploads.path(round_id, digest).is_file():
        coord.uploads.put(round_id, body)


def drop_refused_upload(coord: Coordinator, round_id: int, digest: str) -> None:
    """Bytes stored for an upload that was then not taken (late, a duplicate, a retry of one
    stored meanwhile, a request that failed): deleted unless a row of the round names them, and
    the round's whole folder if it ended meanwhile (its `forget_contributions` ran before these
    bytes were written). Checked and deleted under the round's lock, which an upload that names
    equal bytes holds too (`keep_upload`)."""
    with coord.tx() as s:
        ended = s.get(Round, round_id, with_for_update=True).status != RoundStatus.OPEN
        named = s.scalar(select(Update.id).where(Update.round_id == round_id, Update.blob_sha256 == digest)
                         .limit(1)) is not None or s.scalar(
            select(SecAggMember.idx).where(SecAggMember.round_id == round_id, SecAggMember.masked_sha256 == digest)
            .limit(1)) is not None
        if not ended and not named:
            coord.uploads.discard(round_id, digest)
    if ended:
        coord.uploads.discard_round(round_id)


@contextlib.contextmanager
def dropped_on_failure(coord: Coordinator, round_id: int, digest: str) -> Iterator[None]:
    """Around the transaction that records an upload's row: if it fails (the device revoked
    meanwhile, the database gone), the rolled-back row names nothing, and the bytes must not
    outlive the round (`drop_refused_upload`). Best effort: the service's next start deletes an
    ended round's folder anyway (`forget_ended_uploads`)."""
    try:
        yield
    except BaseException:
        try:
            drop_refused_upload(coord, round_id, digest)
        except Exception as e:   # the database that failed the request may fail this too
            log.warning("round %d: an upload's bytes stay until its round ends or the service restarts (%s)",
                        round_id, e)
        raise


def forget_ended_uploads(coord: Coordinator) -> int:
    """At service start: the folders of rounds that ended and are still on disk (a kill between a
    round's end and its `forget_contributions`) are deleted; and, once per data directory
    (`UploadStore.LEGACY_SWEPT`), the uploads a release before `coord.uploads` stored among the
    content-addressed blobs, never a file that a version or a sum also names. Returns the files
    and round folders deleted."""
    gone: list[str] = []
    if not coord.uploads.legacy_swept():
        with coord._sessions() as s:
            open_ids = set(s.scalars(select(Round.id).where(Round.status == RoundStatus.OPEN)))
            sent = s.execute(select(Update.round_id, Update.blob_sha256)).all() + s.execute(
                select(SecAggMember.round_id, SecAggMember.masked_sha256)
                .where(SecAggMember.masked_sha256.is_not(None))).all()
            keep = {d for rid, d in sent if rid in open_ids}
            keep |= set(s.scalars(select(SecAggRound.sum_sha256).where(SecAggRound.sum_sha256.is_not(None))))
            for v in s.scalars(select(Version)):
                keep |= queries.version_blobs(v)
        gone = [d for d in {d for rid, d in sent if rid not in open_ids} - keep if coord.blobs.exists(d)]
        for d in gone:
            coord.blobs.discard(d)
        coord.uploads.mark_legacy_swept()
    listed = coord.uploads.rounds()   # then their state: a round opened meanwhile (another worker) stays
    with coord._sessions() as s:
        ended = list(s.scalars(select(Round.id).where(Round.id.in_(listed), Round.status != RoundStatus.OPEN)))
    for rid in ended:
        coord.uploads.discard_round(rid)
    if gone or ended:
        log.info("deleted the uploads of rounds that ended: %d files, %d round folders", len(gone), len(ended))
    return len(gone) + len(ended)
