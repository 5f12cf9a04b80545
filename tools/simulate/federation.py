"""One federation: a fresh coordinator process and fresh devices under DIR/runs/<name>, R rounds.

Each round every device draws whether it is idle + charging (--participation) and whether it
will be unplugged mid-training (--dropout); all devices check in through the real edge runtime,
train and upload; the coordinator aggregates a candidate, the canary cohort evaluates it against
stable on its own held-out text, and the candidate is scored on the corpus's held-out users.

The coordinator is driven only as an operator would (admin CLI and admin API), so a simulation
exercises the same doors as production. Its errors become SimulationError here, at the one
place the simulation talks to it."""

from __future__ import annotations

import argparse
import math
import random
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tools._cli import count, worker_pool
from tools.coordinator_process import CoordinatorProcess, CoordinatorProcessError
from tools.simulate.devices import DeviceJob, device_checkin, device_config, setup_device, worker_init
from tools.simulate.disk import bytes_on_disk, disk_note, version_bytes
from tools.simulate.errors import SimulationError
from tools.simulate.population import Population
from tools.simulate.references import score_version, stderr_to
from tools.simulate.report import round_line

if TYPE_CHECKING:
    from rich.progress import Progress


@dataclass
class RoundResult:
    """One round as report.json records it (`federations[].rounds[]`: keep the field names)."""

    round: int
    eligible: int = 0
    trained: int = 0                 # devices that uploaded an update
    dropped: int = 0                 # unplugged mid-training (no update)
    skipped: int = 0                 # eligible, but nothing to train on (no text cached) or no longer eligible
    accepted: int = 0
    rejected: int = 0
    rejection_reasons: dict[str, int] = field(default_factory=dict)
    status: str = ""                 # done | failed | skipped
    candidate: str | None = None
    verdict: str = "none"            # promote | reject | wait | none
    verdict_reason: str = ""
    canary_reports: int = 0
    candidate_metrics: dict[str, float] | None = None
    stable: str = ""
    stable_metrics: dict[str, float] = field(default_factory=dict)
    epsilon: float | str = 0.0
    epsilon_local: float | str = 0.0
    seconds: float = 0.0


@dataclass
class FederationResult:
    name: str
    noise_multiplier: float
    rounds: list[RoundResult]
    final_version: str
    final_metrics: dict[str, float]  # the FedKeys keyboard on the final version (global LSTM + personal)
    global_metrics: dict[str, float]  # the final version's federated global LSTM alone
    keyboard_dir: Path               # an enrolled, never-training device holding the final stable version
    coordinator_dir: Path
    devices_bytes: int = 0           # the simulated devices' data directories at the end (report.json)

    @property
    def final_dir(self) -> Path:
        """The final version's directory on the keyboard device: a complete, verified version a user
        can take (`tools.evaluate --model DIR`)."""
        from edge_runtime.paths import MODELS_DIR

        return self.keyboard_dir / MODELS_DIR / self.final_version


