"""The training plan: every field declared once, with its bounds.

The coordinator's config, `start-round` (CLI and admin API), the OpenAPI document, the wire
codec and the device all read `PLAN_FIELDS`, so a plan is judged by one rule everywhere: a
`clip_norm` of 0 is refused when an operator types it, not discovered when every selected
device's training fails. The device applies its own, stricter floor on top
(`edge_runtime.plan_guard`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from protocol.fields import MAX_INT, WireError, _int, _req


@dataclass(frozen=True)
class PlanField:
    """One plan setting: its type, closed upper bound and lower bound (open if `lo_open`).

    A field with a `default` may be absent from a message (it then takes the default) and is
    sent only when it differs, so a plain plan reads the same to a device that predates it.
    A `bool` field (a round mode) has no bounds.
    """

    name: str
    kind: type            # int, float or bool
    lo: float = 0.0
    hi: float = 0.0
    lo_open: bool = False
    help: str = ""
    default: Any = None   # None: required

    def describe(self) -> str:
        if self.kind is bool:
            return "{true, false}"
        return f"{'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}]"

    def check(self, value: Any) -> int | float | bool:
        """`value` as this field's type, or WireError naming the field and its range."""
        if self.kind is bool:
            if not isinstance(value, bool):
                raise WireError(f"{self.name!r} must be true or false")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise WireError(f"{self.name!r} must be {'an integer' if self.kind is int else 'a number'}")
        if self.kind is int and not (isinstance(value, int) or float(value).is_integer()):
            raise WireError(f"{self.name!r} must be an integer")
        v = self.kind(value)
        if not math.isfinite(v) or (v <= self.lo if self.lo_open else v < self.lo) or v > self.hi:
            raise WireError(f"{self.name!r} must be in {self.describe()}, got {value!r}")
        return v

    def json_schema(self) -> dict[str, Any]:
        """This field's OpenAPI / JSON Schema (3.0 style exclusiveMinimum)."""
        if self.kind is bool:
            return {"type": "boolean", "default": self.default, "description": self.help}
        d: dict[str, Any] = {"type": "integer" if self.kind is int else "number", "minimum": self.lo,
                             "maximum": self.hi, "description": self.help}
        if self.lo_open:
            d["exclusiveMinimum"] = True
        return d


PLAN_FIELDS: tuple[PlanField, ...] = (
    PlanField("epochs", int, 1, 100, help="local passes over the device's training text"),
    PlanField("batch_size", int, 1, 4096, help="examples per local step"),
    PlanField("learning_rate", float, 0.0, 100.0, lo_open=True, help="local SGD learning rate"),
    PlanField("clip_norm", float, 0.0, 1e6, lo_open=True, help="L2 bound C of one device's update"),
    PlanField("noise_multiplier", float, 0.0, 1e3,
              help="device-side Gaussian noise std as a multiple of clip_norm (0: no formal guarantee)"),
    PlanField("max_examples", int, 1, 10**9, help="training windows a device uses at most"),
    PlanField("secure_aggregation", bool, default=False,
              help="round mode: the coordinator sees only the sum (protocol.secagg_wire, docs/privacy.md); "
                   "noise_multiplier is then the central noise, added by devices as Skellam shares"),
    PlanField("discover_words", int, 0, 64, default=0,
              help="0: a training round; k >= 1: a word-discovery round (protocol.discovery): each device votes "
                   "for its k most typed word-list words that have no softmax row; needs secure_aggregation"),
)
PLAN_FIELD_BY_NAME: dict[str, PlanField] = {f.name: f for f in PLAN_FIELDS}
PLAN_FIELD_NAMES: tuple[str, ...] = tuple(PLAN_FIELD_BY_NAME)
REQUIRED_PLAN_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in PLAN_FIELDS if f.default is None)


# The stricter floor a device applies with default settings (`edge_runtime.config`, each device
# may set its own; `edge_runtime.plan_guard` refuses plans outside it). Declared here so the
# coordinator can tell an operator that such devices will refuse a round.
DEVICE_DEFAULT_FLOOR = {"min_noise_multiplier": 0.01, "max_clip_norm": 10.0, "max_epochs": 20, "max_examples": 5000}


