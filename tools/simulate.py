"""Simulate a population of keyboard devices federating against a real coordinator.

    python -m tools.simulate --corpus FILE --proxy FILE --devices N --rounds R [--data-dir DIR]

1. version 0: the shipped models/v0 (pretrained on the proxy corpus only; `make v0`), or
   --v0 DIR, checked against its manifest's sha256 sums (--pretrain-v0 trains one instead);
2. a real coordinator process (`python -m coordinator serve`) on a free loopback port, with
   version 0 imported as stable;
3. N devices, each enrolled and given the training text of one corpus train user as typing
   history, committed into its own text cache exactly as the keyboard does (TextCache.add);
4. R rounds. Each round every device draws whether it is idle + charging (--participation)
   and whether it will be unplugged mid-training (--dropout); all devices check in through
   the real edge runtime (`edge_runtime.agent.run_once`, in a small process pool, each device
   in its own data directory), train locally, upload clipped (and, with DP, noised) deltas;
   the coordinator validates and aggregates them (FedAvgM by default) into a candidate, which
   the canary cohort evaluates on its held-out text before it is promoted or rejected;
5. after each round the candidate is scored on the corpus's held-out (test) users with the
   keyboard's own predictor (tools.wordeval: top-1, top-3, keystroke savings);
6. a report, DIR/report.md + DIR/report.png (+ report.json), with the n-gram, proxy-only and
   central models as references. --compare-dp also runs a federation with DP noise.

Everything lives under DIR: DIR/models/ (v0, central), DIR/runs/<run>/ (coordinator and
device data, logs; replaced on every run), DIR/reference.json (cached reference scores).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from protocol.cli import HelpFormatter, add_version
from tools._cli import DEFAULT_CORPUS, DEFAULT_PROXY, REPO, quiet_tensorflow, run
from tools.shipped import SHIPPED_V0, check_version

log = logging.getLogger(__name__)

ADMIN_TOKEN_BYTES = 24
FIELD_KIND = "message"           # what the simulated user typed into (a messaging app's text field)
HEALTH_TIMEOUT_S = 120.0
# DP on by default, as in the coordinator's config: the largest noise at which the demo's 8
# devices still beat version 0 in 3 rounds (measured with 0.005 and 0.01: +1.0 top-3 both).
DEFAULT_NOISE_MULTIPLIER = 0.01


class SimulationError(RuntimeError):
    """The simulation cannot go on (coordinator did not start, a step failed); says why."""


# --- settings ----------------------------------------------------------------------------------

def build_parser(prog: str = "python -m tools.simulate") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    add_version(p)
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser, *, defaults: dict[str, Any] | None = None) -> None:
    """The simulation's flags (the demo reuses them with its own defaults)."""
    g = p.add_argument_group("population")
    g.add_argument("--corpus", default=DEFAULT_CORPUS, help="device text, JSONL {user, text} (or plain text)")
    g.add_argument("--proxy", action="append", default=None,
                   help="proxy text for the vocabulary and version 0; repeat to combine "
                        f"(default: {' + '.join(os.path.relpath(p, REPO) for p in DEFAULT_PROXY)})")
    g.add_argument("--devices", type=int, default=16, help="simulated devices, one corpus train user each")
    g.add_argument("--rounds", type=int, default=5)
    g.add_argument("--data-dir", default="data/sim", help="everything goes under this directory")
    g.add_argument("--v0", help="start from this version 0 directory (default: the shipped models/v0)")
    g.add_argument("--pretrain-v0", action="store_true",
                   help="train version 0 on --proxy into DIR/models/v0 instead of using the shipped one")
    g.add_argument("--participation", type=float, default=0.8,
                   help="share of devices idle + charging in a round (drawn per device per round)")
    g.add_argument("--dropout", type=float, default=0.1,
                   help="share of participating devices unplugged mid-training (no update sent)")
    g.add_argument("--workers", type=int, default=2, help="device processes (2 cores: 2)")
    g.add_argument("--seed", type=int, default=0, help="eligibility and dropout draws")
    g = p.add_argument_group("training plan (sent to the devices) and server optimizer")
    g.add_argument("--epochs", type=int, default=1, help="local epochs")
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--learning-rate", type=float, default=0.5, help="on-device SGD learning rate")
    g.add_argument("--clip-norm", type=float, default=3.0, help="L2 clip of each device's delta")
    g.add_argument("--max-examples", type=int, default=192, help="windows of T tokens per device and round")
    g.add_argument("--noise-multiplier", type=float, default=DEFAULT_NOISE_MULTIPLIER,
                   help="device-side Gaussian noise, std = X * clip norm (0: no DP)")
    g.add_argument("--server-optimizer", default="fedavg", choices=["fedavg", "fedavgm", "fedadam"])
    g.add_argument("--server-lr", type=float, default=1.0)
    g.add_argument("--server-momentum", type=float, default=0.5)
    g = p.add_argument_group("canary, evaluation and references")
    g.add_argument("--canary-fraction", type=float, default=0.5, help="share of devices in the canary cohort")
    g.add_argument("--canary-min-reports", type=int, default=3)
    g.add_argument("--canary-tolerance", type=float, default=0.005)
    g.add_argument("--eval-words", type=int, default=800, help="held-out words scored per model")
    g.add_argument("--compare-dp", action="store_true",
                   help="also run the same federation with DP noise (--dp-noise-multiplier)")
    g.add_argument("--dp-noise-multiplier", type=float, default=0.005)
    g.add_argument("--central", help="central reference version dir (default DIR/models/central, built if absent)")
    g.add_argument("--no-central", action="store_true", help="no central reference model")
    g.add_argument("--pretrain-epochs", type=int, default=2)
    g.add_argument("--pretrain-steps", type=int, default=700, help="steps per pretraining epoch (batch 64)")
    g.add_argument("--central-epochs", type=int, default=4)
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    if defaults:
        p.set_defaults(**defaults)


