"""The edge agent against a real coordinator process on loopback: enroll, type, train, upload,
aggregate, then evaluate the new candidate; typed text never reaches the coordinator.

The coordinator runs as `python -m coordinator serve` in a subprocess (its own data dir and
log files); the devices run in-process through `edge_runtime.agent.run_once`, with a
recording transport that keeps every request they send, plus one device driven entirely
through the `python -m edge_runtime` CLI.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from requests.adapters import HTTPAdapter

from edge_runtime import agent
from edge_runtime import cache as text_cache
from edge_runtime.config import EdgeConfig
from protocol import wire
from tools.arm.scenario import SENTENCES
from tools.coordinator_process import CoordinatorProcess

ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "edge-test-admin-token"
SETTINGS = {"admin_token": ADMIN_TOKEN, "rate_limit_per_minute": "60000", "rate_limit_burst": "1000",
            "checkin_interval_s": "30", "canary_fraction": "1.0", "canary_min_reports": "5",
            "log_level": "DEBUG", "selection_window_s": "0"}


def canary(i: int) -> str:
    """A string that exists only in device i's typed text (and so must stay on device i)."""
    return f"zqxcanary{i}vwk"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}


def edge_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_runtime", *args], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=180, check=False)


@dataclass
class Coordinator:
    url: str
    data_dir: Path
    log_files: tuple[Path, ...]
    stable_id: str
    enrollment_key: str

    def admin(self, method: str, path: str, **kw: object) -> requests.Response:
        return requests.request(method, self.url + path, headers={wire.AUTH_HEADER: f"Bearer {ADMIN_TOKEN}"},
                                timeout=30, **kw)


@pytest.fixture
def coordinator(tmp_path, exported_version) -> Iterator[Coordinator]:
    """`python -m coordinator serve` (tools.coordinator_process) with the test model as stable."""
    with CoordinatorProcess(tmp_path / "coordinator-data", tmp_path / "coordinator.log", SETTINGS,
                            admin_token=ADMIN_TOKEN) as proc:
        proc.cli("init")
        stable_id = proc.cli("import-version", str(exported_version))
        key = proc.cli("create-enrollment-key", "--label", "edge-test")
        url = proc.start()
        yield Coordinator(url, proc.data_dir, (proc.log_path,), stable_id, key)


