"""Request helpers shared by the blueprints: JSON bodies, device and admin authentication."""

from __future__ import annotations

import functools
import hmac
import ipaddress
import json
from collections.abc import Callable
from typing import Any

from flask import current_app, g, request

from coordinator.errors import ApiError, bad_request
from coordinator.service import Coordinator
from protocol import wire
from protocol.fields import text_fault


def coord() -> Coordinator:
    return current_app.extensions["fedkeys"]


def read_body(limit: int, what: str) -> bytes:
    """The request's body, at most `limit` bytes (413 above it, 400 if it ends before its
    Content-Length). A chunked body, with no Content-Length, is read up to the limit, never
    buffered whole; one that reaches the service's own cap (`max_body_bytes`, where the server's
    stream stops without a word) counts as over it: it was cut there, and the cut body would read as a
    malformed update (a 422 for a 70 MB upload)."""
    cap = request.max_content_length
    too_large = ApiError(413, wire.E_TOO_LARGE, f"{what} are limited to {min(limit, cap or limit)} bytes"
                         + (" (chunked: less than that)" if cap is not None and cap <= limit else ""))
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    body = request.stream.read(limit + 1)
    if len(body) > limit or (request.content_length is None and cap is not None and len(body) >= cap):
        raise too_large
    if request.content_length is not None and len(body) < request.content_length:
        raise ApiError(400, wire.E_BAD_REQUEST, "the body ended before its Content-Length (client hung up?)")
    return body


def json_body(*, optional: bool = False) -> dict[str, Any]:
    """The request's JSON object, or a 4xx saying what is wrong with it (`optional`: no body is {})."""
    raw = read_body(wire.MAX_JSON_BYTES, "JSON bodies")
    try:
        data = json.loads(raw or (b"{}" if optional else b"null"))
    except ValueError as e:   # UnicodeDecodeError, JSONDecodeError, an integer of over 4,300 digits
        raise bad_request(f"body is not valid JSON: {str(e)[:200]}") from e
    except RecursionError as e:
        raise bad_request("body is nested too deeply") from e
    if not isinstance(data, dict):
        raise bad_request("body must be a JSON object")
    _check_strings(data)
    return data


def _check_strings(obj: Any) -> None:
    """Refuse strings that cannot be stored as text (`protocol.fields.text_fault`), keys too."""
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
        elif isinstance(x, str) and (fault := text_fault(x)):
            raise bad_request(f"body holds a string that {fault}")


def bad_message(e: wire.WireError) -> ApiError:
    """The 400 for a message that does not parse: `protocol_version` (final for a device) when it
    is of another protocol version, `bad_request` otherwise."""
    code = wire.E_PROTOCOL_VERSION if isinstance(e, wire.ProtocolVersionError) else wire.E_BAD_REQUEST
    return ApiError(400, code, str(e))


def parse(cls: type, data: dict[str, Any]) -> Any:
    """wire.X.from_dict with WireError turned into a 400 (`bad_message`)."""
    try:
        return cls.from_dict(data)
    except wire.WireError as e:
        raise bad_message(e) from e


def rate_limit(key: str, limiter: str = "fedkeys_ratelimit") -> None:
    wait = current_app.extensions[limiter].check(key)
    if wait > 0:
        coord().metrics.rate_limited.inc()
        raise ApiError(429, wire.E_RATE_LIMITED, "too many requests", retry_after=round(wait, 2))


def client_address() -> str:
    """The client as the per-address limits count it: an IPv4 address, or an IPv6 address's /64
    (one subscriber's network: its 2^64 addresses are one client, not 2^64 fresh budgets)."""
    addr = request.remote_addr or "?"
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return addr
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _is_admin() -> bool:
    """Whether the request carries the admin token. A presented token first spends one of the
    client address's wrong-token budget (`admin_failures_*`), given back when it is the right one;
    an address that has spent it gets 429 before its token is compared, so guessing an operator's
    token runs at that pace and a hit is not told apart from a miss. No token spends nothing."""
    token = wire.bearer_token(request.headers.get(wire.AUTH_HEADER))
    if token is None:
        return False
    failures = current_app.extensions["fedkeys_admin_failures"]
    address = "ip:" + client_address()
    wait = failures.check(address)
    if wait > 0:
        coord().metrics.rate_limited.inc()
        raise ApiError(429, wire.E_RATE_LIMITED, "too many wrong admin tokens from this address",
                       retry_after=round(wait, 2))
    if hmac.compare_digest(token.encode(), coord().admin_token.encode()):
        failures.refund(address)
        return True
    return False


def device_auth(view: Callable) -> Callable:
    """Authenticate the device (token must belong to X-FedKeys-Device), then rate-limit it."""
    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        device_id = request.headers.get(wire.DEVICE_HEADER)
        g.device_id = coord().authenticate(device_id, wire.bearer_token(request.headers.get(wire.AUTH_HEADER)))
        rate_limit("device:" + g.device_id)
        return view(*args, **kwargs)
    return wrapper


def device_or_admin_auth(view: Callable) -> Callable:
    """A device (it names itself in X-FedKeys-Device) or the operator (no device header)."""
    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if request.headers.get(wire.DEVICE_HEADER) is None and _is_admin():
            return view(*args, **kwargs)
        return device_auth(view)(*args, **kwargs)
    return wrapper


def admin_auth(view: Callable) -> Callable:
    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not _is_admin():
            raise ApiError(401, wire.E_UNAUTHORIZED, "admin token required")
        return view(*args, **kwargs)
    return wrapper
