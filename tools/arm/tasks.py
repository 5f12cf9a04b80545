"""What runs on the board: the edge test subset, the end-to-end round, the keystroke benchmark.

Everything on the board is slow (qemu user-mode emulation: about 100x for training, 10-30x for
plain Python), so each task is sized in steps, not epochs; every step prints its elapsed time.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

from tools.arm.board import GUEST_VENVS, INTERPRETER_OF, QEMU_CPU, REPO, Board, BoardError, fmt_s, host_python, say
from tools.arm.scenario import marker
from tools.coordinator_process import CoordinatorProcess, CoordinatorProcessError, repo_env

# --- the edge test subset ----------------------------------------------------------------------
#
# Included (what depends on the CPU architecture, the interpreter build or native wheels):
#   tests/edge/test_edge_on_model.py, test_predictor.py   the exported model in the slim
#                                       interpreter: step/train/evaluate/get/set signatures,
#                                       predictor, training lowering the loss, clipped+noised update
#   tests/edge/test_edge_trainer.py     trainer on the real graph
#   tests/edge/test_edge_update.py      update encoding, clipping, noise (numpy on aarch64)
#   tests/edge/test_edge_versions.py    signed manifest + sha256 verification (cryptography on
#                                       aarch64), install / swap / rollback, int8 download form
#   tests/edge/test_edge_agent_step.py  one check-in -> task -> result, with fakes
#   tests/edge/test_edge_client.py      wire encoding (requests on aarch64)
#   tests/edge/test_edge_cache.py       SQLite text cache (the guest's sqlite3)
#   tests/edge/test_edge_config.py, test_edge_eligibility.py   settings, eligibility rules
# Left out (architecture-independent and slow under emulation, they run natively in CI):
#   *kill_9* and *crash_at_every_durable_step*: they start dozens of Python subprocesses and
#       kill them mid-write; each start costs seconds under qemu. Crash safety is a property of
#       the code's fsync/rename order, not of the CPU.
#   tests/edge/test_edge_no_tensorflow.py: a static import-graph check; on the board the venvs
#       have no TensorFlow at all (checked when they are built), which proves more.
#   the keyboard page in Chromium, the keyboard API and the hostile-reply fuzz: pure Python
#       above the parts listed, run natively.
TEST_PATHS = tuple(f"tests/edge/test_{name}.py" for name in (
    "edge_on_model", "predictor", "edge_trainer", "edge_update", "edge_versions", "edge_agent_step",
    "edge_client", "edge_cache", "edge_config", "edge_eligibility"))
TEST_DESELECT = "not kill_9 and not crash_at_every_durable_step"


def _source_key() -> str:
    """Hash of what a tiny version is built from: rebuilt when the model code changes."""
    h = hashlib.sha256()
    for d in ("model", "protocol"):
        for p in sorted((REPO / d).rglob("*.py")):
            h.update(p.read_bytes())
    h.update((REPO / "tests" / "tiny_version.py").read_bytes())
    return h.hexdigest()[:16]


def tiny_version(board: Board) -> Path:
    """The tests' tiny model version, built on the host (TensorFlow) once per model source."""
    out = board.work / "tiny-version"
    stamp = board.work / "tiny-version.key"
    key = _source_key()
    if (out / "manifest.json").exists() and stamp.exists() and stamp.read_text().strip() == key:
        return out
    with _timed("building the tiny test model version on the host (TensorFlow)"):
        tmp = board.work / "tiny-version.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        r = subprocess.run([host_python(), "-m", "tests.tiny_version", str(tmp)], cwd=REPO, env=_host_env(),
                           capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise BoardError(f"tests.tiny_version failed:\n{r.stderr[-2000:]}")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        stamp.write_text(key + "\n")
    return out


class _timed:
    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> _timed:
        say(f"{self.what} ...")
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.monotonic() - self.t0
        say(f"{self.what}: {'done' if exc[0] is None else 'FAILED'} in {fmt_s(self.elapsed)}")


def _host_env(**extra: str) -> dict[str, str]:
    return repo_env(**extra)


