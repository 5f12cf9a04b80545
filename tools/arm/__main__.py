"""`python -m tools.arm`: the edge runtime on an emulated Raspberry Pi 4 (aarch64 Debian
bookworm under qemu-user-static, QEMU_CPU=cortex-a72). Needs root on a Debian/Ubuntu host.

    build    build (once) and cache the rootfs and its two edge venvs; a no-op when up to date
    shell    an interactive shell on the board, in the repository
    run      one command on the board, e.g. `run -- python -m edge_runtime --help`
    test     the edge test subset on the board, with ai-edge-litert and with tflite-runtime
    e2e      host coordinator + native devices + devices on the board, through a full round
    bench    keystroke latency on the board (emulated Cortex-A72) next to native
    ci       build + test + e2e, with the time of each step
"""

from __future__ import annotations

import argparse
import sys
import time

from protocol.cli import Parser, add_version
from tools._cli import Terminated, raise_on_sigterm
from tools.arm.board import GUEST_VENVS, Board, BoardError, default_cache_dir, fmt_s, say


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="python -m tools.arm", description=__doc__)
    add_version(ap)
    ap.add_argument("--cache-dir", default=None,
                    help=f"where the board lives (default FEDKEYS_ARM_CACHE or {default_cache_dir()})")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    b = sub.add_parser("build", help="build or update the cached board (idempotent)")
    b.add_argument("--force", action="store_true",
                   help="redo every step after debootstrap (delete the cache dir to redo that too)")
    for name, help_ in (("shell", "interactive shell on the board"), ("run", "run one command on the board")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--venv", choices=sorted(GUEST_VENVS), default="litert",
                       help="litert: ai-edge-litert (default); tflite: tflite-runtime 2.14 + numpy<2")
        if name == "run":
            p.add_argument("cmd", nargs=argparse.REMAINDER, help="the command (after --)")
    t = sub.add_parser("test", help="edge test subset on the board, both interpreters")
    t.add_argument("--venv", choices=sorted(GUEST_VENVS), action="append",
                   help="only this venv (repeatable; default both)")
    t.add_argument("pytest_args", nargs=argparse.REMAINDER, help="extra pytest arguments (after --)")
    e = sub.add_parser("e2e", help="coordinator + native devices + emulated devices through one round and canary")
    e.add_argument("--native", type=int, default=3, help="native simulated devices (default 3)")
    e.add_argument("--venv", choices=sorted(GUEST_VENVS), action="append",
                   help="one emulated device per venv (repeatable; default both)")
    e.add_argument("--no-board", action="store_true", help="native devices only (checks the scenario itself)")
    e.add_argument("--keep", action="store_true", help="keep the run's directory for inspection")
    k = sub.add_parser("bench", help="keystroke latency: emulated Cortex-A72 next to native")
    k.add_argument("--max-keystrokes", type=int, default=150, help="incremental keystrokes timed (default 150)")
    k.add_argument("--max-recompute", type=int, default=150,
                   help="recompute keystrokes timed, an even sample of the same keystrokes (default 150: all)")
    k.add_argument("--model",
                   help="version directory (default: the shipped models/v0 if there, else the tiny test version)")
    k.add_argument("--venv", choices=sorted(GUEST_VENVS), action="append", help="default both")
    sub.add_parser("ci", help="build (cached) + test + e2e, timing each step")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not args.command:
        ap.print_help()
        return 2
    for name in ("native", "max_keystrokes", "max_recompute"):   # before any work (it builds a model first)
        if getattr(args, name, 1) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    # SIGTERM (a CI timeout, `kill`) runs Ctrl-C's cleanup: e2e's coordinator child was left serving.
    raise_on_sigterm()
    board = Board(args.cache_dir) if args.cache_dir else Board()
    try:
        if args.command == "build":
            board.build(force=args.force)
            return 0
        if args.command == "shell":
            board.require_built()
            return board.run(["/bin/bash"], venv=args.venv, interactive=True).returncode
        if args.command == "run":
            cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            if not cmd:
                ap.error("run: give a command, e.g. run -- python -m edge_runtime --help")
            board.require_built()
            return board.run(cmd, venv=args.venv).returncode
        from tools.arm import tasks
        if args.command == "test":
            extra = args.pytest_args[1:] if args.pytest_args[:1] == ["--"] else args.pytest_args
            return tasks.test(board, args.venv or list(GUEST_VENVS), extra)
        if args.command == "e2e":
            return tasks.e2e(board, native=args.native, keep=args.keep,
                        venvs=[] if args.no_board else (args.venv or list(GUEST_VENVS)))
        if args.command == "bench":
            return tasks.bench(board, venvs=args.venv or list(GUEST_VENVS), model=args.model,
                               max_keystrokes=args.max_keystrokes, max_recompute=args.max_recompute)
        if args.command == "ci":
            return tasks.ci(board)
    except BoardError as e:
        print(f"[arm] error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt as e:
        say("terminated" if isinstance(e, Terminated) else "interrupted")
        return 143 if isinstance(e, Terminated) else 130
    return 2


if __name__ == "__main__":
    t0 = time.monotonic()
    rc = main()
    if len(sys.argv) > 1 and sys.argv[-1] not in ("-h", "--help"):
        say(f"exit {rc} after {fmt_s(time.monotonic() - t0)}")
    sys.exit(rc)
