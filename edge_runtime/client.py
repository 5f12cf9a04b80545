"""HTTP client for the coordinator, built on protocol.wire (the one module that knows the protocol).

Errors: everything this client raises is a `ClientError`. Transport failures (DNS,
connection, timeout, an answer cut off, an answer that is not JSON at all: a captive portal's
page) are translated once, in `_request` and `_json`, into `TransientError`; HTTP error
answers become `TransientError` when retrying can help (429, 5xx, `rate_limited`,
`internal`; with the server's Retry-After) and `RejectedError` otherwise (stale, late,
duplicate, unauthorized ...). `retryable` on the exception tells the caller which is which.

Every request has a timeout (connect, read) and a deadline for its whole answer: a server that
sends a byte now and then never trips a read timeout. Redirects are not followed: a device talks
to its coordinator only. The `requests.Session` is injectable, so tests can mount a transport
adapter that answers in-process.

Privacy: the client only ever sends wire messages and update bytes; it has no way to send
cache text, and it does not log bodies.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import requests
import urllib3.response

from edge_runtime.errors import EdgeError
from protocol import wire
from protocol.artifact import GRAPH, MANIFEST, TOKENIZER, WEIGHTS, WEIGHTS_Q8

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = (5.0, 30.0)          # (connect, read) seconds for JSON calls
# A download's read timeout is per read, not the whole file (that is DOWNLOAD_DEADLINE_S): a link
# that stalls 30 s is dead. At 120 s a stop (SIGTERM) during a stalled download would take 93 s,
# past systemd's 90 s. An upload's answer comes after the coordinator checked it.
DOWNLOAD_TIMEOUT = (5.0, 30.0)
UPLOAD_TIMEOUT = (5.0, 120.0)
DOWNLOAD_DEADLINE_S = 1800.0           # a whole download (at most 64 MiB; 1.4 MB a version today)
# A download cut off asks for the rest of its file (HTTP Range, If-Range on the file's ETag) this many
# times: on a link that drops every few MB the 11 MB graph would otherwise start again from 0 each
# time, and a first install might never finish.
MAX_RESUMES = 20
_VERSION_PATHS = {
    MANIFEST: wire.PATH_VERSION_MANIFEST,
    WEIGHTS: wire.PATH_VERSION_WEIGHTS,
    WEIGHTS_Q8: wire.PATH_VERSION_WEIGHTS_Q8,
    GRAPH: wire.PATH_VERSION_GRAPH,
    TOKENIZER: wire.PATH_VERSION_TOKENIZER,
}


class ClientError(EdgeError):
    """Root of every error from talking to the coordinator."""

    retryable = False
    partial: bytes = b""        # what arrived of an answer's body before it was cut off
    etag: str | None = None     # that answer's ETag: a range asked for the rest must be of the same file
    range_start: int | None = None   # where that answer began in its file (a 206's Content-Range)

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after = retry_after


def tls_failure(e: BaseException, url: str) -> str:
    """What a failed TLS handshake says, in one line: an operator enrolling against a self-signed
    certificate would otherwise read only "cannot connect", even with debug logs. An unknown issuer
    (self-signed, a private authority) names the setting that trusts it; any other refusal (a
    certificate for another name, an expired one) or a failed handshake names the reason only."""
    text = str(e).replace("\\'", "'")
    verify = re.search(r"certificate verify failed: (.+?)(?: \(_ssl\.c:\d+\)|'\)|$)", text)
    if verify is None:
        ssl = re.search(r"\[SSL: \w+\] ([^(]+?)(?: \(_ssl\.c:\d+\)|$)", text)
        said = ssl.group(1).strip() if ssl else e.__class__.__name__
        plain = "; does it serve plain HTTP (an http:// address)?" if "wrong version number" in said else ""
        return f"the TLS handshake with {url} failed ({said}){plain}"
    reason = verify.group(1).strip()
    if "self-signed" in reason or "issuer" in reason:
        return (f"the TLS certificate of {url} is not trusted ({reason}); for a self-signed certificate or a "
                "private certificate authority, give its certificate: REQUESTS_CA_BUNDLE=/path/ca.pem")
    return f"the TLS certificate of {url} was refused ({reason})"


def _connection_failure(e: requests.ConnectionError, url: str) -> str:
    """What went wrong with the connection. A reply lost after the request arrived is not "cannot
    connect": told that, a user enrolls again and makes a second device."""
    reason = getattr(e.args[0], "reason", None) if e.args else None
    if isinstance(reason, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError)):
        return f"cannot connect to {url}"
    return f"the connection to {url} broke before its answer came (the request may have arrived)"


