"""What every FedKeys command line shares, deployables and tools alike: the version flag, a
help formatter that shows defaults (argparse's own prints "(default: None)" on every optional flag)
and the one line that names a file standing where a folder must be."""

from __future__ import annotations

import argparse
import copy
import os
import select
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from protocol import __version__

EXIT_USER_ERROR = 2      # bad input or setting: one line on stderr, as argparse does for bad flags


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout and appends "(default: X)" where a flag has a real default,
    also to a flag with no help text (argparse prints nothing at all for those) and never twice
    (a help text that names its default already keeps its own words)."""

    def add_argument(self, action: argparse.Action) -> None:
        if action.help is None and action.option_strings and _has_default(action):
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        super().add_argument(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or "(default" in text or not _has_default(action):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            text += " (default: %(default)s)"
        return text


# The console scripts pyproject.toml installs, by the command each runs (`python -m ...`).
CONSOLE_SCRIPTS = {"python -m coordinator": "fedkeys-coordinator", "python -m edge_runtime": "fedkeys-device",
                   "python -m tools.pretrain": "fedkeys-pretrain", "python -m tools.evaluate": "fedkeys-evaluate",
                   "python -m tools.simulate": "fedkeys-simulate", "python -m tools.prepare": "fedkeys-prepare"}


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose help shows defaults (`HelpFormatter`), its subcommands' too:
    `add_subparsers` makes each subcommand's parser of its parent's class, so none is missed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        if CONSOLE_SCRIPTS.get(kwargs.get("prog", "")) == Path(sys.argv[0]).name:
            kwargs["prog"] = Path(sys.argv[0]).name   # run as the installed script: usage and --version name it
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:
        """Arguments as argparse reads them, refused in one line (exit 2) when one holds bytes that
        are not UTF-8 (`$'v\\xff'`): Python keeps them as lone surrogates, which would reach a database
        query or a file write and end in a UnicodeEncodeError traceback. The line names
        the argument, never its value: it may be text the user typed (`edge_runtime type`)."""
        ns, rest = super().parse_known_args(args, namespace)
        for name, value in vars(ns).items():
            if any(isinstance(v, str) and not _utf8(v) for v in (value if isinstance(value, list) else [value])):
                self.exit(2, f"{self.prog}: error: {name.replace('_', '-')} holds bytes that are not UTF-8 text "
                             "(a terminal in another encoding?): ids, labels, paths and text here must be UTF-8\n")
        return ns, rest


@contextmanager
def interrupt_exits() -> Iterator[None]:
    """Ctrl-C while a command starts, before its own handler is in place (its imports take a few
    tenths of a second), ends it as Ctrl-C does later: "interrupted" on stderr and exit 130, not an
    import's traceback."""
    try:
        yield
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _has_default(action: argparse.Action) -> bool:
    """A real default: not None, a store_true's False, SUPPRESS or an empty list. By identity, since
    `0 in (False,)` is true in Python and a default of 0 is a real one."""
    d = action.default
    return not (d is None or d is False or d is argparse.SUPPRESS or (isinstance(d, list) and not d))


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")


def file_in_the_way(e: BaseException) -> str | None:
    """The file standing where a folder must be, named, when that is what `e` is about: mkdir's
    "File exists: 'a'" for `--out a/b` (with `a` a file) reads as if a file may not be overwritten.
    None for any other error. No tool raises these errors for an existing file it refuses to
    replace; each says so in its own words."""
    if isinstance(e, (FileExistsError, NotADirectoryError)) and e.filename:
        path = Path(os.fsdecode(e.filename))
        blocker = next((p for p in (*reversed(path.parents), path) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            return f"{blocker} is a file, not a folder" + (f" (needed for {path})" if blocker != path else "")
    return None


def exit_if_stdout_closed() -> None:
    """The reader of stdout went away (`| head`): stop quietly, exit 141, as Unix tools do. A broken
    pipe elsewhere (a socket, a child process) is a real error and is left to raise: it is the
    reader only when stdout's own descriptor reports the error (a pipe whose reading end is closed
    polls POLLERR). The interpreter's own flush at exit would raise again, so stdout points at
    /dev/null first (Python's `signal` docs)."""
    try:
        fd = sys.stdout.fileno()
        poll = select.poll()
        poll.register(fd, select.POLLOUT)
        broken = any(events & select.POLLERR for _, events in poll.poll(0))
    except (AttributeError, OSError, ValueError):     # no real stdout (captured, closed) or no poll()
        return
    if broken:
        os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
        sys.exit(141)


def bind_error(host: str, port: int) -> OSError | None:
    """What binding `host:port` would fail with now (None: free), with the servers' own reuse rule,
    so a port in TIME_WAIT is free: a command that serves checks its port before minutes of work
    or a second line of werkzeug's."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            return e
    return None


def url_host(host: str) -> str:
    """`host` as a URL writes it: an IPv6 address in brackets (http://[::1]:8799/)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
