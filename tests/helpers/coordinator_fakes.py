"""Shared helpers for the coordinator tests: fake version directories, a served app, fake devices."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests

from coordinator.app import create_app
from coordinator.config import Config
from coordinator.db import drop_everything
from protocol import artifact, wire
from tests.helpers.versions import SHAPES, TINY_ARCH  # noqa: F401  (re-exported for the coordinator tests)

TEST_DB_ENV = "FEDKEYS_TEST_DATABASE_URL"
ADMIN_TOKEN = "admin-secret-for-tests"   # what make_config sets: at least 16 characters


def make_version(directory: Path, version_id: str = "v0000", *, seed: int = 0,
                 notices: dict[str, str] | None = None) -> tuple[artifact.Manifest, dict[str, np.ndarray]]:
    """A tiny but real version directory (the coordinator only cares about the manifest)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / artifact.GRAPH).write_bytes(b"not really a tflite graph")
    (directory / artifact.TOKENIZER).write_bytes(b"not really a sentencepiece model")
    arch = TINY_ARCH.to_dict()
    rng = np.random.default_rng(seed)
    weights = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    m = artifact.Manifest(version_id=version_id, arch=arch, arch_hash=artifact.arch_hash(arch),
                          tensors=[artifact.TensorSpec(k, tuple(s)) for k, s in SHAPES.items()],
                          graph_sha256=artifact.sha256_file(directory / artifact.GRAPH),
                          tokenizer_sha256=artifact.sha256_file(directory / artifact.TOKENIZER), weights_sha256="",
                          notices=dict(notices or {}))
    artifact.write_version(directory, m, weights)
    return m, weights


def database_url(tmp_path: Path) -> str:
    """FEDKEYS_TEST_DATABASE_URL (e.g. PostgreSQL in CI), emptied first; else SQLite in tmp_path."""
    url = os.environ.get(TEST_DB_ENV, "")
    if not url:
        return f"sqlite:///{tmp_path / 'coordinator.db'}"
    drop_everything(url)
    return url


def make_config(tmp_path: Path, **overrides: object) -> Config:
    base = {"data_dir": str(tmp_path / "data"), "database_url": database_url(tmp_path),
            "rate_limit_per_minute": 60000.0, "rate_limit_burst": 1000, "rate_limit_per_key_per_minute": 600000.0,
            "rate_limit_per_key_burst": 100000, "goal_count": 3, "min_count": 2,
            "overselect": 1.34, "round_duration_s": 600.0, "selection_window_s": 0.0, "checkin_interval_s": 60.0,
            "canary_fraction": 1.0,
            "canary_min_reports": 2, "canary_tolerance": 0.01, "clip_norm": 10.0, "noise_multiplier": 0.01,
            "max_examples": 1000, "max_example_weight": 1000, "admin_token": ADMIN_TOKEN}
    return Config().with_overrides(base | overrides)


@dataclass
class Served:
    url: str
    app: object
    config: Config
    v0_weights: dict[str, np.ndarray] = field(default_factory=dict)   # set by `import_v0`

    @property
    def coord(self):
        return self.app.extensions["fedkeys"]

    def admin(self, method: str, path: str, **kw: object) -> requests.Response:
        headers = {wire.AUTH_HEADER: f"Bearer {self.config.admin_token}"}
        return requests.request(method, self.url + path, headers=headers, timeout=10, **kw)


