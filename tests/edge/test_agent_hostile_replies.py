"""The device agent survives whatever a hostile coordinator or network answers: 1,000 hostile
replies over real loopback HTTP (deep nesting, huge bodies, wrong shapes and types, non-finite
numbers, out-of-bounds plans, error codes including "revoked", a dead connection), and the
loop is still running and checking in at the end. Plus the disk filling up mid-download."""

from __future__ import annotations

import errno
import json
import socket
import threading
from http.server import ThreadingHTTPServer

import pytest

from edge_runtime import agent
from edge_runtime.cache import open_cache
from edge_runtime.client import CoordinatorClient, ProtocolError, TransientError
from edge_runtime.config import EdgeConfig
from edge_runtime.identity import Identity, save_identity
from edge_runtime.versions import VersionError
from protocol import wire
from tests.helpers.http_fakes import JsonReplyHandler

PLAN = {"round_id": 1, "epochs": 1, "batch_size": 4, "learning_rate": 0.1, "clip_norm": 1.0,
        "noise_multiplier": 1.0, "max_examples": 10}


def _task(**kw) -> dict:
    return {"protocol_version": wire.PROTOCOL_VERSION, "kind": "come_back", "retry_after": 0.001} | kw


HOSTILE: list[tuple[int, bytes]] = [
    (200, b"[" * 100_000 + b"]" * 100_000),                                   # RecursionError in json
    (200, b'{"a":' * 50_000 + b"1" + b"}" * 50_000),
    (200, b'"\\ud800"'),
    (200, b"not json"),
    (200, b"[]"),
    (200, b"null"),
    (200, json.dumps(_task(kind="train", base_version_id="v1", plan=PLAN | {"clip_norm": 0})).encode()),
    (200, json.dumps(_task(kind="train", base_version_id="v1", plan=PLAN | {"epochs": "many"})).encode()),
    (200, json.dumps(_task(kind="train", base_version_id="v1", plan=[1, 2])).encode()),
    (200, json.dumps(_task(kind="evaluate", candidate_version_id="c", evaluate_version_ids="c")).encode()),
    (200, json.dumps(_task(kind="launch")).encode()),
    (200, json.dumps(_task(retry_after="NaN")).encode()),
    (200, b'{"protocol_version": 1, "kind": "come_back", "retry_after": NaN}'),
    (200, json.dumps(_task(retry_after=1e308)).encode()),
    (200, json.dumps(_task(use_version_id="../../etc/passwd")).encode()),
    (200, json.dumps(_task(use_version_id="v9", rollout={"seq": -1})).encode()),
    (200, json.dumps(_task(protocol_version=99)).encode()),
    (200, b" " * (wire.MAX_REPLY_JSON_BYTES + 10)),                           # too large
    (401, json.dumps({"error": "unauthorized", "message": "revoked"}).encode()),
    (403, json.dumps({"error": "forbidden", "message": "x", "details": [1]}).encode()),
    (409, json.dumps({"error": "protocol_version", "message": "x"}).encode()),
    (429, b"[[[["),
    (500, b"<html>"),
    (200, b"\xff\xfe\x00garbage"),
]


class _Hostile(JsonReplyHandler):
    protocol_version = "HTTP/1.1"
    served = 0
    lock = threading.Lock()

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle delay per reply

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.lock:
            i = type(self).served
            type(self).served += 1
        if i % 50 == 49:                      # now and then: drop the connection mid-answer
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
            self.close_connection = True
            return
        self.reply_json(*HOSTILE[i % len(HOSTILE)])


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        """The device hangs up on replies it refuses (that is the test): socketserver printed each
        reset's traceback to the suite's output."""


@pytest.fixture
def hostile():
    server = _QuietServer(("127.0.0.1", 0), _Hostile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Hostile.served = 0
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_agent_survives_1000_hostile_replies(tmp_path, hostile, caplog):
    cfg = EdgeConfig(data_dir=str(tmp_path / "dev"), coordinator=hostile, eligibility="override:eligible",
                     min_wait_s=0.0001, max_wait_s=0.001, backoff_initial_s=0.0001, backoff_max_s=0.0002,
                     jitter=0.0, http_timeout_s=5.0)
    save_identity(tmp_path / "dev", Identity("d-1", "tok", hostile, "ab" * 32))
    dev = agent.Device.open(cfg)
    stop = threading.Event()
    errors: list[BaseException] = []

    def run():
        try:
            agent.run_loop(dev, stop=stop)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    try:
        t.start()
        for _ in range(6000):
            if _Hostile.served >= 1000 or not t.is_alive():
                break
            stop.wait(0.01)
        assert not errors, errors
        assert t.is_alive() and _Hostile.served >= 1000, _Hostile.served
    finally:
        stop.set()
        t.join(10)
        dev.close()
    print(f"agent: {_Hostile.served} hostile replies, 0 exits")


def test_oversized_replies_are_refused_without_reading_them_whole(hostile):
    c = CoordinatorClient(hostile)
    _Hostile.served = HOSTILE.index((200, b" " * (wire.MAX_REPLY_JSON_BYTES + 10)))
    with pytest.raises(ProtocolError, match="larger than"):
        c.checkin(wire.CheckinRequest(eligible=True))


@pytest.mark.parametrize("failure", ["disk_full", "cut_off"])
def test_a_failed_download_keeps_the_loop_and_the_current_version(tmp_path, caplog, failure):
    """A full disk mid-download; or a download cut off, which escaped as a ClientError and dropped
    the check-in's task."""
    class Store:
        current_id = "v1"

        def install(self, vid, fetch, abandon=False):
            if failure == "disk_full":
                raise OSError(errno.ENOSPC, "No space left on device")
            fetch(vid, "weights.safetensors")

        def is_valid(self, vid):
            return vid == self.current_id

        def in_use(self):
            return self.current_id

        def current(self):
            raise VersionError("no usable model version on this device")

    class Client:
        def checkin(self, req):
            return wire.Task(kind=wire.TASK_COME_BACK, retry_after=0.001, use_version_id="v2")

        def fetch(self, version_id, filename):
            raise TransientError(f"GET /v1/versions/{version_id}/weights: the answer from http://x was cut off")

    cfg = EdgeConfig(data_dir=str(tmp_path), eligibility="override:eligible", min_wait_s=0.0001)
    dev = agent.Device(config=cfg, identity=Identity("d-1", "t", "http://x"), client=Client(), store=Store(),
                       cache=open_cache(cfg), eligibility=agent.make_eligibility(cfg))
    try:
        # The current version stays; `run --once` says the named one could not be used (it exited 0
        # on a full disk, which its help reads as "0 = ok").
        assert agent.run_loop(dev, once=True) == 1
        assert dev.store.current_id == "v1"
        if failure == "cut_off":
            assert "cannot download model version v2: GET /v1/versions/v2/weights: the answer from http://x was " \
                   "cut off; keeping v1" in caplog.text
        stop = threading.Event()
        dev.client.checkin = lambda req: (stop.set(), wire.Task(kind=wire.TASK_COME_BACK, retry_after=0.001,
                                                               use_version_id="v2"))[1]
        assert agent.run_loop(dev, stop=stop) == 0          # the loop itself goes on (here: until stopped)
    finally:
        dev.close()