class TransientError(ClientError):
    """Trying again later may succeed (network down, timeout, rate limit, server error)."""

    retryable = True


class RejectedError(ClientError):
    """The coordinator refused the request; repeating it unchanged will fail again."""


class ProtocolError(ClientError):
    """The answer does not follow the wire protocol (wrong shape, version or content type)."""


def _retry_after(resp: requests.Response, body: wire.ErrorBody | None) -> float | None:
    if body is not None and body.retry_after is not None:
        return body.retry_after
    value = resp.headers.get(wire.RETRY_AFTER_HEADER)
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP-date; the caller's own backoff applies


def _arriving(resp: requests.Response) -> Iterator[bytes]:
    """The body's bytes as they arrive. `iter_content` waits for a whole chunk (urllib3's read of
    n bytes reads until it has them), so a deadline checked between its chunks waited for the
    trickle to fill one; `read1` returns what one read brings. urllib3's errors become requests'
    own, as `iter_content` makes them."""
    # urllib3.response.HTTPResponse is in 1.x and 2.x (BaseHTTPResponse only in 2.x); read1 from 2.2.
    read1 = getattr(resp.raw, "read1", None) if isinstance(resp.raw, urllib3.response.HTTPResponse) else None
    if read1 is None:   # an injected transport's file-like body, or a urllib3 before 2.2: small chunks
        yield from resp.iter_content(1024)
        return
    try:
        while chunk := read1(64 * 1024, decode_content=True):
            yield chunk
    except urllib3.exceptions.ProtocolError as e:
        raise requests.exceptions.ChunkedEncodingError(e) from e
    except urllib3.exceptions.DecodeError as e:
        raise requests.exceptions.ContentDecodingError(e) from e
    except urllib3.exceptions.ReadTimeoutError as e:
        raise requests.ReadTimeout(e) from e
    except urllib3.exceptions.SSLError as e:
        raise requests.exceptions.SSLError(e) from e


def _read_capped(resp: requests.Response, max_bytes: int, what: str, *, deadline: float = float("inf"),
                 stop: threading.Event | None = None) -> None:
    """Read the (streamed) body, refusing it past `max_bytes` (declared or actual, after
    decompression) so a hostile reply cannot exhaust the device's memory, past `deadline` (a
    `time.monotonic()` value) so one that trickles in cannot hold the device, and once `stop` is
    set (SIGTERM). The body is then set as the response's content, the way `requests` itself
    caches it after a read."""
    if isinstance(getattr(resp, "_content", False), bytes):  # an in-process transport gave the body whole
        if len(resp.content) > max_bytes:
            raise ProtocolError(f"{what}: answer larger than {max_bytes} bytes")
        return
    whole = _declared_length(resp)
    if whole is not None and whole > max_bytes:
        resp.close()
        raise ProtocolError(f"{what}: answer of {whole:,} bytes is larger than {max_bytes:,}")
    buf = bytearray()
    try:
        _read_into(resp, buf, max_bytes, what, whole, deadline, stop)
    except BaseException as e:
        e.partial = bytes(buf)   # type: ignore[attr-defined]   (a download asks for the rest)
        raise
    resp._content = bytes(buf)
    resp._content_consumed = True
    resp.close()


def _read_into(resp: requests.Response, buf: bytearray, max_bytes: int, what: str, whole: int | None,
               deadline: float, stop: threading.Event | None) -> None:
    for chunk in _arriving(resp):
        buf += chunk
        if len(buf) > max_bytes:
            resp.close()
            raise ProtocolError(f"{what}: answer larger than {max_bytes} bytes")
        if whole is not None and len(buf) >= whole:   # all of it is here: a receipt is not thrown away
            continue
        if stop is not None and stop.is_set():
            resp.close()
            raise TransientError(f"{what}: stopped while the answer came in")
        if time.monotonic() > deadline:
            resp.close()
            raise TransientError(f"{what}: the answer is too slow (it did not end within its deadline)")


def _declared_length(resp: requests.Response) -> int | None:
    """The reply's Content-Length, or None when it gives none that reads as a number. A hostile
    one of 5,000 digits made int() raise ValueError (Python's int_max_str_digits), and one of
    Latin-1 digits such as "²" passed isdigit() and failed int(): a crash, not a refusal. Past 18
    digits it is larger than any body the device takes."""
    text = resp.headers.get("Content-Length", "").strip()
    if not (text.isascii() and text.isdigit()):
        return None
    return int(text) if len(text) <= 18 else 10 ** 18