def progress(enabled: bool) -> Progress:
    """A transient rich progress bar (disabled: a no-op, e.g. when stdout is a log file)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=True, disable=not enabled)


def pool_map(pool: ProcessPoolExecutor, fn: Callable[..., Any], jobs: Iterable[tuple], description: str,
             progress_on: bool) -> list[Any]:
    """`fn(*job)` for every job in the device pool, in order, with one progress bar."""
    jobs = list(jobs)
    with progress(progress_on) as prog:
        task = prog.add_task(description, total=len(jobs))
        futs = [pool.submit(fn, *job) for job in jobs]
        for f in futs:
            f.add_done_callback(lambda _f: prog.advance(task))
        return [f.result() for f in futs]


@dataclass
class Rounds:
    """What every round of one federation shares; `run(rno)` plays one round.

    The per-federation state is set once here, so each step of a round (draw, open, train,
    close, canary, score) is a short method over it rather than a function of fifteen arguments."""

    name: str
    args: argparse.Namespace
    noise_multiplier: float
    coord: CoordinatorProcess
    pool: ProcessPoolExecutor
    observer: Any                    # edge_runtime.agent.Device: the never-training keyboard
    pop: Population
    dirs: list[str]                  # each device's data directory
    canary: list[int]                # indices of the canary cohort's devices
    rng: random.Random
    eval_log: Path
    progress_on: bool

    def run(self, rno: int) -> RoundResult:
        t0 = time.time()
        res = RoundResult(round=rno)
        try:
            self._play(res)
        finally:
            res.seconds = time.time() - t0
        return res

    def _play(self, res: RoundResult) -> None:
        eligible, unplug = self._draw()
        res.eligible = sum(eligible)
        if res.eligible == 0:
            res.status, res.verdict_reason = "skipped", "no device idle and charging this round"
            return
        round_id = self._open(res.eligible)
        outcomes = self._train(res.round, eligible, unplug)
        info = self._close(res, round_id, outcomes)
        if res.status != "done" or not res.candidate:
            res.verdict_reason = f"round {res.status}: {info['reason']}"
            return
        self._canary(res)
        self._score(res)

    def _draw(self) -> tuple[list[bool], list[int | None]]:
        """Who is idle + charging this round, and after how many eligibility checks each is unplugged."""
        a = self.args
        eligible = [self.rng.random() < a.participation for _ in self.dirs]
        est_steps = max(2, math.ceil(a.max_examples / a.batch_size) * a.epochs)
        # run_once checks eligibility once, _train once, the trainer once before loading: unplug after those.
        unplug = [3 + self.rng.randint(1, est_steps - 1) if e and self.rng.random() < a.dropout else None
                  for e in eligible]
        return eligible, unplug

    def _open(self, goal: int) -> int:
        a = self.args
        rnd = self.coord.admin("POST", "/v1/admin/rounds", json={
            "goal_count": goal, "min_count": 1, "overselect": 1.0, "round_duration_s": 3600,
            "epochs": a.epochs, "batch_size": a.batch_size, "learning_rate": a.learning_rate,
            "clip_norm": a.clip_norm, "noise_multiplier": self.noise_multiplier, "max_examples": a.max_examples,
            "selection_window_s": 0})   # devices check in once per round, synchronously
        return rnd["round_id"]

    def _train(self, rno: int, eligible: list[bool], unplug: list[int | None]) -> list[dict[str, Any]]:
        order = sorted(range(len(self.dirs)), key=lambda i: not eligible[i])     # the busy ones first
        return pool_map(self.pool, device_checkin, [(DeviceJob(self.dirs[i], eligible[i], unplug[i]),) for i in order],
                        f"{self.name}: round {rno}: check-in and local training", self.progress_on)

    def _close(self, res: RoundResult, round_id: int, outcomes: list[dict[str, Any]]) -> dict[str, Any]:
        """Close the round (forced if still open) and record what was uploaded, accepted, refused."""
        kinds = Counter(o["outcome"].split(" (")[0] for o in outcomes)
        res.trained, res.dropped, res.skipped = (kinds.get(k, 0) for k in ("uploaded", "aborted", "skipped"))
        info = self.coord.admin("GET", f"/v1/admin/rounds/{round_id}")
        if info["status"] == "open":
            info = self.coord.admin("POST", f"/v1/admin/rounds/{round_id}/close?force=1")
        res.status, res.accepted, res.candidate = info["status"], info["accepted"], info["result_version_id"]
        res.rejected = info["rejected"]   # every one: a listing holds the newest 1,000
        res.rejection_reasons = self.coord.admin("GET", f"/v1/admin/rejections?round_id={round_id}")["by_reason"]
        for o in outcomes:   # device-side refusals that never reached the coordinator
            if o["kind"] == "error":
                res.rejection_reasons["device error"] = res.rejection_reasons.get("device error", 0) + 1
        return info

    def _canary(self, res: RoundResult) -> None:
        """The cohort's devices switch to the candidate and score it against stable on held-out text."""
        pool_map(self.pool, device_checkin, [(DeviceJob(self.dirs[i], True),) for i in self.canary],
                 f"{self.name}: round {res.round}: canary evaluation", self.progress_on)
        versions = {v["version_id"]: v for v in self.coord.admin("GET", "/v1/admin/versions")["versions"]}
        cand = versions[res.candidate]
        res.canary_reports = cand["canary_reports"]
        res.epsilon = cand["epsilon"]
        # every round whose updates the coordinator received (a rejected candidate's too), not the lineage's
        res.epsilon_local = self.coord.admin("GET", "/v1/admin/status")["privacy"]["epsilon_local"]
        auto = [d for d in cand["decisions"] if d["actor"] == "auto"]
        res.verdict = {"stable": "promote", "rejected": "reject"}.get(cand["status"], "wait")
        if auto:
            res.verdict_reason = auto[-1]["reason"]
        else:
            res.verdict_reason = self.coord.admin("GET", "/v1/admin/canary").get("reason", "")

    def _score(self, res: RoundResult) -> None:
        """The candidate on the held-out users, downloaded and verified as any device does it,
        through the keyboard's predictor."""
        with progress(self.progress_on) as prog:
            prog.add_task(f"{self.name}: round {res.round}: scoring the candidate on held-out users", total=None)
            vdir = self.observer.store.ensure(res.candidate, self.observer.client.fetch)
            with stderr_to(self.eval_log):
                res.candidate_metrics = score_version(vdir, self.pop.heldout, self.args.eval_words,
                                                      pool=self.pool, workers=self.args.workers)


