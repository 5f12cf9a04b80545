"""Crash test: kill -9 a real `python -m coordinator serve` at random moments across 20+ small
rounds and restart it; every update that got a 2xx is in its round's aggregate, nothing else is,
rounds resume (or close per their deadline), and the database passes an integrity check.

Fake devices speak the wire protocol over HTTP. Each request that dies with the process is
retried unchanged after the restart (an upload keeps its idempotency key), as the edge client
does. A timer sends SIGKILL a random 0-40 ms after a randomly chosen request of each round
starts, so kills land inside start-round, check-in, upload (before and after the commit) and
aggregation. FEDKEYS_CRASH_ROUNDS sets the number of rounds (default 20).
"""

from __future__ import annotations

import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import requests

from coordinator import aggregation
from coordinator.__main__ import main as cli_main
from protocol import artifact, wire
from tests.helpers.coordinator_fakes import SHAPES, database_url, make_version, random_delta
from tools.coordinator_process import free_port

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = int(os.environ.get("FEDKEYS_CRASH_ROUNDS", "20"))
DEVICES, ADMIN = 3, "crash-test-admin-token"
TENSORS = [artifact.TensorSpec(k, s) for k, s in SHAPES.items()]
_CHECKIN = wire.CheckinRequest(True, can_evaluate=False).to_dict()   # training only, never a canary task