def test(board: Board, venvs: list[str], extra: list[str]) -> int:
    board.require_built()
    version = tiny_version(board)
    rc = 0
    for v in venvs:
        with _timed(f"edge tests on the board ({INTERPRETER_OF[v]}, QEMU_CPU={QEMU_CPU})"):
            r = board.run(["python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=5",
                           *TEST_PATHS, "-k", TEST_DESELECT, *extra],
                          venv=v, env={"FEDKEYS_TEST_VERSION": str(version)})
        verdict = "passed" if r.returncode == 0 else f"FAILED (exit {r.returncode})"
        say(f"edge tests with {INTERPRETER_OF[v]}: {verdict}")
        rc = rc or r.returncode
    return rc


# --- end to end ---------------------------------------------------------------------------------

ADMIN_TOKEN = "arm-e2e-admin-token"


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(what)
    say(f"  ok: {what}")


def _coordinator(data_dir: Path, total: int) -> CoordinatorProcess:
    """The host coordinator (tools.coordinator_process) in the host's full environment; a canary
    verdict needs every device's report."""
    settings = {"rate_limit_per_minute": "60000", "rate_limit_burst": "1000", "checkin_interval_s": "5",
                "canary_fraction": "1.0", "canary_min_reports": str(total), "log_level": "INFO",
                "max_eval_words": "100"}   # word metrics are slow under qemu
    return CoordinatorProcess(data_dir, data_dir.parent / "coordinator.log", settings, admin_token=ADMIN_TOKEN,
                              python=host_python(), admin_timeout_s=30)


