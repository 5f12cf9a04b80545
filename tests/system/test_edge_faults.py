"""Device faults: kill -9 of `python -m edge_runtime run --once` during a model swap, training and
upload (before and after the coordinator commits it); and a coordinator that is down or hangs.

After each kill the device restarts and must find its text cache intact (same records, SQLite
integrity ok), a valid model (every hash and the signature verify) or none, no staging
leftovers, and its update for the round counted exactly once: either the coordinator had
committed it (the device is not asked again) or it had not (the device trains and uploads
again). The coordinator is the real app on loopback, with a gate on one path that tells the
test when the device is inside that request and holds it there.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from flask import request

from edge_runtime import agent
from edge_runtime.cache import open_cache, type_text
from edge_runtime.client import CoordinatorClient
from edge_runtime.config import EdgeConfig
from edge_runtime.identity import load_identity
from edge_runtime.paths import CACHE_DB
from edge_runtime.predictor import Predictor
from edge_runtime.versions import VersionStore
from protocol import wire
from protocol.interpreter import Model
from protocol.text import load_tokenizer
from tests.helpers.coordinator_fakes import make_config, serve

ROOT = Path(__file__).resolve().parents[2]
SENTENCES = [f"meet me at the {place} at {h} o'clock with the {thing}"
             for place in ("station", "park", "office", "library", "cafe", "river")
             for h, thing in (("six", "tickets"), ("nine", "keys"), ("ten", "notes"), ("two", "books"))]


class Gate:
    """Before (or after) handling `path`, note that the device is there and hold it `hold_s`."""

    def __init__(self) -> None:
        self.path: str | None = None
        self.after = False
        self.hold_s = 0.0
        self.reached = threading.Event()
        self.finished = threading.Event()    # the gated request has been handled to its end
        self.block_path: str | None = None   # answered 503 at once, never handled
        self.blocked = threading.Event()

    def arm(self, path: str, *, after: bool = False, hold_s: float = 30.0) -> None:
        self.path, self.after, self.hold_s = path, after, hold_s
        self.reached.clear()
        self.finished.clear()

    def disarm(self) -> None:
        self.path = self.block_path = None

    def _hit(self, after: bool) -> None:
        if self.path is not None and request.path.startswith(self.path) and self.after == after:
            self.reached.set()
            deadline = time.monotonic() + self.hold_s
            while self.path is not None and time.monotonic() < deadline:
                time.sleep(0.02)

    def _before(self):
        if self.block_path is not None and request.path.startswith(self.block_path):
            self.blocked.set()
            return {"error": wire.E_INTERNAL, "message": "blocked by the test"}, 503
        self._hit(False)
        return None

    def install(self, app) -> None:
        app.before_request(self._before)

        def after(resp):
            self._hit(True)
            return resp
        app.after_request(after)

        @app.teardown_request
        def _done(_exc):
            if self.reached.is_set() and self.path is None:
                self.finished.set()


def _edge_run(data_dir: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "edge_runtime", "run", "--once", "--data-dir", str(data_dir),
           "--eligibility", "override:eligible", "--set", "min_wait_s=0.1", "--set", "backoff_initial_s=0.1",
           "--set", "backoff_max_s=0.2", "--set", "upload_attempts=1",
           "--set", "max_epochs=100", *extra]   # the long-training case needs more than the default floor
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _kill_when(proc: subprocess.Popen, event: threading.Event, delay_s: float = 0.0) -> None:
    assert event.wait(120), proc.communicate(timeout=5)[1].decode()[-2000:]
    time.sleep(delay_s)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)          # reaps it and closes the pipes
    assert proc.returncode == -signal.SIGKILL


def _finish(proc: subprocess.Popen) -> str:
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err.decode()[-2000:]
    return err.decode()


def _cache_snapshot(cfg: EdgeConfig) -> tuple[list[str], list[str]]:
    with open_cache(cfg) as cache:
        snap = ([r.text for r in cache.training_records()], [r.text for r in cache.heldout_records()])
    for p in Path(cfg.data_dir).glob("text_cache*.sqlite3"):
        with sqlite3.connect(p) as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    return snap


def _assert_store_sane(data_dir: Path, public_key: str, expect: str | None) -> None:
    store = VersionStore(data_dir, public_key=public_key)        # recovery runs here
    assert not list(store.root.glob(".incoming-*"))
    assert store.current_id == expect
    for vid in store.installed():                                 # only complete, verified versions
        store._verify_dir(store.path(vid), vid)
    if expect is not None:
        assert store.current().name == expect


def _updates_from(coord, device_id: str, round_id: int) -> int:
    from sqlalchemy import func, select

    from coordinator.models import Update

    with coord._sessions() as s:
        return int(s.scalar(select(func.count()).select_from(Update).where(
            Update.round_id == round_id, Update.device_id == device_id)))


@pytest.fixture
def world(tmp_path, exported_version):
    gate = Gate()
    cfg = make_config(tmp_path, goal_count=10, min_count=1, overselect=1.0, canary_fraction=0.01)
    with serve(cfg) as s:
        gate.install(s.app)
        stable = s.coord.import_version(exported_version)
        key = s.coord.create_enrollment_key()
        yield s, gate, stable, key
        gate.disarm()


def _device(tmp_path: Path, s, key: str, name: str, copies: int = 1) -> EdgeConfig:
    cfg = EdgeConfig(data_dir=str(tmp_path / name), eligibility="override:eligible", coordinator=s.url,
                     public_key=s.coord.public_key_hex)
    agent.enroll(cfg, key)
    for i in range(copies):
        for text in SENTENCES:
            assert type_text(cfg, text if i == 0 else f"{text} {i}", "message")
    return cfg


def test_kill_during_model_swap_then_restart(world, tmp_path):
    s, gate, stable, key = world
    cfg = _device(tmp_path, s, key, "swap")
    before = _cache_snapshot(cfg)
    gate.arm(wire.version_path(wire.PATH_VERSION_WEIGHTS, stable))      # mid-download of the first version
    _kill_when(_edge_run(Path(cfg.data_dir)), gate.reached)
    gate.disarm()
    _assert_store_sane(Path(cfg.data_dir), s.coord.public_key_hex, None)
    assert _cache_snapshot(cfg) == before
    _finish(_edge_run(Path(cfg.data_dir)))
    _assert_store_sane(Path(cfg.data_dir), s.coord.public_key_hex, stable)
    assert _cache_snapshot(cfg) == before


def test_a_cache_too_damaged_to_open_still_lets_the_device_take_versions(world, tmp_path):
    """A damaged header stopped `run` at its start, so the device took no new version and no
    rollback until its user wiped the cache. It now checks in, without training, and the text
    stays on disk for the user's wipe."""
    s, _, stable, key = world
    cfg = _device(tmp_path, s, key, "header")
    db = Path(cfg.data_dir) / CACHE_DB
    with open(db, "r+b") as f:
        f.write(b"\xff" * 16)
    dev = agent.Device.open(cfg)
    try:
        res = agent.run_once(dev)
    finally:
        dev.close()
    assert dev.store.current_id == stable and res.version_id == stable
    assert SENTENCES[0].split()[0].encode() in db.read_bytes()