class Recorder(HTTPAdapter):
    """A real HTTP transport that keeps a copy of every request (URL, headers, body)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, dict[str, str], bytes]] = []

    def send(self, request, *args, **kwargs):
        body = request.body or b""
        self.sent.append((request.url, dict(request.headers), body if isinstance(body, bytes) else body.encode()))
        return super().send(request, *args, **kwargs)


def recording_session() -> tuple[requests.Session, Recorder]:
    s = requests.Session()
    rec = Recorder()
    s.mount("http://", rec)
    return s, rec


def device_config(data_dir: Path, **kw: object) -> EdgeConfig:
    return EdgeConfig(data_dir=str(data_dir), eligibility="override:eligible", min_wait_s=0.1,
                      backoff_initial_s=0.1, backoff_max_s=0.5, **kw)


def _type_corpus(cfg: EdgeConfig, i: int) -> None:
    for j, s in enumerate(SENTENCES):
        assert text_cache.type_text(cfg, f"{s} {canary(i)}" if j % 3 == 0 else s, "message")
    assert not text_cache.type_text(cfg, f"hunter2 {canary(i)}pw", "password")


def _files_containing(root: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            hits += [f"{p}: {n!r}" for n in needles if n in data]
    return hits


def test_devices_train_upload_and_evaluate_against_real_coordinator(coordinator, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    n = 3
    session, recorder = recording_session()
    configs = [device_config(tmp_path / f"device{i}") for i in range(n)]

    # Device 0 goes entirely through the CLI; the others through the agent API.
    r = edge_cli("enroll", "--data-dir", configs[0].data_dir, "--coordinator", coordinator.url,
                 "--enrollment-key", coordinator.enrollment_key)
    assert r.returncode == 0, r.stderr
    pub = coordinator.admin("GET", "/v1/admin/status").json()["public_key_hex"]
    assert json.loads(r.stdout)["public_key_hex"] == pub
    for j, s in enumerate(SENTENCES):
        text = f"{s} {canary(0)}" if j % 3 == 0 else s
        r = edge_cli("type", "--data-dir", configs[0].data_dir, "--field-kind", "message", text)
        assert r.returncode == 0 and r.stdout.strip() == "cached", r.stderr
        assert canary(0) not in r.stdout + r.stderr
    for i in range(1, n):
        agent.enroll(configs[i].with_overrides({"coordinator": coordinator.url, "public_key": pub}),
                     coordinator.enrollment_key, session=session)
        _type_corpus(configs[i], i)

    resp = coordinator.admin("POST", "/v1/admin/rounds", json={
        "goal_count": n, "min_count": 2, "overselect": 1.0, "epochs": 1, "batch_size": 4,
        "learning_rate": 0.1, "clip_norm": 5.0, "noise_multiplier": 0.01, "max_examples": 200})
    assert resp.status_code == 201, resp.text
    round_id = resp.json()["round_id"]

    devices = [agent.Device.open(c, session=session) for c in configs]
    try:
        results = [agent.run_once(d) for d in devices]
        for d, res in zip(devices, results, strict=True):
            assert (res.kind, res.outcome) == (wire.TASK_TRAIN, "uploaded"), res
            assert res.counts["round"] == round_id and res.counts["examples"] >= 1
            assert d.store.current_id == coordinator.stable_id      # downloaded, verified, swapped in
        rnd = coordinator.admin("GET", f"/v1/admin/rounds/{round_id}").json()
        assert rnd["status"] == "done" and rnd["accepted"] == n, rnd
        cand = rnd["result_version_id"]
        versions = {v["version_id"]: v for v in coordinator.admin("GET", "/v1/admin/versions").json()["versions"]}
        assert versions[cand]["status"] == "candidate" and versions[cand]["round_id"] == round_id
        assert coordinator.admin("GET", "/v1/admin/rejections").json()["rejections"] == []

        # Canary fraction 1: next check-in swaps to the candidate (signed by the coordinator)
        # and evaluates it against stable on the held-out text, reporting aggregates only.
        for d in devices:
            res = agent.run_once(d)
            assert (res.kind, res.outcome) == (wire.TASK_EVALUATE, "reported"), res
            assert res.counts["words"] > 0        # word-level counts by the device's own predictor
            assert d.store.current_id == cand and d.store.previous_id == coordinator.stable_id
        comparison = coordinator.admin("GET", "/v1/admin/canary").json()
        assert comparison["candidate_version_id"] == cand, comparison
        versions = {v["version_id"]: v for v in coordinator.admin("GET", "/v1/admin/versions").json()["versions"]}
        assert versions[cand]["canary_reports"] == n

        # Nothing left to do: an idle check-in.
        res = agent.run_once(devices[0])
        assert res.kind == wire.TASK_COME_BACK and res.wait_s > 0
    finally:
        for d in devices:
            d.close()

    r = edge_cli("status", "--data-dir", configs[0].data_dir)
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["model"]["current"] == cand and st["cache"]["records"] == len(SENTENCES)
    assert "token" not in r.stdout

    # Privacy: no typed text in any request body or header, the coordinator's files or logs,
    # the edge logs, or any device file outside its text cache.
    needles = [canary(i).encode() for i in range(n)]
    assert recorder.sent and any(wire.PATH_UPDATES in url for url, _, _ in recorder.sent)
    for url, headers, body in recorder.sent:
        blob = body + json.dumps(headers).encode() + url.encode()
        assert not [nd for nd in needles if nd in blob], url
    assert _files_containing(coordinator.data_dir, needles) == []
    for log_file in coordinator.log_files:
        text = log_file.read_bytes()
        assert not [nd for nd in needles if nd in text]
    assert coordinator.log_files[-1].stat().st_size > 0      # it did log (at DEBUG), just never text
    assert not [rec for rec in caplog.records if any(canary(i) in rec.getMessage() for i in range(n))]
    for c in configs:
        outside = [p for p in Path(c.data_dir).rglob("*") if p.is_file() and not p.name.startswith("text_cache")]
        assert _files_containing_paths(outside, needles) == []
        cache_bytes = b"".join(p.read_bytes() for p in Path(c.data_dir).glob("text_cache*"))
        assert b"hunter2" not in cache_bytes      # the password field was never cached


def _files_containing_paths(paths: list[Path], needles: list[bytes]) -> list[str]:
    return [f"{p}: {n!r}" for p in paths for n in needles if n in p.read_bytes()]


def test_run_once_cli_without_round_and_errors_are_one_line(coordinator, tmp_path):
    d = tmp_path / "dev"
    r = edge_cli("enroll", "--data-dir", str(d), "--coordinator", coordinator.url,
                 "--enrollment-key", "wrong-key")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    r = edge_cli("enroll", "--data-dir", str(d), "--coordinator", coordinator.url,
                 "--enrollment-key", coordinator.enrollment_key)
    assert r.returncode == 0, r.stderr
    r = edge_cli("enroll", "--data-dir", str(d), "--coordinator", coordinator.url,
                 "--enrollment-key", coordinator.enrollment_key)
    assert r.returncode == 2 and "already enrolled" in r.stderr
    r = edge_cli("run", "--data-dir", str(d), "--once", "--eligibility", "override:ineligible")
    assert r.returncode == 0, r.stderr
    assert "task come_back: idle (disabled by override)" in r.stderr
    assert json.loads(edge_cli("status", "--data-dir", str(d)).stdout)["model"]["current"] == coordinator.stable_id
    # A second `run` on a data directory whose loop already runs (the systemd unit, and one by
    # hand) is refused in one line: both trained, uploaded and wrote the privacy ledger.
    from edge_runtime import agent
    with agent.run_lock(d):
        r = edge_cli("run", "--data-dir", str(d), "--once", "--eligibility", "override:ineligible")
    assert r.returncode == 2 and r.stderr.strip() == (f"error: another `run` is using {d} (a systemd unit, or one "
                                                      "started by hand): stop it first; one device loop per data "
                                                      "directory"), r.stderr
    r = edge_cli("run", "--data-dir", str(d), "--once", "--set", "no_such_setting=1")
    assert r.returncode == 2 and r.stderr.strip() == "error: flags: unknown setting(s) ['no_such_setting']"
    assert edge_cli("--version").stdout.startswith("python -m edge_runtime ")
