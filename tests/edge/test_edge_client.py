"""The coordinator client against an in-process transport: messages, auth, error translation."""

from __future__ import annotations

import io
import json
from collections.abc import Callable

import pytest
import requests
from requests.adapters import BaseAdapter

from edge_runtime.client import (
    ClientError,
    CoordinatorClient,
    ProtocolError,
    RejectedError,
    TransientError,
)
from protocol import wire
from protocol.artifact import GRAPH, MANIFEST, TOKENIZER, WEIGHTS

BASE = "http://coordinator.test"
Handler = Callable[[requests.PreparedRequest], tuple[int, dict[str, str], bytes]]


class InProcess(BaseAdapter):
    """A transport that hands each request to a function instead of the network."""

    def __init__(self, handler: Handler) -> None:
        super().__init__()
        self.handler = handler
        self.sent: list[requests.PreparedRequest] = []
        self.timeouts: list[object] = []

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        self.sent.append(request)
        self.timeouts.append(timeout)
        status, headers, body = self.handler(request)
        resp = requests.Response()
        resp.status_code, resp.raw, resp.request, resp.url = status, io.BytesIO(body), request, request.url
        resp.headers.update(headers)
        return resp

    def close(self) -> None:
        pass


def client_with(handler: Handler, **kw) -> tuple[CoordinatorClient, InProcess]:
    transport = InProcess(handler)
    s = requests.Session()
    s.mount(BASE, transport)
    return CoordinatorClient(BASE, session=s, **kw), transport


def ok(msg) -> tuple[int, dict[str, str], bytes]:
    return 200, {"Content-Type": "application/json"}, json.dumps(msg.to_dict()).encode()


def err(status: int, code: str, retry_after: float | None = None, headers: dict | None = None):
    body = wire.ErrorBody(code, "nope", retry_after=retry_after).to_dict()
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(body).encode()


PLAN = wire.TrainPlan(round_id=3, epochs=1, batch_size=16, learning_rate=0.1, clip_norm=1.0,
                      noise_multiplier=1.0, max_examples=100)


def test_enroll_then_checkin_with_device_headers():
    def handler(req):
        if req.path_url == wire.PATH_ENROLL:
            assert wire.EnrollRequest.from_dict(json.loads(req.body)).enrollment_key == "k"
            return ok(wire.EnrollResponse(device_id="dev-1", token="tok"))
        assert req.path_url == wire.PATH_CHECKIN and req.method == "POST"
        assert req.headers[wire.AUTH_HEADER] == "Bearer tok" and req.headers[wire.DEVICE_HEADER] == "dev-1"
        assert wire.CheckinRequest.from_dict(json.loads(req.body)).eligible is True
        return ok(wire.Task(kind=wire.TASK_TRAIN, retry_after=60, base_version_id="v1", plan=PLAN))

    c, t = client_with(handler)
    assert c.enroll("k", "linux-x86_64").device_id == "dev-1"
    task = c.checkin(wire.CheckinRequest(eligible=True, current_version_id="v1"))
    assert task.kind == wire.TASK_TRAIN and task.plan == PLAN
    assert all(to is not None for to in t.timeouts)  # every request has a timeout


def test_upload_update_sends_bytes_and_meta_header():
    meta = wire.UpdateMeta(round_id=3, base_version_id="v1", example_count=12, idempotency_key="idem-1")

    def handler(req):
        assert req.path_url == wire.PATH_UPDATES and req.body == b"safetensors bytes"
        assert wire.UpdateMeta.from_header(req.headers[wire.UPDATE_META_HEADER]) == meta
        return ok(wire.UpdateReceipt(update_id=7, round_id=3))

    c, _ = client_with(handler, device_id="d", token="t")
    assert c.upload_update(b"safetensors bytes", meta).update_id == 7


def test_evaluation_report_and_signing_key():
    report = wire.EvaluationReport("v2", (wire.VersionMetrics("v2", 10.0, 3.0, 5.0, 8.0),))

    def handler(req):
        if req.path_url == wire.PATH_SIGNING_KEY:
            return ok(wire.SigningKey("ab" * 32))
        assert wire.EvaluationReport.from_dict(json.loads(req.body)) == report
        return ok(wire.EvaluationReceipt("v2"))

    c, _ = client_with(handler, device_id="d", token="t")
    assert c.report_evaluation(report).recorded
    assert c.signing_key().public_key_hex == "ab" * 32


def test_fetch_maps_version_files_to_wire_paths():
    c, _ = client_with(lambda req: (200, {}, req.path_url.encode()))
    for fname, tpl in ((MANIFEST, wire.PATH_VERSION_MANIFEST), (WEIGHTS, wire.PATH_VERSION_WEIGHTS),
                       (GRAPH, wire.PATH_VERSION_GRAPH), (TOKENIZER, wire.PATH_VERSION_TOKENIZER)):
        assert c.fetch("v1.2", fname) == tpl.format(version_id="v1.2").encode()
    with pytest.raises(ClientError):
        c.fetch("../x", MANIFEST)
    with pytest.raises(ClientError):
        c.fetch("v1", "secrets.txt")


@pytest.mark.parametrize(("answer", "cls", "code", "retry_after"), [
    (err(429, wire.E_RATE_LIMITED, 30.0), TransientError, wire.E_RATE_LIMITED, 30.0),
    (err(503, wire.E_INTERNAL, headers={"Retry-After": "12"}), TransientError, wire.E_INTERNAL, 12.0),
    ((502, {}, b"<html>bad gateway</html>"), TransientError, None, None),
    (err(409, wire.E_DUPLICATE), RejectedError, wire.E_DUPLICATE, None),
    (err(409, wire.E_STALE), RejectedError, wire.E_STALE, None),
    (err(401, wire.E_UNAUTHORIZED), RejectedError, wire.E_UNAUTHORIZED, None),
])
def test_http_errors_say_whether_to_retry(answer, cls, code, retry_after):
    c, _ = client_with(lambda req: answer, device_id="d", token="t")
    with pytest.raises(cls) as e:
        c.checkin(wire.CheckinRequest(eligible=False))
    assert isinstance(e.value, ClientError)
    assert e.value.retryable is (cls is TransientError)
    assert (e.value.code, e.value.retry_after) == (code, retry_after)


@pytest.mark.parametrize("exc", [requests.ConnectionError("refused"), requests.ReadTimeout("slow")])
def test_transport_errors_are_translated_once_and_retryable(exc):
    def handler(req):
        raise exc

    c, _ = client_with(handler)
    with pytest.raises(TransientError) as e:
        c.signing_key()
    assert e.value.retryable and e.value.__cause__ is exc


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", json.dumps({"protocol_version": 99}).encode()])
def test_malformed_answers_are_protocol_errors(body):
    c, _ = client_with(lambda req: (200, {}, body))
    with pytest.raises(ProtocolError) as e:
        c.checkin(wire.CheckinRequest(eligible=True))
    assert not e.value.retryable


def test_oversized_update_is_refused_locally():
    c, t = client_with(lambda req: (200, {}, b"{}"))
    meta = wire.UpdateMeta(round_id=1, base_version_id="v1", example_count=1, idempotency_key="k")
    with pytest.raises(ClientError):
        c.upload_update(b"\0" * (wire.MAX_UPDATE_BYTES + 1), meta)
    assert t.sent == []
