"""The device's one root error: every exception the runtime raises on purpose derives from it.

Each area keeps its own class (`ClientError` for the coordinator's answers, `CacheError`,
`VersionError`, `ConfigError`, ...) and, where callers catch a builtin, that builtin as a second
base; `except EdgeError` is the boundary that catches them all.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import traceback


class EdgeError(Exception):
    """Root of the device runtime's errors."""

    #: Whether messages of this class are written never to quote the user's text (a log may say them).
    says_no_text = False


def failure(e: BaseException) -> str:
    """One line about an unexpected error for a log, without its message: the message of any other
    exception may quote typed text (a KeyError on a word, a ValueError on a sentence)."""
    if isinstance(e, EdgeError) and e.says_no_text:
        return f"{e.__class__.__name__}: {e}"
    if isinstance(e, OSError) and e.strerror:
        return f"{e.__class__.__name__} ({e.strerror})"
    return e.__class__.__name__


def frames(e: BaseException) -> str:
    """Where `e` was raised: the stack's file, line and code, never the exception's message or
    any value (for a debug log, in place of `log.exception`)."""
    return "".join(traceback.format_tb(e.__traceback__)).rstrip()


def no_core_dumps() -> None:
    """This process, if it crashes, writes no core file: its memory holds the text cache's pages,
    the user's words and the text being typed, and a core dump puts them outside the data
    directory (a `core` in the working directory, systemd-coredump's or apport's store). The core
    size limit the kernel and systemd-coredump read (the soft one) goes to 0, and on Linux the
    process is made non-dumpable, which the kernel honours whatever the limit or the core pattern
    (and which also keeps other processes of the same user from reading its memory)."""
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)   # PR_SET_DUMPABLE, 0


class Stopping(EdgeError):
    """The device is shutting down while a task waits (its `sleep` returned true: the agent's stop
    event was set): the task ends without its last step, as a stop, not as a failure."""