def coordinator_settings(args: argparse.Namespace) -> dict[str, object]:
    """The coordinator's settings for a simulation: the canary and server optimizer from the
    flags, rate limits out of the way (every device shares one loopback address)."""
    return {"rate_limit_per_minute": "600000", "rate_limit_burst": "10000", "log_level": "INFO",
            "canary_fraction": args.canary_fraction,
            "canary_min_reports": args.canary_min_reports, "canary_tolerance": args.canary_tolerance,
            "server_optimizer": args.server_optimizer, "server_learning_rate": args.server_lr,
            "server_momentum": args.server_momentum, "checkin_interval_s": 60, "max_eval_examples": 200,
            "max_eval_words": 150,   # per canary device and version: bounds the word-level evaluation time
            "max_example_weight": max(args.max_examples, 1)}


def run_federation(name: str, args: argparse.Namespace, noise_multiplier: float, data: Path, v0: Path,
                   pop: Population, v0_metrics: dict[str, float], v0_global: dict[str, float],
                   console) -> FederationResult:
    """One federation: a fresh coordinator and fresh devices under DIR/runs/<name>, R rounds."""
    run_dir = data / "runs" / name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    console.print(disk_note(name, len(pop.users), version_bytes(v0), run_dir / "devices", args.workers),
                  soft_wrap=True)
    coord = CoordinatorProcess(run_dir / "coordinator", run_dir / "coordinator.log",
                               coordinator_settings(args))
    try:
        coord.cli("init")
        coord.cli("import-version", str(v0))
        key = coord.cli("create-enrollment-key", "--label", f"simulation {name}", "--uses", str(len(pop.users) + 1))
        try:
            coord.start()
            return _federate(name, args, noise_multiplier, run_dir, coord, key, pop, v0_metrics, v0_global, console)
        finally:
            coord.stop()
    except CoordinatorProcessError as e:
        raise SimulationError(str(e)) from e


