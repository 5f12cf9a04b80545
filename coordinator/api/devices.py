"""The device-facing wire protocol (paths and shapes from protocol.wire)."""

from __future__ import annotations

import hashlib

from flask import Blueprint, Response, g, jsonify, request

from coordinator.api.common import (
    client_address,
    coord,
    device_auth,
    device_or_admin_auth,
    json_body,
    parse,
    rate_limit,
    read_body,
)
from coordinator.errors import ApiError
from protocol import wire

bp = Blueprint("devices", __name__)


def _flask_path(template: str) -> str:
    return template.replace("{version_id}", "<version_id>")


@bp.post(wire.PATH_ENROLL)
def enroll() -> Response:
    rate_limit("ip:" + client_address())  # slows enrollment-key guessing
    req = parse(wire.EnrollRequest, json_body())
    return jsonify(coord().enroll(req).to_dict())


@bp.post(wire.PATH_CHECKIN)
@device_auth
def checkin() -> Response:
    rate_limit(f"key:{coord().enrollment_key_of(g.device_id)}", "fedkeys_key_ratelimit")
    req = parse(wire.CheckinRequest, json_body())
    task = coord().checkin(g.device_id, req)
    resp = jsonify(task.to_dict())
    resp.headers[wire.RETRY_AFTER_HEADER] = str(int(task.retry_after))
    return resp


@bp.post(wire.PATH_UPDATES)
@device_auth
def upload_update() -> Response:
    if request.content_length and request.content_length <= wire.MAX_UPDATE_BYTES:
        coord().uploads.room_for(request.content_length)   # a full disk: 503 before the body is read
    body = read_body(wire.MAX_UPDATE_BYTES, "updates")
    if not body:
        raise ApiError(400, wire.E_BAD_REQUEST, "empty body: expected a safetensors update")
    receipt = coord().submit_update(g.device_id, request.headers.get(wire.UPDATE_META_HEADER), body)
    return jsonify(receipt.to_dict())


@bp.post(wire.PATH_EVALUATIONS)
@device_auth
def report_evaluation() -> Response:
    report = parse(wire.EvaluationReport, json_body())
    return jsonify(coord().report_evaluation(g.device_id, report).to_dict())


@bp.get(wire.PATH_SIGNING_KEY)
def signing_key() -> Response:
    return jsonify(wire.SigningKey(public_key_hex=coord().public_key_hex, enroll_request_ids=True).to_dict())


def _file(version_id: str, kind: str) -> Response:
    if not wire.is_safe_id(version_id):
        raise ApiError(400, wire.E_BAD_REQUEST, "malformed version id")
    data, mimetype = coord().version_file(version_id, kind)
    resp = Response(data, mimetype=mimetype)
    resp.headers["Cache-Control"] = "public, max-age=31536000, immutable"  # versions never change
    # A download cut off asks for the rest (Range, If-Range on this ETag): on a link that drops every
    # few MB the 11 MB graph would otherwise start again from its first byte each time.
    resp.set_etag(hashlib.sha256(data).hexdigest())
    return resp.make_conditional(request, accept_ranges=True, complete_length=len(data))


@bp.get(_flask_path(wire.PATH_VERSION_MANIFEST))
@device_or_admin_auth
def version_manifest(version_id: str) -> Response:
    return _file(version_id, "manifest")


@bp.get(_flask_path(wire.PATH_VERSION_WEIGHTS))
@device_or_admin_auth
def version_weights(version_id: str) -> Response:
    return _file(version_id, "weights")


@bp.get(_flask_path(wire.PATH_VERSION_WEIGHTS_Q8))
@device_or_admin_auth
def version_weights_q8(version_id: str) -> Response:
    return _file(version_id, "weights_q8")


@bp.get(_flask_path(wire.PATH_VERSION_GRAPH))
@device_or_admin_auth
def version_graph(version_id: str) -> Response:
    return _file(version_id, "graph")


@bp.get(_flask_path(wire.PATH_VERSION_TOKENIZER))
@device_or_admin_auth
def version_tokenizer(version_id: str) -> Response:
    return _file(version_id, "tokenizer")
