"""The OpenAPI 3 document for every endpoint (a test checks it matches the URL map exactly)."""

from __future__ import annotations

from typing import Any

from coordinator.listing import REJECTIONS_MOST, ROUNDS_MOST
from coordinator.states import VERSION_ACTIONS
from protocol import secagg_wire as sw
from protocol import wire
from protocol.plan import PLAN_FIELDS, REQUIRED_PLAN_FIELD_NAMES

_ERR = {"$ref": "#/components/schemas/Error"}
_NUM = {"type": "number"}
_INT = {"type": "integer"}
_STR = {"type": "string"}
_BOOL = {"type": "boolean"}
_COUNT = {"type": "number", "minimum": 0}  # finite: a non-finite metric is refused, not a verdict
_ANY_OBJ = {"type": "object", "additionalProperties": True}
_NULL_INT = {"type": "integer", "nullable": True}
_CHANNEL = {"type": "string", "enum": list(wire.USE_CHANNELS)}   # stable | canary


def _page(most: int) -> list[dict[str, Any]]:
    """A listing's page parameters: `limit` up to `most`, `before` an id (the answer's next_before)."""
    return [{"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": most}},
            {"name": "before", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": wire.MAX_INT}}]


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        d["required"] = required
    return d


_ROUND_BODY = {**{k: _INT for k in ("goal_count", "min_count")},
               **{k: _NUM for k in ("overselect", "round_duration_s", "selection_window_s")},
               **{f.name: f.json_schema() for f in PLAN_FIELDS}}

SCHEMAS: dict[str, Any] = {
    "Error": _obj({"error": _STR, "message": _STR, "retry_after": _NUM, "details": _ANY_OBJ}, ["error", "message"]),
    "EnrollRequest": _obj({"protocol_version": _INT, "enrollment_key": _STR, "platform": _STR,
                           "request_id": {"type": "string", "pattern": "^[0-9a-f]{32,64}$"}},
                          ["protocol_version", "enrollment_key"]),
    "EnrollResponse": _obj({"protocol_version": _INT, "device_id": _STR, "token": _STR},
                           ["protocol_version", "device_id", "token"]),
    "CheckinRequest": _obj({"protocol_version": _INT, "eligible": _BOOL,
                            "current_version_id": {"type": "string", "nullable": True}, "can_evaluate": _BOOL,
                            "can_train": _BOOL},
                           ["protocol_version", "eligible"]),
    "TrainPlan": _obj({"round_id": _INT, "round_key": {"type": "string", "pattern": "^[!-~]{1,64}$"},
                       **{f.name: f.json_schema() for f in PLAN_FIELDS}},
                      ["round_id", *REQUIRED_PLAN_FIELD_NAMES]),
    "Task": _obj({"protocol_version": _INT, "kind": {"type": "string", "enum": list(wire.TASK_KINDS)},
                  "retry_after": _NUM, "use_version_id": {"type": "string", "nullable": True},
                  "use_channel": _CHANNEL,
                  "base_version_id": _STR, "plan": {"$ref": "#/components/schemas/TrainPlan"},
                  "time_limit_s": _NUM, "candidate_version_id": _STR,
                  "evaluate_version_ids": {"type": "array", "items": _STR}, "max_eval_examples": _INT,
                  "max_eval_words": _INT,
                  # null before the coordinator holds a version (a strict generated client refused it)
                  "rollout": {"allOf": [{"$ref": "#/components/schemas/RolloutState"}], "nullable": True}},
                 ["protocol_version", "kind", "retry_after"]),
    "RolloutState": _obj({"device_id": _STR, "version_id": _STR, "channel": _CHANNEL,
                          "seq": _INT, "version_seq": _INT, "rollback": _BOOL, "expires_at": _INT, "signature": _STR},
                         ["device_id", "version_id", "channel", "seq", "version_seq", "rollback", "expires_at",
                          "signature"]),
    "UpdateMeta": _obj({"protocol_version": _INT, "round_id": _INT, "base_version_id": _STR, "example_count": _INT,
                        "idempotency_key": _STR, "encoding": {"type": "string", "enum": list(wire.ENCODINGS)}},
                       ["protocol_version", "round_id", "base_version_id", "example_count", "idempotency_key",
                        "encoding"]),
    "UpdateReceipt": _obj({"protocol_version": _INT, "update_id": _INT, "round_id": _INT, "accepted": _BOOL},
                          ["protocol_version", "update_id", "round_id", "accepted"]),
    "VersionMetrics": _obj({"version_id": _STR, "loss_sum": _COUNT, "top1": _COUNT, "top3": _COUNT,
                            "count": _COUNT, **dict.fromkeys(("words", "word_top1", "word_top3", "saved", "typed"),
                                                             {"type": "integer", "minimum": 0})},
                           ["version_id", "loss_sum", "top1", "top3", "count"]),
    "EvaluationReport": _obj({"protocol_version": _INT, "candidate_version_id": _STR,
                              "results": {"type": "array", "minItems": 1, "maxItems": wire.MAX_VERSIONS_PER_EVALUATION,
                                          "items": {"$ref": "#/components/schemas/VersionMetrics"}}},
                             ["protocol_version", "candidate_version_id", "results"]),
    "EvaluationReceipt": _obj({"protocol_version": _INT, "candidate_version_id": _STR, "recorded": _BOOL},
                              ["protocol_version", "candidate_version_id", "recorded"]),
    "SigningKey": _obj({"protocol_version": _INT, "algorithm": _STR, "public_key_hex": _STR,
                        "enroll_request_ids": _BOOL},
                       ["protocol_version", "algorithm", "public_key_hex"]),
    "Round": _ANY_OBJ | {"description": "round state: status, plan, goal/min/selected/accepted/rejected counts, "
                                        "deadline, result_version_id, reason"},
    "Version": _ANY_OBJ | {"description": "version: status, parent, epsilon/delta and privacy record, metrics, "
                                          "canary report count, decisions with their numbers"},
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _op(summary: str, *, ok: dict[str, Any] | None = None, body: dict[str, Any] | None = None,
        security: str | None = None, errors: tuple[int, ...] = (400,), params: list | None = None,
        ok_status: str = "200", binary_ok: bool = False, binary_body: bool = False,
        body_required: bool = True) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    if binary_ok:
        responses[ok_status] = {"description": summary,
                                "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                    "format": "binary"}}}}
    else:
        responses[ok_status] = {"description": "OK", **_json(ok or _ANY_OBJ)}
    codes = set(errors) | ({401, 429} if security else set())   # 429: rate limited, or too many wrong admin tokens
    for code in sorted(codes):
        responses[str(code)] = {"description": "error", **_json(_ERR)}
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if body is not None:
        op["requestBody"] = {"required": body_required, **_json(body)}
    if binary_body:
        op["requestBody"] = {"required": True, "content": {"application/octet-stream": {
            "schema": {"type": "string", "format": "binary"}}}}
    if security == "device":
        op["security"] = [{"deviceToken": [], "deviceId": []}]
    elif security == "admin":
        op["security"] = [{"adminToken": []}]
    elif security == "device_or_admin":
        op["security"] = [{"deviceToken": [], "deviceId": []}, {"adminToken": []}]
    if params:
        op["parameters"] = params
    return op


def _path_param(name: str, kind: str = "string") -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": kind}}


def _secagg_paths(rid: list) -> dict[str, Any]:
    """The secure-aggregation steps (protocol.secagg_wire); GETs answer {"ready": false, ...} until ready."""
    base = sw.PATH_SECAGG.removesuffix("{step}")
    dev = {"security": "device", "params": rid}
    hexes = {"type": "array", "items": _ANY_OBJ}
    return {
        base + "keys": {"post": _op("Secure round: post two X25519 public keys", body=_obj(
            {"protocol_version": _INT, "enc_pk": _STR, "mask_pk": _STR}, ["protocol_version", "enc_pk", "mask_pk"]),
            errors=(400, 403, 404, 409, 413), **dev)},
        base + "roster": {"get": _op("Secure round: this device's index, parameters and neighbours' keys",
                                     errors=(403, 404, 409), **dev)},
        base + "shares": {"post": _op("Secure round: encrypted seed shares, one per neighbour, and the sha256 "
                                      "of the self-mask seed (optional)", body=_obj(
            {"protocol_version": _INT, "shares": hexes, "seed_sha256": _STR}, ["protocol_version", "shares"]),
            errors=(400, 403, 404, 409, 413), **dev)},
        base + "inbox": {"get": _op("Secure round: the shares neighbours encrypted to this device",
                                    errors=(403, 404, 409), **dev)},
        base + "masked": {"post": _op("Secure round: the masked vector (uint32 little-endian)", binary_body=True,
                                      errors=(403, 404, 409, 413, 422), **dev)},
        base + "unmask": {
            "get": _op("Secure round: which neighbours survived and which dropped", errors=(403, 404, 409), **dev),
            "post": _op("Secure round: reveal self-mask shares of survivors, mask-key shares of the dropped",
                        body=_obj({"protocol_version": _INT, "self_shares": hexes, "key_shares": hexes},
                                  ["protocol_version", "self_shares", "key_shares"]),
                        errors=(400, 403, 404, 409, 413), **dev)},
    }


def build() -> dict[str, Any]:
    vid = [_path_param("version_id")]
    rid = [_path_param("round_id", "integer")]
    meta_header = {"name": wire.UPDATE_META_HEADER, "in": "header", "required": True,
                   "description": "UpdateMeta as compact JSON", "schema": {"type": "string"}}
    paths: dict[str, Any] = {
        wire.PATH_ENROLL: {"post": _op("Enroll a device with an enrollment key", ok=_ref("EnrollResponse"),
                                       body=_ref("EnrollRequest"), errors=(400, 401, 409, 413, 429))},
        wire.PATH_CHECKIN: {"post": _op("Check in; get a task (train, evaluate, come back)", ok=_ref("Task"),
                                        body=_ref("CheckinRequest"), security="device", errors=(400, 413))},
        wire.PATH_UPDATES: {"post": _op("Upload a training update (safetensors delta)", ok=_ref("UpdateReceipt"),
                                        binary_body=True, security="device", params=[meta_header],
                                        errors=(400, 403, 404, 409, 413, 422))},
        wire.PATH_EVALUATIONS: {"post": _op("Report canary evaluation metrics", ok=_ref("EvaluationReceipt"),
                                            body=_ref("EvaluationReport"), security="device",
                                            errors=(400, 403, 409, 413))},
        wire.PATH_SIGNING_KEY: {"get": _op("Ed25519 public key that signs manifests", ok=_ref("SigningKey"),
                                           errors=())},
        wire.PATH_VERSION_MANIFEST: {"get": _op("Signed manifest of a version", security="device_or_admin",
                                                params=vid, errors=(400, 401, 404, 429))},
        wire.PATH_VERSION_WEIGHTS: {"get": _op("Weights (safetensors)", binary_ok=True, security="device_or_admin",
                                               params=vid, errors=(400, 401, 404, 429))},
        wire.PATH_VERSION_WEIGHTS_Q8: {"get": _op("Weights as devices download them: int8 rows + scales (safetensors)",
                                                  binary_ok=True, security="device_or_admin", params=vid,
                                                  errors=(400, 401, 404, 429))},
        wire.PATH_VERSION_GRAPH: {"get": _op("Trainable TFLite graph", binary_ok=True, security="device_or_admin",
                                             params=vid, errors=(400, 401, 404, 429))},
        wire.PATH_VERSION_TOKENIZER: {"get": _op("SentencePiece model", binary_ok=True, security="device_or_admin",
                                                 params=vid, errors=(400, 401, 404, 429))},
        wire.PATH_HEALTH: {"get": _op("Liveness, database and free-disk check", errors=(503,))},
        wire.PATH_OPENAPI: {"get": _op("This document", errors=())},
        wire.PATH_METRICS: {"get": {"summary": "Prometheus metrics", "responses": {"200": {
            "description": "text exposition format", "content": {"text/plain": {"schema": _STR}}}}}},
        "/dashboard": {"get": {"summary": "Dashboard (HTML)", "responses": {"200": {
            "description": "HTML page", "content": {"text/html": {"schema": _STR}}}}}},
        "/v1/admin/dashboard": {"get": _op("Round progress, canary, decisions, privacy, devices and version "
                                           "history for the dashboard", security="admin", errors=())},
        "/v1/admin/status": {"get": _op("Stable/candidate versions, latest round", security="admin", errors=())},
        "/v1/admin/enrollment-keys": {"get": _op(
            "Enrollment keys without their secrets, with how many devices each minted", security="admin", errors=(),
            ok=_obj({"enrollment_keys": {"type": "array", "items": _ANY_OBJ}}, ["enrollment_keys"])), "post": _op(
            "Create an enrollment key", ok_status="201", security="admin", errors=(400, 413),
            ok=_obj({"enrollment_key": _STR}, ["enrollment_key"]),
            body=_obj({"label": _STR, "uses": {"type": "integer", "nullable": True},
                       "expires_in_s": {"type": "number", "nullable": True}}))},
        "/v1/admin/enrollment-keys/{key_id}/revoke": {"post": _op(
            "Stop an enrollment key enrolling devices; with devices, revoke those it minted too", security="admin",
            params=[_path_param("key_id", "integer")], errors=(400, 404, 413),
            ok=_obj({"id": {"type": "integer"}, "label": _STR, "revoked": {"type": "boolean"},
                     "devices_revoked": {"type": "integer"}}, ["id", "revoked", "devices_revoked"]),
            body=_obj({"devices": {"type": "boolean"}}), body_required=False)},
        "/v1/admin/devices/{device_id}/revoke": {"post": _op("Revoke a device", security="admin",
                                                             params=[_path_param("device_id")], errors=(404,))},
        "/v1/admin/versions": {"get": _op("List versions", security="admin", errors=(),
                                          ok=_obj({"versions": {"type": "array", "items": _ref("Version")}}))},
        "/v1/admin/versions/{version_id}/{action}": {"post": _op(
            " | ".join(VERSION_ACTIONS) + " a version", ok=_ref("Version"), security="admin",
            params=[*vid, {"name": "action", "in": "path", "required": True,
                           "schema": {"type": "string", "enum": list(VERSION_ACTIONS)}}],
            errors=(400, 404, 409))},
        "/v1/admin/canary": {"get": _op("Canary comparison of candidate vs stable", security="admin", errors=())},
        "/v1/admin/rounds": {
            "get": _op("The newest `limit` (default 100, at most 1000) rounds below round `before`, oldest first, "
                       "their `total`, and `next_before`, the `before` of the page older than this (null at the "
                       "oldest)", security="admin", errors=(400,),
                       ok=_obj({"rounds": {"type": "array", "items": _ref("Round")}, "total": _INT,
                                "next_before": _NULL_INT}),
                       params=_page(ROUNDS_MOST)),
            "post": _op("Start a round on the stable version", ok=_ref("Round"), ok_status="201", security="admin",
                        errors=(400, 409, 413), body=_obj(_ROUND_BODY))},
        "/v1/admin/rounds/{round_id}": {"get": _op("One round", ok=_ref("Round"), security="admin", params=rid,
                                                   errors=(404,))},
        "/v1/admin/rounds/{round_id}/close": {"post": _op(
            "Close a round now (aggregate if it has the minimum; ?force=1 before the deadline)", ok=_ref("Round"),
            security="admin", errors=(404,),
            params=[*rid, {"name": "force", "in": "query", "required": False, "schema": _STR}])},
        "/v1/admin/rejections": {"get": _op("The newest `limit` (default 1000, at most 10000) rejected updates "
                                            "with an id below `before`, with reasons, oldest first; their `total`, "
                                            "`by_reason`, and `next_before`, the `before` of the page older than "
                                            "this (null at the oldest)", security="admin", errors=(400, 404),
                                            params=[{"name": "round_id", "in": "query", "required": False,
                                                     "schema": _INT}, *_page(REJECTIONS_MOST)])},
    }
    paths |= _secagg_paths(rid)
    return {
        "openapi": "3.0.3",
        "info": {"title": "FedKeys coordinator", "version": str(wire.PROTOCOL_VERSION),
                 "description": "Federated learning coordinator for the FedKeys keyboard. Weights and updates are "
                                "safetensors bodies; every error is a JSON Error."},
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "deviceToken": {"type": "http", "scheme": "bearer"},
                "deviceId": {"type": "apiKey", "in": "header", "name": wire.DEVICE_HEADER},
                "adminToken": {"type": "http", "scheme": "bearer"},
            },
        },
    }
