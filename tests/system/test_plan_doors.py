"""`clip_norm=0` (and every other out-of-bounds plan value) is refused at each door: the admin
API, the CLI and the device receiving it from a coordinator."""

from __future__ import annotations

import json
import threading
from http.server import ThreadingHTTPServer

import pytest

from coordinator.__main__ import main as coordinator_main
from edge_runtime import agent
from edge_runtime.config import EdgeConfig
from edge_runtime.identity import Identity, save_identity
from protocol import wire
from tests.helpers.coordinator_fakes import make_config, serve
from tests.helpers.http_fakes import JsonReplyHandler


@pytest.mark.parametrize("body, named", [({"clip_norm": 0}, "clip_norm"),
                                         ({"discover_words": 8}, "secure_aggregation")])  # a vote seen alone
def test_admin_api_refuses_a_bad_plan(tmp_path, exported_version, body, named):
    with serve(make_config(tmp_path)) as s:
        s.coord.import_version(exported_version)
        r = s.admin("POST", "/v1/admin/rounds", json=body)
        assert r.status_code == 400 and named in r.json()["message"], r.text
        assert s.coord.list_rounds() == {"rounds": [], "total": 0, "next_before": None}


def test_cli_refuses_clip_norm_zero_with_exit_2(tmp_path, capsys):
    rc = coordinator_main(["start-round", "--data-dir", str(tmp_path / "c"), "--clip-norm", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "clip_norm" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


class _Hostile(JsonReplyHandler):
    """A coordinator answering every check-in with a train task whose clip_norm is 0."""

    checkins = 0

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).checkins += 1
        plan = {"round_id": 1, "epochs": 1, "batch_size": 4, "learning_rate": 0.1, "clip_norm": 0,
                "noise_multiplier": 1.0, "max_examples": 10}
        body = json.dumps({"protocol_version": wire.PROTOCOL_VERSION, "kind": "train", "retry_after": 1,
                           "use_version_id": None, "base_version_id": "v1", "plan": plan}).encode()
        self.reply_json(200, body)


def test_device_refuses_a_clip_norm_zero_task_and_keeps_running(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        cfg = EdgeConfig(data_dir=str(tmp_path / "dev"), coordinator=url, eligibility="override:eligible",
                         min_wait_s=0.01, backoff_initial_s=0.01, backoff_max_s=0.02, jitter=0.0)
        save_identity(tmp_path / "dev", Identity("d-1", "tok", url))
        dev = agent.Device.open(cfg)
        stop = threading.Event()
        t = threading.Thread(target=lambda: agent.run_loop(dev, stop=stop), daemon=True)
        try:
            t.start()
            for _ in range(500):
                if _Hostile.checkins >= 3:
                    break
                stop.wait(0.01)
            assert t.is_alive() and _Hostile.checkins >= 3   # refused, backed off, checked in again
        finally:
            stop.set()
            t.join(5)
            dev.close()
        with pytest.raises(wire.WireError, match="clip_norm"):
            wire.Task.from_dict({"protocol_version": 1, "kind": "train", "retry_after": 1, "base_version_id": "v1",
                                 "plan": {"round_id": 1, "epochs": 1, "batch_size": 4, "learning_rate": 0.1,
                                          "clip_norm": 0, "noise_multiplier": 1.0, "max_examples": 10}})
    finally:
        server.shutdown()
        server.server_close()


def test_a_device_never_parses_a_discovery_task_that_is_not_secure():
    """Its vote would reach the coordinator alone: the task is a protocol error, not a vote."""
    plan = {"round_id": 1, "epochs": 1, "batch_size": 4, "learning_rate": 0.1, "clip_norm": 1.0,
            "noise_multiplier": 1.0, "max_examples": 10, "discover_words": 8}
    task = {"protocol_version": 1, "kind": "train", "retry_after": 1, "base_version_id": "v1", "plan": plan}
    with pytest.raises(wire.WireError, match="secure_aggregation"):
        wire.Task.from_dict(task)
    assert wire.Task.from_dict({**task, "plan": {**plan, "secure_aggregation": True}}).plan.discover_words == 8
