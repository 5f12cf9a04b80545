"""End-to-end privacy: devices with canary sentences train, upload and evaluate against a real
coordinator on loopback; no sentence and no 4-word sequence from any device's cache appears in
any request a device sent (URL, headers, body), in the coordinator's logs (every logger, at
DEBUG) or in any file of its data directory (SQLite database, WAL, blobs, keys). Also: the
coordinator and the keyboard page bind to loopback unless told otherwise.
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter

from coordinator.config import Config
from edge_runtime import agent
from edge_runtime.cache import type_text
from edge_runtime.config import EdgeConfig
from protocol import wire
from tests.helpers.coordinator_fakes import make_config, serve
from tools.coordinator_process import free_port

ROOT = Path(__file__).resolve().parents[2]
COMMON = ["see you at the station tomorrow morning", "thanks for the lovely dinner last night",
          "can you send me the notes from the meeting", "my train is running late again today",
          "let me know when you are home safe", "the kids loved the new book you gave them"]
SYLLABLES = ["zor", "qua", "vex", "plim", "drub", "kesh", "mol", "tiv", "yarn", "gosp", "blen", "frak"]


def canary_sentences(device: int, n: int = 4) -> list[str]:
    """Sentences made of invented words: they can only come from that device's cache."""
    rng = random.Random(1000 + device)
    words = lambda k: " ".join("".join(rng.choice(SYLLABLES) for _ in range(3)) for _ in range(k))  # noqa: E731
    return [f"please tell {words(2)} that the {words(3)} arrives on {words(1)}" for _ in range(n)]


def four_grams(text: str) -> set[str]:
    w = text.split()
    return {" ".join(w[i:i + 4]) for i in range(len(w) - 3)}