def floor_breaches(plan: Mapping[str, Any], floor: Mapping[str, float]) -> list[tuple[str, float, str, float]]:
    """Where `plan` (its noise_multiplier, clip_norm, epochs, max_examples) leaves a device's
    `floor` (keyed as DEVICE_DEFAULT_FLOOR): (field, value, "below" or "above", limit), in this
    order. The device (plan_guard), the coordinator and the simulator each word it their way."""
    bounds = (("noise_multiplier", "below", "min_noise_multiplier"), ("clip_norm", "above", "max_clip_norm"),
              ("epochs", "above", "max_epochs"), ("max_examples", "above", "max_examples"))
    return [(name, plan[name], side, floor[limit]) for name, side, limit in bounds
            if (plan[name] < floor[limit] if side == "below" else plan[name] > floor[limit])]


def number(v: float) -> str:
    """A plan value as an operator typed it: 0.01, 10, 1000000 (`:g` would print 1e+06)."""
    return str(v) if isinstance(v, int) else f"{v:g}"


def beyond_default_devices(plan: Mapping[str, Any]) -> list[str]:
    """Why a device with default settings would refuse `plan` (empty: it would not)."""
    return [f"{name} {number(value)} is {side} the {number(limit)} a device accepts by default"
            for name, value, side, limit in floor_breaches(plan, DEVICE_DEFAULT_FLOOR)]


def check_plan_values(values: Mapping[str, Any]) -> dict[str, int | float | bool]:
    """The plan fields present in `values`, each checked against its declaration, and the one
    rule between fields: a discovery round is a secure round (a vote is never seen alone)."""
    out = {k: PLAN_FIELD_BY_NAME[k].check(v) for k, v in values.items() if k in PLAN_FIELD_BY_NAME}
    if out.get("discover_words", 0) and not out.get("secure_aggregation", False):
        raise WireError("'discover_words' needs 'secure_aggregation': the coordinator must see only the sum of votes")
    return out


@dataclass(frozen=True)
class TrainPlan:
    """How to train locally. The update must be clipped to `clip_norm` and noised with
    std `noise_multiplier * clip_norm` before upload. Constructing one checks every bound."""

    round_id: int
    epochs: int
    batch_size: int
    learning_rate: float
    clip_norm: float
    noise_multiplier: float
    max_examples: int
    secure_aggregation: bool = False      # protocol.secagg_wire; noise_multiplier is then central
    discover_words: int = 0               # > 0: vote for words instead of training (protocol.discovery)
    # Random, minted when the round opens (not an operator's setting): a coordinator restored from
    # a backup numbers its rounds again from the backup's, and a device that took part in the lost
    # round of the same id, from the same version, would refuse the new one as a second release of
    # its text, and hold its slot until the deadline. None: a round opened by a release before
    # 6 December 2026, which minted no key.
    round_key: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.round_id, bool) or not isinstance(self.round_id, int) or not 1 <= self.round_id <= MAX_INT:
            raise WireError(f"'round_id' must be an integer in [1, {MAX_INT}]")
        if self.round_key is not None and not (isinstance(self.round_key, str) and ROUND_KEY.fullmatch(self.round_key)):
            raise WireError("'round_key' must be 1 to 64 printable ASCII characters without spaces")
        for k, v in check_plan_values({f.name: getattr(self, f.name) for f in PLAN_FIELDS}).items():
            object.__setattr__(self, k, v)

    def to_dict(self) -> dict[str, Any]:
        return {"round_id": self.round_id, **({"round_key": self.round_key} if self.round_key is not None else {}),
                **{f.name: v for f in PLAN_FIELDS if (v := getattr(self, f.name)) != f.default or f.default is None}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainPlan:
        return cls(round_id=_int(d, "round_id", lo=1), round_key=d.get("round_key"),
                   **{f.name: _req(d, f.name) if f.default is None else d.get(f.name, f.default) for f in PLAN_FIELDS})


# Compared opaquely: a stricter rule here would have devices refuse every task (rollbacks too)
# of a later coordinator that mints keys another way.
ROUND_KEY = re.compile(r"[!-~]{1,64}")
