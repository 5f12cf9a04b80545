"""Device endpoints of secure-aggregation rounds (protocol.secagg_wire); logic in coordinator.secagg."""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify

from coordinator import secagg
from coordinator.api.common import bad_message, coord, device_auth, json_body, parse, read_body
from protocol import secagg_wire as sw
from protocol import wire

bp = Blueprint("secagg", __name__)
_BASE = sw.PATH_SECAGG.removesuffix("{step}").replace("{round_id}", "<int:round_id>")


def _json(body: dict) -> Response:
    resp = jsonify(body)
    if not body.get("ready", True):
        resp.headers[wire.RETRY_AFTER_HEADER] = str(int(body["retry_after"]))
    return resp


def _parse(fn, *args):
    try:
        return fn(*args)
    except wire.WireError as e:
        raise bad_message(e) from e


@bp.post(_BASE + "keys")
@device_auth
def keys(round_id: int) -> Response:
    return _json(secagg.post_keys(coord(), g.device_id, round_id, parse(sw.SecAggKeys, json_body())))


@bp.get(_BASE + "roster")
@device_auth
def roster(round_id: int) -> Response:
    return _json(secagg.roster(coord(), g.device_id, round_id))


@bp.post(_BASE + "shares")
@device_auth
def shares(round_id: int) -> Response:
    return _json(_parse(secagg.post_shares, coord(), g.device_id, round_id, json_body()))


@bp.get(_BASE + "inbox")
@device_auth
def inbox(round_id: int) -> Response:
    return _json(secagg.inbox(coord(), g.device_id, round_id))


@bp.post(_BASE + "masked")
@device_auth
def masked(round_id: int) -> Response:
    return _json(secagg.post_masked(coord(), g.device_id, round_id, read_body(wire.MAX_UPDATE_BYTES, "masked vectors")))


@bp.get(_BASE + "unmask")
@device_auth
def unmask_request(round_id: int) -> Response:
    return _json(secagg.unmask(coord(), g.device_id, round_id))


@bp.post(_BASE + "unmask")
@device_auth
def reveal(round_id: int) -> Response:
    return _json(_parse(secagg.post_reveal, coord(), g.device_id, round_id, json_body()))
