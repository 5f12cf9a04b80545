"""The one-command FedKeys demo: the shipped version 0, a small federated simulation, the keyboard page.

    python -m tools.demo [--data-dir data] [--no-serve]

On embedded defaults (SQLite, local files, loopback), everything under one data directory:

1. version 0: the shipped models/v0 (SentencePiece tokenizer + LSTM pretrained on the proxy
   corpus only; rebuilt by `make v0`), checked against its manifest's sha256 sums; the central
   reference (version 0 trained further on the device corpus's train users) only with
   --with-central (trained once into DIR/models/central) or when models/central is shipped;
2. a small simulation (tools.simulate): a real coordinator on loopback and 16 simulated
   devices, each typing one corpus user's text, federating for 5 rounds with canary
   rollout, scored on the same held-out words as tools.simulate; 3.5 to 4.5 minutes on 2 cores;
3. the report, DIR/report.md + DIR/report.png: n-gram, proxy-only, federated and central
   models on the corpus's held-out users, and the rounds;
4. the keyboard page, served on loopback, bound to the freshly promoted model; its URL is
   printed (Ctrl-C stops it). --no-serve exits after the report.

Re-running reuses the reference scores and replaces the simulation (DIR/runs/).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import threading
from pathlib import Path

from protocol.cli import HelpFormatter, Parser, add_version, bind_error
from tools._cli import DEFAULT_CORPUS, REPO, count, run
from tools.shipped import check_version

SHIPPED_CENTRAL = Path(REPO) / "models" / "central"

# The demo's simulation: small enough for < 5 minutes on 2 cores, big enough to beat version 0 and
# reach the central trigram (docs/quality.md). It scores the held-out words tools.simulate scores
# (its --eval-words default: every word of the shipped corpus's held-out users). On them, 3 rounds
# read the keyboard's KSR 0.2 points under the central trigram's and 5 rounds 0.1 above it (one run
# each, 2.3 and 3.5 minutes): a tie either way, closer with the two rounds more.
DEMO_DEFAULTS = {"devices": 16, "rounds": 5, "participation": 0.8, "dropout": 0.1,
                 "canary_fraction": 0.5, "canary_min_reports": 2, "workers": 2}


def build_parser() -> argparse.ArgumentParser:
    from tools.simulate import build_parser as sim_parser

    p = Parser(prog="python -m tools.demo", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    add_version(p)
    p.add_argument("--data-dir", default="data", help="everything goes under this directory (default: data)")
    p.add_argument("--corpus", default=DEFAULT_CORPUS, help="device text (JSONL or plain text)")
    p.add_argument("--proxy", action="append", default=None,
                   help="proxy text for the vocabulary and version 0; repeat to combine "
                        "(default: the repository's mix)")
    p.add_argument("--devices", type=int, default=None,
                   help=f"simulated devices (default: {DEMO_DEFAULTS['devices']}, or every train user if fewer)")
    p.add_argument("--rounds", type=int, default=DEMO_DEFAULTS["rounds"], help="federated rounds")
    p.add_argument("--workers", type=int, default=DEMO_DEFAULTS["workers"], help="device processes")
    p.add_argument("--v0", help="start from this version directory instead of the shipped models/v0")
    p.add_argument("--with-central", action="store_true",
                   help="also train the central reference (upper bound; 2.5-6 minutes the first time on 2 cores)")
    p.add_argument("--pretrain-epochs", type=int, default=2, help="with --rebuild: version 0 epochs")
    p.add_argument("--pretrain-steps", type=int, default=700, help="with --rebuild: steps per epoch (batch 64)")
    p.add_argument("--central-epochs", type=int, default=4, help="with --with-central: epochs")
    p.add_argument("--max-words", type=int, default=sim_parser().get_default("eval_words"),
                   help="held-out words scored per model")
    p.add_argument("--rebuild", action="store_true",
                   help="train version 0 from --proxy into DIR/models/v0 (and central) instead of reusing")
    p.add_argument("--no-serve", action="store_true", help="exit after the report instead of serving the keyboard")
    p.add_argument("--keyboard-port", type=int, default=0, help="keyboard page port (default: a free one)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def simulation_args(args: argparse.Namespace) -> argparse.Namespace:
    """The tools.simulate settings for this demo run."""
    from tools.simulate import build_parser as sim_parser

    sim = sim_parser().parse_args([])
    for k, v in DEMO_DEFAULTS.items():
        setattr(sim, k, v)
    for k in ("data_dir", "corpus", "proxy", "rounds", "workers", "pretrain_epochs", "pretrain_steps",
              "central_epochs", "rebuild", "no_progress"):
        setattr(sim, k, getattr(args, k))
    sim.devices = args.devices if args.devices is not None else default_devices(args.corpus)
    sim.eval_words = args.max_words
    sim.eval_words_flag = "--max-words"   # what the simulator's notes name: the demo's own flag
    sim.v0, sim.pretrain_v0 = args.v0, args.rebuild
    if (SHIPPED_CENTRAL / "manifest.json").exists() and not args.rebuild:
        sim.central = str(check_version(SHIPPED_CENTRAL, "the shipped central reference (models/central)"))
    else:
        sim.no_central = not (args.with_central or args.rebuild)
    return sim


def default_devices(corpus: str) -> int:
    """The demo's device count: its default, or every train user when the corpus has fewer (a
    small corpus still runs the demo; the simulator does the same with an explicit --devices)."""
    from model.corpus import CorpusError, read_corpus, split_users
    from tools.prepare import one_writer_hint

    train = len(split_users(read_corpus(corpus), seed=0).train)
    if not train:
        raise CorpusError(f"{corpus}: no train users (every user hashed to validation or held-out), so no device "
                          "to run; the corpus needs more users" + one_writer_hint(corpus))
    if train < DEMO_DEFAULTS["devices"]:
        print(f"note: {corpus} has {count(train, 'train user')}, so the demo runs {count(train, 'device')}"
              + one_writer_hint(corpus))
    return min(DEMO_DEFAULTS["devices"], train)


def _has_tensorflow() -> bool:
    """Asked in a child process: the demo's own process stays free of TensorFlow's memory."""
    return subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True, timeout=300,
                          check=False).returncode == 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tools.simulate import SimulationError, simulate
    from tools.simulate.cli import data_dir_lock

    if not 0 <= args.keyboard_port < 65536:
        raise ValueError("--keyboard-port must be in [0, 65535]")
    if args.keyboard_port and not args.no_serve:
        _check_port_free(args.keyboard_port)
    if args.max_words < 1:      # checked here: the simulator would name its own flag, --eval-words
        raise ValueError("--max-words must be >= 1")
    if (args.with_central or args.rebuild) and not _has_tensorflow():
        raise ValueError("--with-central and --rebuild train with TensorFlow, which the demo's own environment "
                         "leaves out: make setup && make demo DEMO_VENV=.venv ARGS=...")
    command = shlex.join(["python", "-m", "tools.demo", *(sys.argv[1:] if argv is None else argv)])
    try:
        result = simulate(simulation_args(args), command.strip())
    except SimulationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.no_serve:
        return 0
    fed = result.federations[0]
    try:
        with data_dir_lock(Path(args.data_dir)):   # the page serves from it: no new run replaces it meanwhile
            return serve(fed.keyboard_dir, fed.final_version, args.keyboard_port)
    except SimulationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _check_port_free(port: int) -> None:
    """A busy --keyboard-port was found only after the simulation, minutes of it: checked first
    (the same reuse rule as the page's own socket, so a port in TIME_WAIT is free)."""
    if (e := bind_error("127.0.0.1", port)) is not None:
        raise ValueError(f"--keyboard-port {port} cannot be used ({e.strerror or e}): choose another, or 0 "
                         "for a free one")


def serve(keyboard_dir: Path, version_id: str, port: int = 0) -> int:
    """The keyboard page on loopback, on the device that holds the freshly promoted version."""
    from edge_runtime.errors import no_core_dumps
    from edge_runtime.keyboard import KeyboardError, serve_keyboard

    no_core_dumps()   # the page's text is in this process from now on: a crash writes no core file
    stop = threading.Event()

    def ready(url: str) -> None:
        print(f"\nkeyboard page (model {version_id}): {url}\nCtrl-C to stop.", flush=True)

    try:
        serve_keyboard(keyboard_dir, port=port, channel="stable", stop=stop, on_ready=ready)
    except KeyboardError as e:   # the run's results stay: say how to serve its page later
        print(f"error: {e}\nthe report is written; serve its keyboard page with: python -m edge_runtime keyboard "
              f"--data-dir {shlex.quote(str(keyboard_dir))} --port PORT", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopped")
    return 0


if __name__ == "__main__":
    run(main)
