"""Restart mid-round (kill -9 of a real `python -m coordinator serve`): no acknowledged update is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import requests

from coordinator.__main__ import main as cli_main
from protocol import artifact, wire
from tests.helpers.coordinator_fakes import (
    SHAPES,
    FakeDevice,
    database_url,
    make_version,
    random_delta,
)
from tools.coordinator_process import free_port

ROOT = Path(__file__).resolve().parents[2]


def _start(data_dir: Path, port: int, db_url: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDKEYS_COORDINATOR_")}
    env["FEDKEYS_COORDINATOR_GOAL_COUNT"] = "3"      # settings through the environment ...
    cmd = [sys.executable, "-m", "coordinator", "serve", "--data-dir", str(data_dir), "--port", str(port),
           "--database-url", db_url, "--set", "admin_token=restart-test-admin-token",  # ... and flags
           "--set", "min_count=3",
           "--set", "selection_window_s=0"]
    init = [a for a in cmd if a not in ("--port", str(port))]
    init[init.index("serve")] = "init"
    subprocess.run(init, cwd=ROOT, env=env, check=True, capture_output=True, timeout=120)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if requests.get(url + wire.PATH_HEALTH, timeout=1).status_code == 200:
                return proc
        except requests.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("coordinator did not start")


def test_kill_mid_round_loses_no_acknowledged_update(tmp_path, capsys):
    data, port = tmp_path / "data", free_port()
    url = f"http://127.0.0.1:{port}"
    db_url = database_url(tmp_path)
    _, base = make_version(tmp_path / "v0")
    admin = {wire.AUTH_HEADER: "Bearer restart-test-admin-token"}
    proc = _start(data, port, db_url)
    try:
        common = ["--data-dir", str(data), "--database-url", db_url]
        assert cli_main(["import-version", str(tmp_path / "v0"), *common]) == 0   # admin CLI, same data dir
        assert cli_main(["create-enrollment-key", *common]) == 0
        key = capsys.readouterr().out.strip().splitlines()[-1]
        devices = [FakeDevice(url, key) for _ in range(3)]
        rid = requests.post(url + "/v1/admin/rounds", json={}, headers=admin, timeout=5).json()["round_id"]
        for d in devices:
            assert d.checkin().kind == wire.TASK_TRAIN
        deltas = [random_delta(i) for i in range(3)]
        for d, delta in zip(devices[:2], deltas, strict=False):
            assert d.upload(delta, round_id=rid, base="v0000", examples=7).status_code == 200
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    proc = _start(data, port, db_url)
    try:
        r = requests.get(url + f"/v1/admin/rounds/{rid}", headers=admin, timeout=5).json()
        assert r["status"] == "open" and r["accepted"] == 2 and r["selected"] == 3
        # The third device's assignment survived too; its upload completes the round.
        assert devices[2].upload(deltas[2], round_id=rid, base="v0000", examples=7).status_code == 200
        r = requests.get(url + f"/v1/admin/rounds/{rid}", headers=admin, timeout=5).json()
        assert r["status"] == "done" and r["accepted"] == 3
        got = artifact.decode_weights(devices[0].get(wire.PATH_VERSION_WEIGHTS, r["result_version_id"]).content)
        for name in SHAPES:
            np.testing.assert_allclose(got[name], base[name] + np.mean([d[name] for d in deltas], axis=0),
                                       rtol=1e-5, atol=1e-6)
    finally:
        proc.terminate()
        proc.wait(10)
