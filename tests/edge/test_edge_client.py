"""The coordinator client against an in-process transport: messages, auth, error translation."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import threading
import time
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
from protocol import secagg_wire as sw
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


@pytest.mark.parametrize("body", [b"[1, 2]", json.dumps({"protocol_version": 99}).encode()])
def test_malformed_answers_are_protocol_errors(body):
    c, _ = client_with(lambda req: (200, {}, body))
    with pytest.raises(ProtocolError) as e:
        c.checkin(wire.CheckinRequest(eligible=True))
    assert not e.value.retryable


@pytest.mark.parametrize("body", [b"", b"<html>Sign in to the hotel's Wi-Fi</html>"])
def test_an_answer_that_is_not_json_at_all_is_tried_again(body):
    """A captive portal's page, or an answer cut in its headers (read as an empty body), was a
    permanent error: a secure round's device dropped out over one such answer."""
    c, _ = client_with(lambda req: (200, {}, body))
    with pytest.raises(TransientError, match="not JSON .cut off, or from something between"):
        c.checkin(wire.CheckinRequest(eligible=True))


@contextlib.contextmanager
def loopback_server(serve: Callable[[socket.socket, threading.Event], None]):
    """A loopback server that runs `serve(listening socket, done)` on a thread; yields its URL."""
    srv = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()
    thread = threading.Thread(target=serve, args=(srv, done), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        done.set()
        thread.join(timeout=5)
        srv.close()


def answering_server(answer: Callable[[str], bytes]):
    """A loopback server that reads each request's head, sends back `answer(head)` as it is (a
    whole answer, or one cut short) and closes the connection."""
    def serve(srv: socket.socket, done: threading.Event) -> None:
        srv.settimeout(0.2)
        while not done.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(answer(conn.recv(65536).decode()))

    return loopback_server(serve)


def cutting_server(answer: bytes, cut_after: int):
    """A loopback server that answers each request with the first `cut_after` bytes of `answer`,
    then closes the connection."""
    return answering_server(lambda head: answer[:cut_after])


def test_an_answer_cut_off_is_tried_again_and_said_as_such():
    """A reply cut mid-body (`ChunkedEncodingError`) was a plain, permanent ClientError; a reply
    lost after the request arrived read "cannot connect", and a user who enrolled again made a
    second device."""
    body = json.dumps(wire.Task(kind="come_back", retry_after=30).to_dict()).encode()
    chunked = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" \
              + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    with cutting_server(chunked, len(chunked) - 20) as url:   # cut inside the body
        with pytest.raises(TransientError, match="was cut off"):
            CoordinatorClient(url).checkin(wire.CheckinRequest(eligible=True))
    with cutting_server(chunked, 0) as url:   # the connection closed before any byte of the answer
        with pytest.raises(TransientError, match="broke before its answer came .the request may have arrived"):
            CoordinatorClient(url).checkin(wire.CheckinRequest(eligible=True))
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()   # nothing listens there
    with pytest.raises(TransientError, match="cannot connect to"):
        CoordinatorClient(f"http://127.0.0.1:{port}").checkin(wire.CheckinRequest(eligible=True))


@pytest.mark.parametrize("length", [b"9" * 5000, "\u00b2".encode("latin-1")])
def test_a_content_length_int_cannot_read_is_refused_not_a_crash(length):
    """A Content-Length of 5,000 digits made the device's int() raise ValueError (Python's limit of
    4,300 digits), and one of a Latin-1 digit ("²") passed isdigit() and failed int(): an
    exception no caller expects from a reply, instead of the client's own refusal."""
    answer = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + length
              + b"\r\nConnection: close\r\n\r\n{}")
    with answering_server(lambda head: answer) as url:
        with pytest.raises(ClientError) as got:
            CoordinatorClient(url).checkin(wire.CheckinRequest(eligible=True))
    if len(length) > 1:
        assert got.type is ProtocolError and "larger than" in str(got.value)


def test_oversized_update_is_refused_locally():
    c, t = client_with(lambda req: (200, {}, b"{}"))
    meta = wire.UpdateMeta(round_id=1, base_version_id="v1", example_count=1, idempotency_key="k")
    with pytest.raises(ClientError):
        c.upload_update(b"\0" * (wire.MAX_UPDATE_BYTES + 1), meta)
    assert t.sent == []


