"""Hostile input, table-driven: every bad request gets its own 4xx JSON error, never a 5xx, and
the round's aggregate afterwards is, bit for bit, the aggregate of only the valid updates.

One coordinator serves the whole table over real loopback HTTP (`coordinator_fakes.serve`).
Requests whose exact bytes matter (truncated bodies, dot segments in paths) go through
`http.client` on a raw socket so no client library tidies them up first.
"""

from __future__ import annotations

import http.client
import json
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np
import requests

from coordinator import aggregation
from protocol import artifact, wire
from tests.helpers.coordinator_fakes import (
    SHAPES,
    FakeDevice,
    make_config,
    make_version,
    random_delta,
    serve,
)

MAX_BODY = 256 * 1024          # the served app's max_body_bytes: "oversized" is cheap to send
EXAMPLE_CAP = 100              # max_example_weight: one valid update is capped
TENSORS = [artifact.TensorSpec(k, s) for k, s in SHAPES.items()]


@dataclass
class Ctx:
    """The world the table's requests run in."""

    url: str
    admin_token: str
    key: str                   # a valid enrollment key
    a: FakeDevice              # selected in the open round; sends only junk
    b: FakeDevice              # another enrolled device (its token is "someone else's")
    outsider: FakeDevice       # enrolled, never checked in: not selected
    revoked: FakeDevice
    v1: FakeDevice             # valid uploader (its first upload is accepted)
    closed_round: int          # a round `a` was selected for, force-closed
    round_id: int              # the open round
    v1_key: str                # v1's accepted idempotency key
    v1_update_id: int

    def post(self, path: str, **kw) -> requests.Response:
        return requests.post(self.url + path, timeout=10, **kw)

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, timeout=10, **kw)

    def admin(self, method: str, path: str, token: str | None = None, **kw) -> requests.Response:
        headers = {wire.AUTH_HEADER: f"Bearer {token or self.admin_token}"} | kw.pop("headers", {})
        return requests.request(method, self.url + path, headers=headers, timeout=10, **kw)

    def upload(self, dev: FakeDevice, body: bytes | None = None, *, delta: dict | None = None,
               encoding: str = "float32", **meta_over) -> requests.Response:
        meta = {"protocol_version": wire.PROTOCOL_VERSION, "round_id": self.round_id, "base_version_id": "v0000",
                "example_count": 5, "idempotency_key": uuid.uuid4().hex, "encoding": encoding} | meta_over
        if body is None:
            dtype = encoding if encoding in wire.ENCODINGS else "float32"
            body = artifact.encode_weights(delta if delta is not None else random_delta(99), dtype)
        return self.post(wire.PATH_UPDATES, data=body, headers=dev.headers | {
            wire.UPDATE_META_HEADER: json.dumps(meta), "Content-Type": wire.SAFETENSORS_MEDIA_TYPE})

    def raw(self, method: str, path: str, *, headers: dict[str, str] | None = None, body: bytes = b"",
            content_length: int | None = None) -> tuple[int, bytes]:
        """Exact bytes on the wire; `content_length` may lie (a truncated body)."""
        u = urlsplit(self.url)
        with socket.create_connection((u.hostname, u.port), timeout=10) as sock:
            head = [f"{method} {path} HTTP/1.1", f"Host: {u.netloc}", "Connection: close",
                    f"Content-Length: {len(body) if content_length is None else content_length}"]
            head += [f"{k}: {v}" for k, v in (headers or {}).items()]
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
            sock.shutdown(socket.SHUT_WR)        # the client hangs up mid-body
            resp = http.client.HTTPResponse(sock)
            resp.begin()
            return resp.status, resp.read()


@dataclass(frozen=True)
class Case:
    name: str
    status: int
    error: str
    send: Callable[[Ctx], requests.Response | tuple[int, bytes]]


def _json(**kw) -> bytes:
    return json.dumps(kw).encode()


def _delta(**override: np.ndarray) -> dict[str, np.ndarray]:
    return random_delta(5) | override


def _with_value(value: float) -> dict[str, np.ndarray]:
    emb = random_delta(6)["embedding"].copy()
    emb[1, 2] = value
    return _delta(embedding=emb)


def _huge_header() -> bytes:
    header = json.dumps({f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
                         for i in range(1500)}).encode()
    return len(header).to_bytes(8, "little") + header