def _db(coord: CoordinatorProcess, sql: str, *params: object) -> list[tuple]:
    """A read-only query on the coordinator's SQLite database (what the API does not show)."""
    con = sqlite3.connect(f"file:{coord.data_dir / 'coordinator.db'}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


class _Device:
    """One device driven through `python -m edge_runtime`, natively or on the board."""

    def __init__(self, board: Board, name: str, data_dir: Path, index: int, venv: str | None) -> None:
        self.board, self.name, self.data_dir, self.index, self.venv = board, name, data_dir, index, venv
        self.device_id = ""

    @property
    def emulated(self) -> bool:
        return self.venv is not None

    def _argv(self, module: str, *args: str) -> list[str]:
        return ["python" if self.emulated else host_python(), "-m", module, *args]

    def start(self, module: str, *args: str) -> subprocess.Popen:
        argv = self._argv(module, *args)
        if self.emulated:
            return _BoardPopen(self.board, argv, self.venv)
        return subprocess.Popen(argv, cwd=REPO, env=_host_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)

    def call(self, module: str, *args: str, timeout: float = 900) -> str:
        p = self.start(module, *args)
        out, _ = p.communicate(timeout=timeout)
        if p.returncode != 0:
            raise AssertionError(f"{self.name}: {module} {args[0]} failed (exit {p.returncode}):\n{out[-2000:]}")
        return out


class _BoardPopen:
    """`Board.run` in a thread, with the Popen methods the scenario uses."""

    def __init__(self, board: Board, argv: list[str], venv: str) -> None:
        import threading
        self.returncode: int | None = None
        self._out = ""

        def go() -> None:
            r = board.run(argv, venv=venv, capture=True)
            self._out, self.returncode = r.stdout or "", r.returncode
        self._t = threading.Thread(target=go, daemon=True)
        self._t.start()

    def communicate(self, timeout: float | None = None) -> tuple[str, None]:
        self._t.join(timeout)
        if self._t.is_alive():
            raise subprocess.TimeoutExpired("board", timeout or 0)
        return self._out, None


def _task_lines(out: str) -> list[tuple[str, str, str]]:
    """(kind, outcome, rest) of each `task KIND: OUTCOME ...` summary the agent logged."""
    return re.findall(r"task (\w+): (\w+)(.*)$", out, flags=re.M)


def e2e(board: Board, *, native: int = 3, venvs: list[str] | None = None, keep: bool = False) -> int:
    """A host coordinator on loopback, `native` host devices and one board device per venv,
    through enrollment, a training round, aggregation and a canary evaluation. Asserts every
    step and that the typed text never left any device; exit 0 only if all of it held."""
    venvs = list(GUEST_VENVS) if venvs is None else venvs
    if venvs:
        board.require_built()
    version = tiny_version(board)
    run_dir = Path(tempfile.mkdtemp(prefix="e2e-", dir=board.work))   # shared with the board at this path
    devices = [_Device(board, f"native{i}", run_dir / f"native{i}", i, None) for i in range(native)]
    devices += [_Device(board, f"board-{v}", run_dir / f"board-{v}", native + j, v) for j, v in enumerate(venvs)]
    emulated = [d for d in devices if d.emulated]
    total = len(devices)
    coord = _coordinator(run_dir / "coordinator", total)
    t0 = time.monotonic()
    ok = False
    try:
        with _timed("coordinator: init, import the tiny version, enrollment key, serve on 127.0.0.1"):
            coord.cli("init")
            stable = coord.cli("import-version", str(version))
            key = coord.cli("create-enrollment-key", "--label", "arm-e2e")
            url = coord.start()
            pub = coord.admin("GET", "/v1/admin/status")["public_key_hex"]
        say(f"coordinator at {url}, stable version {stable}; {native} native + {len(emulated)} emulated devices")

        with _timed("enroll every device (public key pinned) and type its text"):
            procs = [(d, d.start("edge_runtime", "enroll", "--data-dir", str(d.data_dir), "--coordinator", url,
                                 "--enrollment-key", key, "--public-key", pub)) for d in devices]
            for d, p in procs:
                out, _ = p.communicate(timeout=900)
                if p.returncode != 0:
                    raise AssertionError(f"{d.name}: enroll failed:\n{out[-2000:]}")
                d.device_id = json.loads(out.strip().splitlines()[-1])["device_id"]
            procs = [(d, d.start("tools.arm.scenario", "type", "--data-dir", str(d.data_dir), "--index",
                                 str(d.index))) for d in devices]
            for d, p in procs:
                out, _ = p.communicate(timeout=900)
                if p.returncode != 0:
                    raise AssertionError(f"{d.name}: typing failed:\n{out[-2000:]}")
        for d in emulated:
            plat = _db(coord, "SELECT platform FROM devices WHERE id = ?", d.device_id)
            _check(plat == [("linux-aarch64",)], f"{d.name} enrolled from an aarch64 board ({plat})")

        rnd = coord.admin("POST", "/v1/admin/rounds", json={
            "goal_count": total, "min_count": total, "overselect": 1.0, "epochs": 1, "batch_size": 4,
            "learning_rate": 0.1, "clip_norm": 5.0, "noise_multiplier": 0.01, "max_examples": 200,
            "selection_window_s": 0})
        round_id = rnd["round_id"]
        run_once = ("run", "--once", "--eligibility", "override:eligible", "--log-level", "INFO")
        with _timed(f"round {round_id}: every device checks in once (download, verify, train, upload)"):
            outs = _run_all(devices, run_once)
        for d in devices:
            tasks = _task_lines(outs[d.name])
            _check(bool(tasks) and tasks[-1][:2] == ("train", "uploaded"),
                   f"{d.name}: trained and uploaded ({'; '.join(' '.join(t) for t in tasks) or outs[d.name][-300:]})")
            _check("cannot use model version" not in outs[d.name], f"{d.name}: no refused model version")
        for d in emulated:
            steps = int(re.search(r"steps=(\d+)", _task_lines(outs[d.name])[-1][2]).group(1))
            _check(steps >= 1, f"{d.name}: {steps} training steps on the board")
            rows = _db(coord, "SELECT COUNT(*) FROM updates WHERE round_id = ? AND device_id = ?", round_id,
                       d.device_id)
            _check(rows == [(1,)], f"{d.name}: its update is accepted into round {round_id}")
        rnd = coord.admin("GET", f"/v1/admin/rounds/{round_id}")
        deadline = time.monotonic() + 120   # a round of 50 updates or more closes on a thread of its own
        while rnd["status"] == "open" and rnd["accepted"] == total and time.monotonic() < deadline:
            time.sleep(0.5)
            rnd = coord.admin("GET", f"/v1/admin/rounds/{round_id}")
        _check(rnd["status"] == "done" and rnd["accepted"] == total,
               f"round {round_id} done with {rnd['accepted']}/{total} accepted updates")
        _check(coord.admin("GET", "/v1/admin/rejections")["rejections"] == [], "no update rejected")
        cand = rnd["result_version_id"]
        versions = {v["version_id"]: v for v in coord.admin("GET", "/v1/admin/versions")["versions"]}
        _check(versions[cand]["status"] == "candidate", f"aggregated candidate {cand}")

        with _timed("canary: every device checks in again (download + verify the signed candidate, evaluate)"):
            outs = _run_all(devices, run_once)
        for d in devices:
            tasks = _task_lines(outs[d.name])
            _check(bool(tasks) and tasks[-1][:2] == ("evaluate", "reported"),
                   f"{d.name}: evaluated candidate vs stable and reported "
                   f"({'; '.join(' '.join(t) for t in tasks) or outs[d.name][-300:]})")
        for d in emulated:
            rows = _db(coord, "SELECT COUNT(*) FROM evaluations WHERE candidate_version_id = ? AND device_id = ?",
                            cand, d.device_id)
            _check(rows == [(1,)], f"{d.name}: its canary report is recorded")
            st = json.loads(d.call("edge_runtime", "status", "--data-dir", str(d.data_dir)))
            _check(st["model"]["current"] == cand and st["model"]["previous"] == stable,
                   f"{d.name}: now suggests with the signed candidate {cand} (previous {stable})")
        versions = {v["version_id"]: v for v in coord.admin("GET", "/v1/admin/versions")["versions"]}
        _check(versions[cand]["canary_reports"] == total, f"candidate has {total} canary reports")
        # canary_min_reports = every device: the last report makes the coordinator decide.
        decision = _db(coord, "SELECT action, reason FROM decisions WHERE version_id = ? ORDER BY id DESC LIMIT 1",
                            cand)
        _check(versions[cand]["status"] in ("stable", "rejected") and bool(decision),
               f"canary decided on {total} reports: {versions[cand]['status']} ({decision[0] if decision else '-'})")

        needles = [marker(d.index).encode() for d in devices]
        leaked = [str(p) for p in (run_dir / "coordinator").rglob("*") if p.is_file()
                  and any(n in p.read_bytes() for n in needles)]
        leaked += [run_dir.name + "/coordinator.log"] * any(n in (run_dir / "coordinator.log").read_bytes()
                                                           for n in needles)
        _check(leaked == [], "no typed text in the coordinator's files or log")
        ok = True
    except (AssertionError, CoordinatorProcessError) as e:
        say(f"FAILED: {e}")
    finally:
        coord.stop()
        say(f"e2e {'passed' if ok else 'FAILED'} in {fmt_s(time.monotonic() - t0)}"
            + (f"; kept {run_dir}" if keep or not ok else ""))
        if ok and not keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    return 0 if ok else 1


def _run_all(devices: list[_Device], args: tuple[str, ...]) -> dict[str, str]:
    """The same edge_runtime command on every device at once (natives finish first)."""
    procs = [(d, d.start("edge_runtime", *args, "--data-dir", str(d.data_dir))) for d in devices]
    outs = {}
    for d, p in procs:
        out, _ = p.communicate(timeout=1200)
        outs[d.name] = out
        if p.returncode != 0:
            raise AssertionError(f"{d.name}: edge_runtime {args[0]} exited {p.returncode}:\n{out[-2000:]}")
    return outs


# --- keystroke benchmark --------------------------------------------------------------------------

def _parse_bench(out: str) -> dict[str, tuple[float, float, float]]:
    """(p50, p99, mean) ms of each path, thread CPU time (the section after the wall clock's)."""
    rows = {}
    out = out.split("thread CPU time:", 1)[-1]
    for label, key in (("incremental, prefetch between keys", "incremental"),
                       ("incremental, all work on the keystroke", "all_work"), ("recompute (new session", "recompute")):
        m = re.search(re.escape(label) + r".*?\s+\d+\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$", out, flags=re.M)
        if m:
            rows[key] = tuple(float(x) for x in m.groups())
    # The bench's own ratio, on the same keystrokes on both sides (with --max-recompute below
    # --max-keystrokes, the two paths' p99 are over different keys).
    m = re.search(r"ratio recompute/incremental \(same keys\), prefetch between keys: p50 [\d.]+x, p99 ([\d.]+)x", out)
    if m:
        rows["ratio"] = (0.0, float(m.group(1)), 0.0)
    return rows


def bench(board: Board, *, venvs: list[str], model: str | None, max_keystrokes: int, max_recompute: int) -> int:
    board.require_built()
    default_v0 = REPO / "models" / "v0"   # the shipped version 0
    model_dir = Path(model).resolve() if model else (default_v0 if (default_v0 / "manifest.json").exists()
                                                     else tiny_version(board))
    args = ["-m", "tools.bench", "keystroke", "--model", str(model_dir), "--max-keystrokes", str(max_keystrokes),
            "--max-recompute", str(max_recompute), "--warmup", "10"]
    results: list[tuple[str, dict[str, tuple[float, float, float]]]] = []
    with _timed("keystroke benchmark, native x86_64 (ai-edge-litert)"):
        r = subprocess.run([host_python(), *args], cwd=REPO, env=_host_env(FEDKEYS_INTERPRETER="ai_edge_litert"),
                           capture_output=True, text=True, check=False)
    print(r.stdout + r.stderr[-1500:], flush=True)
    if r.returncode != 0:
        return r.returncode
    results.append(("native x86_64, ai-edge-litert", _parse_bench(r.stdout)))
    for v in venvs:
        with _timed(f"keystroke benchmark on the board ({INTERPRETER_OF[v]}, QEMU_CPU={QEMU_CPU})"):
            r = board.run(["python", *args], venv=v, capture=True)
        print(r.stdout, flush=True)
        if r.returncode != 0:
            return r.returncode
        results.append((f"emulated Cortex-A72 (qemu), {INTERPRETER_OF[v].replace('_', '-')}", _parse_bench(r.stdout)))
    print(f"\nkeystroke latency, model {model_dir.name}, {max_keystrokes} keystrokes (recompute: {max_recompute}); "
          "emulated figures are qemu on this host, not a Raspberry Pi measurement")
    print("| setup | keyboard (prefetch between keys) p50 / p99 ms | all work on the keystroke p50 / p99 ms "
          "| recompute p50 / p99 ms | recompute / keyboard at p99 |\n|---|---|---|---|---|")
    for name, rows in results:
        cells = [rows.get(key, (0, 0, 0)) for key in ("incremental", "all_work", "recompute")]
        ratio = f"{rows['ratio'][1]:.1f}x" if "ratio" in rows else "-"
        print(f"| {name} | " + " | ".join(f"{c[0]:.2f} / {c[1]:.2f}" for c in cells) + f" | {ratio} |")
    return 0


# --- CI ---------------------------------------------------------------------------------------------

def ci(board: Board) -> int:
    """build (cached) + test + e2e; each step's time, then the total."""
    times: list[tuple[str, float, int]] = []
    t_all = time.monotonic()
    for name, fn in (("build", lambda: (board.build(), 0)[1]),
                     ("test", lambda: test(board, list(GUEST_VENVS), [])),
                     ("e2e", lambda: e2e(board))):
        t0 = time.monotonic()
        try:
            rc = fn()
        except BoardError as e:
            say(f"error: {e}")
            rc = 1
        times.append((name, time.monotonic() - t0, rc))
        if rc != 0:
            break
    say("emulated-board CI: " + ", ".join(f"{n} {fmt_s(s)}{'' if rc == 0 else ' FAILED'}" for n, s, rc in times)
        + f"; total {fmt_s(time.monotonic() - t_all)}")
    return next((rc for _, _, rc in times if rc != 0), 0)