@pytest.mark.parametrize("where", ["training", "upload-before-commit", "upload-after-commit"])
def test_kill_during_training_or_upload_then_restart(world, tmp_path, where):
    s, gate, stable, key = world
    # the training case needs training that outlasts the kill's delay even on an idle machine: 200 windows
    cfg = _device(tmp_path, s, key, where, copies=10 if where == "training" else 1)
    dev_id = load_identity(Path(cfg.data_dir)).device_id
    _finish(_edge_run(Path(cfg.data_dir)))                 # install the model first (no round yet)
    before = _cache_snapshot(cfg)
    rid = s.coord.start_round(epochs=100 if where == "training" else 1, batch_size=1, max_examples=200)
    try:
        if where == "training":            # checked in, model loaded, now training: the upload never starts
            gate.arm(wire.PATH_CHECKIN, after=True, hold_s=0.0)
            gate.block_path, gate.blocked = wire.PATH_UPDATES, threading.Event()
            _kill_when(_edge_run(Path(cfg.data_dir)), gate.reached, delay_s=0.5)
            assert not gate.blocked.is_set(), "training ended before the kill: make it longer"
        else:
            gate.arm(wire.PATH_UPDATES, after=where.endswith("after-commit"), hold_s=30.0)
            _kill_when(_edge_run(Path(cfg.data_dir)), gate.reached)
        gate.disarm()
        if where != "training":
            assert gate.finished.wait(30)     # the coordinator finishes what it received
        committed = _updates_from(s.coord, dev_id, rid)
        assert committed == {"training": 0, "upload-after-commit": 1}.get(where, committed) and committed <= 1
        _assert_store_sane(Path(cfg.data_dir), s.coord.public_key_hex, stable)
        assert _cache_snapshot(cfg) == before

        err = _finish(_edge_run(Path(cfg.data_dir)))
        # Committed: the coordinator does not hand out the task again (the half-done upload is
        # complete, once). Not committed: the device trains again and uploads once.
        expected = "task come_back: idle" if committed else "task train: uploaded"
        assert expected in err, err[-1500:]
        print(f"kill during {where}: update committed before the kill: {bool(committed)}; after restart: "
              f"{expected}; {next((ln.split(': ', 1)[-1] for ln in err.splitlines() if ' trained ' in ln), '')}")
        assert _updates_from(s.coord, dev_id, rid) == 1
        _assert_store_sane(Path(cfg.data_dir), s.coord.public_key_hex, stable)
        assert _cache_snapshot(cfg) == before
    finally:
        gate.disarm()
        s.coord.close_round(rid, force=True)