def _range_start(content_range: str | None) -> int | None:
    """The first byte of `bytes START-END/TOTAL`, or None."""
    m = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (content_range or "").strip())
    return int(m.group(1)) if m else None


class CoordinatorClient:
    """One device's connection to the coordinator."""

    def __init__(self, base_url: str, *, device_id: str | None = None, token: str | None = None,
                 session: requests.Session | None = None,
                 timeout: tuple[float, float] = DEFAULT_TIMEOUT) -> None:
        self.base_url = base_url.rstrip("/")
        self.stopping: threading.Event | None = None   # set by the device loop: a read in progress ends
        self.device_id = device_id
        self.token = token
        self.session = session or requests.Session()
        self.timeout = timeout

    # -- transport -------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        if self.device_id and self.token:
            return wire.device_headers(self.device_id, self.token)
        return {}

    def _request(self, method: str, path: str, *, json_body: Mapping[str, Any] | None = None,
                 data: bytes | None = None, headers: Mapping[str, str] | None = None,
                 timeout: tuple[float, float] | None = None, deadline_s: float | None = None,
                 max_bytes: int = wire.MAX_REPLY_JSON_BYTES) -> requests.Response:
        """The one place transport errors and HTTP error answers become ClientErrors. The answer's
        body must be in within `deadline_s` of its headers (default: twice the read timeout),
        however long the request's own body took to send."""
        h = self._headers()
        h.update(headers or {})
        body = data
        if json_body is not None:
            body = json.dumps(dict(json_body), separators=(",", ":")).encode()
            if len(body) > wire.MAX_JSON_BYTES:
                raise ClientError(f"request body {len(body)} bytes exceeds the protocol limit")
            h["Content-Type"] = "application/json"
        timeout = timeout or self.timeout
        resp = None
        try:
            resp = self.session.request(method, self.base_url + path, data=body, headers=h,
                                        timeout=timeout, stream=True, allow_redirects=False)
            deadline = time.monotonic() + (deadline_s if deadline_s is not None else 2 * timeout[1])
            _read_capped(resp, max_bytes, f"{method} {path}", deadline=deadline, stop=self.stopping)
        except requests.RequestException as e:
            err = self._transport_error(f"{method} {path}", e)
            if resp is not None and resp.status_code in (200, 206):   # what came of a good answer, and whose
                err.partial, err.status, err.etag = getattr(e, "partial", b""), resp.status_code, resp.headers.get(
                    "ETag")
                err.range_start = _range_start(resp.headers.get("Content-Range")) if resp.status_code == 206 else 0
            raise err from e
        if resp.status_code >= 400:
            raise self._error(method, path, resp)
        if resp.status_code >= 300:   # a device's token, id and updates go to its coordinator only
            raise ProtocolError(f"{method} {path}: HTTP {resp.status_code}, a redirect "
                                f"(to {resp.headers.get('Location', '?')[:100]}), which a device does not follow")
        return resp

    def _transport_error(self, what: str, e: requests.RequestException) -> ClientError:
        """The one translation of transport failures (the module's docstring)."""
        if isinstance(e, requests.Timeout):
            return TransientError(f"{what}: timed out")
        if isinstance(e, requests.exceptions.SSLError):   # a ConnectionError too, not "cannot connect"
            return TransientError(f"{what}: {tls_failure(e, self.base_url)}")
        if isinstance(e, requests.ConnectionError):
            return TransientError(f"{what}: {_connection_failure(e, self.base_url)}")
        if isinstance(e, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)):
            # a reply cut mid-body is retried: as a permanent error, a secure round would lose the device
            return TransientError(f"{what}: the answer from {self.base_url} was cut off")
        return ClientError(f"{what}: {e.__class__.__name__}")

    @staticmethod
    def _error(method: str, path: str, resp: requests.Response) -> ClientError:
        body: wire.ErrorBody | None = None
        try:
            body = wire.ErrorBody.from_dict(resp.json())
        except (ValueError, RecursionError, TypeError, AttributeError, wire.WireError):
            pass
        code = body.error if body else None
        msg = f"{method} {path}: HTTP {resp.status_code}" + (f" {code}: {body.message}" if body else "")
        retry_after = _retry_after(resp, body)
        transient = (body is not None and body.retryable) or resp.status_code == 429 or resp.status_code >= 500
        cls = TransientError if transient else RejectedError
        return cls(msg, status=resp.status_code, code=code, retry_after=retry_after)

    @staticmethod
    def _json(resp: requests.Response) -> Mapping[str, Any]:
        try:
            d = resp.json()
        except RecursionError as e:  # hostile nesting depth
            raise ProtocolError(f"{resp.request.method} {resp.request.path_url}: answer is not usable JSON") from e
        except ValueError as e:   # cut in its headers, or not the coordinator's: worth another try later
            raise TransientError(f"{resp.request.method} {resp.request.path_url}: the answer is not JSON (cut off, "
                                 "or from something between the device and its coordinator: a captive portal, a "
                                 "proxy's error page)") from e
        if not isinstance(d, dict):
            raise ProtocolError("answer is not a JSON object")
        return d

    def _message(self, cls: Any, resp: requests.Response) -> Any:
        try:
            return cls.from_dict(self._json(resp))
        except (ValueError, TypeError, AttributeError, RecursionError) as e:  # WireError is a ValueError
            raise ProtocolError(f"malformed {cls.__name__}: {e}"[:300]) from e

    # -- protocol calls ----------------------------------------------------------------------

    def enroll(self, enrollment_key: str, platform: str = "", request_id: str = "") -> wire.EnrollResponse:
        """Trade the enrollment key for an identity; the client then uses it. The same `request_id`
        on a retry gets the same device (`wire.EnrollRequest`)."""
        resp = self._request("POST", wire.PATH_ENROLL,
                             json_body=wire.EnrollRequest(enrollment_key, platform, request_id).to_dict())
        out = self._message(wire.EnrollResponse, resp)
        self.device_id, self.token = out.device_id, out.token
        return out

    def checkin(self, request: wire.CheckinRequest) -> wire.Task:
        return self._message(wire.Task, self._request("POST", wire.PATH_CHECKIN, json_body=request.to_dict()))

    def upload_update(self, delta: bytes, meta: wire.UpdateMeta) -> wire.UpdateReceipt:
        """Send an update; safe to repeat with the same meta (idempotency key) after a lost answer."""
        if len(delta) > wire.MAX_UPDATE_BYTES:
            raise ClientError(f"update of {len(delta)} bytes exceeds the protocol limit")
        resp = self._request("POST", wire.PATH_UPDATES, data=delta, timeout=UPLOAD_TIMEOUT,
                             deadline_s=DOWNLOAD_DEADLINE_S,
                             headers={"Content-Type": wire.SAFETENSORS_MEDIA_TYPE,
                                      wire.UPDATE_META_HEADER: meta.to_header()})
        return self._message(wire.UpdateReceipt, resp)

    def report_evaluation(self, report: wire.EvaluationReport) -> wire.EvaluationReceipt:
        return self._message(wire.EvaluationReceipt,
                             self._request("POST", wire.PATH_EVALUATIONS, json_body=report.to_dict()))

    def signing_key(self) -> wire.SigningKey:
        return self._message(wire.SigningKey, self._request("GET", wire.PATH_SIGNING_KEY))

    def fetch(self, version_id: str, filename: str) -> bytes:
        """One file of a model version (the `Fetch` of edge_runtime.versions)."""
        try:
            template = _VERSION_PATHS[filename]
            path = wire.version_path(template, version_id)
        except KeyError as e:
            raise ClientError(f"no such version file {filename!r}") from e
        except wire.WireError as e:
            raise ClientError(str(e)) from e
        have, etag = b"", None
        for _ in range(MAX_RESUMES + 1):
            ask = {"Range": f"bytes={len(have)}-", "If-Range": etag} if have and etag else None
            try:
                resp = self._request("GET", path, headers=ask, timeout=DOWNLOAD_TIMEOUT,
                                     deadline_s=DOWNLOAD_DEADLINE_S, max_bytes=wire.MAX_VERSION_FILE_BYTES)
            except TransientError as e:   # cut off: ask for the rest of the same file, from where it stopped
                if not (e.partial and e.etag) or (e.status == 206 and (e.etag != etag or e.range_start != len(have))):
                    raise
                have, etag = (have if e.status == 206 else b"") + e.partial, e.etag
                log.info("%s: cut off after %d bytes; asking for the rest", path, len(have))
                continue
            if ask is None or resp.status_code == 200:   # the whole file (the file changed, or no ranges)
                return resp.content
            if resp.headers.get("ETag") == etag and _range_start(resp.headers.get("Content-Range")) == len(have):
                return have + resp.content
            have, etag = b"", None   # a range this download did not ask for: start again
        raise TransientError(f"GET {path}: cut off {MAX_RESUMES + 1} times; the next check-in tries again")