class Coordinator:
    """A coordinator process we can kill -9 and start again on the same data dir and port."""

    def __init__(self, data: Path, db_url: str, log: Path) -> None:
        self.data, self.db_url, self.log = data, db_url, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.kills = self.starts = 0

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEDKEYS_COORDINATOR_")}
        cmd = [sys.executable, "-m", "coordinator", "serve", "--data-dir", str(self.data), "--port", str(self.port),
               "--database-url", self.db_url]
        for kv in (f"admin_token={ADMIN}", "goal_count=3", "min_count=3", "overselect=1.0",
                   "round_duration_s=600", "canary_fraction=0.01", "clip_norm=10", "rate_limit_per_minute=60000",
                   "rate_limit_burst=1000", "selection_window_s=0",
                   "keep_versions=0"):   # every round's version is read back at the end
            cmd += ["--set", kv]
        if not self.starts:      # only `init` creates a data dir; later starts reuse it
            subprocess.run([sys.executable, "-m", "coordinator", "init", "--data-dir", str(self.data),
                            "--database-url", self.db_url], cwd=ROOT, env=env | {"PYTHONPATH": str(ROOT)},
                           check=True, capture_output=True, timeout=120)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env | {"PYTHONPATH": str(ROOT)}, stdout=log, stderr=log)
        self.starts += 1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            try:
                if requests.get(self.url + wire.PATH_HEALTH, timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                time.sleep(0.05)
        raise AssertionError("coordinator did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.kills += 1

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class Driver:
    """Sends requests; when the coordinator died under one, restarts it and sends it again."""

    def __init__(self, coord: Coordinator, rng: random.Random) -> None:
        self.c, self.rng = coord, rng
        self.kill_at: int | None = None      # request number (within the round) that gets a kill
        self.n = 0
        self.retried = 0

    def request(self, method: str, path: str, **kw) -> requests.Response:
        self.n += 1
        timer = None
        if self.kill_at == self.n:
            timer = threading.Timer(self.rng.uniform(0.0, 0.04), self.c.kill)
            timer.start()
        try:
            for _ in range(10):
                try:
                    resp = requests.request(method, self.c.url + path, timeout=30, **kw)
                    if resp.status_code < 500:
                        return resp
                except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):
                    pass   # killed before or while it answered (headers sent, body not)
                if timer is not None:
                    timer.join()
                if self.c.proc.poll() is None:       # alive: a genuine error, not our kill
                    raise AssertionError(f"{method} {path} failed while the coordinator was up")
                self.c.start()
                self.retried += 1
            raise AssertionError(f"{method} {path}: no answer after 10 restarts")
        finally:
            if timer is not None:
                timer.join()


def test_kill_9_at_random_moments_loses_no_acknowledged_update(tmp_path):
    rng = random.Random(20261122)
    _, base = make_version(tmp_path / "v0")
    coord = Coordinator(tmp_path / "data", database_url(tmp_path), tmp_path / "coordinator.log")
    admin = {wire.AUTH_HEADER: f"Bearer {ADMIN}"}
    coord.start()
    drv = Driver(coord, rng)
    acked: dict[int, list[tuple[dict, int]]] = {}        # round -> (delta, example count) of each 2xx
    try:
        assert drv.request("POST", "/v1/admin/versions/none/pin", headers=admin).status_code == 404
        common = ["--data-dir", str(coord.data), "--database-url", coord.db_url]
        root, handlers, level = logging.getLogger(), logging.getLogger().handlers[:], logging.getLogger().level
        try:
            assert cli_main(["import-version", str(tmp_path / "v0"), *common]) == 0
        finally:      # the CLI sets up logging for a process; leave this one's as it was
            root.handlers[:], root.level = handlers, level
        key = drv.request("POST", "/v1/admin/enrollment-keys", json={}, headers=admin).json()["enrollment_key"]
        devices = []
        for _ in range(DEVICES):
            r = drv.request("POST", wire.PATH_ENROLL, json=wire.EnrollRequest(key).to_dict())
            resp = wire.EnrollResponse.from_dict(r.json())
            devices.append(wire.device_headers(resp.device_id, resp.token))

        for i in range(ROUNDS):
            drv.n, drv.kill_at = 0, rng.randint(1, 2 + 2 * DEVICES)   # start, check-ins, uploads, round read
            r = drv.request("POST", "/v1/admin/rounds", json={}, headers=admin)
            if r.status_code == 409:    # our start committed, its answer died: that round is ours
                last = drv.request("GET", "/v1/admin/rounds", headers=admin).json()["rounds"][-1]
                assert last["status"] == "open" and last["accepted"] == 0 and last["round_id"] not in acked, last
                rid = last["round_id"]
            else:
                assert r.status_code == 201, r.text
                rid = r.json()["round_id"]
            for h in devices:
                task = wire.Task.from_dict(drv.request("POST", wire.PATH_CHECKIN, headers=h, json=_CHECKIN).json())
                assert task.kind == wire.TASK_TRAIN and task.plan.round_id == rid, task
            for j, h in enumerate(devices):
                delta, n = random_delta(100 * i + j), rng.randint(1, 50)
                meta = wire.UpdateMeta(rid, "v0000", n, uuid.uuid4().hex, "float32")
                r = drv.request("POST", wire.PATH_UPDATES, data=artifact.encode_weights(delta), headers=h | {
                    wire.UPDATE_META_HEADER: meta.to_header(), "Content-Type": wire.SAFETENSORS_MEDIA_TYPE})
                assert r.status_code == 200, r.text           # retried with the same key: never a duplicate
                acked.setdefault(rid, []).append((delta, n))
            rnd = drv.request("GET", f"/v1/admin/rounds/{rid}", headers=admin).json()
            assert rnd["accepted"] == DEVICES, rnd

        # A round that dies with its deadline passing while the coordinator is down closes on restart.
        r = drv.request("POST", "/v1/admin/rounds", json={"round_duration_s": 2, "min_count": 2}, headers=admin)
        late_rid = r.json()["round_id"]
        for j, h in enumerate(devices[:2]):
            drv.request("POST", wire.PATH_CHECKIN, headers=h, json=_CHECKIN)
            delta = random_delta(10_000 + j)
            meta = wire.UpdateMeta(late_rid, "v0000", 3, uuid.uuid4().hex, "float32")
            r = drv.request("POST", wire.PATH_UPDATES, data=artifact.encode_weights(delta), headers=h | {
                wire.UPDATE_META_HEADER: meta.to_header(), "Content-Type": wire.SAFETENSORS_MEDIA_TYPE})
            assert r.status_code == 200, r.text
            acked.setdefault(late_rid, []).append((delta, 3))
        coord.kill()
        time.sleep(2.1)
        coord.start()
        drv.request("GET", "/v1/admin/status", headers=admin)          # runs maintenance: closes late rounds
        rounds = {x["round_id"]: x for x in drv.request("GET", "/v1/admin/rounds", headers=admin).json()["rounds"]}
        weights = {rid: artifact.decode_weights(drv.request("GET", wire.version_path(
            wire.PATH_VERSION_WEIGHTS, rounds[rid]["result_version_id"]), headers=admin).content)
            for rid in acked if rounds[rid]["status"] == "done"}
    finally:
        coord.stop()

    assert coord.kills >= ROUNDS and len(acked) == ROUNDS + 1
    assert rounds[late_rid]["status"] == "done" and rounds[late_rid]["accepted"] == 2, rounds[late_rid]
    lost = 0
    for rid, ups in acked.items():
        assert rounds[rid]["status"] == "done" and rounds[rid]["accepted"] == len(ups), rounds[rid]
        mean = aggregation.weighted_average(
            (artifact.flatten(d, TENSORS), aggregation.bounded_weight(n, 1000)) for d, n in ups)
        expected = artifact.unflatten(aggregation.fedavg(artifact.flatten(base, TENSORS), mean), TENSORS)
        lost += any(weights[rid][k].tobytes() != expected[k].tobytes() for k in SHAPES)
    assert lost == 0
    if coord.db_url.startswith("sqlite"):
        with sqlite3.connect(coord.db_url.removeprefix("sqlite:///")) as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    print(f"crash test: {ROUNDS + 1} rounds, {coord.kills} kill -9, {coord.starts} starts, "
          f"{drv.retried} retried requests, {sum(map(len, acked.values()))} acknowledged updates, 0 lost")


def test_a_full_round_left_open_by_a_crash_does_not_block_the_next(tmp_path, monkeypatch):
    """Regression: the goal-reaching upload commits, then the process dies before aggregating.
    Starting the next round answered 409 until some device checked in."""
    from coordinator.service import Coordinator as Service
    from tests.helpers.coordinator_fakes import FakeDevice, make_config, serve

    with serve(make_config(tmp_path, goal_count=2, min_count=2, overselect=1.0)) as s:
        make_version(tmp_path / "v0")
        s.coord.import_version(tmp_path / "v0")
        key = s.coord.create_enrollment_key()
        devs = [FakeDevice(s.url, key) for _ in range(2)]
        rid = s.coord.start_round()
        for d in devs:
            assert d.checkin().kind == wire.TASK_TRAIN
        real_close = Service.close_round

        def dies(self, round_id, **kw):
            raise RuntimeError("killed between the commit and the aggregation")
        monkeypatch.setattr(Service, "close_round", dies)
        for i, d in enumerate(devs):
            assert d.upload(random_delta(i), round_id=rid, base="v0000", examples=3).status_code == 200
        monkeypatch.setattr(Service, "close_round", real_close)
        assert s.coord.get_round(rid)["status"] == "open"           # full, not aggregated
        r = s.admin("POST", "/v1/admin/rounds", json={})
        assert r.status_code == 201, r.text
        assert s.coord.get_round(rid)["status"] == "done" and r.json()["round_id"] == rid + 1
