"""Coordinator load: many devices checking in at once, then uploads of the default-size model.

Starts the coordinator under gunicorn on loopback (SQLite in a temporary data dir, or the
PostgreSQL database given by --database-url, which is emptied first), enrolls --devices fake
devices, opens a round whose goal is --uploaders, lets every device check in concurrently and
the selected ones upload a float16 update of the default model (1,356,048 parameters, ~2.71 MB).
Reports requests/s, p50/p99 latency and errors per phase, and the coordinator's peak memory
(sum of the gunicorn master's and workers' resident sets, sampled every 50 ms, and the largest
single process's high-water mark). Loopback only; bounded by --time-limit.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests

from protocol import artifact, wire
from tools.bench.edge_train import proc_status_kb
from tools.coordinator_process import CoordinatorProcess, CoordinatorProcessError

ADMIN = "load-bench-admin"


class LoadError(RuntimeError):
    """The load run could not be set up or did not finish in time."""


@dataclass
class Phase:
    name: str
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0

    def row(self) -> dict[str, float | int | str | dict]:
        lat = np.asarray(self.latencies or [0.0]) * 1000
        n = len(self.latencies) + sum(self.errors.values())
        return {"phase": self.name, "requests": n, "errors": sum(self.errors.values()), "error_kinds": self.errors,
                "seconds": round(self.elapsed, 2), "req_per_s": round(n / self.elapsed, 1) if self.elapsed else 0.0,
                "p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
                "max_ms": round(float(lat.max()), 1)}   # uploads: the one reaching the goal, if it carried the close


def write_synthetic_version(directory: Path) -> None:
    """A version directory the coordinator accepts: a real manifest of the default architecture
    and random weights, placeholder graph and tokenizer (the coordinator never runs them)."""
    from protocol.arch import Arch, ModelConfig

    directory.mkdir(parents=True, exist_ok=True)
    (directory / artifact.GRAPH).write_bytes(b"placeholder graph: the coordinator never runs it")
    (directory / artifact.TOKENIZER).write_bytes(b"placeholder tokenizer")
    model = ModelConfig()
    arch, shapes = Arch(model).to_dict(), model.weight_shapes()
    rng = np.random.default_rng(0)
    weights = {k: (0.05 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes}
    m = artifact.Manifest(version_id="v0000-load", arch=arch, arch_hash=artifact.arch_hash(arch),
                          tensors=[artifact.TensorSpec(k, tuple(s)) for k, s in shapes],
                          graph_sha256=artifact.sha256_file(directory / artifact.GRAPH),
                          tokenizer_sha256=artifact.sha256_file(directory / artifact.TOKENIZER), weights_sha256="")
    artifact.write_version(directory, m, weights)


def _rss_kb(pid: int, key: str = "VmRSS") -> int:
    return proc_status_kb(key, pid) or 0   # a process gone meanwhile holds nothing


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class MemorySampler(threading.Thread):
    """Peak of the summed RSS of a process and its children, and the largest per-process VmHWM."""

    def __init__(self, pid: int, every_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.peak_total_kb = 0
        self.peak_hwm_kb = 0
        self.stop = threading.Event()

    def sample(self) -> None:
        pids = [self.pid, *_children(self.pid)]
        self.peak_total_kb = max(self.peak_total_kb, sum(_rss_kb(p) for p in pids))
        self.peak_hwm_kb = max([self.peak_hwm_kb, *(_rss_kb(p, "VmHWM") for p in pids)])

    def run(self) -> None:
        while not self.stop.wait(self.every_s):
            self.sample()


def _settings(data_dir: Path, database_url: str, uploaders: int) -> dict[str, str]:
    return {"data_dir": str(data_dir), "database_url": database_url, "admin_token": ADMIN,
            "rate_limit_per_minute": "1000000", "rate_limit_burst": "100000", "goal_count": str(uploaders),
            "min_count": str(uploaders), "overselect": "1.0", "round_duration_s": "3600", "clip_norm": "1000",
            "noise_multiplier": "0", "canary_fraction": "0.01", "log_level": "WARNING",
            "selection_window_s": "0", "rate_limit_per_key_per_minute": "1000000", "rate_limit_per_key_burst": "100000"}


def run_load(*, devices: int, uploaders: int, concurrency: int, upload_concurrency: int, workers: int,
             threads: int, database_url: str = "", model: str | None = None, time_limit_s: float = 600.0,
             data_dir: Path | None = None, log: Callable[[str], None] = print) -> dict:
    t_end = time.monotonic() + time_limit_s
    tmp = tempfile.TemporaryDirectory(prefix="fedkeys-load-") if data_dir is None else None
    root = Path(tmp.name) if tmp else data_dir
    try:
        coord_dir = root / "coordinator"
        if database_url:
            from coordinator.db import drop_everything
            drop_everything(database_url)
        db_url = database_url or f"sqlite:///{coord_dir / 'coordinator.db'}"
        settings = _settings(coord_dir, db_url, uploaders)
        from coordinator.config import Config
        from coordinator.service import Coordinator

        version_dir = Path(model) if model else root / "v0"
        if not model:
            write_synthetic_version(version_dir)
        c = Coordinator(Config().with_overrides(settings))
        try:
            stable = c.import_version(version_dir)
            key = c.create_enrollment_key(label="load", uses=devices)
            tensors = artifact.read_manifest(version_dir).tensors
        finally:
            c.close()

        coord = CoordinatorProcess(coord_dir, root / "gunicorn.log", settings, admin_token=ADMIN,
                                   inherit_settings=False)
        try:
            url = coord.start_gunicorn(workers=workers, threads=threads,
                                       timeout_s=max(0.0, t_end - time.monotonic()))
        except CoordinatorProcessError as e:   # its log is in the run's temporary folder, gone after: quoted here
            raise LoadError(f"{e.reason}; the end of its log:\n{coord.log_path.read_text()[-2000:]}") from e
        sampler = MemorySampler(coord.proc.pid)
        try:
            sampler.start()
            result = _drive(url, key, stable, tensors, devices, uploaders, concurrency, upload_concurrency, t_end,
                            log)
            sampler.sample()
        finally:
            sampler.stop.set()
            coord.stop()
        num_params = sum(int(np.prod(t.shape)) for t in tensors)
        result.update({"database": database_url.split(":", 1)[0].split("+")[0] if database_url else "sqlite",
                       "gunicorn_workers": workers,
                       "threads_per_worker": threads, "devices": devices, "uploaders": uploaders,
                       "model_params": num_params, "update_bytes": num_params * 2,
                       "peak_rss_mb_total": round(sampler.peak_total_kb / 1024, 1),
                       "peak_rss_mb_largest_process": round(sampler.peak_hwm_kb / 1024, 1)})
        return result
    finally:
        if tmp:
            tmp.cleanup()


_local = threading.local()


def _session() -> requests.Session:
    if not hasattr(_local, "s"):
        _local.s = requests.Session()
    return _local.s


def _timed(phase: Phase, fn: Callable[[], requests.Response], ok: tuple[int, ...] = (200, 201)) -> object:
    t0 = time.perf_counter()
    try:
        resp = fn()
    except requests.RequestException as e:
        phase.errors[type(e).__name__] = phase.errors.get(type(e).__name__, 0) + 1
        return None
    dt = time.perf_counter() - t0
    if resp.status_code not in ok:
        k = f"HTTP {resp.status_code}"
        phase.errors[k] = phase.errors.get(k, 0) + 1
        return None
    phase.latencies.append(dt)
    return resp


def _run_phase(phase: Phase, jobs: list[Callable[[], object]], concurrency: int, t_end: float) -> list[object]:
    remaining = t_end - time.monotonic()
    if remaining <= 0:
        raise LoadError(f"time limit reached before phase {phase.name}")
    barrier = threading.Barrier(min(concurrency, len(jobs)))

    def start_together(job: Callable[[], object], i: int) -> object:
        if i < barrier.parties:       # the first wave leaves the gate at once: a real burst
            try:
                barrier.wait(timeout=30)
            except threading.BrokenBarrierError:
                pass
        return job()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(start_together, job, i) for i, job in enumerate(jobs)]
        out = [f.result(timeout=max(1.0, t_end - time.monotonic())) for f in futures]
    phase.elapsed = time.perf_counter() - t0
    return out


def _drive(url: str, key: str, stable: str, tensors: list[artifact.TensorSpec], devices: int, uploaders: int,
           concurrency: int, upload_concurrency: int, t_end: float, log: Callable[[str], None]) -> dict:
    admin = {wire.AUTH_HEADER: f"Bearer {ADMIN}"}
    enroll, checkin, upload = Phase("enroll"), Phase("checkin"), Phase("upload")

    def enroll_one() -> tuple[str, str] | None:
        r = _timed(enroll, lambda: _session().post(url + wire.PATH_ENROLL, timeout=60,
                                                   json=wire.EnrollRequest(key, "load-bench").to_dict()))
        return None if r is None else (r.json()["device_id"], r.json()["token"])

    ids = [x for x in _run_phase(enroll, [enroll_one] * devices, concurrency, t_end) if x]
    log(f"enrolled {len(ids)} devices in {enroll.elapsed:.1f}s")
    r = requests.post(url + "/v1/admin/rounds", json={}, headers=admin, timeout=60)
    if r.status_code != 201:
        raise LoadError(f"cannot open a round: {r.status_code} {r.text[:300]}")
    rid = r.json()["round_id"]

    def checkin_one(dev: tuple[str, str]) -> Callable[[], object]:
        def job() -> tuple[tuple[str, str], str] | None:
            r = _timed(checkin, lambda: _session().post(url + wire.PATH_CHECKIN, timeout=60,
                                                        headers=wire.device_headers(*dev),
                                                        json=wire.CheckinRequest(True, stable).to_dict()))
            return None if r is None else (dev, r.json()["kind"])
        return job

    tasks = [x for x in _run_phase(checkin, [checkin_one(d) for d in ids], concurrency, t_end) if x]
    selected = [d for d, kind in tasks if kind == wire.TASK_TRAIN]
    log(f"{len(tasks)} check-ins in {checkin.elapsed:.1f}s; {len(selected)} devices selected")

    # One update is made before the phase's clock (a device trains its update before it uploads;
    # making 100 of them, 24 ms each, inside the clock counted client work as the service's and
    # spread the burst out); each upload sends it with its last value changed, a copy of a few ms,
    # so each is its own blob and the client holds a body per upload in flight, not per upload.
    rng = np.random.default_rng(0)
    base_body = artifact.encode_weights({t.name: (1e-3 * rng.standard_normal(t.shape)).astype(np.float16)
                                         for t in tensors})

    def update_body(i: int) -> bytes:
        body = bytearray(base_body)
        body[-2:] = np.float16(1e-4 * (i + 1)).tobytes()   # the last tensor's last element
        return bytes(body)

    def upload_one(i: int, dev: tuple[str, str]) -> Callable[[], object]:
        def job() -> object:
            body = update_body(i)
            meta = wire.UpdateMeta(rid, stable, 10 + i % 50, uuid.uuid4().hex, "float16")
            return _timed(upload, lambda: _session().post(url + wire.PATH_UPDATES, data=body, timeout=120, headers=(
                wire.device_headers(*dev) | {wire.UPDATE_META_HEADER: meta.to_header(),
                                             "Content-Type": wire.SAFETENSORS_MEDIA_TYPE})))
        return job

    _run_phase(upload, [upload_one(i, d) for i, d in enumerate(selected[:uploaders])], upload_concurrency, t_end)
    log(f"{len(upload.latencies)} uploads in {upload.elapsed:.1f}s")
    rnd, uploaded = {}, time.monotonic()
    while time.monotonic() < t_end:
        rnd = requests.get(url + f"/v1/admin/rounds/{rid}", headers=admin, timeout=60).json()
        if rnd.get("status") != "open":
            break
        time.sleep(0.2)
    close_s = round(time.monotonic() - uploaded, 1)   # about 0 when the last upload's request carried the close
    phases = [enroll.row(), checkin.row(), upload.row()]
    return {"phases": phases, "errors": sum(p["errors"] for p in phases), "selected": len(selected),
            "round_status": rnd.get("status"), "round_accepted": rnd.get("accepted"), "close_s": close_s,
            "round_reason": rnd.get("reason")}


def format_report(res: dict) -> str:
    lines = [f"coordinator under gunicorn ({res['gunicorn_workers']} workers x {res['threads_per_worker']} threads), "
             f"{res['database']}; {res['devices']} devices, {res['uploaders']} uploads of "
             f"{res['model_params']:,} params ({res['update_bytes'] / 1e6:.2f} MB float16)",
             f"{'phase':<8} {'requests':>8} {'errors':>6} {'seconds':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
             f"{'max ms':>8}"]
    for p in res["phases"]:
        lines.append(f"{p['phase']:<8} {p['requests']:>8} {p['errors']:>6} {p['seconds']:>8.2f} {p['req_per_s']:>8.1f} "
                     f"{p['p50_ms']:>8.1f} {p['p99_ms']:>8.1f} {p['max_ms']:>8.1f}")
    lines.append(f"round: {res['round_status']} with {res['round_accepted']} updates ({res['round_reason']}), "
                 f"{res['close_s']} s after the last upload's receipt")
    lines.append(f"errors: {res['errors']}; coordinator peak RSS: {res['peak_rss_mb_total']} MiB total "
                 f"(largest process {res['peak_rss_mb_largest_process']} MiB)")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from coordinator.errors import DatabaseUnavailable

    # Before any work: --workers 0 waited out the whole time limit, --upload-concurrency 0 was
    # refused only after every device had enrolled.
    if not (args.devices >= 1 and 1 <= args.uploaders <= args.devices):
        raise ValueError("need --devices >= 1 and 1 <= --uploaders <= --devices")
    if min(args.concurrency, args.upload_concurrency, args.workers, args.threads) < 1:
        raise ValueError("--concurrency, --upload-concurrency, --workers and --threads must be >= 1")
    if not (math.isfinite(args.time_limit) and args.time_limit > 0):
        raise ValueError("--time-limit must be a number of seconds > 0")
    try:
        res = _run_from_args(args)
    except (LoadError, DatabaseUnavailable) as e:   # the server or the database out of reach: one line
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(res, indent=1) if args.json else format_report(res))
    return 0 if res["errors"] == 0 and res["round_status"] == "done" else 1


def _run_from_args(args: argparse.Namespace) -> dict:
    return run_load(devices=args.devices, uploaders=args.uploaders, concurrency=args.concurrency,
                    upload_concurrency=args.upload_concurrency, workers=args.workers, threads=args.threads,
                    database_url=args.database_url or "", model=args.model, time_limit_s=args.time_limit,
                    log=(lambda m: print(m, file=sys.stderr)) if not args.json else (lambda m: None))


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("load", help="coordinator under gunicorn: concurrent check-ins and default-model uploads",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=500, help="devices that enroll and check in concurrently")
    p.add_argument("--uploaders", type=int, default=100, help="round goal: devices that upload an update")
    p.add_argument("--concurrency", type=int, default=100, help="client threads for enroll and check-in")
    p.add_argument("--upload-concurrency", type=int, default=20, help="client threads for uploads")
    p.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    p.add_argument("--threads", type=int, default=8, help="threads per gunicorn worker")
    p.add_argument("--database-url", help="PostgreSQL URL (emptied first!); default SQLite in a temp dir")
    p.add_argument("--model", help="version directory to serve (default: synthetic default-size model)")
    p.add_argument("--time-limit", type=float, default=600.0, help="give up after this many seconds")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
