"""Field validators shared by every wire message: one rule per JSON type, one error type.

Split from `protocol.wire` so the training plan (`protocol.plan`) and the signed rollout state
can use the same validators without importing the whole message catalogue. Standard library
only (installed on devices).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

MAX_ID_LEN = 128                      # device ids, version ids, idempotency keys
MAX_INT = 2**31 - 1                   # ids and counts fit a 32-bit signed database column


class WireError(ValueError):
    """A message does not have the shape this protocol version defines."""


class ProtocolVersionError(WireError):
    """A message of another protocol version, or of none: the sender must be updated, not retry
    (the answer's code is `protocol_version`, which a device takes as final)."""


# --- Small validators (shared by every from_dict) ---------------------------------------------

def _req(d: Mapping[str, Any], key: str) -> Any:
    if not isinstance(d, Mapping):
        raise WireError("message must be a JSON object")
    if key not in d:
        raise WireError(f"missing field {key!r}")
    return d[key]


def _str(d: Mapping[str, Any], key: str, *, optional: bool = False, max_len: int = MAX_ID_LEN) -> str | None:
    if optional and d.get(key) is None:
        return None
    v = _req(d, key)
    if not isinstance(v, str) or not v:
        raise WireError(f"{key!r} must be a non-empty string")
    if len(v) > max_len:
        raise WireError(f"{key!r} longer than {max_len} characters")
    fault = text_fault(v)
    if fault:
        raise WireError(f"{key!r} {fault}")
    return v


def text_fault(v: str) -> str | None:
    """Why `v` cannot be stored as text, or None: JSON allows a lone surrogate ("\\ud800") and a
    NUL ("\\u0000"), which fail when hashed or stored (PostgreSQL's text refuses NUL) as a 500."""
    if "\x00" in v:
        return "contains a NUL character"
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode text (a lone surrogate)"
    return None


def _in_range(key: str, v: Any, lo: Any, hi: Any) -> Any:
    if lo is not None and v < lo:
        raise WireError(f"{key!r} must be >= {lo}")
    if hi is not None and v > hi:
        raise WireError(f"{key!r} must be <= {hi}")
    return v


def _int(d: Mapping[str, Any], key: str, *, lo: int | None = None, hi: int | None = MAX_INT,
         default: Any = ...) -> int:
    if default is not ... and key not in d:
        return default
    v = _req(d, key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise WireError(f"{key!r} must be an integer")
    return _in_range(key, v, lo, hi)


def _float(d: Mapping[str, Any], key: str, *, lo: float | None = None, hi: float | None = None,
           finite: bool = True, default: Any = ...) -> float:
    if default is not ... and key not in d:
        return default
    v = _req(d, key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise WireError(f"{key!r} must be a number")
    v = float(v)
    if finite and not math.isfinite(v):
        raise WireError(f"{key!r} must be finite")
    return _in_range(key, v, lo, hi)


def _bool(d: Mapping[str, Any], key: str, *, default: Any = ...) -> bool:
    if default is not ... and key not in d:
        return default
    v = _req(d, key)
    if not isinstance(v, bool):
        raise WireError(f"{key!r} must be true or false")
    return v
