"""Enrollment keys, device enrollment and authentication: who may join, under which key's limits.

Every key has a use count and a lifetime, so a
leaked key mints few sybils, and each device remembers the key it was minted with: all
devices of one key share one check-in budget (`Coordinator.enrollment_key_of`).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select

from coordinator import keys
from coordinator.errors import ApiError, bad_request, not_found
from coordinator.models import Device, EnrollmentKey, utcnow
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
    if not (isinstance(ttl, (int, float)) and 0 < ttl <= 3650 * 86400):
        raise bad_request("expires_in_s must be in (0, 10 years]")
    key = keys.new_secret()
    with coord.tx() as s:
        s.add(EnrollmentKey(key_hash=keys.hash_secret(key), label=label[:128], uses_left=uses, revoked=False,
                            expires_at=utcnow() + timedelta(seconds=ttl)))
    return key


def enroll(coord: Coordinator, req: wire.EnrollRequest) -> wire.EnrollResponse:
    with coord.tx() as s:
        ek = s.scalar(select(EnrollmentKey).where(EnrollmentKey.key_hash == keys.hash_secret(req.enrollment_key)))
        if (ek is None or ek.revoked or (ek.uses_left is not None and ek.uses_left <= 0)
                or (ek.expires_at is not None and utcnow() >= ek.expires_at)):
            raise ApiError(401, wire.E_UNAUTHORIZED, "enrollment key unknown, revoked, expired or used up")
        if ek.uses_left is not None:
            ek.uses_left -= 1
        device_id = "d-" + keys.new_secret()[:22].replace("_", "x").replace("-", "y")
        token = keys.new_secret()
        s.add(Device(id=device_id, token_hash=keys.hash_secret(token), enrollment_key_id=ek.id,
                     platform=req.platform, revoked=False))
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


def authenticate(coord: Coordinator, device_id: str | None, token: str | None) -> str:
    """Return the device id if the token is that device's, else 401."""
    if not device_id or not token:
        raise ApiError(401, wire.E_UNAUTHORIZED, f"missing {wire.DEVICE_HEADER} or bearer token")
    with coord._sessions() as s:
        dev = s.get(Device, device_id[: wire.MAX_ID_LEN])
        if dev is None or dev.revoked or not keys.secret_matches(token, dev.token_hash):
            raise ApiError(401, wire.E_UNAUTHORIZED, "unknown device or wrong token")
    return device_id


def revoke_device(coord: Coordinator, device_id: str) -> None:
    with coord.tx() as s:
        dev = s.get(Device, device_id)
        if dev is None:
            raise not_found(f"no device {device_id}")
        dev.revoked = True
