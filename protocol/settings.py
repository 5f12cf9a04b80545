"""Typed settings from strings: what the coordinator's and the device's config objects share.

Each deployable keeps its own config dataclass and error type; this is only the coercion of
file, environment and flag values to the field types of that dataclass, with unknown keys
refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any


def coerce_settings(config_cls: type, values: Mapping[str, Any], source: str,
                    error: type[Exception]) -> dict[str, Any]:
    """`values` converted to the types of `config_cls`'s field defaults; raises `error` naming
    `source` for an unknown key or a value that does not fit."""
    known = {f.name: f for f in fields(config_cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise error(f"{source}: unknown setting(s) {unknown}")
    return {name: _coerce(name, value, type(known[name].default), source, error) for name, value in values.items()}


def _coerce(name: str, value: Any, kind: type, source: str, error: type[Exception]) -> Any:
    try:
        if isinstance(value, str) and kind is not str:
            if kind is bool:
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes")
            return kind(value)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
            raise TypeError(kind.__name__)
        return value
    except (TypeError, ValueError) as e:
        raise error(f"{source}: {name}={value!r} is not a valid {kind.__name__}") from e
