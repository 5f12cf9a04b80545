"""Admin API (admin bearer token): keys, rounds, versions, canary, promote/pin/rollback."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from coordinator.api.common import admin_auth, coord, json_body
from coordinator.dashboard import dashboard_data
from coordinator.errors import bad_request
from coordinator.listing import REJECTIONS_MOST, REJECTIONS_SHOWN, ROUNDS_MOST, ROUNDS_SHOWN
from coordinator.states import VERSION_ACTIONS
from protocol import wire

bp = Blueprint("admin", __name__, url_prefix=f"{wire.API_PREFIX}/admin")


@bp.get("/status")
@admin_auth
def status() -> Response:
    return jsonify(coord().status())


@bp.post("/enrollment-keys")
@admin_auth
def create_enrollment_key() -> Response:
    body = json_body()
    if unknown := sorted(set(body) - {"label", "uses", "expires_in_s"}):   # as POST /rounds refuses them
        raise bad_request(f"unknown field(s) {', '.join(unknown)}: label, uses and expires_in_s are known")
    label, uses, ttl = body.get("label", ""), body.get("uses"), body.get("expires_in_s")
    if (not isinstance(label, str) or (uses is not None and (isinstance(uses, bool) or not isinstance(uses, int)))
            or (ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float))))):
        raise bad_request("label must be a string, uses an integer or null, expires_in_s a number or null")
    return jsonify({"enrollment_key": coord().create_enrollment_key(label=label, uses=uses, expires_in_s=ttl)}), 201


@bp.get("/enrollment-keys")
@admin_auth
def enrollment_keys() -> Response:
    return jsonify({"enrollment_keys": coord().list_enrollment_keys()})


@bp.post("/enrollment-keys/<int:key_id>/revoke")
@admin_auth
def revoke_enrollment_key(key_id: int) -> Response:
    devices = json_body(optional=True).get("devices", False)
    if not isinstance(devices, bool):
        raise bad_request("devices must be true or false")
    return jsonify(coord().revoke_enrollment_key(key_id=key_id, devices=devices))


@bp.post("/devices/<device_id>/revoke")
@admin_auth
def revoke_device(device_id: str) -> Response:
    return jsonify(coord().revoke_device(device_id))


@bp.get("/versions")
@admin_auth
def versions() -> Response:
    return jsonify({"versions": coord().list_versions()})


@bp.post("/versions/<version_id>/<action>")
@admin_auth
def version_action(version_id: str, action: str) -> Response:
    if action not in VERSION_ACTIONS:
        raise bad_request(f"action must be one of {list(VERSION_ACTIONS)}")
    return jsonify(coord().admin_decide(version_id, action))


@bp.get("/dashboard")
@admin_auth
def dashboard() -> Response:
    """Everything the operator's page shows (coordinator.dashboard); the page itself is public HTML."""
    return jsonify(dashboard_data(coord()))


@bp.get("/canary")
@admin_auth
def canary() -> Response:
    return jsonify(coord().canary_comparison())


@bp.get("/rounds")
@admin_auth
def rounds() -> Response:
    return jsonify(coord().list_rounds(_limit(ROUNDS_SHOWN, ROUNDS_MOST), _before()))


@bp.post("/rounds")
@admin_auth
def start_round() -> Response:
    body = json_body()
    c = coord()
    rid = c.start_round(**body)
    return jsonify(c.get_round(rid)), 201


@bp.get("/rounds/<int:round_id>")
@admin_auth
def get_round(round_id: int) -> Response:
    return jsonify(coord().get_round(round_id))


@bp.post("/rounds/<int:round_id>/close")
@admin_auth
def close_round(round_id: int) -> Response:
    # ?force=1 (documented), or {"force": true} as the other admin calls take their settings: a
    # body's force was ignored, and the round stayed open without a word.
    body = json_body(optional=True)
    if set(body) - {"force"} or not isinstance(body.get("force", False), bool):
        raise bad_request('the body may hold {"force": true or false} only')
    force = request.args.get("force", "0") in ("1", "true", "yes") or body.get("force", False)
    return jsonify(coord().close_round(round_id, force=force))


@bp.get("/rejections")
@admin_auth
def rejections() -> Response:
    rid = request.args.get("round_id")
    round_id = None if rid is None else _number(rid, wire.MAX_INT)
    if rid is not None and round_id is None:
        raise bad_request("round_id must be a positive integer")
    return jsonify(coord().rejections(round_id, _limit(REJECTIONS_SHOWN, REJECTIONS_MOST), _before()))


def _limit(default: int, most: int) -> int:
    """A listing's `?limit=`: the newest N, at most `most` a page (a larger one read every row
    ever in one request); older pages by `?before=`."""
    limit = _number(request.args.get("limit", str(default)), most)
    if limit is None:
        raise bad_request(f"limit must be an integer from 1 to {most:,}; older pages: ?before= the answer's "
                          "next_before")
    return limit


def _before() -> int | None:
    """A listing's `?before=`: only ids below it (the answer's `next_before` is the next page's)."""
    before = request.args.get("before")
    if before is None:
        return None
    number = _number(before, wire.MAX_INT)
    if number is None:
        raise bad_request("before must be a positive integer (an answer's next_before)")
    return number


def _number(text: str, most: int) -> int | None:
    """A query's integer from 1 to `most`, or None. Its length first: past 4,300 digits int()
    raises ValueError (Python's int_max_str_digits), which was answered 500, not 400."""
    digits = text.lstrip("0")   # "007" was taken as 7, and still is
    if not (text.isascii() and text.isdigit() and len(digits) <= len(str(most))):
        return None
    return int(digits) if 1 <= int(digits or "0") <= most else None
