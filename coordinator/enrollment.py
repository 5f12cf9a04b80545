"""Enrollment keys, device enrollment and authentication: who may join, under which key's limits.

Every key has a use count and a lifetime, so a
leaked key mints few sybils, and each device remembers the key it was minted with: all
devices of one key share one check-in budget (`Coordinator.enrollment_key_of`).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Select, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from coordinator import keys, queries, views
from coordinator.errors import ApiError, bad_request, not_found
from coordinator.models import Assignment, Device, EnrollmentKey, Evaluation, Rejection, Round, Update, Version, utcnow
from coordinator.models_secagg import SecAggMember, SecAggRound
from coordinator.states import RoundStatus, SecAggPhase, VersionStatus
from protocol import wire

if TYPE_CHECKING:
    from coordinator.service import Coordinator

log = logging.getLogger(__name__)
KEY_CACHE_MAX = 100_000          # device -> key ids kept in memory before the cache is reset


def create_key(coord: Coordinator, *, label: str = "", uses: int | None = None,
               expires_in_s: float | None = None) -> str:
    """A new key for `uses` enrollments within `expires_in_s` (config defaults when None)."""
    uses = coord.config.enrollment_key_uses if uses is None else uses
    ttl = coord.config.enrollment_key_ttl_s if expires_in_s is None else expires_in_s
    if not 1 <= uses <= wire.MAX_INT:
        raise bad_request(f"uses must be in [1, {wire.MAX_INT}]")
    if len(label) > 128 or not label.isprintable():   # one line of the enrollment-keys table
        raise bad_request("label must be one line of at most 128 printable characters")
    if not (isinstance(ttl, (int, float)) and 0 < ttl <= 3650 * 86400):
        raise bad_request("expires_in_s must be in (0, 10 years]")
    key = keys.new_secret()
    with coord.tx() as s:
        s.add(EnrollmentKey(key_hash=keys.hash_secret(key), label=label, uses_left=uses, revoked=False,
                            expires_at=utcnow() + timedelta(seconds=ttl)))
    return key


KEY_REFUSED = "enrollment key unknown, revoked, expired or used up"   # one answer: which is not said
RETRY_WINDOW = timedelta(hours=1)   # a retried enrollment gets its device this long after it was made


def enroll(coord: Coordinator, req: wire.EnrollRequest) -> wire.EnrollResponse:
    """A new device for the key; or, for a retry of an enrollment whose answer was lost (the same
    `request_id`), the device it made, with a new token (the first never arrived), using no more
    of the key. Only until that device first checks in (then its token did arrive, and a replay of
    the request must not take the device over) and within `RETRY_WINDOW`. A key revoked or expired
    since the first try still answers the retry: that device was enrolled already, and devices
    enrolled keep working unless their key is revoked with them (`revoke_key(devices=True)`)."""
    token = keys.new_secret()
    request_hash = keys.hash_secret(req.request_id) if req.request_id else None
    try:
        return _enroll(coord, req, token, request_hash)
    except IntegrityError:
        if request_hash is None:
            raise
        # the same request id at once under another key, in another worker: the index holds one
        raise ApiError(409, wire.E_CONFLICT, "this enrollment request is being answered already") from None


def _enroll(coord: Coordinator, req: wire.EnrollRequest, token: str, request_hash: str | None) -> wire.EnrollResponse:
    with coord.tx() as s:
        ek = s.scalar(select(EnrollmentKey).where(EnrollmentKey.key_hash == keys.hash_secret(req.enrollment_key))
                      .with_for_update())   # a revocation (or another enrollment) waits, and sees this device
        if ek is None:
            raise ApiError(401, wire.E_UNAUTHORIZED, KEY_REFUSED)
        made = None if request_hash is None else s.scalar(select(Device).where(
            Device.enroll_request_hash == request_hash))
        if made is None and (ek.revoked or (ek.expires_at is not None and utcnow() >= ek.expires_at)):
            raise ApiError(401, wire.E_UNAUTHORIZED, KEY_REFUSED)
        if made is not None:
            if (made.enrollment_key_id != ek.id or made.revoked or made.last_seen_at is not None
                    or utcnow() - made.created_at > RETRY_WINDOW):
                raise ApiError(409, wire.E_CONFLICT, "this enrollment request already made a device that is in "
                                                     "use; a new enrollment needs a new request_id")
            made.token_hash = keys.hash_secret(token)
            log.info("enrolled device %s again (a retry of its enrollment)", made.id)
            return wire.EnrollResponse(device_id=made.id, token=token)
        if ek.uses_left is not None and ek.uses_left <= 0:
            raise ApiError(401, wire.E_UNAUTHORIZED, KEY_REFUSED)
        if ek.uses_left is not None:
            ek.uses_left -= 1
        device_id = "d-" + keys.new_secret()[:22].replace("_", "x").replace("-", "y")
        s.add(Device(id=device_id, token_hash=keys.hash_secret(token), enrollment_key_id=ek.id,
                     platform=req.platform, revoked=False, enroll_request_hash=request_hash))
    log.info("enrolled device %s", device_id)
    return wire.EnrollResponse(device_id=device_id, token=token)


def key_of(coord: Coordinator, device_id: str) -> int:
    """The enrollment key a device was minted with (fixed for its life, so cached on `coord`)."""
    key_id = coord._key_of.get(device_id)
    if key_id is None:
        with coord._sessions() as s:
            key_id = int(s.get(Device, device_id).enrollment_key_id)
        if len(coord._key_of) > KEY_CACHE_MAX:
            coord._key_of.clear()
        coord._key_of[device_id] = key_id
    return key_id


UNAUTHORIZED = "unknown device or wrong token"


def authenticate(coord: Coordinator, device_id: str | None, token: str | None) -> str:
    """Return the device id if the token is that device's, else 401."""
    if not device_id or not token:
        raise ApiError(401, wire.E_UNAUTHORIZED, f"missing {wire.DEVICE_HEADER} or bearer token")
    with coord._sessions() as s:
        dev = s.get(Device, device_id[: wire.MAX_ID_LEN])
        if dev is None or dev.revoked or not keys.secret_matches(token, dev.token_hash):
            raise ApiError(401, wire.E_UNAUTHORIZED, UNAUTHORIZED)
    return device_id


