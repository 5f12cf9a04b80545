"""Settings loading that the coordinator's and the device's config objects share.

One rule for both deployables: defaults < config file < ``<PREFIX><KEY>`` environment variables
< flags (a flag given as None is "not given"), every layer coerced to the field types of the
deployable's config dataclass, unknown keys refused at every layer (a misspelt setting silently
ignored is a setting not set). The config file is named by ``--config`` or ``<PREFIX>CONFIG``.
Each deployable keeps its own dataclass, its own error type and its own validation (the
dataclass's ``__post_init__``, run once on the merged result).
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")   # the `log_level` either deployable accepts (any case)


def read_settings_file(path: str | os.PathLike, error: type[Exception], *, toml: bool = True) -> dict[str, Any]:
    """Parse a config file into a flat mapping: JSON when named ``*.json`` (or `toml` is False),
    else TOML; raises `error` saying what is wrong with it."""
    p = Path(path)
    as_json = not toml or p.suffix == ".json"
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise error(f"cannot read config file {p}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise error(f"{p}: not valid {'JSON' if as_json else 'TOML'} ({e})") from e
    try:
        data = json.loads(text) if as_json else tomllib.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{p}: not valid JSON ({e})") from e
    except tomllib.TOMLDecodeError as e:
        raise error(f"{p}: {e}") from e
    if not isinstance(data, dict):
        raise error(f"{p}: top level must be a {'JSON object' if as_json else 'table'}")
    return data


def env_settings(environ: Mapping[str, str], prefix: str) -> dict[str, str]:
    """``<prefix><KEY>`` variables as settings named ``key`` (``<prefix>CONFIG`` names the file)."""
    return {k[len(prefix):].lower(): v for k, v in environ.items() if k.startswith(prefix) and k != prefix + "CONFIG"}


def load_settings(config_cls: type, error: type[Exception], *, env_prefix: str, config_file: str | None = None,
                  environ: Mapping[str, str] | None = None, flags: Mapping[str, Any] | None = None,
                  toml: bool = True,
                  presets: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The merged, coerced settings for `config_cls` (not yet validated: pass them to it).

    `presets(merged)`, when given, returns settings (coerced, e.g. with `coerce_settings`) to
    put *under* the merged ones: the coordinator's named profiles.
    """
    environ = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    path = config_file or environ.get(env_prefix + "CONFIG")
    if path:
        merged |= coerce_settings(config_cls, read_settings_file(path, error, toml=toml), str(path), error)
    merged |= coerce_settings(config_cls, env_settings(environ, env_prefix), "environment", error)
    if flags:
        merged |= coerce_settings(config_cls, {k: v for k, v in flags.items() if v is not None}, "flags", error)
    if presets is not None:
        merged = dict(presets(merged)) | merged
    return merged


def coerce_settings(config_cls: type, values: Mapping[str, Any], source: str,
                    error: type[Exception]) -> dict[str, Any]:
    """`values` converted to the types of `config_cls`'s field defaults; raises `error` naming
    `source` for an unknown key or a value that does not fit."""
    known = {f.name: f for f in fields(config_cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        # A setting a release removed, left in an operator's environment file: said as such, not as
        # a typo (`REMOVED_SETTINGS` on the config class: name -> when and why).
        removed = getattr(config_cls, "REMOVED_SETTINGS", {})
        why = "; ".join(f"{n}: {removed[n]}, delete it" for n in unknown if n in removed)
        raise error(f"{source}: unknown setting(s) {unknown}" + (f" ({why})" if why else ""))
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
