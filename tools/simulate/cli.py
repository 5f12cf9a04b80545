"""`python -m tools.simulate`: the flags, their checks, and the run from corpus to report.

The flags and their defaults are part of the interface (the demo reuses them with its own
defaults, automation reads report.json): add flags, do not rename them."""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from edge_runtime.plan_guard import PlanFloor
from protocol.cli import HelpFormatter, Parser, add_version
from protocol.plan import floor_breaches, number
from tools._cli import (
    DEFAULT_CORPUS,
    DEFAULT_EVAL_WORDS,
    DEFAULT_PROXY,
    REPO,
    SCORED_SPLITS,
    count,
    quiet_tensorflow,
    run,
)
from tools.simulate.devices import device_config
from tools.simulate.errors import SimulationError
from tools.simulate.federation import FederationResult, run_federation
from tools.simulate.population import (
    ensure_central,
    ensure_v0,
    load_population,
    proxy_files,
    trains_nothing,
)
from tools.simulate.references import reference_scores
from tools.simulate.report import write_report
from tools.wordeval import pieces_note, scored_words, split_document

DESCRIPTION = "Simulate a population of keyboard devices federating against a real coordinator."
# DP on by default, as in the coordinator's config: the largest noise at which the demo's
# devices still beat version 0 in 3 rounds (measured with 8 devices, 0.005 and 0.01: +1.0 top-3 both).
DEFAULT_NOISE_MULTIPLIER = 0.01
# The central reference's epochs are full passes up to 2,000 batches of 64 (128,000 windows, about
# 1.6M words of train users' text): the largest corpus measured, topical_chat.jsonl's 740k train
# words, needs 962; past the cap, each epoch is a fresh random share, so the 4 epochs take about 20
# minutes on 2 cores however large the corpus (20.3 on 4.76M words of novels, where full passes
# would take about 47; docs/quality.md, "Corpora of millions of words").
CENTRAL_STEPS_PER_EPOCH = 2000


# --- settings ----------------------------------------------------------------------------------