class _Waits(threading.Event):
    """A stop event that records what run_loop waits for, and stops it after `n` waits."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.waits = n, []

    def wait(self, timeout=None):
        self.waits.append(timeout)
        if len(self.waits) >= self.n:
            self.set()
        time.sleep(0.05)                  # some real time passes while "waiting"
        return self.is_set()


def _hanging_server() -> tuple[socket.socket, str]:
    """Accepts connections and never answers (a coordinator that hangs)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    return srv, f"http://127.0.0.1:{srv.getsockname()[1]}"


@pytest.mark.parametrize("failure", ["down", "hangs"])
def test_unreachable_coordinator_backs_off_with_jitter_and_suggestions_keep_coming(world, tmp_path, failure,
                                                                                  exported_version):
    s, _, stable, key = world
    cfg = _device(tmp_path, s, key, failure)
    dev = agent.Device.open(cfg)
    agent.run_once(dev)                                         # installs the stable version
    assert dev.store.current_id == stable
    srv = None
    if failure == "down":
        with socket.socket() as tmp:
            tmp.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{tmp.getsockname()[1]}"  # closed again: connection refused
    else:
        srv, url = _hanging_server()
    dev.client = CoordinatorClient(url, device_id=dev.client.device_id, token=dev.client.token, timeout=(0.2, 0.2))
    dev.config = dev.config.with_overrides({"backoff_initial_s": 1.0, "backoff_max_s": 16.0, "jitter": 0.2})
    stop = _Waits(8)
    suggestions: list[list[str]] = []
    offline = threading.Event()           # set while run_loop is failing to reach the coordinator
    predictor = Predictor(Model.load(dev.store.current()), load_tokenizer(dev.store.current() / "tokenizer.model"))

    def type_while_offline() -> None:
        sess = predictor.session()
        while not stop.is_set():
            got = sess.update("meet me at the ")
            if offline.is_set():
                suggestions.append(got)
            time.sleep(0.005)

    typer = threading.Thread(target=type_while_offline)
    typer.start()
    try:
        offline.set()
        assert agent.run_loop(dev, stop=stop) == 0
    finally:
        stop.set()
        typer.join(10)
        dev.close()
        if srv is not None:
            srv.close()
    waits = stop.waits
    assert len(waits) == 8
    nominal = [min(2.0 ** i, 16.0) for i in range(8)]             # 1, 2, 4, 8, 16, 16, 16, 16
    for w, n in zip(waits, nominal, strict=True):
        assert n * 0.8 - 1e-9 <= w <= n * 1.2 + 1e-9, (waits, nominal)
    assert len({round(w / n, 6) for w, n in zip(waits, nominal, strict=True)}) > 1   # jittered, not lockstep
    assert len(suggestions) >= 5 and all(len(x) == 3 and all(x) for x in suggestions), suggestions
    print(f"coordinator {failure}: waits {[round(w, 2) for w in waits]}; {len(suggestions)} suggestion strips "
          f"served meanwhile")
    with requests.Session() as sess:      # and the real coordinator never saw a request meanwhile: nothing queued
        assert sess.get(s.url + wire.PATH_HEALTH, timeout=5).status_code == 200
