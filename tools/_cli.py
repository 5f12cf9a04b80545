"""What every FedKeys command shares: logging set-up and one-line errors instead of tracebacks."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from model.corpus import CorpusError
from protocol.artifact import ArtifactError
from protocol.cli import exit_if_stdout_closed, file_in_the_way, interrupt_exits

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPORA = os.path.join(REPO, "corpora")          # vendored with their licences (corpora/README.md)
DEFAULT_CORPUS = os.path.join(CORPORA, "shakespeare.jsonl")
# Proxy text: public, never device text. Novels and plays (dialogue), formal addresses, and
# present-day chat between crowd workers (the genre people type).
DEFAULT_PROXY = tuple(os.path.join(CORPORA, f) for f in ("gutenberg_mix.jsonl", "sotu.jsonl", "topical_chat.jsonl"))
# Held-out words every quality tool scores per model (tools.wordeval.scored_words): every word of
# the held-out users' scored halves up to this many, past it an even share per user. It holds all
# of Shakespeare's (4,855) and the chat-room corpus's; of the e-mail corpus's 30,257, most of its 70
# senders get 89 or 90 each, the lightest all of theirs.
DEFAULT_EVAL_WORDS = 5000
# `--split` of the tools that score users (tools.simulate, tools.ablation): users no model trained on
SCORED_SPLITS = ("test", "validation")


def scored_name(split: str) -> str:
    """How the tools name the users of part `split` they score: the test users are the held-out ones."""
    return "held-out" if split == "test" else split


# `--base-ngram`: the device setting of that name (`EdgeConfig.base_ngram`, `edge_runtime.base_ngram`)
BASE_NGRAM_HELP = "the keyboard's base n-gram file (default: the shipped one); off: none"


def count(n: int, word: str) -> str:
    """"1 device", "32 devices": reports read as sentences."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def base_ngram_arg(value: str) -> str:
    """`--base-ngram`'s type: a file the user names must be an n-gram. The device only warns (it
    keeps typing without one), but a tool that scored without it printed figures 1.3 points of
    top-3 low for a mistyped path, with a warning scrolled away."""
    from edge_runtime.base_ngram import load_base_ngram, refuse_old_variable, resolve  # loaded once per process

    try:
        refuse_old_variable()   # before the default "": scored with another n-gram than it names, silently
        if value in ("", "off"):
            return value
        path = resolve(value)   # ~ expanded, as the device reads the setting; the old variable refused
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if path is not None and path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a folder: name the n-gram file in it "
                                         "(`tools.proxy_ngram` writes one file)")
    if path is None or not path.is_file():
        raise argparse.ArgumentTypeError(f"{value} not found (a file `tools.proxy_ngram` wrote; off: none)")
    if load_base_ngram(value) is None:
        raise argparse.ArgumentTypeError(f"{value} is not a base n-gram file (missing, or not one "
                                         "`tools.proxy_ngram` wrote); off: none")
    return value

# A path the user gave that cannot be read or written (unreadable, read-only, a file where a
# directory goes or the other way round) is their error too: the message names the path.
USER_ERRORS: tuple[type[BaseException], ...] = (CorpusError, ArtifactError, FileNotFoundError, ValueError,
                                                PermissionError, FileExistsError, NotADirectoryError,
                                                IsADirectoryError)


def quiet_tensorflow() -> None:
    """TensorFlow's start-up chatter hides the progress bar and the results."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill PID`, a service manager's stop), raised where the tool is, like Ctrl-C: the
    same cleanup runs (the coordinator child stopped, worker processes ended)."""


def _terminate(_signum: int, _frame: object) -> None:
    raise Terminated()


def raise_on_sigterm() -> None:
    """From now on SIGTERM raises `Terminated` where the tool is, as Ctrl-C raises KeyboardInterrupt."""
    signal.signal(signal.SIGTERM, _terminate)


def run(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a command's main; a user error prints one line and exits 2, Ctrl-C exits 130, SIGTERM 143."""
    logging.basicConfig(level=os.environ.get("FEDKEYS_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    raise_on_sigterm()
    try:
        from edge_runtime.base_ngram import refuse_old_variable

        refuse_old_variable()   # every tool that scores reads the base n-gram: the old variable is refused
        code = main(argv)
    except USER_ERRORS as e:
        print(f"error: {file_in_the_way(e) or e}", file=sys.stderr)
        sys.exit(2)
    except ModuleNotFoundError as e:
        _missing(e)
    except KeyboardInterrupt as e:
        print("terminated" if isinstance(e, Terminated) else "interrupted", file=sys.stderr)
        sys.exit(143 if isinstance(e, Terminated) else 130)
    except BrokenPipeError:
        exit_if_stdout_closed()
        raise
    sys.exit(code or 0)


@contextmanager
def worker_pool(workers: int, **kw: Any) -> Iterator[ProcessPoolExecutor]:
    """A spawn-context process pool whose workers end with the tool: on an error, Ctrl-C or SIGTERM
    the work queued is cancelled and the running workers are terminated, not waited for (a
    scoring job runs for minutes, and a plain `kill` of the tool reaches only the tool)."""
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), **kw)
    try:
        yield pool
    except BaseException:
        # Python 3.14 has pool.terminate_workers(); before it, the workers are in _processes.
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def check_out_file(out: str | os.PathLike, inputs: Sequence[str | os.PathLike] = (), *, what: str = "--out") -> Path:
    """Refuse, before any work, an output file that would destroy something: a folder, one of the
    inputs (read and then replaced by its own output), or anything but a regular file (`/dev/null`,
    a pipe: the write goes to a temporary file renamed over it, which would replace the node)."""
    path = Path(out)
    if path.is_dir():
        raise IsADirectoryError(f"{what} {out} is a folder: give the name of the file to write")
    if path.exists() and not path.is_file():
        raise FileExistsError(f"{what} {out} is not a regular file (a device or a pipe): write to a file")
    if any(Path(f).resolve() == path.resolve() for f in inputs):
        raise FileExistsError(f"{what} {out} is also an input: write somewhere else")
    return path


def _missing(e: ModuleNotFoundError) -> None:
    """A tool run from the slim device install (`pip install fedkeys`): say which install it needs."""
    print(f"error: this command needs {e.name}, which the slim install leaves out: "
          "pip install 'fedkeys[full]' (in a checkout: make setup)", file=sys.stderr)
    sys.exit(2)


def _console(module: str) -> Callable[[], None]:
    """A console script that imports its tool only when run, so a missing extra is one line, exit 2."""
    def cli() -> None:
        try:
            with interrupt_exits():
                tool = importlib.import_module(module)
        except ModuleNotFoundError as e:
            _missing(e)
        tool.cli()
    cli.__doc__ = f"The console script for `python -m {module}`."
    return cli


pretrain, evaluate, simulate, prepare = (_console(m) for m in ("tools.pretrain", "tools.evaluate", "tools.simulate",
                                                              "tools.prepare"))