def check_args(args: argparse.Namespace) -> None:
    """One-line errors for settings that cannot work, before any work is done."""
    checks = [
        (args.devices >= 1, "--devices must be >= 1"),
        (args.rounds >= 1, "--rounds must be >= 1"),
        (0 < args.participation <= 1, "--participation must be in (0, 1]"),
        (0 <= args.dropout < 1, "--dropout must be in [0, 1)"),
        (1 <= args.workers <= 64, "--workers must be in [1, 64]"),
        (args.epochs >= 1 and args.batch_size >= 1 and args.max_examples >= 1,
         "--epochs, --batch-size and --max-examples must be >= 1"),
        (args.learning_rate > 0 and args.clip_norm > 0 and args.server_lr > 0, "learning rates and clip must be > 0"),
        (args.noise_multiplier >= 0 and args.dp_noise_multiplier >= 0, "noise multipliers must be >= 0"),
        (0 <= args.server_momentum < 1, "--server-momentum must be in [0, 1)"),
        (0 < args.canary_fraction <= 1, "--canary-fraction must be in (0, 1]"),
        (args.canary_min_reports >= 1 and args.canary_tolerance >= 0, "bad canary settings"),
        (args.eval_words >= 1, "--eval-words must be >= 1"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ValueError(msg)
    for flag, path in (("--v0", args.v0), ("--central", args.central)):
        if path and not (Path(path) / "manifest.json").is_file():
            raise ValueError(f"{flag} {path}: not a model version directory (no manifest.json)")


# --- the corpus ---------------------------------------------------------------------------------

def proxy_files(args: argparse.Namespace) -> list[str]:
    """The proxy corpora: --proxy as given (repeatable), else the repository's default mix."""
    return list(args.proxy or DEFAULT_PROXY)


@dataclass(frozen=True)
class Population:
    users: list[tuple[str, list[str]]]     # (user, texts) typed on each simulated device
    heldout: dict[str, list[str]]          # test users' texts in order (tools.wordeval: first half typed)
    train_users: int
    test_users: int


def load_population(corpus: str, devices: int) -> Population:
    """The `devices` train users with the most text (each device is one user), and the held-out texts.

    The users are split with seed 0, as tools.pretrain and tools.evaluate do, so the central
    reference never trained on the held-out users."""
    from model.corpus import CorpusError, read_corpus, split_users
    split = split_users(read_corpus(corpus), seed=0)
    if not split.test:
        raise CorpusError(f"{corpus}: no held-out (test) users to evaluate on; the corpus needs more users")
    if len(split.train) < devices:
        raise CorpusError(f"{corpus}: only {len(split.train)} train users, fewer than --devices {devices}")
    ranked = sorted(split.train.items(), key=lambda kv: (-sum(len(t) for t in kv[1]), kv[0]))
    return Population(users=ranked[:devices], heldout=dict(split.test), train_users=len(split.train),
                      test_users=len(split.test))


# --- model versions -----------------------------------------------------------------------------

def _subprocess_step(title: str, module_args: list[str]) -> None:
    print(f"\n== {title}\n$ python -m {' '.join(module_args)}", flush=True)
    t0 = time.time()
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-m", *module_args], cwd=REPO, env=env)
    if res.returncode != 0:
        raise SimulationError(f"step '{title}' failed (exit {res.returncode})")
    print(f"   done in {time.time() - t0:.0f} s", flush=True)


def ensure_v0(data: Path, args: argparse.Namespace) -> Path:
    """Version 0: --v0 DIR, else the shipped models/v0 (both checked against their manifests);
    with --pretrain-v0, trained on the proxy corpus into DIR/models/v0 (reused if there)."""
    if getattr(args, "pretrain_v0", False):
        v0 = data / "models" / "v0"
        if (v0 / "manifest.json").exists() and not getattr(args, "rebuild", False):
            print(f"reusing version 0: {v0}")
            return v0
        proxy = [a for p in proxy_files(args) for a in ("--proxy", p)]
        _subprocess_step("version 0 from proxy text", ["tools.pretrain", *proxy, "--out", str(v0),
                                                       "--epochs", str(args.pretrain_epochs),
                                                       "--steps-per-epoch", str(args.pretrain_steps)])
        return v0
    src = Path(args.v0) if args.v0 else SHIPPED_V0
    return check_version(src, f"version 0 ({src})" if args.v0 else "the shipped version 0 (models/v0)").resolve()


def ensure_central(data: Path, v0: Path, args: argparse.Namespace) -> Path | None:
    """The central reference (v0 trained further on all train users), or None with --no-central."""
    if args.no_central:
        return None
    if args.central:
        return Path(args.central)
    central = data / "models" / "central"
    if (central / "manifest.json").exists() and not getattr(args, "rebuild", False):
        print(f"reusing central reference: {central}")
        return central
    _subprocess_step("central reference on the corpus's train users",
                     ["tools.pretrain", "--corpus", args.corpus, "--init", str(v0), "--out", str(central),
                      "--epochs", str(args.central_epochs), "--patience", "2", "--lr", "1e-3"])
    return central


# --- evaluation ---------------------------------------------------------------------------------

@contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """Send fd 2 to `path` meanwhile (LiteRT prints its delegate banner on every model load)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def score_version(version_dir: Path, users: dict[str, list[str]], max_words: int, *,
                  personal: bool = True) -> dict[str, float]:
    """The FedKeys keyboard on this version (`personal`), or the version's LSTM alone."""
    from tools.evaluate import lstm_factory
    from tools.wordeval import evaluate_words

    return evaluate_words(lstm_factory(str(version_dir), personal=personal), users, max_words=max_words).to_dict()


def _file_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}"


def reference_scores(data: Path, pop: Population, corpus: str, proxy: list[str], v0: Path, central: Path | None,
                     max_words: int, quiet_log: Path) -> dict[str, dict]:
    """References on the held-out users, cached in DIR/reference.json:

    ngram: Kneser-Ney trigram fitted centrally on the corpus's train users (collects their text);
    ngram_proxy: the same trigram fitted on the proxy text only (shippable without users' text);
    proxy: the FedKeys keyboard on version 0 (proxy LSTM + base n-gram + the user's own words);
    proxy_lstm: version 0's LSTM alone; central: the LSTM trained centrally on all train users."""
    from model.corpus import read_corpus, split_users
    from protocol.ngram import KneserNeyLM
    from tools.wordeval import evaluate_words

    cache_path = data / "reference.json"
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    out: dict[str, dict] = {}
    corpus_key = f"{_file_key(Path(corpus))}:{max_words}"
    wanted: dict[str, str] = {
        "ngram": f"ngram:{corpus_key}",
        "ngram_proxy": f"ngram:{':'.join(_file_key(Path(p)) for p in proxy)}:{corpus_key}",
        "proxy": f"keyboard:{_sha(v0 / 'manifest.json')}:{corpus_key}",
        "proxy_lstm": f"lstm:{_sha(v0 / 'manifest.json')}:{corpus_key}",
    }
    if central is not None:
        wanted["central"] = f"lstm:{_sha(central / 'manifest.json')}:{corpus_key}"
    for name, key in wanted.items():
        if key in cache:
            out[name] = cache[key]
            continue
        t0 = time.time()
        if name.startswith("ngram"):
            texts = (split_users(read_corpus(corpus), seed=0).texts("train") if name == "ngram"
                     else [r.text for p in proxy for r in read_corpus(p)])
            lm = KneserNeyLM.fit(texts, order=3)
            out[name] = evaluate_words(lm.session, pop.heldout, max_words=max_words).to_dict()
        else:
            with stderr_to(quiet_log):
                out[name] = score_version(central if name == "central" else v0, pop.heldout, max_words,
                                          personal=name == "proxy")
        out[name]["seconds"] = round(time.time() - t0, 1)
        cache[key] = out[name]
    cache_path.write_text(json.dumps(cache, indent=1))
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


# --- the coordinator process --------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CoordinatorProcess:
    """`python -m coordinator serve` on loopback, driven through its admin CLI and HTTP API."""

    def __init__(self, data_dir: Path, log_path: Path, settings: dict[str, Any]) -> None:
        self.data_dir, self.log_path = data_dir, log_path
        self.admin_token = os.urandom(ADMIN_TOKEN_BYTES).hex()
        self.settings = {"admin_token": self.admin_token, "rate_limit_per_minute": "600000",
                         "rate_limit_burst": "10000", "log_level": "INFO", **settings}
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def _flags(self) -> list[str]:
        return [a for k, v in self.settings.items() for a in ("--set", f"{k}={v}")]

    def _env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3"}

    def cli(self, *args: str) -> str:
        r = subprocess.run([sys.executable, "-m", "coordinator", *args, "--data-dir", str(self.data_dir),
                            *self._flags()], cwd=REPO, env=self._env(), capture_output=True, text=True,
                           timeout=300, check=False)
        if r.returncode != 0:
            raise SimulationError(f"coordinator {args[0]} failed: {r.stderr.strip().splitlines()[-1:]}")
        return r.stdout.strip()

    def start(self, port: int | None = None) -> None:
        import requests

        from protocol import wire

        port = port or free_port()
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen([sys.executable, "-m", "coordinator", "serve", "--data-dir",
                                          str(self.data_dir), "--host", "127.0.0.1", "--port", str(port),
                                          *self._flags()], cwd=REPO, env=self._env(), stdout=logf,
                                         stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise SimulationError(f"the coordinator exited (code {self.proc.returncode}); see {self.log_path}")
            try:
                if requests.get(self.url + wire.PATH_HEALTH, timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise SimulationError(f"the coordinator did not come up in {HEALTH_TIMEOUT_S:.0f} s; "
                                      f"see {self.log_path}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def restart(self, **settings: Any) -> None:
        port = int(self.url.rsplit(":", 1)[1])
        self.stop()
        self.settings.update({k: str(v) for k, v in settings.items()})
        self.start(port)      # the same URL: the devices enrolled with it

    def admin(self, method: str, path: str, **kw: Any) -> Any:
        import requests

        from protocol import wire

        r = requests.request(method, self.url + path, headers={wire.AUTH_HEADER: f"Bearer {self.admin_token}"},
                             timeout=120, **kw)
        if r.status_code >= 400:
            raise SimulationError(f"coordinator {method} {path}: HTTP {r.status_code}: {r.text[:300]}")
        return r.json()


# --- the devices (run in worker processes) -----------------------------------------------------

@dataclass(frozen=True)
class DeviceJob:
    data_dir: str
    eligible: bool                  # idle + charging + unmetered this round
    unplug_after: int | None = None  # eligibility checks before the device is unplugged (dropout)


class _Unplugged:
    """Eligible for `after` checks, then unplugged from the charger (training aborts)."""

    def __init__(self, after: int) -> None:
        self.after, self.calls = after, 0

    def check(self):
        from edge_runtime.eligibility import Decision

        self.calls += 1
        return Decision(True) if self.calls <= self.after else Decision(False, ("unplugged mid-training",))


def _worker_init(log_path: str) -> None:
    """Device processes log to a file (counts only, never text), not over the progress bar."""
    quiet_tensorflow()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 2)
    os.close(fd)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(process)d %(name)s: %(message)s")


def _device_config(data_dir: str, eligible: bool, coordinator: str = "", public_key: str = ""):
    from edge_runtime.config import EdgeConfig

    return EdgeConfig(data_dir=data_dir, coordinator=coordinator, public_key=public_key,
                      eligibility="override:eligible" if eligible else "override:ineligible",
                      min_wait_s=0.1, backoff_initial_s=0.5, backoff_max_s=2.0, upload_attempts=3,
                      http_timeout_s=120.0)


def setup_device(data_dir: str, coordinator: str, public_key: str, enrollment_key: str,
                 texts: list[str] | None) -> dict[str, Any]:
    """Enroll one device and type its user's history into its text cache (as the keyboard does)."""
    from edge_runtime import agent
    from edge_runtime.eligibility import ActivityClock

    cfg = _device_config(data_dir, False, coordinator, public_key)
    ident = agent.enroll(cfg, enrollment_key)
    cached = 0
    if texts:
        with agent.open_cache(cfg) as cache:
            for text in texts:
                cached += cache.add(text, FIELD_KIND)
            stats = cache.stats()
        # Typing ended long ago: the device is idle (eligibility itself is the per-round override).
        ActivityClock(Path(data_dir) / agent.ACTIVITY_FILE).note_keystroke()
    else:
        stats = {}
    return {"device_id": ident.device_id, "cached": cached, "stats": stats}


def device_checkin(job: DeviceJob) -> dict[str, Any]:
    """One check-in of one device through the real edge runtime, and the task it brings."""
    from edge_runtime import agent

    dev = agent.Device.open(_device_config(job.data_dir, job.eligible))
    try:
        if job.eligible and job.unplug_after is not None:
            dev.eligibility = _Unplugged(job.unplug_after)  # type: ignore[assignment]
        res = agent.run_once(dev)
        return {"kind": res.kind, "outcome": res.outcome, "counts": res.counts, "version": res.version_id}
    except Exception as e:  # noqa: BLE001 - a failing device is an outcome of the simulation, not its end
        log.warning("device check-in failed: %s", e)
        return {"kind": "error", "outcome": f"error ({e.__class__.__name__})", "counts": {}, "version": None}
    finally:
        dev.close()


# --- one federation -----------------------------------------------------------------------------

@dataclass
class RoundResult:
    round: int
    eligible: int = 0
    trained: int = 0                 # devices that uploaded an update
    dropped: int = 0                 # unplugged mid-training (no update)
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


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=True, disable=not enabled)


def _fmt_eps(x: float | str) -> str:
    if isinstance(x, str) or not math.isfinite(x):
        return "∞"
    return f"{x:.3g}"


def _pct(m: dict | None, key: str) -> str:
    return "–" if not m else f"{m[key]:.1%}"


def round_table(results: list[RoundResult], title: str):
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for col in ("round", "eligible", "uploaded", "dropped", "accepted", "rejected", "canary", "cand. top-3",
                "top-3", "KSR", "ε", "ε local"):
        t.add_column(col, justify="left" if col in ("rejected", "canary") else "right", no_wrap=True)
    for r in results:
        reasons = ", ".join(f"{k} {v}" for k, v in r.rejection_reasons.items())
        t.add_row(str(r.round), str(r.eligible), str(r.trained), str(r.dropped), str(r.accepted),
                  f"{r.rejected}" + (f" ({reasons})" if reasons else ""),
                  r.verdict + (f" ({r.canary_reports})" if r.canary_reports else ""),
                  _pct(r.candidate_metrics, "top3"), _pct(r.stable_metrics, "top3"), _pct(r.stable_metrics, "ksr"),
                  _fmt_eps(r.epsilon), _fmt_eps(r.epsilon_local))
    return t


def run_federation(name: str, args: argparse.Namespace, noise_multiplier: float, data: Path, v0: Path,
                   pop: Population, v0_metrics: dict[str, float], v0_global: dict[str, float],
                   console) -> FederationResult:
    """One federation: a fresh coordinator and fresh devices under DIR/runs/<name>, R rounds."""
    from coordinator.rollout import in_canary
    from edge_runtime import agent

    run_dir = data / "runs" / name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    coord_log, devices_log, eval_log = run_dir / "coordinator.log", run_dir / "devices.log", run_dir / "eval.log"
    n = len(pop.users)
    settings = {"population_size": n, "canary_fraction": args.canary_fraction,
                "canary_min_reports": args.canary_min_reports, "canary_tolerance": args.canary_tolerance,
                "server_optimizer": args.server_optimizer, "server_learning_rate": args.server_lr,
                "server_momentum": args.server_momentum, "checkin_interval_s": 60, "max_eval_examples": 200,
                "max_eval_words": 150,   # per canary device and version: bounds the word-level evaluation time
                "max_example_weight": max(args.max_examples, 1)}
    coord = CoordinatorProcess(run_dir / "coordinator", coord_log, {k: str(v) for k, v in settings.items()})
    rng = random.Random(f"{args.seed}:{name}")
    progress_on = not args.no_progress and sys.stdout.isatty()
    coord.cli("init")
    coord.cli("import-version", str(v0))
    key = coord.cli("create-enrollment-key", "--label", f"simulation {name}", "--uses", str(n + 1))  # + keyboard
    ctx = get_context("spawn")   # no forked copies of the parent's threads or sockets
    try:
        coord.start()
        public_key = coord.admin("GET", "/v1/admin/status")["public_key_hex"]
        dirs = [str(run_dir / "devices" / f"device{i:03d}") for i in range(n)]
        keyboard_dir = run_dir / "keyboard"
        with ProcessPoolExecutor(args.workers, mp_context=ctx, initializer=_worker_init,
                                 initargs=(str(devices_log),)) as pool:
            t0 = time.time()
            with _progress(progress_on) as prog:
                task = prog.add_task(f"{name}: enrolling {n} devices, typing their history", total=n)
                futs = [pool.submit(setup_device, d, coord.url, public_key, key, texts)
                        for d, (_, texts) in zip(dirs, pop.users, strict=True)]
                for f in futs:
                    f.add_done_callback(lambda _f: prog.advance(task))
                setups = [f.result() for f in futs]
            setup_device(str(keyboard_dir), coord.url, public_key, key, None)
            ids = [s["device_id"] for s in setups]
            holdout = [s["stats"].get("heldout", 0) > 0 for s in setups]
            console.print(f"{name}: {n} devices enrolled, {sum(s['cached'] for s in setups)} texts cached "
                          f"({time.time() - t0:.0f} s); coordinator {coord.url}, logs in {run_dir}")
            canary = [i for i in range(n) if in_canary(ids[i], args.canary_fraction) and holdout[i]]
            if len(canary) < args.canary_min_reports:
                # Too few canaries to ever reach a verdict: ask for as many reports as there are.
                frac = args.canary_fraction if canary else 1.0
                canary = canary or [i for i in range(n) if holdout[i] and in_canary(ids[i], frac)]
                console.print(f"{name}: only {len(canary)} devices in the canary cohort: "
                              f"a verdict needs {max(1, len(canary))} reports")
                coord.restart(canary_fraction=frac, canary_min_reports=max(1, len(canary)))

            observer = agent.Device.open(_device_config(str(keyboard_dir), False))
            results: list[RoundResult] = []
            stable_metrics = dict(v0_metrics)
            stable = coord.admin("GET", "/v1/admin/status")["stable_version_id"]
            try:
                for rno in range(1, args.rounds + 1):
                    res = _one_round(rno, name, args, noise_multiplier, n, dirs, canary, rng, coord, pool, observer,
                                     pop, stable_metrics, eval_log, progress_on)
                    if res.verdict == "promote":
                        stable_metrics = dict(res.candidate_metrics or stable_metrics)
                    stable = coord.admin("GET", "/v1/admin/status")["stable_version_id"]
                    res.stable, res.stable_metrics = stable, dict(stable_metrics)
                    results.append(res)
                    console.print(round_table([res], f"{name}: round {rno}/{args.rounds} "
                                                     f"({res.seconds:.0f} s)"))
                    if res.verdict_reason:
                        console.print(f"  canary: {res.verdict_reason}")
                # The keyboard device checks in (never eligible) and ends on the final stable version.
                agent.run_once(observer)
                if observer.store.current_id != stable:
                    observer.store.install(stable, observer.client.fetch)
                global_metrics = dict(v0_global)
                if stable != observer.store.current_id or any(r.verdict == "promote" for r in results):
                    with stderr_to(eval_log):
                        global_metrics = score_version(observer.store.ensure(stable, observer.client.fetch),
                                                       pop.heldout, args.eval_words, personal=False)
            finally:
                observer.close()
    finally:
        coord.stop()
    return FederationResult(name, noise_multiplier, results, stable, stable_metrics, global_metrics, keyboard_dir,
                            run_dir / "coordinator")


def _one_round(rno: int, name: str, args: argparse.Namespace, sigma: float, n: int, dirs: list[str],
               canary: list[int], rng: random.Random, coord: CoordinatorProcess, pool: ProcessPoolExecutor,
               observer, pop: Population, stable_metrics: dict, eval_log: Path, progress_on: bool) -> RoundResult:
    t0 = time.time()
    res = RoundResult(round=rno)
    eligible = [rng.random() < args.participation for _ in range(n)]
    est_steps = max(2, math.ceil(args.max_examples / args.batch_size) * args.epochs)
    # run_once checks eligibility once, _train once, the trainer once before loading: unplug after those.
    unplug = [3 + rng.randint(1, est_steps - 1) if e and rng.random() < args.dropout else None for e in eligible]
    res.eligible = sum(eligible)
    if res.eligible == 0:
        res.status, res.verdict_reason = "skipped", "no device idle and charging this round"
        res.seconds = time.time() - t0
        return res
    rnd = coord.admin("POST", "/v1/admin/rounds", json={
        "goal_count": res.eligible, "min_count": 1, "overselect": 1.0, "round_duration_s": 3600,
        "epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
        "clip_norm": args.clip_norm, "noise_multiplier": sigma, "max_examples": args.max_examples,
        "selection_window_s": 0})   # devices check in once per round, synchronously
    round_id = rnd["round_id"]
    order = sorted(range(n), key=lambda i: not eligible[i])     # the busy ones first
    with _progress(progress_on) as prog:
        task = prog.add_task(f"{name}: round {rno}: check-in and local training", total=n)
        futs: list[Future] = [pool.submit(device_checkin, DeviceJob(dirs[i], eligible[i], unplug[i])) for i in order]
        for f in futs:
            f.add_done_callback(lambda _f: prog.advance(task))
        outcomes = [f.result() for f in futs]
    kinds = Counter(o["outcome"].split(" (")[0] for o in outcomes)
    res.trained, res.dropped = kinds.get("uploaded", 0), kinds.get("aborted", 0)
    info = coord.admin("GET", f"/v1/admin/rounds/{round_id}")
    if info["status"] == "open":
        info = coord.admin("POST", f"/v1/admin/rounds/{round_id}/close?force=1")
    res.status, res.accepted, res.candidate = info["status"], info["accepted"], info["result_version_id"]
    rejections = coord.admin("GET", f"/v1/admin/rejections?round_id={round_id}")["rejections"]
    res.rejected = len(rejections)
    res.rejection_reasons = dict(Counter(r["reason"] for r in rejections))
    for o in outcomes:   # device-side refusals that never reached the coordinator
        if o["kind"] == "error":
            res.rejection_reasons["device error"] = res.rejection_reasons.get("device error", 0) + 1
    if res.status != "done" or not res.candidate:
        res.verdict_reason = f"round {res.status}: {info['reason']}"
        res.seconds = time.time() - t0
        return res
    # Canary: the cohort's devices switch to the candidate and score it against stable on held-out text.
    with _progress(progress_on) as prog:
        task = prog.add_task(f"{name}: round {rno}: canary evaluation", total=len(canary))
        futs = [pool.submit(device_checkin, DeviceJob(dirs[i], True)) for i in canary]
        for f in futs:
            f.add_done_callback(lambda _f: prog.advance(task))
        [f.result() for f in futs]
    versions = {v["version_id"]: v for v in coord.admin("GET", "/v1/admin/versions")["versions"]}
    cand = versions[res.candidate]
    res.canary_reports = cand["canary_reports"]
    res.epsilon = cand["epsilon"]
    res.epsilon_local = cand["privacy"].get("epsilon_local", res.epsilon)
    auto = [d for d in cand["decisions"] if d["actor"] == "auto"]
    if cand["status"] == "stable":
        res.verdict = "promote"
    elif cand["status"] == "rejected":
        res.verdict = "reject"
    else:
        res.verdict = "wait"
    res.verdict_reason = auto[-1]["reason"] if auto else coord.admin("GET", "/v1/admin/canary").get("reason", "")
    # Held-out users: the candidate, downloaded and verified like any device does, through the keyboard's predictor.
    with _progress(progress_on) as prog:
        prog.add_task(f"{name}: round {rno}: scoring the candidate on held-out users", total=None)
        vdir = observer.store.ensure(res.candidate, observer.client.fetch)
        with stderr_to(eval_log):
            res.candidate_metrics = score_version(vdir, pop.heldout, args.eval_words)
    res.seconds = time.time() - t0
    return res


# --- the report ---------------------------------------------------------------------------------

def headline_rows(refs: dict[str, dict], feds: list[FederationResult], rounds: int) -> list[tuple[str, dict]]:
    rows = [("Kneser-Ney trigram, central on the train users' text (collects text)", refs["ngram"]),
            ("Kneser-Ney trigram, proxy text only", refs["ngram_proxy"]),
            ("LSTM, proxy text only (version 0)", refs["proxy_lstm"]),
            ("FedKeys keyboard on version 0 (proxy LSTM + base n-gram + the user's own words)", refs["proxy"])]
    for f in feds:
        dp = "" if f.noise_multiplier == 0 else (f" with DP noise (σ={f.noise_multiplier:g}, "
                                                 f"ε={_fmt_eps(f.rounds[-1].epsilon)}, ε against the coordinator "
                                                 f"{_fmt_eps(f.rounds[-1].epsilon_local)})")
        rows.append((f"LSTM, federated{dp}, {rounds} rounds (global model alone)", f.global_metrics))
        rows.append((f"**FedKeys keyboard, federated{dp}, {rounds} rounds** "
                     "(global LSTM + base n-gram + the user's own words)",
                     f.final_metrics))
    if "central" in refs:
        rows.append(("LSTM, central on all train users (upper bound, collects text)", refs["central"]))
    return rows


def verdict_lines(refs: dict[str, dict], fed: FederationResult) -> list[str]:
    """The claims the report makes, each a difference in points on the same held-out words."""
    kb, glob = fed.final_metrics, fed.global_metrics
    pts = lambda a, b, key: f"{(a[key] - b[key]) * 100:+.1f}"  # noqa: E731
    shippable = max((refs["ngram_proxy"], refs["proxy_lstm"]), key=lambda m: m["top3"])
    lines = [f"FedKeys keyboard vs the central trigram: top-3 {pts(kb, refs['ngram'], 'top3')} points, "
             f"KSR {pts(kb, refs['ngram'], 'ksr')} points.",
             f"FedKeys keyboard vs the best model shippable without users' text (proxy-only LSTM or trigram): "
             f"top-3 {pts(kb, shippable, 'top3')} points, KSR {pts(kb, shippable, 'ksr')} points.",
             f"Federated global LSTM vs proxy only: top-3 {pts(glob, refs['proxy_lstm'], 'top3')} points."]
    if "central" in refs:
        lines.append(f"Federated global LSTM vs the central LSTM: top-3 {pts(glob, refs['central'], 'top3')} points, "
                     f"KSR {pts(glob, refs['central'], 'ksr')} points.")
    return lines


def write_plot(path: Path, refs: dict[str, dict], feds: list[FederationResult], v0_metrics: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"ngram": ("central trigram (collects text)", "tab:gray", ":"),
              "proxy": ("keyboard on version 0 (proxy only)", "tab:red", "--"),
              "central": ("central LSTM (upper bound)", "tab:green", "--")}
    for ax, key, title in ((axes[0], "top3", "next-word top-3 accuracy"), (axes[1], "ksr", "keystroke savings")):
        for name, (label, color, ls) in styles.items():
            if name in refs:
                ax.axhline(refs[name][key], color=color, ls=ls, lw=1.2, label=label)
        for f, color in zip(feds, ("tab:blue", "tab:purple"), strict=False):
            xs = [0] + [r.round for r in f.rounds]
            ys = [v0_metrics[key]] + [r.stable_metrics.get(key, math.nan) for r in f.rounds]
            label = ("keyboard, federated" if f.noise_multiplier == 0
                     else f"keyboard, federated, DP σ={f.noise_multiplier:g}")
            ax.plot(xs, ys, marker="o", color=color, label=label)
            for r in f.rounds:
                if r.candidate_metrics and r.verdict != "promote":
                    ax.plot([r.round], [r.candidate_metrics[key]], marker="x", color=color, ls="none", ms=8)
        ax.set_title(title)
        ax.set_xlabel("round")
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=1))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle("FedKeys simulation: held-out users (x: candidate the canary did not promote)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(data: Path, args: argparse.Namespace, command: str, pop: Population, refs: dict[str, dict],
                 feds: list[FederationResult], v0_metrics: dict, seconds: float) -> Path:
    rows = headline_rows(refs, feds, args.rounds)
    words = refs["proxy"]["words"]
    proxy_names = " + ".join(f"`{Path(p).name}`" for p in proxy_files(args))
    lines = [
        "# FedKeys simulation report", "",
        f"Command: `{command}`", "",
        f"Device corpus `{Path(args.corpus).name}`: {len(pop.users)} simulated devices (the {len(pop.users)} train "
        f"users with the most text, of {pop.train_users}), evaluated on {pop.test_users} held-out users "
        f"({words} words); proxy corpus {proxy_names}. {args.rounds} rounds, participation "
        f"{args.participation:.0%}, dropout {args.dropout:.0%}; plan: {args.epochs} epoch(s), batch "
        f"{args.batch_size}, lr {args.learning_rate}, clip {args.clip_norm}, ≤{args.max_examples} windows per "
        f"device; server {args.server_optimizer} (lr {args.server_lr}"
        f"{f', momentum {args.server_momentum}' if args.server_optimizer == 'fedavgm' else ''}). "
        f"Total {seconds / 60:.1f} min.", "",
        "| model | top-1 | top-3 | KSR |", "|---|---:|---:|---:|",
    ]
    lines += [f"| {label} | {m['top1']:.1%} | {m['top3']:.1%} | {m['ksr']:.1%} |" for label, m in rows]
    lines += ["", *verdict_lines(refs, feds[0])]
    lines += ["", "![top-3 and keystroke savings by round](report.png)", ""]
    for f in feds:
        lines += [f"## Rounds: {f.name} (noise multiplier {f.noise_multiplier:g})", "",
                  "| round | eligible | uploaded | dropped | accepted | rejected (reasons) | canary verdict | "
                  "candidate top-3 | deployed top-3 | deployed KSR | ε | ε against the coordinator |",
                  "|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|"]
        for r in f.rounds:
            reasons = ", ".join(f"{k} {v}" for k, v in r.rejection_reasons.items())
            lines.append(f"| {r.round} | {r.eligible} | {r.trained} | {r.dropped} | {r.accepted} | {r.rejected}"
                         f"{' (' + reasons + ')' if reasons else ''} | {r.verdict}"
                         f"{f' ({r.canary_reports} reports)' if r.canary_reports else ''} | "
                         f"{_pct(r.candidate_metrics, 'top3')} | {_pct(r.stable_metrics, 'top3')} | "
                         f"{_pct(r.stable_metrics, 'ksr')} | {_fmt_eps(r.epsilon)} | {_fmt_eps(r.epsilon_local)} |")
        lines += ["", f"Final deployed version: `{f.final_version}`. Canary verdicts: "
                  + "; ".join(f"round {r.round}: {r.verdict_reason}" for r in f.rounds if r.verdict_reason), ""]
    lines += ["Notes: top-1/top-3 are next-word accuracy of the suggestion strip after each space; KSR is the "
              "share of keystrokes saved by tapping a suggestion as soon as it shows. ε is (ε, δ=1e-6)-DP from the "
              "coordinator's RDP accountant (∞ without noise); against the coordinator itself, which sees each "
              "noisy update, only the larger 'ε against the coordinator' holds (no secure aggregation). "
              "A handful of simulated devices cannot afford much noise: DP-FedAvg needs thousands of devices per "
              "round for a useful ε at this accuracy."]
    (data / "report.md").write_text("\n".join(lines) + "\n")
    write_plot(data / "report.png", refs, feds, v0_metrics)
    payload = {"command": command, "settings": {k: v for k, v in vars(args).items()},
               "headline": [{"model": label, **m} for label, m in rows], "references": refs,
               "federations": [{"name": f.name, "noise_multiplier": f.noise_multiplier,
                                "final_version": f.final_version, "final_metrics": f.final_metrics,
                                "global_metrics": f.global_metrics,
                                "rounds": [asdict(r) for r in f.rounds]} for f in feds]}
    (data / "report.json").write_text(json.dumps(payload, indent=1, default=str))
    return data / "report.md"


