"""An flock on a lock file in the data directory, shared or exclusive, for what several processes
of one device (the loop, the keyboard, a command) do to the same files: opening the text cache
against its replacement by a wipe (`cache`), making a download's staging folder against another
start's sweep of them (`versions`).

These locks close races; they are not what makes the work safe. A lock that cannot be taken (the
lock file cannot be opened: a read-only data directory; no flock on this file system, NFS without
lockd) lets the work go on unlocked, as it did before the lock, and the caller is told so.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from edge_runtime.errors import EdgeError


class LockBusy(EdgeError, TimeoutError):
    """The lock was not free within the wait asked for."""


@contextlib.contextmanager
def file_lock(path: Path, *, exclusive: bool, wait: float | None = None) -> Iterator[bool]:
    """Hold an flock on `path` for the block; yields whether it is held. The file is made 0600 if
    missing and opened read-only, which flock needs no more than, so one another user made (a
    command run with sudo) still serves. With `wait`, LockBusy after that many seconds instead of
    waiting on (a holder stuck on a failing disk)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o600)
    except OSError:
        yield False
        return
    try:
        yield _flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH, wait)
    finally:
        os.close(fd)   # and with it the lock


def _flock(fd: int, how: int, wait: float | None) -> bool:
    deadline = None if wait is None else time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, how | (0 if deadline is None else fcntl.LOCK_NB))
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise LockBusy(f"lock held by another process for more than {wait:g} s") from None
            time.sleep(0.05)
        except OSError:   # ENOLCK, EINVAL: no flock here
            return False