def start_server(app, port: int = 0):
    """`app` served on a loopback port by a background thread; stop it with `stop_server`.

    Request threads are joined on stop (werkzeug makes them daemons): a request still running
    when the coordinator closes would return its database connection to a disposed pool, which
    drops it unclosed (PostgreSQL: psycopg's ResourceWarning at garbage collection)."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", port, app, threaded=True)
    server.daemon_threads = False
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    return server, thread


def stop_server(server, thread) -> None:
    server.shutdown()
    server.server_close()      # joins the request threads still running
    thread.join(5)


@contextmanager
def serve(config: Config) -> Iterator[Served]:
    """The real app on a loopback port in a background thread (real HTTP, real sockets)."""
    app = create_app(config)
    server, thread = start_server(app)
    try:
        yield Served(f"http://127.0.0.1:{server.server_port}", app, config)
    finally:
        stop_server(server, thread)
        app.extensions["fedkeys"].close()


def import_v0(served: Served, directory: Path) -> dict[str, np.ndarray]:
    """`make_version`'s v0000 written to `directory` and imported as stable; its weights (also
    kept as `served.v0_weights`, the base every expected aggregate is computed from)."""
    _, served.v0_weights = make_version(directory)
    assert served.coord.import_version(directory) == "v0000"
    return served.v0_weights


class FakeDevice:
    """Speaks the wire protocol the way the edge runtime does, with numpy deltas."""

    def __init__(self, url: str, enrollment_key: str) -> None:
        self.url = url
        r = requests.post(url + wire.PATH_ENROLL, json=wire.EnrollRequest(enrollment_key).to_dict(), timeout=10)
        assert r.status_code == 200, r.text
        resp = wire.EnrollResponse.from_dict(r.json())
        self.device_id, self.token = resp.device_id, resp.token
        self.headers = wire.device_headers(self.device_id, self.token)

    def checkin(self, eligible: bool = True, current: str | None = None) -> wire.Task:
        r = requests.post(self.url + wire.PATH_CHECKIN, headers=self.headers, timeout=10,
                          json=wire.CheckinRequest(eligible=eligible, current_version_id=current).to_dict())
        assert r.status_code == 200, r.text
        return wire.Task.from_dict(r.json())

    def upload(self, delta: dict[str, np.ndarray], *, round_id: int, base: str, examples: int,
               encoding: str = "float32", key: str | None = None, body: bytes | None = None) -> requests.Response:
        meta = wire.UpdateMeta(round_id=round_id, base_version_id=base, example_count=examples,
                               idempotency_key=key or uuid.uuid4().hex, encoding=encoding)
        data = body if body is not None else artifact.encode_weights(delta, encoding)
        return requests.post(self.url + wire.PATH_UPDATES, data=data, timeout=10,
                             headers=self.headers | {wire.UPDATE_META_HEADER: meta.to_header(),
                                                     "Content-Type": wire.SAFETENSORS_MEDIA_TYPE})

    def evaluate(self, candidate: str, results: list[wire.VersionMetrics]) -> requests.Response:
        rep = wire.EvaluationReport(candidate_version_id=candidate, results=tuple(results))
        return requests.post(self.url + wire.PATH_EVALUATIONS, json=rep.to_dict(), headers=self.headers, timeout=10)

    def get(self, template: str, version_id: str) -> requests.Response:
        return requests.get(self.url + wire.version_path(template, version_id), headers=self.headers, timeout=10)


def random_delta(seed: int, scale: float = 0.1,
                 shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1000 + seed)
    return {k: (scale * rng.normal(size=s)).astype(np.float32) for k, s in (shapes or SHAPES).items()}


def enrolled_observer(s: Served, data_dir: Path):
    """A real edge runtime enrolled with `s`, with the coordinator's key pinned, that never trains
    (eligibility forced off): a device that only checks in, installs and serves versions."""
    from edge_runtime import agent
    from edge_runtime.config import EdgeConfig

    cfg = EdgeConfig(data_dir=str(data_dir), coordinator=s.url, public_key=s.coord.public_key_hex,
                     eligibility="override:ineligible", min_wait_s=0.1)
    agent.enroll(cfg, s.coord.create_enrollment_key())
    return agent.Device.open(cfg)


@contextmanager
def open_round(tmp_path: Path, n_devices: int, **settings) -> Iterator[tuple[Served, list[FakeDevice], int]]:
    """A served coordinator on version 0 with one round open, which selected all `n_devices`
    (a goal of `n_devices`, `overselect` 1 and a tiny canary cohort unless `settings` say otherwise)."""
    defaults = {"goal_count": n_devices, "min_count": min(2, n_devices), "overselect": 1.0, "canary_fraction": 0.01}
    with serve(make_config(tmp_path, **(defaults | settings))) as s:
        make_version(tmp_path / "v0")
        s.coord.import_version(tmp_path / "v0")
        key = s.coord.create_enrollment_key()
        devices = [FakeDevice(s.url, key) for _ in range(n_devices)]
        rid = s.coord.start_round()
        assert all(d.checkin().kind == wire.TASK_TRAIN for d in devices)
        yield s, devices, rid


@dataclass
class HeldMean:
    """What `hold_the_mean` patched in: `started` is set when a held call begins, which then waits
    for `release`; `calls` names the threads that called, in order."""
    started: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    calls: list[str] = field(default_factory=list)


def hold_the_mean(monkeypatch, holds: Callable[[int, str], bool] = lambda n, thread: True) -> HeldMean:
    """A round's close held in the middle of its mean: `coordinator.aggregation.aggregate` patched so
    a call that `holds(its number from 1, its thread's name)` picks waits for `release`."""
    from coordinator import aggregation

    real, held = aggregation.aggregate, HeldMean()

    def slow_aggregate(*a, **kw):
        held.calls.append(threading.current_thread().name)
        if holds(len(held.calls), held.calls[-1]):
            held.started.set()
            assert held.release.wait(60)
        return real(*a, **kw)

    monkeypatch.setattr(aggregation, "aggregate", slow_aggregate)
    return held