def _admin_h(c: Ctx) -> dict[str, str]:
    return {wire.AUTH_HEADER: f"Bearer {c.admin_token}"}


def _eval_report(candidate: str, hits: int = 1, count: int = 1) -> dict:
    return {"protocol_version": wire.PROTOCOL_VERSION, "candidate_version_id": candidate,
            "results": [{"version_id": candidate, "loss_sum": 1.0, "top1": hits, "top3": hits, "count": count}]}


_ENROLL_OK = {"protocol_version": wire.PROTOCOL_VERSION, "enrollment_key": "x"}
_CHECKIN = {"protocol_version": wire.PROTOCOL_VERSION, "eligible": True}
E = wire

CASES: list[Case] = [
    # --- enrollment ---------------------------------------------------------------------------
    Case("enroll: wrong enrollment key", 401, E.E_UNAUTHORIZED,
         lambda c: c.post(E.PATH_ENROLL, json=_ENROLL_OK | {"enrollment_key": "not-" + c.key})),
    Case("enroll: missing enrollment key", 400, E.E_BAD_REQUEST,
         lambda c: c.post(E.PATH_ENROLL, json={"protocol_version": 1})),
    Case("enroll: malformed JSON", 400, E.E_BAD_REQUEST,
         lambda c: c.post(E.PATH_ENROLL, data=b'{"enrollment_key": ', headers={"Content-Type": "application/json"})),
    Case("enroll: JSON array, not object", 400, E.E_BAD_REQUEST,
         lambda c: c.post(E.PATH_ENROLL, json=[c.key])),
    Case("enroll: future protocol version", 400, E.E_PROTOCOL_VERSION,
         lambda c: c.post(E.PATH_ENROLL, json=_ENROLL_OK | {"protocol_version": 99, "enrollment_key": c.key})),
    Case("enroll: oversized JSON body", 413, E.E_TOO_LARGE,
         lambda c: c.post(E.PATH_ENROLL, json=_ENROLL_OK | {"platform": "p" * (E.MAX_JSON_BYTES + 10)})),
    Case("enroll: platform too long", 400, E.E_BAD_REQUEST,
         lambda c: c.post(E.PATH_ENROLL, json=_ENROLL_OK | {"enrollment_key": c.key, "platform": "p" * 500})),
    Case("enroll: JSON nested 30,000 deep", 400, E.E_BAD_REQUEST,
         lambda c: c.post(E.PATH_ENROLL, data=b"[" * 30000 + b"]" * 30000,
                          headers={"Content-Type": "application/json"})),
    Case("enroll: lone surrogate in the key", 400, E.E_BAD_REQUEST,
         lambda c: c.post(E.PATH_ENROLL, data=b'{"protocol_version": 1, "enrollment_key": "\\ud800"}',
                          headers={"Content-Type": "application/json"})),
    Case("enroll: a number of 5,000 digits", 400, E.E_BAD_REQUEST,
         lambda c: c.post(E.PATH_ENROLL, data=b'{"protocol_version": 1, "n": ' + b"9" * 5000 + b"}",
                          headers={"Content-Type": "application/json"})),
    Case("enroll: NUL in the platform", 400, E.E_BAD_REQUEST,
         lambda c: c.post(E.PATH_ENROLL, json=_ENROLL_OK | {"enrollment_key": c.key, "platform": "a\u0000b"})),
    Case("enroll: chunked body over the JSON limit", 413, E.E_TOO_LARGE,
         lambda c: c.post(E.PATH_ENROLL, data=iter([b'{"platform": "' + b"p" * 50000] * 3 + [b'"}']),
                          headers={"Content-Type": "application/json"})),
    Case("checkin: JSON objects nested 10,000 deep", 400, E.E_BAD_REQUEST,
         lambda c: c.post(E.PATH_CHECKIN, data=b'{"a":' * 10000 + b"1" + b"}" * 10000,
                          headers=c.a.headers | {"Content-Type": "application/json"})),
    Case("update: safetensors header of 100 kB (empty tensors)", 422, E.E_MALFORMED,
         lambda c: c.upload(c.a, body=_huge_header())),
    Case("enroll: key of wrong type", 400, E.E_BAD_REQUEST,
         lambda c: c.post(E.PATH_ENROLL, json=_ENROLL_OK | {"enrollment_key": 12345})),
    Case("enroll: form-encoded body (wrong content type)", 400, E.E_BAD_REQUEST,
         lambda c: c.post(E.PATH_ENROLL, data={"enrollment_key": c.key})),
    Case("enroll: invalid UTF-8", 400, E.E_BAD_REQUEST,
         lambda c: c.post(E.PATH_ENROLL, data=b'{"enrollment_key": "\xff\xfe"}',
                          headers={"Content-Type": "application/json"})),
    Case("enroll: truncated body (Content-Length lies)", 400, E.E_BAD_REQUEST,
         lambda c: c.raw("POST", E.PATH_ENROLL, headers={"Content-Type": "application/json"},
                         body=b'{"protocol_version": 1, "enrol', content_length=400)),
    # --- authentication -----------------------------------------------------------------------
    Case("checkin: no credentials", 401, E.E_UNAUTHORIZED, lambda c: c.post(E.PATH_CHECKIN, json=_CHECKIN)),
    Case("checkin: forged token", 401, E.E_UNAUTHORIZED,
         lambda c: c.post(E.PATH_CHECKIN, json=_CHECKIN, headers=E.device_headers(c.a.device_id, "forged" * 7))),
    Case("checkin: another device's token", 401, E.E_UNAUTHORIZED,
         lambda c: c.post(E.PATH_CHECKIN, json=_CHECKIN, headers=E.device_headers(c.a.device_id, c.b.token))),
    Case("checkin: unknown device id", 401, E.E_UNAUTHORIZED,
         lambda c: c.post(E.PATH_CHECKIN, json=_CHECKIN, headers=E.device_headers("d-nobody", c.a.token))),
    Case("checkin: token without device header", 401, E.E_UNAUTHORIZED,
         lambda c: c.post(E.PATH_CHECKIN, json=_CHECKIN, headers={E.AUTH_HEADER: f"Bearer {c.a.token}"})),
    Case("checkin: Basic instead of Bearer", 401, E.E_UNAUTHORIZED,
         lambda c: c.post(E.PATH_CHECKIN, json=_CHECKIN, headers={E.DEVICE_HEADER: c.a.device_id,
                                                                  E.AUTH_HEADER: f"Basic {c.a.token}"})),
    Case("checkin: 8 kB device id", 401, E.E_UNAUTHORIZED,
         lambda c: c.post(E.PATH_CHECKIN, json=_CHECKIN, headers=E.device_headers("d" * 8000, c.a.token))),
    Case("checkin: NUL in the device header", 400, E.E_BAD_REQUEST,
         lambda c: c.raw("POST", E.PATH_CHECKIN, body=json.dumps(_CHECKIN).encode(),
                         headers={"Content-Type": "application/json", E.DEVICE_HEADER: "a\x00b",
                                  E.AUTH_HEADER: f"Bearer {c.a.token}"})),
    Case("checkin: revoked device", 401, E.E_UNAUTHORIZED,
         lambda c: c.post(E.PATH_CHECKIN, json=_CHECKIN, headers=c.revoked.headers)),
    Case("checkin: admin token is not a device token", 401, E.E_UNAUTHORIZED,
         lambda c: c.post(E.PATH_CHECKIN, json=_CHECKIN, headers=E.device_headers(c.a.device_id, c.admin_token))),
    # --- check-in bodies ----------------------------------------------------------------------
    Case("checkin: eligible is a string", 400, E.E_BAD_REQUEST,
         lambda c: c.post(E.PATH_CHECKIN, json=_CHECKIN | {"eligible": "yes"}, headers=c.a.headers)),
    Case("checkin: empty body", 400, E.E_BAD_REQUEST,
         lambda c: c.post(E.PATH_CHECKIN, data=b"", headers=c.a.headers)),
    Case("checkin: truncated JSON", 400, E.E_BAD_REQUEST,
         lambda c: c.post(E.PATH_CHECKIN, data=json.dumps(_CHECKIN).encode()[:-4],
                          headers=c.a.headers | {"Content-Type": "application/json"})),
    Case("checkin: GET instead of POST", 405, E.E_METHOD, lambda c: c.get(E.PATH_CHECKIN, headers=c.a.headers)),
    # --- update metadata ----------------------------------------------------------------------
    Case("update: no metadata header", 400, E.E_BAD_REQUEST,
         lambda c: c.post(E.PATH_UPDATES, data=artifact.encode_weights(_delta()), headers=c.a.headers)),
    Case("update: metadata header not JSON", 400, E.E_BAD_REQUEST,
         lambda c: c.post(E.PATH_UPDATES, data=artifact.encode_weights(_delta()),
                          headers=c.a.headers | {E.UPDATE_META_HEADER: "{round_id: 1"})),
    Case("update: metadata header nested 2,000 deep", 400, E.E_BAD_REQUEST,
         lambda c: c.post(E.PATH_UPDATES, data=artifact.encode_weights(_delta()),
                          headers=c.a.headers | {E.UPDATE_META_HEADER: "[" * 2000})),
    Case("update: lone surrogate in the metadata's base version", 400, E.E_BAD_REQUEST,
         lambda c: c.upload(c.a, base_version_id="\ud800")),
    Case("update: lone surrogate in the metadata's idempotency key", 400, E.E_BAD_REQUEST,
         lambda c: c.upload(c.a, idempotency_key="k\ud800")),
    Case("update: NUL in the metadata's base version", 400, E.E_BAD_REQUEST,
         lambda c: c.upload(c.a, base_version_id="v\x00")),
    Case("update: NUL in the metadata's idempotency key", 400, E.E_BAD_REQUEST,
         lambda c: c.upload(c.a, idempotency_key="k\x00")),
    Case("update: v1's idempotency key with other contents", 409, E.E_DUPLICATE,
         lambda c: c.upload(c.v1, idempotency_key=c.v1_key)),
    Case("update: metadata header over 4 kB", 400, E.E_BAD_REQUEST,
         lambda c: c.upload(c.a, idempotency_key="k" * 5000)),
    Case("update: unknown encoding", 400, E.E_BAD_REQUEST, lambda c: c.upload(c.a, encoding="float8")),
    Case("update: round id 0", 400, E.E_BAD_REQUEST, lambda c: c.upload(c.a, round_id=0)),
    Case("update: round id beyond int32", 400, E.E_BAD_REQUEST, lambda c: c.upload(c.a, round_id=2**40)),
    Case("update: example count a float", 400, E.E_BAD_REQUEST, lambda c: c.upload(c.a, example_count=2.5)),
    Case("update: huge example count", 400, E.E_BAD_REQUEST, lambda c: c.upload(c.a, example_count=2**63)),
    Case("update: negative example count", 422, E.E_EXAMPLE_COUNT, lambda c: c.upload(c.a, example_count=-5)),
    Case("update: zero examples", 422, E.E_EXAMPLE_COUNT, lambda c: c.upload(c.a, example_count=0)),
    Case("update: more examples than the plan allows", 422, E.E_EXAMPLE_COUNT,
         lambda c: c.upload(c.a, example_count=10**6)),
    Case("update: other protocol version", 400, E.E_BAD_REQUEST, lambda c: c.upload(c.a, protocol_version=2)),
    # --- update bodies ------------------------------------------------------------------------
    Case("update: empty body", 400, E.E_BAD_REQUEST, lambda c: c.upload(c.a, body=b"")),
    Case("update: random bytes", 422, E.E_MALFORMED,
         lambda c: c.upload(c.a, body=np.random.default_rng(1).bytes(777))),
    Case("update: safetensors cut in half", 422, E.E_MALFORMED,
         lambda c: c.upload(c.a, body=artifact.encode_weights(_delta())[:150])),
    Case("update: safetensors header claims 2^60 bytes", 422, E.E_MALFORMED,
         lambda c: c.upload(c.a, body=(2**60).to_bytes(8, "little") + b"{}")),
    Case("update: JSON body (wrong content type)", 422, E.E_MALFORMED,
         lambda c: c.post(E.PATH_UPDATES, json={"embedding": [1, 2]}, headers=c.a.headers | {
             E.UPDATE_META_HEADER: json.dumps({"protocol_version": 1, "round_id": c.round_id,
                                               "base_version_id": "v0000", "example_count": 5,
                                               "idempotency_key": "j", "encoding": "float32"})})),
    Case("update: oversized body", 413, E.E_TOO_LARGE, lambda c: c.upload(c.a, body=b"\0" * (MAX_BODY + 1))),
    # The server's stream stops at max_body_bytes without a word: the cut body read as a bad update.
    Case("update: chunked body over the service's cap", 413, E.E_TOO_LARGE,
         lambda c: c.upload(c.a, body=iter([b"\0" * 65536] * (MAX_BODY // 65536 + 2)))),
    Case("update: truncated upload (client hangs up)", 400, E.E_BAD_REQUEST,
         lambda c: c.raw("POST", E.PATH_UPDATES, body=artifact.encode_weights(_delta())[:100], content_length=5000,
                         headers=c.a.headers | {E.UPDATE_META_HEADER: json.dumps({
                             "protocol_version": 1, "round_id": c.round_id, "base_version_id": "v0000",
                             "example_count": 5, "idempotency_key": "t", "encoding": "float32"})})),
    Case("update: wrong tensor name", 422, E.E_MALFORMED,
         lambda c: c.upload(c.a, delta={("Embedding" if k == "embedding" else k): v for k, v in _delta().items()})),
    Case("update: missing tensor", 422, E.E_MALFORMED,
         lambda c: c.upload(c.a, delta={k: v for k, v in _delta().items() if k != "out_bias"})),
    Case("update: extra tensor", 422, E.E_MALFORMED,
         lambda c: c.upload(c.a, delta=_delta(extra=np.zeros(3, np.float32)))),
    Case("update: wrong shape", 422, E.E_MALFORMED,
         lambda c: c.upload(c.a, delta=_delta(embedding=np.zeros((4, 8), np.float32)))),
    Case("update: transposed-size shape", 422, E.E_MALFORMED,
         lambda c: c.upload(c.a, delta=_delta(lstm_bias=np.zeros((6, 1), np.float32)))),
    Case("update: float64 tensors", 422, E.E_MALFORMED,
         lambda c: c.upload(c.a, body=artifact.encode_weights(_delta(), "float64"))),
    Case("update: int32 tensors", 422, E.E_MALFORMED,
         lambda c: c.upload(c.a, body=artifact.encode_weights(_delta(), "int32"))),
    Case("update: float16 body declared float32", 422, E.E_MALFORMED,
         lambda c: c.upload(c.a, body=artifact.encode_weights(_delta(), "float16"), encoding="float32")),
    Case("update: mixed dtypes", 422, E.E_MALFORMED,
         lambda c: c.upload(c.a, body=artifact.encode_weights(_delta(out_bias=np.zeros(8, np.float16))))),
    Case("update: a NaN", 422, E.E_MALFORMED, lambda c: c.upload(c.a, delta=_with_value(float("nan")))),
    Case("update: an +Inf", 422, E.E_MALFORMED, lambda c: c.upload(c.a, delta=_with_value(float("inf")))),
    Case("update: a -Inf in float16", 422, E.E_MALFORMED,
         lambda c: c.upload(c.a, delta=_with_value(float("-inf")), encoding="float16")),
    Case("update: norm 1000x the clip bound", 422, E.E_NORM,
         lambda c: c.upload(c.a, delta=random_delta(7, scale=1000.0))),
    Case("update: one huge coordinate", 422, E.E_NORM, lambda c: c.upload(c.a, delta=_with_value(6e4))),
    # --- round and version logic ----------------------------------------------------------------
    Case("update: stale base version", 409, E.E_STALE, lambda c: c.upload(c.a, base_version_id="v-older")),
    Case("update: future base version", 409, E.E_STALE, lambda c: c.upload(c.a, base_version_id="v9999-future")),
    Case("update: base version with path tricks", 409, E.E_STALE,
         lambda c: c.upload(c.a, base_version_id="../../v0000")),
    Case("update: unknown round", 404, E.E_UNKNOWN_ROUND, lambda c: c.upload(c.a, round_id=4242)),
    Case("update: closed round", 409, E.E_LATE, lambda c: c.upload(c.a, round_id=c.closed_round)),
    Case("update: device not selected", 403, E.E_NOT_SELECTED, lambda c: c.upload(c.outsider)),
    Case("update: second update, new idempotency key", 409, E.E_DUPLICATE,
         lambda c: c.upload(c.v1, delta=random_delta(55))),
    Case("update: revoked device", 401, E.E_UNAUTHORIZED, lambda c: c.upload(c.revoked)),
    Case("update: another device's token", 401, E.E_UNAUTHORIZED,
         lambda c: c.post(E.PATH_UPDATES, data=artifact.encode_weights(_delta()),
                          headers=E.device_headers(c.v1.device_id, c.a.token))),
    # --- versions -------------------------------------------------------------------------------
    Case("version: no credentials", 401, E.E_UNAUTHORIZED,
         lambda c: c.get(E.version_path(E.PATH_VERSION_WEIGHTS, "v0000"))),
    Case("version: unknown id", 404, E.E_NOT_FOUND,
         lambda c: c.get(E.version_path(E.PATH_VERSION_MANIFEST, "v7777"), headers=c.a.headers)),
    Case("version: dot segments in path", 404, E.E_NOT_FOUND,
         lambda c: c.raw("GET", "/v1/versions/../../../../etc/passwd/manifest", headers=c.a.headers)),
    Case("version: encoded slashes in id", 404, E.E_NOT_FOUND,
         lambda c: c.raw("GET", "/v1/versions/..%2F..%2Fcoordinator.db/manifest", headers=c.a.headers)),
    Case("version: NUL byte in id", 400, E.E_BAD_REQUEST,
         lambda c: c.raw("GET", "/v1/versions/v0000%00/weights", headers=c.a.headers)),
    Case("version: id with a dot-dot", 404, E.E_NOT_FOUND,
         lambda c: c.get("/v1/versions/..v0000/weights", headers=c.a.headers)),
    Case("version: 600-character id", 400, E.E_BAD_REQUEST,
         lambda c: c.get("/v1/versions/" + "a" * 600 + "/manifest", headers=c.a.headers)),
    # --- evaluations ----------------------------------------------------------------------------
    Case("evaluation: version not in canary", 409, E.E_NOT_EVALUATING,
         lambda c: c.post(E.PATH_EVALUATIONS, json=_eval_report("v0000"), headers=c.a.headers)),
    Case("evaluation: more hits than tokens", 400, E.E_BAD_REQUEST,
         lambda c: c.post(E.PATH_EVALUATIONS, json=_eval_report("v0000", hits=9, count=3), headers=c.a.headers)),
    Case("evaluation: a fraction of a token", 400, E.E_BAD_REQUEST,   # loss_sum / count overflowed the mean: 500
         lambda c: c.post(E.PATH_EVALUATIONS, json=_eval_report("v0000", hits=0) | {"results": [
             {"version_id": "v0000", "loss_sum": 1e12, "top1": 0, "top3": 0, "count": 1e-296}]},
                          headers=c.a.headers)),
    Case("evaluation: results not a list", 400, E.E_BAD_REQUEST,
         lambda c: c.post(E.PATH_EVALUATIONS, json=_eval_report("v0000") | {"results": "all good"},
                          headers=c.a.headers)),
    Case("evaluation: no credentials", 401, E.E_UNAUTHORIZED,
         lambda c: c.post(E.PATH_EVALUATIONS, json=_eval_report("v0000"))),
    # --- admin ----------------------------------------------------------------------------------
    # --- secure aggregation --------------------------------------------------------------------
    *(Case(f"secure round: {step} of a round id no column holds", 404, E.E_UNKNOWN_ROUND,   # was a 500
           lambda c, step=step: c.get(f"/v1/secagg/{2 ** 63}/{step}", headers=c.a.headers))
      for step in ("roster", "inbox", "unmask")),
    Case("admin: no token", 401, E.E_UNAUTHORIZED, lambda c: c.get("/v1/admin/status")),
    Case("admin: wrong token", 401, E.E_UNAUTHORIZED, lambda c: c.admin("GET", "/v1/admin/status", token="admin")),
    Case("admin: a device's token", 401, E.E_UNAUTHORIZED,
         lambda c: c.admin("POST", "/v1/admin/rounds", token=c.a.token, json={})),
    Case("admin: device headers only", 401, E.E_UNAUTHORIZED,
         lambda c: c.post("/v1/admin/enrollment-keys", json={}, headers=c.a.headers)),
    Case("admin: unknown round setting", 400, E.E_BAD_REQUEST,
         lambda c: c.admin("POST", "/v1/admin/rounds", json={"goal_count": 3, "rm_rf": True})),
    Case("admin: round setting named self", 400, E.E_BAD_REQUEST,
         lambda c: c.admin("POST", "/v1/admin/rounds", json={"self": 1})),
    Case("admin: round setting named coord", 400, E.E_BAD_REQUEST,
         lambda c: c.admin("POST", "/v1/admin/rounds", json={"coord": 1})),
    Case("admin: goal count 1e999", 400, E.E_BAD_REQUEST,
         lambda c: c.admin("POST", "/v1/admin/rounds", data=b'{"goal_count": 1e999}',
                           headers={"Content-Type": "application/json"})),
    Case("admin: negative goal count", 400, E.E_BAD_REQUEST,
         lambda c: c.admin("POST", "/v1/admin/rounds", json={"goal_count": -1})),
    Case("admin: goal count true (taken as 1: a round of one device)", 400, E.E_BAD_REQUEST,
         lambda c: c.admin("POST", "/v1/admin/rounds", json={"goal_count": True})),
    Case("admin: goal count 2.9 (taken as 2)", 400, E.E_BAD_REQUEST,
         lambda c: c.admin("POST", "/v1/admin/rounds", json={"goal_count": 2.9})),
    Case("admin: min count a string", 400, E.E_BAD_REQUEST,
         lambda c: c.admin("POST", "/v1/admin/rounds", json={"min_count": "3"})),
    Case("admin: overselect true", 400, E.E_BAD_REQUEST,
         lambda c: c.admin("POST", "/v1/admin/rounds", json={"overselect": True})),
    Case("admin: round settings JSON null", 400, E.E_BAD_REQUEST,
         lambda c: c.admin("POST", "/v1/admin/rounds", data=b"null", headers={"Content-Type": "application/json"})),
    Case("admin: second open round", 409, E.E_CONFLICT, lambda c: c.admin("POST", "/v1/admin/rounds", json={})),
    Case("admin: enrollment key uses a string", 400, E.E_BAD_REQUEST,
         lambda c: c.admin("POST", "/v1/admin/enrollment-keys", json={"uses": "many"})),
    Case("admin: enrollment key uses 0", 400, E.E_BAD_REQUEST,
         lambda c: c.admin("POST", "/v1/admin/enrollment-keys", json={"uses": 0})),
    Case("admin: NUL in an enrollment key's label", 400, E.E_BAD_REQUEST,
         lambda c: c.admin("POST", "/v1/admin/enrollment-keys", json={"label": "x\u0000y"})),
    Case("admin: pin a version id with a NUL", 400, E.E_BAD_REQUEST,
         lambda c: c.raw("POST", "/v1/admin/versions/%00/pin", headers=_admin_h(c))),
    Case("admin: revoke a device id with a NUL", 400, E.E_BAD_REQUEST,
         lambda c: c.raw("POST", "/v1/admin/devices/a%00b/revoke", headers=_admin_h(c))),
    Case("admin: unknown version action", 400, E.E_BAD_REQUEST,
         lambda c: c.admin("POST", "/v1/admin/versions/v0000/delete")),
    Case("admin: promote unknown version", 404, E.E_NOT_FOUND,
         lambda c: c.admin("POST", "/v1/admin/versions/v7777/promote")),
    Case("admin: promote the stable version", 409, E.E_CONFLICT,
         lambda c: c.admin("POST", "/v1/admin/versions/v0000/promote")),
    Case("admin: revoke unknown device", 404, E.E_NOT_FOUND,
         lambda c: c.admin("POST", "/v1/admin/devices/d-nobody/revoke")),
    Case("admin: round id beyond int64", 404, E.E_NOT_FOUND,
         lambda c: c.admin("GET", "/v1/admin/rounds/99999999999999999999999")),
    Case("admin: close unknown round", 404, E.E_NOT_FOUND, lambda c: c.admin("POST", "/v1/admin/rounds/4242/close")),
    Case("admin: rejections round_id not a number", 400, E.E_BAD_REQUEST,
         lambda c: c.admin("GET", "/v1/admin/rejections?round_id=1;DROP%20TABLE%20updates")),
    Case("admin: rejections round_id superscript digit", 400, E.E_BAD_REQUEST,
         lambda c: c.admin("GET", "/v1/admin/rejections?round_id=%C2%B2")),
    # --- anything else --------------------------------------------------------------------------
    Case("unknown path", 404, E.E_NOT_FOUND, lambda c: c.get("/v1/../../etc/passwd")),
    Case("unknown method on a known path", 405, E.E_METHOD, lambda c: requests.delete(c.url + E.PATH_UPDATES,
                                                                                     timeout=10)),
]


def _status_and_body(resp: requests.Response | tuple[int, bytes]) -> tuple[int, bytes]:
    if isinstance(resp, tuple):
        return resp
    return resp.status_code, resp.content


def test_the_table_is_big_and_unique():
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)


def test_hostile_requests_get_their_4xx_and_the_aggregate_holds_only_valid_updates(tmp_path):
    cfg = make_config(tmp_path, goal_count=10, min_count=2, overselect=1.0, canary_fraction=0.01,
                      max_body_bytes=MAX_BODY, max_example_weight=EXAMPLE_CAP, server_optimizer="fedavg")
    with serve(cfg) as s:
        _, base = make_version(tmp_path / "v0")
        s.coord.import_version(tmp_path / "v0")
        key = s.coord.create_enrollment_key()
        a, b, outsider, revoked, v1, v2, v3 = (FakeDevice(s.url, key) for _ in range(7))
        s.coord.revoke_device(revoked.device_id)

        closed = s.coord.start_round()
        assert a.checkin().kind == wire.TASK_TRAIN
        assert s.coord.close_round(closed, force=True)["status"] == "failed"

        # Checked before the round opens (an open round answers 409 first): no NaN ever reaches a plan.
        for bad in (b'{"learning_rate": NaN}', b'{"clip_norm": Infinity}', b'{"noise_multiplier": -1}'):
            r = requests.post(s.url + "/v1/admin/rounds", data=bad, timeout=10, headers={
                "Content-Type": "application/json", wire.AUTH_HEADER: f"Bearer {cfg.admin_token}"})
            assert (r.status_code, r.json()["error"]) == (400, wire.E_BAD_REQUEST), r.text
        rid = s.coord.start_round()
        for d in (a, v1, v2, v3):
            assert d.checkin().kind == wire.TASK_TRAIN
        # The valid updates: float32 and float16, one with an example count above the weight cap.
        valid = [(v1, random_delta(1), 5, "float32"), (v2, random_delta(2), 17, "float32"),
                 (v3, random_delta(3), 900, "float16")]
        receipts = []
        for dev, delta, n, enc in valid:
            kept_key = uuid.uuid4().hex
            r = dev.upload(delta, round_id=rid, base="v0000", examples=n, encoding=enc, key=kept_key)
            assert r.status_code == 200, r.text
            receipts.append((kept_key, r.json()["update_id"]))
        ctx = Ctx(s.url, cfg.admin_token, key, a, b, outsider, revoked, v1, closed, rid, *receipts[0])

        failures = []
        for case in CASES:
            status, body = _status_and_body(case.send(ctx))
            try:
                err = json.loads(body)
            except ValueError:
                err = {}
            if status >= 500 or status != case.status or err.get("error") != case.error or not err.get("message"):
                failures.append(f"{case.name}: expected {case.status} {case.error}, got {status} {body[:200]!r}")
        assert not failures, "\n".join(failures)

        # A retried upload (same idempotency key, lost answer) gets its original receipt back, twice.
        for _ in range(2):
            r = v1.upload(random_delta(1), round_id=rid, base="v0000", examples=5, key=ctx.v1_key)
            assert r.status_code == 200 and r.json()["update_id"] == ctx.v1_update_id, r.text

        rnd = s.coord.get_round(rid)
        assert rnd["status"] == "open" and rnd["accepted"] == 3, rnd
        assert s.coord.close_round(rid, force=True)["status"] == "done"
        got = artifact.decode_weights(s.coord.version_file(s.coord.get_round(rid)["result_version_id"],
                                                           "weights")[0])

    # Reference: the same pure aggregation over exactly the three valid updates, as decoded.
    sent = [(artifact.flatten(artifact.decode_weights(artifact.encode_weights(d, enc)), TENSORS),
             aggregation.bounded_weight(n, EXAMPLE_CAP)) for _, d, n, enc in valid]
    mean = aggregation.weighted_average(sent)
    expected = artifact.unflatten(aggregation.fedavg(artifact.flatten(base, TENSORS), mean, lr=1.0), TENSORS)
    for name in SHAPES:
        assert got[name].dtype == expected[name].dtype
        assert got[name].tobytes() == expected[name].tobytes(), name