def test_a_redirect_is_not_followed_to_another_host():
    """A 307 sent the check-in, the device id and, on POST /v1/updates, the whole update to the
    host it named, and the device obeyed that host's answer."""
    c, t = client_with(lambda req: (307, {"Location": "http://elsewhere.test/v1/checkin"}, b""),
                       device_id="d", token="t")
    elsewhere = InProcess(lambda req: ok(wire.Task(kind="come_back", retry_after=30)))
    c.session.mount("http://elsewhere.test", elsewhere)
    with pytest.raises(ProtocolError, match="307, a redirect .*elsewhere.test.*which a device does not follow"):
        c.checkin(wire.CheckinRequest(eligible=True))
    assert len(t.sent) == 1 and elsewhere.sent == []


def trickling_server(interval_s: float, whole: bytes | None = None):
    """A loopback server that answers every request with headers promising 1,000 bytes, then
    sends one byte every `interval_s`: a read timeout never trips. With `whole`, it sends that
    answer at once instead."""
    def serve(srv: socket.socket, done: threading.Event) -> None:
        conn, _ = srv.accept()
        with conn:
            conn.recv(65536)
            if whole is not None:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(whole), whole))
                done.wait(5)
                return
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
            while not done.wait(interval_s):
                try:
                    conn.sendall(b" ")
                except OSError:   # the client gave up: what the test wants
                    return

    return loopback_server(serve)


def test_an_answer_that_trickles_in_ends_at_its_deadline():
    """requests' read timeout is per socket read: one byte every 0.1 s kept a check-in waiting
    for as long as the server liked (a year at one byte every 29 s), and the device with it."""
    with trickling_server(0.1) as url:
        c = CoordinatorClient(url, timeout=(1.0, 0.5))   # deadline: 2 × 0.5 = 1 s after the headers
        t0 = time.monotonic()
        with pytest.raises(TransientError, match="too slow"):
            c.checkin(wire.CheckinRequest(eligible=True))
        assert 0.9 < time.monotonic() - t0 < 10


def test_a_stopping_device_leaves_an_answer_that_is_still_coming_in():
    """SIGTERM set the device's stop event, which nothing in a download checked: the device went
    on reading the trickle. Now the read ends between two chunks."""
    with trickling_server(0.1) as url:
        c = CoordinatorClient(url, timeout=(1.0, 30.0))   # a deadline of a minute
        c.stopping = threading.Event()
        threading.Timer(0.5, c.stopping.set).start()
        t0 = time.monotonic()
        with pytest.raises(TransientError, match="stopped"):
            c.checkin(wire.CheckinRequest(eligible=True))
        assert time.monotonic() - t0 < 10


def test_an_answer_already_in_is_kept_when_the_device_is_stopping():
    """The stop was checked after every chunk, the last one too: a receipt that had arrived whole
    was thrown away as 'stopped while the answer came in', and the device recorded a failed
    upload the coordinator held."""
    task = json.dumps(wire.Task(kind="come_back", retry_after=30).to_dict()).encode()
    with trickling_server(0.1, whole=task) as url:
        c = CoordinatorClient(url)
        c.stopping = threading.Event()
        c.stopping.set()
        assert c.checkin(wire.CheckinRequest(eligible=True)).kind == "come_back"


@pytest.mark.parametrize("retry_after", [0, -5, float("nan"), "soon", None, 1e9])
def test_secure_aggregation_polls_no_faster_than_the_protocol_allows(retry_after):
    """A roster answer of retry_after 0 (or negative, or not a number) had the device poll in a
    tight loop until the round's deadline: 440 requests in 20 s, up to an hour."""
    from edge_runtime.secagg_client import _Channel

    waiting = {**sw.wait("keys", 1.0), "retry_after": retry_after}
    c, t = client_with(lambda req: (200, {"Content-Type": "application/json"}, json.dumps(waiting).encode()),
                       device_id="d", token="t")
    slept: list[float] = []

    def sleep(s: float) -> bool:
        slept.append(s)
        return len(slept) >= 5   # then "stopping": the poll ends

    channel = _Channel(c, 7, time.monotonic() + 3600, sleep)
    with pytest.raises(Exception, match="stopping"):
        channel.poll("roster")
    assert len(slept) == 5 and all(wire.MIN_RETRY_AFTER_S <= s <= sw.MAX_POLL_S for s in slept), slept