def still_authorized(s: Session, device_id: str) -> None:
    """`authenticate`'s 401, again inside the transaction that stores what the device sent: a
    revocation committed after the request's authentication (`queries.revoked`)."""
    if queries.revoked(s, device_id):
        raise ApiError(401, wire.E_UNAUTHORIZED, UNAUTHORIZED)


def list_keys(coord: Coordinator) -> list[dict]:
    """Every enrollment key without its secret: id, label, uses left, expiry, whether revoked, and
    how many devices it minted (how many are revoked)."""
    with coord._sessions() as s:
        per_key = select(Device.enrollment_key_id, func.count()).group_by(Device.enrollment_key_id)
        minted = dict(s.execute(per_key).all())
        revoked = dict(s.execute(per_key.where(Device.revoked)).all())
        return [{"id": ek.id, "label": ek.label, "uses_left": ek.uses_left, "revoked": ek.revoked,
                 "created_at": views.iso(ek.created_at), "expires_at": views.iso(ek.expires_at),
                 "devices": minted.get(ek.id, 0), "devices_revoked": revoked.get(ek.id, 0)}
                for ek in s.scalars(select(EnrollmentKey).order_by(EnrollmentKey.id))]


def revoke_key(coord: Coordinator, *, key_id: int | None = None, key: str | None = None,
               devices: bool = False) -> dict:
    """Stop a key from enrolling more devices (by its id, or by the key itself, which is what an
    operator holds when one leaks); with `devices`, also revoke every device it minted: a leaked
    key's sybils. Devices already enrolled keep working otherwise."""
    with coord.tx() as s:
        if key is not None:
            ek = s.scalar(select(EnrollmentKey).where(EnrollmentKey.key_hash == keys.hash_secret(key))
                          .with_for_update())
        else:
            ek = (s.get(EnrollmentKey, key_id, with_for_update=True)
                  if key_id is not None and 1 <= key_id <= wire.MAX_INT else None)
        if ek is None:
            raise not_found("no such enrollment key" if key is not None else f"no enrollment key {key_id}")
        ek.revoked = True
        n = 0
        if devices:
            for dev in s.scalars(select(Device).where(Device.enrollment_key_id == ek.id, ~Device.revoked)):
                dev.revoked = True
                n += 1
            updates, evaluations = _forget_in_flight(s, select(Device.id).where(Device.enrollment_key_id == ek.id))
        out = {"id": ek.id, "label": ek.label, "revoked": True, "devices_revoked": n}
    log.warning("revoked enrollment key %d%s", out["id"],
                f" and the {n} devices it minted ({updates} accepted updates in open rounds and {evaluations} canary "
                "evaluations withdrawn)" if devices else "")
    return out


