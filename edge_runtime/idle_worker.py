"""The keyboard server's idle work, on one thread of its own.

Why: after sending a strip the server readies the session for the next keystroke
(`KeyboardApp.prefetch`). Run on the connection's own handler thread, that work kept the page's
next request unread: the browser reuses one keep-alive connection, so a keystroke typed meanwhile
waited for all of it, and the prefetch never saw that the user had moved on. Here a handler only
hands the client's id over and goes back to reading its connection; a keystroke then takes the
keyboard's lock between two prefetch calls and the prefetch stops, its session having moved on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class IdleWorker:
    """Runs `work(client)` for each submitted client, one at a time, in submission order; a client
    already waiting is not queued twice (its work readies whatever the session is by then)."""

    def __init__(self, work: Callable[[str | None], None], name: str = "keyboard-idle") -> None:
        self._work = work
        self._pending: dict[str | None, None] = {}   # an ordered set of clients
        self._busy = False
        self._stopped = False
        self.done = 0   # works finished (or failed) so far: a request submits after its response is sent
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, client: str | None) -> None:
        with self._cv:
            if not self._stopped:
                self._pending[client] = None
                self._cv.notify_all()

    def wait(self, timeout: float = 10.0, *, after: int | None = None) -> bool:
        """Block until nothing is pending or running (tests; shutdown); False on timeout. With
        `after`, first until more than that many works are done: a request's handler submits its
        work only once the response is on the wire, so its client can get here before it does."""
        with self._cv:
            return self._cv.wait_for(lambda: (after is None or self.done > after)
                                     and not self._pending and not self._busy, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Drop what is pending, let the running work finish, and end the thread. Safe to call twice."""
        with self._cv:
            self._stopped = True
            self._pending.clear()
            self._cv.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._pending or self._stopped)
                if self._stopped:
                    return
                client = next(iter(self._pending))
                del self._pending[client]
                self._busy = True
            try:
                self._work(client)
            except Exception as e:   # idle work: a failure costs the next keystroke its head start, nothing more
                log.warning("keyboard: prefetch failed (%s)", type(e).__name__)   # its message may quote the text
            finally:
                with self._cv:
                    self._busy = False
                    self.done += 1
                    self._cv.notify_all()