# --- entry points -------------------------------------------------------------------------------

@dataclass
class SimulationResult:
    report: Path
    federations: list[FederationResult]
    references: dict[str, dict]


def simulate(args: argparse.Namespace, command: str) -> SimulationResult:
    """The whole simulation (also the demo's core)."""
    from rich.console import Console

    from model.corpus import read_corpus

    check_args(args)
    quiet_tensorflow()
    # No markup (run names and reasons are plain text); a fixed width when piped to a log.
    console = Console(markup=False, highlight=False, width=None if sys.stdout.isatty() else 120)
    t0 = time.time()
    for path in (args.corpus, *proxy_files(args)):
        read_corpus(path)      # fail fast, with a clear message, before minutes of training
    pop = load_population(args.corpus, args.devices)
    data = Path(args.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    v0 = ensure_v0(data, args)
    central = ensure_central(data, v0, args)
    console.print(f"scoring references on {pop.test_users} held-out users ({args.eval_words} words max)...")
    (data / "runs").mkdir(exist_ok=True)
    refs = reference_scores(data, pop, args.corpus, proxy_files(args), v0, central, args.eval_words,
                            data / "runs" / "eval.log")
    v0_metrics = refs["proxy"]
    feds = [run_federation("federated", args, args.noise_multiplier, data, v0, pop, v0_metrics,
                           refs["proxy_lstm"], console)]
    if args.compare_dp:
        feds.append(run_federation("federated-dp", args, args.dp_noise_multiplier, data, v0, pop, v0_metrics,
                                   refs["proxy_lstm"], console))
    report = write_report(data, args, command, pop, refs, feds, v0_metrics, time.time() - t0)
    console.print(report.read_text().split("\n## ")[0])
    console.print(f"report: {report} and {data / 'report.png'}")
    return SimulationResult(report, feds, refs)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = "python -m tools.simulate " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        simulate(args, command)
    except SimulationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def cli() -> None:
    """The `fedkeys-simulate` console script."""
    run(main)


if __name__ == "__main__":
    cli()