def revoke_device(coord: Coordinator, device_id: str) -> dict:
    """Refuse a device's token from now on; what the admin API and the CLI answer."""
    with coord.tx() as s:
        dev = s.get(Device, device_id)
        if dev is None:
            raise not_found(f"no device {device_id}")
        dev.revoked = True
        withdrawn = _forget_in_flight(s, select(Device.id).where(Device.id == device_id))
    # An operator's action that withdraws accepted work: in the service's log (it left no trace).
    log.warning("device %s revoked: %d accepted updates in open rounds and %d canary evaluations withdrawn",
                device_id, *withdrawn)
    return {"device_id": device_id, "revoked": True}


def _forget_in_flight(s: Session, device_ids: Select) -> tuple[int, int]:
    """What revoked devices put into work not yet done stops counting: their updates and round slots
    in open rounds and their canary reports on the pending candidate. A secure round's sum cannot be
    taken apart: an input already masked into it stays (its noise bounds it, as any device's)."""
    open_rounds = select(Round.id).where(Round.status == RoundStatus.OPEN)
    # The open rounds' rows locked first, as a close holds its round's: on PostgreSQL a revocation
    # (another process: `revoke-device`) committed between a close's count and its aggregation's
    # read of the updates left a candidate averaged from fewer than `min_count` of them. After
    # the device row (updated above), the order `submit_update` and `checkin` take them in.
    s.execute(open_rounds.order_by(Round.id).with_for_update()).all()   # in one order: two revocations at once
    # Recorded as rejections: the coordinator received those updates, so their rounds count in ε
    # against the coordinator (`queries.noise_seen`) even if nothing else of them stays (a round
    # that then fails with no other update dropped out of it).
    for round_id, device_id in s.execute(select(Update.round_id, Update.device_id).where(
            Update.device_id.in_(device_ids), Update.round_id.in_(open_rounds))).all():
        s.add(Rejection(round_id=round_id, device_id=device_id, reason=wire.E_REVOKED,
                        message="the device was revoked after this update was accepted: it no longer counts"))
    # A secure round's keys posted before its cohort is fixed: a place in it, which a revoked
    # device would fill and then only drop out of. After the fix the graph holds its place.
    s.execute(delete(SecAggMember).where(
        SecAggMember.device_id.in_(device_ids), SecAggMember.round_id.in_(
            select(SecAggRound.round_id).where(SecAggRound.phase == SecAggPhase.KEYS,
                                               SecAggRound.round_id.in_(open_rounds))))
        .execution_options(synchronize_session=False))
    pending = select(Version.id).where(Version.status == VersionStatus.CANDIDATE)
    gone = {}
    for table, done in ((Update, Update.round_id.in_(open_rounds)), (Assignment, Assignment.round_id.in_(open_rounds)),
                        (Evaluation, Evaluation.candidate_version_id.in_(pending))):
        gone[table] = s.execute(delete(table).where(table.device_id.in_(device_ids), done)
                                .execution_options(synchronize_session=False)).rowcount or 0
    return gone[Update], gone[Evaluation]
