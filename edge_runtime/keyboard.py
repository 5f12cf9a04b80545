"""The demo keyboard page: a loopback HTTP server for one static page and a small JSON API.

The page (``static/keyboard.html`` + ``.js`` + ``.css``, no CDN, no build step) asks for
suggestions on every keystroke and commits finished sentences into the device's text cache,
exactly as an on-device keyboard would. API (JSON in, JSON out; POSTs need
``Content-Type: application/json``)::

    GET  /api/status   -> {"model": {"version_id", "channel"}, "cache": {"sentences"}, "paused"}
                       (channel: "stable", "canary", or "unknown" before the device's first check-in)
    GET  /api/notices  -> {"version_id", "notices": [{"file", "text"}]}: the version's licence notices
    POST /api/suggest  {"client": id, "text": text before the cursor}
                       -> {"suggestions": [best, second, third], "version_id": ...}
                       (or {"suggestions": [], "superseded": true, ...}: a newer one from the same
                       client came in while this one waited for the model, which answers that one)
    POST /api/commit   {"text": ..., "field_kind": "message", "private": false, "client": id (optional),
                        "commit_id": id (optional: a commit sent again with the same id is not stored twice)}
                       -> {"cached": bool, "reason": ..., ...status}
    POST /api/pause    {"paused": bool} -> status
    POST /api/clear    {} -> status (all cached text wiped)
    POST /api/remove-word {"word": ...} -> {"removed": word, ...status}: never suggested again until
                       typed again (a long press on a suggestion)

Errors are ``{"error": code, "message": ...}`` with a 4xx/5xx status. Suggestions come
best-first; the page puts the best one in the middle of its strip.

Privacy: typed text lives only in request bodies and in the text cache (whose own rules
refuse sensitive or private fields and anything while learning is paused). The page never
sends its private field's text anywhere. Log lines carry method, route, status and timing
(answers at DEBUG: a line a keystroke is the typing's rhythm), never a body, query string or
unknown path. The server binds to loopback unless told
otherwise explicitly. On every bind it refuses requests whose Host is a name other than its
own (DNS rebinding), cross-origin POSTs, and POSTs without the page's key
(``X-Keyboard-Token``) that only the printed page URL carries (``#token=...``), so neither a
web page nor another local process can commit, wipe or unpause. The key is kept in the data
directory (``keyboard_token``, 0600) so that an open page survives a restart; deleting that
file gives the next start a new one (do so if the URL was seen by someone else).

`start_keyboard(...)` runs the server in a thread and returns a handle (`.url`, `.stop()`);
`serve_keyboard(...)` blocks until stopped.

The parts: `keyboard_http` (the handler and the server: routes, checks, JSON), `keyboard_app`
(`KeyboardApp`, what each call does, and the typing sessions), `user_words` (counting the user's
words), `model_slot` (the model version in use); this module builds them and starts the server.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime import channel as channels
from edge_runtime.cache import TextCache, open_cache
from edge_runtime.config import EdgeConfig
from edge_runtime.eligibility import ActivityClock
from edge_runtime.errors import EdgeError
from edge_runtime.keyboard_app import KeyboardApp
from edge_runtime.keyboard_http import KeyboardHTTPServer, is_loopback
from edge_runtime.model_slot import ModelSlot
from edge_runtime.paths import ACTIVITY_FILE, KEYBOARD_TOKEN_FILE
from protocol.artifact import atomic_write
from protocol.cli import url_host

log = logging.getLogger(__name__)


class KeyboardError(EdgeError, RuntimeError):
    """The keyboard server cannot start (bad bind address, no data directory)."""


def check_bind_host(host: str, *, allow_remote: bool = False) -> None:
    """Refuse a non-loopback bind address unless `allow_remote` (an explicit --keyboard-host)."""
    if not is_loopback(host) and not allow_remote:
        raise KeyboardError(f"refusing to serve the keyboard on non-loopback address {host!r}: "
                            "typed text would be reachable from the network (pass --keyboard-host explicitly)")


@dataclass
class KeyboardServer:
    """A running keyboard server (from `start_keyboard`)."""

    url: str          # the server's base URL (API calls: url + "api/...")
    host: str
    port: int
    app: KeyboardApp
    token: str        # the page's key state-changing calls send in X-Keyboard-Token (kept across restarts)
    page_url: str     # what a person opens: url + "#token=..." (the fragment never leaves the browser)
    _server: KeyboardHTTPServer
    _thread: threading.Thread
    _owned_cache: TextCache | None

    def stop(self) -> None:
        """Stop serving and release what `start_keyboard` opened. Safe to call twice."""
        self._server.stopping = True   # before the cache closes: see KeyboardHTTPServer.stopping
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=10)
        self._server.idle.stop()
        self._server.server_close()
        if self._owned_cache is not None:
            self._owned_cache.close()
            self._owned_cache = None

    def __enter__(self) -> KeyboardServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _build(data_dir: str | os.PathLike, *, model_dir: str | os.PathLike | None, host: str, port: int,
           config: EdgeConfig | None, cache: TextCache | None, channel: str | None,
           allow_remote: bool) -> tuple[KeyboardHTTPServer, TextCache | None]:
    check_bind_host(host, allow_remote=allow_remote)
    if channel is not None and channel not in channels.CHANNELS:
        raise KeyboardError(f"channel must be one of {list(channels.CHANNELS)}, got {channel!r}")
    if not data_dir:
        raise KeyboardError("the keyboard needs the device's data directory")
    data_dir = Path(data_dir)
    config = config or EdgeConfig(data_dir=str(data_dir))
    if config.data_dir != str(data_dir):
        config = config.with_overrides({"data_dir": str(data_dir)})
    owned = None
    if cache is None:
        cache = owned = open_cache(config, damaged_ok=True)
    try:
        slot = ModelSlot(data_dir=data_dir, model_dir=Path(model_dir) if model_dir else None, channel=channel,
                         public_key=config.public_key or None, block_offensive=config.block_offensive,
                         base_ngram=config.base_ngram, personalize=config.personalize)
        app = KeyboardApp(cache=cache, slot=slot, activity=ActivityClock(data_dir / ACTIVITY_FILE))
        try:   # bound before the model loads: a port in use is said at once, not after seconds of loading
            server = KeyboardHTTPServer((host, port), app, _page_token(data_dir))
        except OSError as e:   # one line, the user's choice to change (was "OSError: [Errno 98] ...", exit 1)
            if e.errno == errno.EADDRINUSE:
                raise KeyboardError(f"port {port} on {host} is in use by another program: choose another "
                                    "(--port for `keyboard`, --keyboard-port for `run`)") from None
            if isinstance(e, socket.gaierror) or e.errno == errno.EADDRNOTAVAIL:
                raise KeyboardError(f"cannot serve the keyboard on {host!r}: {e.strerror or e} (--keyboard-host "
                                    "must be an address or name of this machine, e.g. 127.0.0.1)") from None
            raise
        try:
            slot.refresh()   # load now: the first keystroke should not wait for it, and errors show at start
        except BaseException:
            server.idle.stop()
            server.server_close()
            raise
        server.idle.submit(None)   # builds the user's words now, before the first keystroke
        if slot.predictor is None:   # else every strip is empty with nothing saying why
            log.warning("keyboard: no model version in %s yet: the strip stays empty until the device loop "
                        "(`run`) installs one, or pass --model DIR; typed text is still cached", data_dir)
    except BaseException:
        if owned is not None:
            owned.close()
        raise
    return server, owned


def _page_token(data_dir: Path) -> str:
    """The page's key, kept in the data directory (0600) so that a page left open across a restart
    of the device process still reaches it: with a new key per process every call of that page
    would be refused, and the sentences it queued while the process was down dropped. The key
    still guards against other local processes and other sites; it holds no text."""
    path = data_dir / KEYBOARD_TOKEN_FILE
    try:
        kept = path.read_text(encoding="ascii").strip()
        if re.fullmatch(r"[A-Za-z0-9_-]{32}", kept):
            return kept
    except (OSError, UnicodeDecodeError):
        pass
    token = secrets.token_urlsafe(24)
    try:
        return _keep_token(path, token)
    except OSError as e:   # a read-only data directory: a key for this process only
        log.warning("keyboard: cannot keep the page's key in %s (%s): a page left open will need the new "
                    "link after a restart", data_dir, e.strerror or e)
    return token


def _keep_token(path: Path, token: str) -> str:
    """Keep `token` at `path` unless another process kept one there meanwhile (`keyboard` and `run
    --keyboard-port` started at once would each write its own, and one page's link would break at
    the next restart): the key kept. Written whole and linked into place, so a reader never sees half."""
    try:
        atomic_write(path, token.encode(), replace=False)   # only where there is none
        return token
    except FileExistsError:
        kept = path.read_text(encoding="ascii", errors="replace").strip()
        if re.fullmatch(r"[A-Za-z0-9_-]{32}", kept):
            return kept
    atomic_write(path, token.encode())   # a damaged key: replaced, as before
    return token


def _url(server: KeyboardHTTPServer, host: str) -> str:
    port = server.server_address[1]
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
    return f"http://{url_host(shown)}:{port}/"


def start_keyboard(data_dir: str | os.PathLike, *, model_dir: str | os.PathLike | None = None,
                   host: str = "127.0.0.1", port: int = 0, config: EdgeConfig | None = None,
                   cache: TextCache | None = None, channel: str | None = None,
                   allow_remote: bool = False) -> KeyboardServer:
    """Serve the keyboard page in a background thread; returns a handle with `.url`, `.stop()`.

    `model_dir`: a version directory to use; default the device's current version (followed
    as the device loop swaps it). `port=0` picks a free port. `cache`: share an open cache
    (the device loop's); otherwise one is opened from `data_dir` and closed by `stop()`.
    `channel`: "stable" or "canary" when the caller knows it; default what the device loop
    recorded. Non-loopback `host` raises KeyboardError unless `allow_remote`.
    """
    server, owned = _build(data_dir, model_dir=model_dir, host=host, port=port, config=config, cache=cache,
                           channel=channel, allow_remote=allow_remote)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name="keyboard-server", daemon=True)
    thread.start()
    url = _url(server, host)
    log.info("keyboard page at %s (open it with the token URL printed by the command)", url)
    return KeyboardServer(url=url, host=host, port=server.server_address[1], app=server.app, token=server.token,
                          page_url=f"{url}#token={server.token}", _server=server, _thread=thread,
                          _owned_cache=owned)


def serve_keyboard(data_dir: str | os.PathLike, *, model_dir: str | os.PathLike | None = None,
                   host: str = "127.0.0.1", port: int = 0, config: EdgeConfig | None = None,
                   cache: TextCache | None = None, channel: str | None = None, allow_remote: bool = False,
                   stop: threading.Event | None = None, on_ready: Callable[[str], Any] | None = None) -> None:
    """Serve the keyboard page until `stop` is set (or KeyboardInterrupt). Blocking.

    `on_ready(url)` is called once the socket is listening (e.g. to print the URL)."""
    handle = start_keyboard(data_dir, model_dir=model_dir, host=host, port=port, config=config, cache=cache,
                            channel=channel, allow_remote=allow_remote)
    try:
        if on_ready is not None:
            on_ready(handle.page_url)
        (stop or threading.Event()).wait()
    finally:
        handle.stop()