class Recorder(HTTPAdapter):
    """A real HTTP transport that keeps every request a device sends: URL, headers, body."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []

    def send(self, request, *args, **kwargs):
        body = request.body or b""
        body = body if isinstance(body, bytes) else body.encode()
        head = f"{request.method} {request.url}\n" + "\n".join(f"{k}: {v}" for k, v in request.headers.items())
        self.sent.append(head.encode() + b"\n\n" + body)
        return super().send(request, *args, **kwargs)


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_no_sentence_or_4gram_from_any_cache_leaves_the_device(tmp_path, exported_version):
    keep = _Keep()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(keep)
    root.setLevel(logging.DEBUG)
    recorder = Recorder()
    session = requests.Session()
    session.mount("http://", recorder)
    n = 3
    cfgs, caches = [], []
    try:
        with serve(make_config(tmp_path, goal_count=n, min_count=n, overselect=1.0, canary_fraction=1.0,
                               canary_min_reports=n, clip_norm=5.0)) as s:
            stable = s.coord.import_version(exported_version)
            key = s.coord.create_enrollment_key()
            for i in range(n):
                cfg = EdgeConfig(data_dir=str(tmp_path / f"device{i}"), eligibility="override:eligible",
                                 coordinator=s.url, public_key=s.coord.public_key_hex, min_wait_s=0.1)
                agent.enroll(cfg, key, session=session)
                texts = COMMON + canary_sentences(i)
                for t in texts:
                    assert type_text(cfg, t, "message")
                cfgs.append(cfg)
                caches.append(texts)
            rid = s.coord.start_round(epochs=1, batch_size=4, learning_rate=0.1, noise_multiplier=0.01,
                                      max_examples=200)
            devices = [agent.Device.open(c, session=session) for c in cfgs]
            try:
                outcomes = [agent.run_once(d) for d in devices]
                assert all(r.outcome == "uploaded" for r in outcomes), outcomes
                rnd = s.coord.get_round(rid)
                assert rnd["status"] == "done", rnd
                outcomes = [agent.run_once(d) for d in devices]          # canary evaluation of the result
                assert all(r.kind == wire.TASK_EVALUATE and r.outcome == "reported" for r in outcomes), outcomes
            finally:
                for d in devices:
                    d.close()
            assert stable
            data_dir = Path(s.config.data_dir)
            files = [p for p in data_dir.rglob("*") if p.is_file()] + list(tmp_path.glob("coordinator.db*"))
            stored = {p: p.read_bytes() for p in files}        # read while the WAL is still there
    finally:
        root.removeHandler(keep)
        root.setLevel(old_level)

    needles = {t for texts in caches for t in texts} | {g for texts in caches for t in texts for g in four_grams(t)}
    encoded = [x.encode() for x in sorted(needles)]
    assert len(encoded) > 60
    kinds = {b.split(b"\n", 1)[0].split(b" ", 1)[1].split(b"?")[0].rsplit(b"/", 1)[-1] for b in recorder.sent}
    assert {b"enroll", b"checkin", b"updates", b"evaluations", b"weights.q8"} <= kinds, kinds
    leaks = [f"request {i}: {x!r}" for i, body in enumerate(recorder.sent) for x in encoded if x in body]
    logs = "\n".join(keep.lines).encode()
    assert len(keep.lines) > 20                                   # it did log, at DEBUG
    leaks += [f"coordinator log: {x!r}" for x in encoded if x in logs]
    assert any("blobs" in p.parts for p in stored)
    assert any(p.suffix == ".db" for p in stored) or not s.config.resolved_database_url.startswith("sqlite")
    for i, c in enumerate(cfgs):          # positive control: the needles are findable where they do live
        cache_bytes = b"".join(p.read_bytes() for p in Path(c.data_dir).glob("text_cache*"))
        assert canary_sentences(i)[0].encode() in cache_bytes
    leaks += [f"{p}: {x!r}" for p, data in stored.items() for x in encoded if x in data]
    assert not leaks, "\n".join(leaks[:20])
    print(f"privacy: {len(recorder.sent)} requests ({sum(map(len, recorder.sent)) / 1e6:.2f} MB), "
          f"{len(keep.lines)} log lines, {len(stored)} coordinator files searched for {len(encoded)} "
          f"sentences and 4-word sequences: 0 found")


def _listening(port: int) -> list[str]:
    """Local addresses listening on `port` (from /proc/net/tcp and tcp6)."""
    out = []
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if state == "0A" and int(p, 16) == port:      # 0A = LISTEN
                out.append(addr)
    return out


def _serve_and_look(cmd: list[str], port: int, tmp_path: Path) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FEDKEYS_COORDINATOR_", "FEDKEYS_EDGE_"))}
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env | {"PYTHONPATH": str(ROOT)}, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not _listening(port):
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            time.sleep(0.1)
        return _listening(port)
    finally:
        proc.terminate()
        proc.wait(20)


LOOPBACK_V4 = "0100007F"   # 127.0.0.1 as /proc/net/tcp writes it


def test_coordinator_binds_to_loopback_by_default(tmp_path):
    assert Config().host == "127.0.0.1"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDKEYS_COORDINATOR_")} | {"PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "coordinator", "init", "--data-dir", str(tmp_path / "c")], cwd=ROOT,
                   env=env, check=True, capture_output=True, timeout=120)
    addrs = _serve_and_look([sys.executable, "-m", "coordinator", "serve", "--data-dir", str(tmp_path / "c"),
                             "--port", str(port)], port, tmp_path)
    assert addrs == [LOOPBACK_V4], addrs


def test_keyboard_page_binds_to_loopback_by_default(tmp_path, exported_version):
    assert EdgeConfig().keyboard_host == "127.0.0.1"
    port = free_port()
    data = tmp_path / "dev"
    data.mkdir()
    r = subprocess.run([sys.executable, "-m", "edge_runtime", "keyboard", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    assert r.returncode == 0, r.stderr
    extra = ["--model", str(exported_version)] if "--model" in r.stdout else []
    addrs = _serve_and_look([sys.executable, "-m", "edge_runtime", "keyboard", "--data-dir", str(data),
                             "--port", str(port), *extra], port, tmp_path)
    assert addrs == [LOOPBACK_V4], addrs


def test_a_crashed_keyboard_writes_no_core_file_with_the_text(tmp_path, exported_version):
    """The keyboard's memory holds the text cache's pages, the user's words and the text being
    typed. A crash (a native fault in the interpreter) under a core size limit that allows dumps
    (systemd-coredump's services, `ulimit -c unlimited`) wrote all of it to a core file outside the
    data directory: a `core` of 165 MB in the working directory held a committed sentence and the
    half-typed one. The device's commands now run with a core limit of 0 and, on Linux, not dumpable."""
    import resource
    import signal

    port = free_port()
    data = tmp_path / "dev"
    cwd = tmp_path / "cwd"
    cwd.mkdir()

    def allow_core_dumps() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDKEYS_EDGE_")} | {"PYTHONPATH": str(ROOT)}
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "edge_runtime", "keyboard", "--data-dir", str(data),
                                 "--port", str(port), "--model", str(exported_version), "--set", "base_ngram=off"],
                                cwd=cwd, env=env, stdout=log, stderr=log, preexec_fn=allow_core_dumps)
    try:
        deadline = time.monotonic() + 90
        while not _listening(port):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-2000:]
            time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/api/"
        headers = {"X-Keyboard-Token": (data / "keyboard_token").read_text().strip()}
        r = requests.post(url + "commit", json={"text": "qqcore meet me at the qqcoreplace", "field_kind": "message"},
                      headers=headers, timeout=30)
        assert r.status_code == 200 and r.json()["cached"], r.text
        assert requests.post(url + "suggest", json={"client": "c", "text": "qqcoretyped half a sen"}, headers=headers,
                         timeout=30).status_code == 200
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        core_limit = next(line for line in limits.splitlines() if line.startswith("Max core file size"))
        proc.send_signal(signal.SIGSEGV)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(20)
    assert core_limit.split()[4] == "0", core_limit   # the soft limit, which a crash is held to
    dumped = [p for p in cwd.iterdir() if b"qqcore" in p.read_bytes()]
    assert not dumped, dumped
