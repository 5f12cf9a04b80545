"""Which rollout channel the version in use belongs to: "stable", "canary" or "unknown".

The coordinator's task says which version to use (`use_version_id`) but not whether it is the
stable version or a canary candidate; the task kind tells us when it can:

- evaluate: the device is asked to compare `candidate_version_id` with stable, so using the
  candidate means canary, anything else stable;
- train: the round trains on the stable version (`base_version_id`), so using another one
  means canary;
- come_back: nothing new; the last answer holds while the version in use is the same.

A coordinator that sends `use_channel` says it outright, on every task (the badge is right from
the first check-in); the rules above serve coordinators that do not.

The answer is kept in ``<data_dir>/model_channel.json`` (written atomically) so the keyboard
page, perhaps in another process, can show it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from edge_runtime.paths import CHANNEL_FILE
from protocol import wire
from protocol.artifact import atomic_write

STABLE, CANARY, UNKNOWN = "stable", "canary", "unknown"
CHANNELS = (STABLE, CANARY, UNKNOWN)


def channel_of(task: wire.Task) -> str | None:
    """What the task says about `task.use_version_id` (None: it says nothing)."""
    use = task.use_version_id
    if not use:
        return None
    if task.use_channel in CHANNELS:        # the coordinator says so (any task kind, the first check-in too)
        return task.use_channel
    if task.kind == wire.TASK_EVALUATE:
        return CANARY if use == task.candidate_version_id else STABLE
    if task.kind == wire.TASK_TRAIN:
        return STABLE if use == task.base_version_id else CANARY
    return None


def read_channel(data_dir: str | os.PathLike, version_id: str | None) -> str:
    """The recorded channel of `version_id`; "unknown" when nothing is recorded for it."""
    if not version_id:
        return UNKNOWN
    try:
        d = json.loads((Path(data_dir) / CHANNEL_FILE).read_text())
    except (OSError, ValueError):
        return UNKNOWN
    if not isinstance(d, dict) or d.get("version_id") != version_id or d.get("channel") not in CHANNELS:
        return UNKNOWN
    return str(d["channel"])


def record_channel(data_dir: str | os.PathLike, task: wire.Task, current_id: str | None) -> str:
    """Record the channel of the version in use after `task`; returns it.

    `current_id` is the version actually in use (a failed download keeps the old one, whose
    channel the task does not describe)."""
    known = read_channel(data_dir, current_id)
    if current_id is None:
        return UNKNOWN
    said = channel_of(task) if task.use_version_id == current_id else None
    if said is None or said == known:
        return known
    atomic_write(Path(data_dir) / CHANNEL_FILE, json.dumps({"version_id": current_id, "channel": said}).encode())
    return said
