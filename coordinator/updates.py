"""Update uploads: every check between the bytes a device sends and a durable, counted update.

An update is acknowledged only after its blob is fsynced and its row committed, and every
refusal is recorded with its wire code.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from sqlalchemy import select

from coordinator import enrollment, queries, round_end, rounds, selection
from coordinator.errors import ApiError
from coordinator.models import Rejection, Round, Update, Version, utcnow
from coordinator.states import RoundStatus
from coordinator.validation import UpdateRejected, check_header_size, validate_update
from coordinator.views import iso
from protocol import artifact, wire
from protocol.artifact import sha256_bytes

if TYPE_CHECKING:
    from coordinator.service import Coordinator

log = logging.getLogger(__name__)
REJECTION_STATUS = {wire.E_UNKNOWN_ROUND: 404, wire.E_NOT_SELECTED: 403, wire.E_LATE: 409, wire.E_DUPLICATE: 409,
                    wire.E_STALE: 409, wire.E_MALFORMED: 422, wire.E_NORM: 422, wire.E_EXAMPLE_COUNT: 422,
                    wire.E_BAD_REQUEST: 400}


def reject(coord: Coordinator, device_id: str, round_id: int | None, code: str, message: str) -> ApiError:
    with coord.tx() as s:
        s.add(Rejection(round_id=round_id, device_id=device_id, reason=code, message=message[:2000]))
    coord.metrics.updates.labels(code).inc()
    log.info("rejected update from %s for round %s: %s (%s)", device_id, round_id, code, message)
    return ApiError(REJECTION_STATUS[code], code, message)


def refused_as_revoked(coord: Coordinator, device_id: str, round_id: int) -> ApiError:
    """A drawn device revoked while its post was under way (its draw deleted, or found revoked as
    its update was stored): authentication's 401, and a rejection that counts its round in epsilon
    against the coordinator (`queries.noise_seen`), since its bytes were received."""
    with coord.tx() as s:
        s.add(Rejection(round_id=round_id, device_id=device_id, reason=wire.E_REVOKED,
                        message="the device was revoked while this update was received: it does not count"))
    log.info("refused the update of %s for round %s: the device was revoked meanwhile", device_id, round_id)
    return ApiError(401, wire.E_UNAUTHORIZED, enrollment.UNAUTHORIZED)


def _retried(existing: Update, meta: wire.UpdateMeta, digest: str) -> wire.UpdateReceipt | None:
    """The stored update's receipt when this upload is a retry of it (the same idempotency key and
    the same update), else None. A key names one update: the same key with other bytes or counts
    is not a retry, and answering it with the first receipt would drop the new update silently."""
    same = (existing.idempotency_key, existing.blob_sha256, existing.example_count, existing.encoding) == \
        (meta.idempotency_key, digest, meta.example_count, meta.encoding)
    return wire.UpdateReceipt(update_id=existing.id, round_id=existing.round_id) if same else None


def _duplicate(existing: Update, meta: wire.UpdateMeta) -> str:
    if existing.idempotency_key == meta.idempotency_key:
        return (f"idempotency key {meta.idempotency_key!r} already names update {existing.id} of round "
                f"{existing.round_id}, with other contents: a retry must resend the same update")
    return f"device already contributed update {existing.id} to round {existing.round_id}"


def _record(coord: Coordinator, device_id: str, meta: wire.UpdateMeta, digest: str, norm: float, body: bytes
            ) -> tuple[wire.UpdateReceipt | None, wire.UpdateReceipt | None, str | None, bool, int]:
    """The update's row, in one transaction with the round's row locked, unless the round moved on
    while the update was validated. Returns (receipt, the receipt of a retry stored meanwhile, why
    it duplicates another, late, the round's accepted updates if this one reached its goal else 0)."""
    receipt, goal_reached = None, 0
    with coord.tx() as s:
        enrollment.still_authorized(s, device_id)   # revoked after this request's authentication
        r = s.get(Round, meta.round_id, with_for_update=True)
        # A concurrent upload of this device's (a retry sent while the first was still validated)
        # stored its update meanwhile: the same update gets that receipt, whatever the round's state.
        existing = s.scalar(select(Update).where(Update.round_id == r.id, Update.device_id == device_id))
        retried = None if existing is None else _retried(existing, meta, digest)
        duplicate = None if existing is None or retried is not None else _duplicate(existing, meta)
        late = retried is None and duplicate is None and (
            r.status != RoundStatus.OPEN or utcnow() >= r.deadline
            or queries.accepted(s, r.id) >= r.goal_count)   # while we validated
        if retried is None and duplicate is None and not late:
            round_end.keep_upload(coord, r.id, digest, body)
            u = Update(round_id=r.id, device_id=device_id, idempotency_key=meta.idempotency_key,
                       blob_sha256=digest, example_count=meta.example_count, encoding=meta.encoding, l2_norm=norm)
            s.add(u)
            s.flush()
            receipt = wire.UpdateReceipt(update_id=u.id, round_id=r.id)
            n = queries.accepted(s, r.id)
            goal_reached = n if n >= r.goal_count else 0
    return receipt, retried, duplicate, late, goal_reached


def submit_update(coord: Coordinator, device_id: str, meta_header: str | None, body: bytes) -> wire.UpdateReceipt:
    try:
        meta = wire.UpdateMeta.from_header(meta_header)
    except wire.WireError as e:
        raise reject(coord, device_id, None, wire.E_BAD_REQUEST, str(e)) from e
    with coord.tx() as s:
        r = s.get(Round, meta.round_id, with_for_update=True)
        existing = None if r is None else s.scalar(
            select(Update).where(Update.round_id == r.id, Update.device_id == device_id))
        assigned = None if r is None or not selection.is_selected(s, r.id, device_id) else True
        # not drawn, and revoked since this request's authentication: a revocation deletes the
        # draws, so it may have been drawn; its refusal counts (one that was never drawn does not)
        revoked = assigned is None and r is not None and queries.revoked(s, device_id)
        if existing is not None and (receipt := _retried(existing, meta, sha256_bytes(body))) is not None:
            return receipt
        round_state = None if r is None else (r.status, r.deadline, r.base_version_id, r.plan_json)
        duplicate = None if existing is None else _duplicate(existing, meta)
    if r is None:
        raise reject(coord, device_id, None, wire.E_UNKNOWN_ROUND, f"no round {meta.round_id}")
    if duplicate is not None:
        raise reject(coord, device_id, r.id, wire.E_DUPLICATE, duplicate)
    if revoked:
        raise refused_as_revoked(coord, device_id, r.id)
    if assigned is None:
        raise reject(coord, device_id, r.id, wire.E_NOT_SELECTED, f"device was not selected for round {r.id}")
    status, deadline, base_id, plan_json = round_state
    if status != RoundStatus.OPEN or utcnow() >= deadline:   # "closed (open, ...)" read as a contradiction
        said = f"is closed ({status})" if status != RoundStatus.OPEN else "is past its deadline"
        raise reject(coord, device_id, r.id, wire.E_LATE, f"round {r.id} {said} (deadline {iso(deadline)})")
    if meta.base_version_id != base_id:
        raise reject(coord, device_id, r.id, wire.E_STALE,
                           f"update is based on {meta.base_version_id}, round {r.id} trains {base_id}")
    with coord._sessions() as s:
        tensors = queries.manifest(s.get(Version, base_id)).tensors
    try:
        check_header_size(body)
        weights = artifact.decode_weights(body)
        _, norm = validate_update(weights, tensors, encoding=meta.encoding, example_count=meta.example_count,
                                  plan=wire.TrainPlan.from_dict(json.loads(plan_json)))
    except artifact.ArtifactError as e:
        raise reject(coord, device_id, r.id, wire.E_MALFORMED, str(e)) from e
    except UpdateRejected as e:
        raise reject(coord, device_id, r.id, e.code, e.message) from e
    digest = round_end.store_upload(coord, r.id, body)  # fsynced before the row that points to it is committed
    if digest is None:
        raise reject(coord, device_id, r.id, wire.E_LATE, f"round {r.id} reached its goal or closed meanwhile")
    with round_end.dropped_on_failure(coord, meta.round_id, digest):
        try:
            receipt, retried, duplicate, late, goal_reached = _record(coord, device_id, meta, digest, norm, body)
        except ApiError as e:
            if e.status == 401:   # revoked while its update was validated (`still_authorized`)
                raise refused_as_revoked(coord, device_id, meta.round_id) from None
            raise
    if retried is not None or duplicate is not None or late:   # its bytes were stored for nothing
        round_end.drop_refused_upload(coord, meta.round_id, digest)
    if retried is not None:   # a retry of an update stored meanwhile: its receipt, whatever the round's state
        return retried
    if duplicate is not None:   # recorded like any refusal
        raise reject(coord, device_id, meta.round_id, wire.E_DUPLICATE, duplicate)
    if late:
        raise reject(coord, device_id, meta.round_id, wire.E_LATE,
                           f"round {meta.round_id} reached its goal or closed meanwhile")
    coord.metrics.updates.labels("accepted").inc()
    if goal_reached:
        try:
            if not rounds.close_off_request(coord, receipt.round_id, goal_reached):
                coord.close_round(receipt.round_id)
        except Exception as e:  # the update is safe; maintenance will retry the aggregation
            rounds.note_failure(f"aggregation of round {receipt.round_id} failed", e, coord.config.data_dir,
                                "will retry", log)
    return receipt
