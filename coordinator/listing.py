"""The list commands' tables for an operator's terminal (`versions`, `rounds`, `enrollment-keys`).

Their JSON carries everything (a version's pretraining curves, its privacy history), which is
what scripts want and what buries the answer on a terminal. On a terminal the commands print
these columns instead; piped, or with `--format json`, the JSON as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Column = tuple[str, Callable[[Mapping[str, Any]], Any]]

# The listings' page sizes, here rather than in `views` (SQLAlchemy): the command line's defaults
# need them before it knows whether the coordinator's extra is installed.
ROUNDS_SHOWN = 100   # the newest rounds a listing holds unless asked for more
ROUNDS_MOST = 1000   # at most this many a page (six queries a round): older ones by `before`
REJECTIONS_SHOWN = 1000   # the newest rejections a listing holds unless asked for more
REJECTIONS_MOST = 10_000   # at most this many a page: older ones by `before`


def _when(key: str) -> Callable[[Mapping[str, Any]], str]:
    """An ISO time to the minute (UTC): enough to tell rows apart at a glance."""
    return lambda row: (row.get(key) or "")[:16].replace("T", " ")


def _number(x: Any) -> str:
    """A finite number to two places; anything else as the JSON has it ("inf": a round without noise)."""
    return f"{x:.2f}" if isinstance(x, int | float) and math.isfinite(x) else str(x if x is not None else "")


def _last_decision(version: Mapping[str, Any]) -> str:
    decisions = version.get("decisions") or []
    if not decisions:
        return ""
    last = decisions[-1]
    return f"{last.get('action', '')}: {last.get('reason', '')}"


COLUMNS: dict[str, list[Column]] = {
    "versions": [
        ("version", lambda v: v["version_id"]),
        ("status", lambda v: v["status"]),
        ("parent", lambda v: v.get("parent_id") or ""),
        ("round", lambda v: v.get("round_id") or ""),
        ("epsilon", lambda v: _number(v.get("epsilon"))),
        ("canary reports", lambda v: v.get("canary_reports", 0)),
        ("created (UTC)", _when("created_at")),
        ("last decision", _last_decision),
    ],
    "rounds": [
        ("round", lambda r: r["round_id"]),
        ("status", lambda r: r["status"]),
        ("base", lambda r: r.get("base_version_id") or ""),
        ("accepted / goal (min)", lambda r: f"{r['accepted']} / {r['goal_count']} ({r['min_count']})"),
        ("rejected", lambda r: r.get("rejected", 0)),
        ("selected", lambda r: r.get("selected", 0)),
        ("created (UTC)", _when("created_at")),
        ("result", lambda r: r.get("result_version_id") or r.get("reason") or ""),
    ],
    "enrollment-keys": [
        ("id", lambda k: k["id"]),
        ("label", lambda k: k.get("label") or ""),
        ("uses left", lambda k: "unlimited" if k["uses_left"] is None else k["uses_left"]),
        ("revoked", lambda k: "yes" if k["revoked"] else ""),
        ("devices (revoked)", lambda k: f"{k['devices']} ({k['devices_revoked']})"),
        ("expires (UTC)", _when("expires_at")),
    ],
}

MAX_CELL = 60   # a long reason is cut: the JSON has it whole


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """Left-aligned columns under a header; "(none)" for no rows."""
    if not rows:
        return "(none)"
    cells = [[h for h, _ in columns]]
    for row in rows:
        cells.append([_cut(str(get(row))) for _, get in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"
