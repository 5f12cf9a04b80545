"""The keyboard's HTTP side: the request handler and the threaded server for the page and its API.

Its own module because everything about the wire is here and nothing else is: the routes and
the static files, body limits and JSON parsing, the checks that keep other sites and other
local processes out (Host, Origin, the page's key), error answers, access lines that never
carry a body, and handing idle work to the server's `IdleWorker` once an answer is sent. What
each call does is `KeyboardApp`'s (`keyboard_app`); the API itself is described in
`edge_runtime.keyboard`, which starts the server.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import sys
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge_runtime.cache import CacheError
from edge_runtime.errors import failure, frames
from edge_runtime.idle_worker import IdleWorker
from edge_runtime.keyboard_app import ApiError, KeyboardApp

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
STATIC_FILES = {  # route -> (file, content type); nothing else is ever served from disk
    "/": ("keyboard.html", "text/html; charset=utf-8"),
    "/keyboard.html": ("keyboard.html", "text/html; charset=utf-8"),
    "/static/sentences.js": ("sentences.js", "text/javascript; charset=utf-8"),
    "/static/keyboard.js": ("keyboard.js", "text/javascript; charset=utf-8"),
    "/static/keyboard.css": ("keyboard.css", "text/css; charset=utf-8"),
}
API_GET = frozenset({"/api/status", "/api/notices"})
API_POST = frozenset({"/api/suggest", "/api/commit", "/api/pause", "/api/clear", "/api/remove-word"})
MAX_BODY = 64 * 1024          # bytes; a request body larger than this is refused (413)
TOKEN_HEADER = "X-Keyboard-Token"
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


class KeyboardHandler(BaseHTTPRequestHandler):
    server: KeyboardHTTPServer
    server_version = "FedKeysKeyboard/1"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle's algorithm on, the body of an answer to a
    # request that comes in while the last one's is unacknowledged waits for the page's delayed
    # ACK: about 40 ms on a keystroke (measured in Chromium: 47 ms against 5 ms round trips).
    disable_nagle_algorithm = True

    # The base class logs request lines (which may carry a query string) and error messages
    # (which may quote the request line): all of that is replaced by `_log_access`.
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002
        log.info("keyboard: malformed request refused")

    def _route(self) -> str:
        path = urlsplit(self.path).path
        known = path in STATIC_FILES or path in API_GET or path in API_POST
        return path if known else "<other>"

    def _log_access(self, status: int, t0: float) -> None:
        """One line a request, at DEBUG for an answer: at INFO the default log would hold a line
        a keystroke with its time, the typing's rhythm, 6.8 MB in 15 minutes."""
        log.log(logging.DEBUG if status < 400 else logging.INFO, "keyboard: %s %s %d %.1fms", self.command,
                self._route(), status, (time.monotonic() - t0) * 1e3)

    def _send(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy",
                         "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                         "connect-src 'self'; frame-ancestors 'none'; form-action 'none'; base-uri 'none'")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        if self.close_connection:   # say so: a client would otherwise send its next request into it
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _error(self, e: ApiError) -> None:
        self._json(e.status, {"error": e.code, "message": e.message})

    def _check_host(self) -> None:
        """On every bind: Host must be a loopback name, an IP address or the name bound to. A
        DNS-rebinding page reaches us under its own domain name, which none of these is."""
        host = self.headers.get("Host", "")
        try:
            name = (urlsplit("//" + host).hostname or "").lower()
        except ValueError:   # "[zz": not an address at all
            name = ""
        if not (is_loopback(name) or is_ip_literal(name) or name == self.server.bind_name):
            raise ApiError(421, "bad_host", "this server only answers requests for its own address")

    def _check_origin_and_token(self) -> None:
        """State-changing calls: same-origin only, and the page's key the page was opened with
        (printed with its URL), so neither another site nor another local process can commit,
        wipe or unpause."""
        origin = self.headers.get("Origin")
        try:
            elsewhere = bool(origin) and urlsplit(origin).netloc.lower() != self.headers.get("Host", "").lower()
        except ValueError:   # "http://[": no origin this server has
            elsewhere = True
        if elsewhere:
            raise ApiError(403, "forbidden_origin", "cross-site requests are refused")
        token = self.headers.get(TOKEN_HEADER, "")
        if not hmac.compare_digest(token.encode(), self.server.token.encode()):
            raise ApiError(403, "bad_token", f"missing or wrong {TOKEN_HEADER}: open the page from the URL "
                                             "the keyboard printed")

    def _handle(self, fn: Callable[[], None]) -> None:
        t0 = time.monotonic()
        status = 500
        self._after: Callable[[], None] | None = None   # idle work once the response is sent and logged
        self._body_read = False
        # A body this handler will not read (a GET's, a chunked one, or a request refused before
        # reading it: a wrong token, too large, a wrong route) must not be parsed as the next
        # request on this connection (the page's next keystroke would get "501 Unsupported
        # method ('{\"client\":...POST')"). Such a connection is closed after the answer.
        body = (self.headers.get("Content-Length", "0").strip() not in ("", "0")
                or "Transfer-Encoding" in self.headers)
        if body and (self.command != "POST" or "Transfer-Encoding" in self.headers):
            self.close_connection = True
        try:
            try:
                if self.server.stopping:
                    self.close_connection = True
                    raise ApiError(503, "stopping", "the keyboard is stopping")
                self._check_host()
                status = fn() or 200
            except ApiError as e:
                if body and not self._body_read:
                    self.close_connection = True
                status = e.status
                self._error(e)
            except (ConnectionResetError, BrokenPipeError):   # the page closed, or its request timed out
                status = 499                                   # (nginx's code): logged as such, not as an error
                self.close_connection = True
            except CacheError as e:   # the disk, a damaged file, the data directory gone: said, retried later
                status = 503
                self.close_connection = True
                if self.server.stopping:   # closed under this call by `stop`: nothing is wrong with it
                    self._error(ApiError(503, "stopping", "the keyboard is stopping"))
                else:
                    self.server.app.cache_unusable(e)
                    self._error(ApiError(503, "cache_unavailable", str(e)))
            except Exception as e:   # the type only: its message may quote the text of the request
                log.error("keyboard: internal error on %s %s: %s", self.command, self._route(), failure(e))
                log.debug("keyboard: internal error at\n%s", frames(e))
                status = 500
                self.close_connection = True
                self._error(ApiError(500, "internal", "internal error (see the device log)"))
        finally:
            self._log_access(status, t0)
        if self._after is not None:
            self._after()

    def do_GET(self) -> None:
        self._handle(self._get)

    def do_HEAD(self) -> None:
        self._handle(self._get)

    def do_POST(self) -> None:
        self._handle(self._post)

    def do_PUT(self) -> None:
        self._handle(self._not_allowed)

    do_DELETE = do_PATCH = do_OPTIONS = do_PUT

    def _not_allowed(self) -> int:
        raise ApiError(405, "method_not_allowed", f"{self.command} is not supported here")

    def _get(self) -> int:
        path = urlsplit(self.path).path
        if path in STATIC_FILES:
            name, ctype = STATIC_FILES[path]
            self._send(200, (STATIC_DIR / name).read_bytes(), ctype)
            return 200
        if path == "/api/status":
            self._json(200, self.server.app.status())
            idle = self.server.idle   # the page polls it: texts `type` stored are learned while nobody types
            self._after = lambda: idle.submit(None)
            return 200
        if path == "/api/notices":
            self._json(200, self.server.app.notices())
            return 200
        if path in API_POST:
            raise ApiError(405, "method_not_allowed", "use POST")
        raise ApiError(404, "not_found", "no such page")

    def _post(self) -> int:
        path = urlsplit(self.path).path
        if path not in API_POST:
            if path in API_GET or path in STATIC_FILES:
                raise ApiError(405, "method_not_allowed", "use GET")
            raise ApiError(404, "not_found", "no such endpoint")
        self._check_origin_and_token()
        if "Transfer-Encoding" in self.headers:
            raise ApiError(411, "length_required", "send the body with a Content-Length, not chunked")
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise ApiError(415, "unsupported_media_type", "send Content-Type: application/json")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise ApiError(411, "length_required", "a Content-Length header is required") from None
        if length < 0 or length > MAX_BODY:
            raise ApiError(413, "too_large", f"request body over {MAX_BODY} bytes")
        raw = self.rfile.read(length)
        self._body_read = True
        try:
            body = json.loads(raw.decode("utf-8")) if raw else {}
        except (ValueError, RecursionError):   # UnicodeDecodeError, JSONDecodeError, an int of 5,000 digits
            raise ApiError(400, "bad_json", "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "bad_json", "the request body must be a JSON object")
        try:  # JSON allows a lone surrogate ("\ud800"); SQLite and the tokenizer do not
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(400, "bad_json", "the request body holds text that is not valid Unicode") from None
        app = self.server.app
        handler = {"/api/suggest": app.suggest, "/api/commit": app.commit, "/api/pause": app.pause,
                   "/api/clear": app.clear, "/api/remove-word": app.remove_word}[path]
        result = handler(body)
        self._json(200, result)
        idle = self.server.idle   # the idle work runs on its own thread: this one reads the next request
        # once the strip is on the wire: use the time until the next keystroke
        if path == "/api/suggest" and not result.get("superseded"):
            self._after = lambda: idle.submit(body["client"])
        elif path == "/api/commit" and result["cached"]:   # the user's words changed: ready again
            self._after = lambda: idle.submit(body.get("client"))
        elif path == "/api/clear":   # the user's words are gone: build them again (empty) now
            self._after = lambda: idle.submit(None)
        return 200


class KeyboardHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], app: KeyboardApp, token: str) -> None:
        if ":" in addr[0]:
            import socket

            self.address_family = socket.AF_INET6
        super().__init__(addr, KeyboardHandler)
        self.app = app
        self.idle = IdleWorker(app.prefetch)   # its first work, the user's words, once the model is in (`keyboard`)
        self.bind_name = addr[0].strip("[]").lower()
        self.token = token   # shown only in the printed URL
        # Set by `KeyboardServer.stop` before it closes the cache: a page's keep-alive connection
        # outlives `shutdown`, and its next call found the cache closed, which the page and the
        # device log called damaged, with `wipe` as the cure.
        self.stopping = False

    def handle_error(self, request: object, client_address: object) -> None:
        """A browser gone mid-request (a tab closed, a reset keep-alive connection) is not an
        error; anything else is one line in the log, not the standard library's traceback on the
        user's terminal."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        log.error("keyboard request failed: %s", failure(exc))
        log.debug("keyboard request failed at\n%s", frames(exc))