def build_parser(prog: str = "python -m tools.simulate") -> argparse.ArgumentParser:
    """The simulator's parser (`prog` lets the demo show its own name)."""
    p = Parser(prog=prog, description=DESCRIPTION,
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
    g.add_argument("--epochs", type=int, default=3, help="local epochs (3: docs/quality.md, federated recipes)")
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
    g.add_argument("--eval-words", type=int, default=DEFAULT_EVAL_WORDS,
                   help="held-out words scored per model: every word of the held-out users' scored halves up to this "
                        "many, past it an even share per user")
    g.add_argument("--split", default="test", choices=SCORED_SPLITS,
                   help="the users scored, never trained on: test (the held-out users every claim is on) or "
                        "validation (to tune a recipe without looking at the test users; the central "
                        "reference stopped early on them, so it reads a little high there)")
    g.add_argument("--compare-dp", action="store_true",
                   help="also run the same federation with DP noise (--dp-noise-multiplier)")
    g.add_argument("--dp-noise-multiplier", type=float, default=0.005)
    g.add_argument("--central", help="central reference version dir (default DIR/models/central, built if absent)")
    g.add_argument("--no-central", action="store_true", help="no central reference model")
    g.add_argument("--pretrain-epochs", type=int, default=2)
    g.add_argument("--pretrain-steps", type=int, default=700, help="steps per pretraining epoch (batch 64)")
    g.add_argument("--central-epochs", type=int, default=4)
    g.add_argument("--central-steps-per-epoch", type=int, default=CENTRAL_STEPS_PER_EPOCH,
                   help="cap each central epoch at this many batches of 64 windows, a fresh random share of the "
                        "train users' windows each epoch (every corpus in docs/quality.md needs fewer, so theirs "
                        "are full passes; a corpus of millions of words would take hours on 2 cores; the report "
                        "says when the cap applied); 0: always a full pass")
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
        (all(math.isfinite(x) and x > 0 for x in (args.learning_rate, args.clip_norm, args.server_lr)),
         "learning rates and clip must be finite and > 0"),
        (all(math.isfinite(x) and x >= 0 for x in (args.noise_multiplier, args.dp_noise_multiplier)),
         "noise multipliers must be finite and >= 0"),
        (0 <= args.server_momentum < 1, "--server-momentum must be in [0, 1)"),
        (0 < args.canary_fraction <= 1, "--canary-fraction must be in (0, 1]"),
        (args.canary_min_reports >= 1, "--canary-min-reports must be >= 1"),
        (math.isfinite(args.canary_tolerance) and args.canary_tolerance >= 0,
         "--canary-tolerance must be finite and >= 0"),
        (args.eval_words >= 1, "--eval-words must be >= 1"),
        (args.central_steps_per_epoch is None or args.central_steps_per_epoch >= 0,
         "--central-steps-per-epoch must be >= 0 (0: a full pass)"),
        (all(getattr(args, k, 1) >= 1 for k in ("pretrain_epochs", "pretrain_steps", "central_epochs")),
         "--pretrain-epochs, --pretrain-steps and --central-epochs must be >= 1"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ValueError(msg)
    # The simulated devices keep a phone's default limits on a plan (`edge_runtime.plan_guard`):
    # a plan past them would run every round with no update and still write a report.
    floor = asdict(PlanFloor.from_config(device_config("", eligible=False)))
    plan = {"noise_multiplier": args.noise_multiplier, "clip_norm": args.clip_norm, "epochs": args.epochs,
            "max_examples": args.max_examples}
    breaches = floor_breaches(plan, floor)
    if breaches:
        name, value, side, limit = breaches[0]
        raise ValueError(f"--{name.replace('_', '-')} {number(value)} is {side} what a device accepts "
                         f"({number(limit)}, its default limit): every device would refuse the rounds")
    runs = (Path(args.data_dir) / "runs").resolve()
    for flag, path in (("--v0", args.v0), ("--central", args.central)):
        if path and not (Path(path) / "manifest.json").is_file():
            raise ValueError(f"{flag} {path}: not a model version directory (no manifest.json)")
        if path and runs in Path(path).resolve().parents:   # the report points at the final version there
            raise ValueError(f"{flag} {path} is inside {runs}, which this run deletes before it starts: copy the "
                             "version out (cp -r) and give the copy")


# --- entry points -------------------------------------------------------------------------------

@dataclass
class SimulationResult:
    """What the demo needs after a simulation: the report and the federations' devices."""

    report: Path
    federations: list[FederationResult]
    references: dict[str, dict]


@contextmanager
def data_dir_lock(data: Path) -> Iterator[None]:
    """One tool at a time in a simulation's data directory: a second simulation started into the
    same --data-dir deleted the first's coordinator under it (which then failed naming its
    database), the demo's keyboard page under it, or the versions a `tools.rescore` was scoring."""
    from edge_runtime.file_lock import LockBusy, file_lock

    with ExitStack() as held:
        try:
            held.enter_context(file_lock(data / ".simulate.lock", exclusive=True, wait=0))
        except LockBusy:
            raise SimulationError(f"another simulation, demo or rescore is using {data}; wait for it to end, or "
                                  "give another --data-dir") from None
        yield


def simulate(args: argparse.Namespace, command: str) -> SimulationResult:
    """The whole simulation (also the demo's core)."""
    from rich.console import Console

    from model.corpus import CorpusError, read_corpus

    check_args(args)
    quiet_tensorflow()
    # No markup (run names and reasons are plain text); a fixed width when piped to a log.
    console = Console(markup=False, highlight=False, width=None if sys.stdout.isatty() else 120)
    t0 = time.time()
    for path in (args.corpus, *proxy_files(args)):
        read_corpus(path)      # fail fast, with a clear message, before minutes of training
    pop = load_population(args.corpus, args.devices, fewer=True, scored=args.split)
    if len(pop.users) < args.devices:   # recorded as run, so tools.rescore finds the same devices
        from tools.prepare import one_writer_hint
        console.print(f"note: {args.corpus} has {count(len(pop.users), 'train user')}, so "
                      f"{count(len(pop.users), 'device')} run, "
                      f"not --devices {args.devices}; each device is one user" + one_writer_hint(args.corpus),
                      soft_wrap=True)
        args.devices = len(pop.users)
    single = sum(trains_nothing(texts) for _, texts in pop.users)
    if pop.users and single == len(pop.users):   # one document per user (essays, reviews): its parts
        pop = replace(pop, users=[(u, split_document(texts[0])) for u, texts in pop.users])
        console.print("note: every device's user has one text, and a device keeps its newest text back to evaluate "
                      "on: each device's text is typed as its paragraphs, or runs of its sentences", soft_wrap=True)
        single = sum(trains_nothing(texts) for _, texts in pop.users)
    if pop.users and single == len(pop.users):
        raise CorpusError(f"{args.corpus}: every device's user has one text of one sentence, and a device keeps "
                          "its newest text back to evaluate on, so no device would train; use users of 2+ texts")
    if pop.heldout_split:
        console.print(pieces_note(pop.heldout_split, pop.test_users, f"{pop.who} users"), soft_wrap=True)
    if pop.leak:
        console.print(pop.leak, soft_wrap=True)
    if single:
        console.print(f"note: {single} of the {count(len(pop.users), 'device')} hold one text, which they keep back to "
                      "evaluate on: they train nothing", soft_wrap=True)
    data = Path(args.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    with data_dir_lock(data):
        v0 = ensure_v0(data, args)
        central = ensure_central(data, v0, args)
        scored = sum(1 for n in scored_words(pop.heldout, args.eval_words).values() if n)   # a sample past 100
        of = f"the {pop.test_users}" if scored == pop.test_users else f"{scored} of the {pop.test_users}"
        console.print(f"scoring references on up to {args.eval_words:,} words of {of} {pop.who} users...")
        (data / "runs").mkdir(exist_ok=True)
        refs = reference_scores(data, pop, args.corpus, proxy_files(args), v0, central, args.eval_words,
                                data / "runs" / "eval.log", workers=args.workers, say=console.print)
        v0_metrics = refs["keyboard_v0"]
        available = sum(scored_words(pop.heldout).values())
        if v0_metrics["words"] < available:
            console.print(f"note: {v0_metrics['words']:,} of the {available:,} words in the {pop.who} users' scored "
                          f"halves are scored, an even share per user; "
                          f"{getattr(args, 'eval_words_flag', '--eval-words')} {available} scores every one")
        for old in ("report.md", "report.json", "report.png"):   # they would describe runs/ being replaced
            (data / old).unlink(missing_ok=True)
        feds = [run_federation("federated", args, args.noise_multiplier, data, v0, pop, v0_metrics,
                               refs["proxy_lstm"], console)]
        if args.compare_dp:
            feds.append(run_federation("federated-dp", args, args.dp_noise_multiplier, data, v0, pop, v0_metrics,
                                       refs["proxy_lstm"], console))
        report = write_report(data, args, command, pop, refs, feds, v0_metrics, time.time() - t0)
        console.print(report.read_text().split("\n## ")[0])
        console.print(f"report: {report} and {data / 'report.png'}")
        for f in feds:   # the report's first part, printed above, does not say where the model is
            console.print(f"final model, {f.name}: {f.final_dir} (python -m tools.evaluate --model DIR)",
                          soft_wrap=True)
        return SimulationResult(report, feds, refs)


def main(argv: list[str] | None = None) -> int:
    """Parse, simulate, exit 1 with one line when the simulation cannot go on."""
    args = build_parser().parse_args(argv)
    command = shlex.join(["python", "-m", "tools.simulate", *(sys.argv[1:] if argv is None else argv)])
    try:
        simulate(args, command)
    except SimulationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def cli() -> None:
    """The `fedkeys-simulate` console script."""
    run(main)