def ranged_server(data: bytes, cut_every: int, *, ranges: bool = True):
    """A loopback server of one file (ETag "f") that honours Range with If-Range, as the coordinator
    does, and cuts every answer's body after `cut_every` bytes; its `asked` lists each Range header."""
    asked: list[str | None] = []

    def answer(head: str) -> bytes:
        rng = next((line.split(":", 1)[1].strip() for line in head.split("\r\n")
                    if line.lower().startswith("range:")), None)
        asked.append(rng)
        start = int(rng.removeprefix("bytes=").rstrip("-")) if rng and ranges else 0
        body = data[start:]
        status = b"206 Partial Content" if start else b"200 OK"
        extra = b"Content-Range: bytes %d-%d/%d\r\n" % (start, len(data) - 1, len(data)) if start else b""
        return (b"HTTP/1.1 %s\r\nContent-Type: application/octet-stream\r\nETag: \"f\"\r\n%s"
                b"Content-Length: %d\r\n\r\n%s" % (status, extra, len(body), body[:cut_every]))

    server = answering_server(answer)
    server.asked = asked   # type: ignore[attr-defined]
    return server


def test_a_download_cut_off_asks_for_the_rest_of_its_file(monkeypatch):
    """On a link that dropped every few MB the 11 MB graph started again from its first byte at each
    try, and a first install might never finish. A cut download now asks for the
    rest of the same file (Range, If-Range); a server that ignores ranges is read whole or not at all."""
    from edge_runtime import client as client_module

    data = bytes(range(256)) * 40   # 10,240 bytes, cut every 3,000
    with (server := ranged_server(data, 3000)) as url:
        assert CoordinatorClient(url, device_id="d", token="t").fetch("v0001", GRAPH) == data
    assert server.asked == [None, "bytes=3000-", "bytes=6000-", "bytes=9000-"], server.asked
    monkeypatch.setattr(client_module, "MAX_RESUMES", 3)
    with (server := ranged_server(data, 3000, ranges=False)) as url:   # always the whole file, always cut
        with pytest.raises(TransientError, match="cut off 4 times"):
            CoordinatorClient(url, device_id="d", token="t").fetch("v0001", GRAPH)


def test_a_secure_rounds_answer_cut_in_its_headers_is_asked_again():
    """An empty 200 (a reply cut in its headers) failed `_json` outside the channel's retries: the
    device left the secure round over one such answer."""
    from edge_runtime.secagg_client import _Channel

    ready = sw.wait("keys", 1.0)
    answers = [b"", json.dumps(ready).encode()]
    c, t = client_with(lambda req: (200, {"Content-Type": "application/json"}, answers.pop(0)),
                       device_id="d", token="t")
    channel = _Channel(c, 7, time.monotonic() + 3600, lambda s: False)
    assert channel.get("roster") == ready and len(t.sent) == 2


def test_a_second_signal_ends_the_device_at_once():
    """The first SIGTERM sets the loop's stop event (the loop ends between steps, an answer
    between its chunks); a second one ends the process, for a step held on the network."""
    import os
    import signal

    from edge_runtime.__main__ import _stop_on_signals

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop = _stop_on_signals()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(5)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)   # the handler raises here, in the main thread
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


@pytest.mark.parametrize("said, expected", [
    ("certificate verify failed: self-signed certificate (_ssl.c:1006)",
     "is not trusted (self-signed certificate); for a self-signed"),
    ("certificate verify failed: IP address mismatch, certificate is not valid for '127.0.0.1'. (_ssl.c:1006)",
     "was refused (IP address mismatch, certificate is not valid for '127.0.0.1'.)"),
    ("certificate verify failed: certificate has expired (_ssl.c:1006)", "was refused (certificate has expired)"),
    ("[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)",
     "failed (wrong version number); does it serve plain HTTP"),
])
def test_a_failed_tls_handshake_says_why_in_one_line(said, expected):
    """A self-signed certificate read "cannot connect"; a name mismatch or an expired certificate
    must not be told to add a CA bundle, which is already there."""
    from edge_runtime.client import tls_failure

    e = requests.exceptions.SSLError(f"HTTPSConnectionPool(host='h', port=1): Max retries exceeded with url: /x "
                                     f"(Caused by SSLError(SSLCertVerificationError(1, {said!r})))")
    line = tls_failure(e, "https://h")
    assert expected in line and "\n" not in line
    assert ("REQUESTS_CA_BUNDLE" in line) == ("self-signed" in said)