def _federate(name: str, args: argparse.Namespace, noise_multiplier: float, run_dir: Path,
              coord: CoordinatorProcess, key: str, pop: Population, v0_metrics: dict[str, float],
              v0_global: dict[str, float], console) -> FederationResult:
    """Enroll the devices and the keyboard, pick the canary cohort, play the rounds, score the end."""
    from edge_runtime import agent

    n = len(pop.users)
    rng = random.Random(f"{args.seed}:{name}")
    progress_on = not args.no_progress and sys.stdout.isatty()
    public_key = coord.admin("GET", "/v1/admin/status")["public_key_hex"]
    dirs = [str(run_dir / "devices" / f"device{i:03d}") for i in range(n)]
    keyboard_dir = run_dir / "keyboard"
    # spawned (no forked copies of the parent's threads or sockets), ended with the tool
    with worker_pool(args.workers, initializer=worker_init, initargs=(str(run_dir / "devices.log"),)) as pool:
        t0 = time.time()
        setups = pool_map(pool, setup_device, [(d, coord.url, public_key, key, texts)
                                               for d, (_, texts) in zip(dirs, pop.users, strict=True)],
                          f"{name}: enrolling {count(n, 'device')}, typing their history", progress_on)
        setup_device(str(keyboard_dir), coord.url, public_key, key, None)
        cached = count(sum(s["cached"] for s in setups), "text")
        console.print(f"{name}: {count(n, 'device')} enrolled, {cached} cached "
                      f"({time.time() - t0:.0f} s); coordinator {coord.url}, logs in {run_dir}")
        canary = _canary_cohort(name, args, coord, setups, console)
        observer = agent.Device.open(device_config(str(keyboard_dir), False))
        try:
            rounds = Rounds(name, args, noise_multiplier, coord, pool, observer, pop, dirs, canary, rng,
                            run_dir / "eval.log", progress_on)
            results, stable, stable_metrics = _play_rounds(rounds, v0_metrics, console)
            global_metrics = _final_global(rounds, results, stable, v0_global)
        finally:
            observer.close()
    return FederationResult(name, noise_multiplier, results, stable, stable_metrics, global_metrics, keyboard_dir,
                            run_dir / "coordinator", bytes_on_disk(run_dir / "devices"))


def _canary_cohort(name: str, args: argparse.Namespace, coord: CoordinatorProcess, setups: list[dict[str, Any]],
                   console) -> list[int]:
    """The devices the coordinator will ask for canary reports (in the cohort, with held-out text).

    With too few of them a verdict could never be reached: the coordinator is restarted asking
    for as many reports as there are."""
    from coordinator.rollout import in_canary

    n = len(setups)
    ids = [s["device_id"] for s in setups]
    holdout = [s["stats"].get("heldout", 0) > 0 for s in setups]
    canary = [i for i in range(n) if in_canary(ids[i], args.canary_fraction) and holdout[i]]
    if len(canary) < args.canary_min_reports:
        frac = args.canary_fraction if canary else 1.0
        canary = canary or [i for i in range(n) if holdout[i] and in_canary(ids[i], frac)]
        console.print(f"{name}: only {count(len(canary), 'device')} in the canary cohort: "
                      f"a verdict needs {count(max(1, len(canary)), 'report')}")
        coord.restart(canary_fraction=frac, canary_min_reports=max(1, len(canary)))
    return canary


def _play_rounds(rounds: Rounds, v0_metrics: dict[str, float],
                 console) -> tuple[list[RoundResult], str, dict[str, float]]:
    """Every round, printed as it ends; the results, the final stable version and its keyboard metrics."""
    coord, total = rounds.coord, rounds.args.rounds
    results: list[RoundResult] = []
    stable_metrics = dict(v0_metrics)
    stable = coord.admin("GET", "/v1/admin/status")["stable_version_id"]
    for rno in range(1, total + 1):
        res = rounds.run(rno)
        if res.verdict == "promote":
            stable_metrics = dict(res.candidate_metrics or stable_metrics)
        stable = coord.admin("GET", "/v1/admin/status")["stable_version_id"]
        res.stable, res.stable_metrics = stable, dict(stable_metrics)
        results.append(res)
        console.print(round_line(res, f"{rounds.name}: round {rno}/{total} ({res.seconds:.0f} s)"))
        if res.verdict_reason:
            console.print(f"  canary: {res.verdict_reason}")
    return results, stable, stable_metrics


def _final_global(rounds: Rounds, results: list[RoundResult], stable: str,
                  v0_global: dict[str, float]) -> dict[str, float]:
    """The keyboard device checks in (never eligible) and ends on the final stable version; that
    version's global LSTM alone (version 0's score, already known, when nothing was promoted)."""
    from edge_runtime import agent

    observer = rounds.observer
    agent.run_once(observer)
    if observer.store.current_id != stable:
        observer.store.install(stable, observer.client.fetch)
    global_metrics = dict(v0_global)
    if stable != observer.store.current_id or any(r.verdict == "promote" for r in results):
        with stderr_to(rounds.eval_log):
            global_metrics = score_version(observer.store.ensure(stable, observer.client.fetch),
                                           rounds.pop.heldout, rounds.args.eval_words, personal=False,
                                           pool=rounds.pool, workers=rounds.args.workers)
    return global_metrics
