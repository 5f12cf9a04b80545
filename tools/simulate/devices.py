"""The simulated devices, run in worker processes: enrollment, typing, one check-in.

Every function here runs in a `spawn`ed pool worker (no forked copies of the parent's threads
or sockets), so it takes and returns only plain, picklable values and imports the edge runtime
itself. Each device is a real edge runtime in its own data directory: identity, text cache,
installed versions, exactly as on a phone."""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tools._cli import quiet_tensorflow

if TYPE_CHECKING:
    from edge_runtime.config import EdgeConfig
    from edge_runtime.eligibility import Decision

log = logging.getLogger(__name__)

FIELD_KIND = "message"           # what the simulated user typed into (a messaging app's text field)


@dataclass(frozen=True)
class DeviceJob:
    data_dir: str
    eligible: bool                  # idle + charging + unmetered this round
    unplug_after: int | None = None  # eligibility checks before the device is unplugged (dropout)


class _Unplugged:
    """Eligible for `after` checks, then unplugged from the charger (training aborts)."""

    def __init__(self, after: int) -> None:
        self.after, self.calls = after, 0

    def check(self, *, working: bool = False) -> Decision:
        from edge_runtime.eligibility import Decision

        self.calls += 1
        return Decision(True) if self.calls <= self.after else Decision(False, ("unplugged mid-training",))


def worker_init(log_path: str) -> None:
    """Device processes log to a file (counts only, never text), not over the progress bar."""
    quiet_tensorflow()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 2)
    os.close(fd)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(process)d %(name)s: %(message)s")


def device_config(data_dir: str, eligible: bool, coordinator: str = "", public_key: str = "") -> EdgeConfig:
    """The edge runtime's settings for a simulated device: eligibility forced per round, short waits.
    No personal model: a training device's own suggestions are never scored (the held-out users'
    keyboards personalize when they are scored, tools.wordeval), so it would only cost time.
    No noise floor either: the floor protects a phone from a coordinator it does not control,
    while here one operator runs both and picks the noise per run (`--noise-multiplier 0` is a
    valid experiment)."""
    from edge_runtime.config import EdgeConfig

    return EdgeConfig(data_dir=data_dir, coordinator=coordinator, public_key=public_key,
                      eligibility="override:eligible" if eligible else "override:ineligible",
                      min_wait_s=0.1, backoff_initial_s=0.5, backoff_max_s=2.0, upload_attempts=3,
                      http_timeout_s=120.0, personalize=False, min_noise_multiplier=0.0,
                      max_evaluations_per_day=math.inf)


def setup_device(data_dir: str, coordinator: str, public_key: str, enrollment_key: str,
                 texts: list[str] | None) -> dict[str, Any]:
    """Enroll one device and type its user's history into its text cache (as the keyboard does)."""
    from edge_runtime import agent
    from edge_runtime.cache import open_cache
    from edge_runtime.eligibility import ActivityClock

    cfg = device_config(data_dir, False, coordinator, public_key)
    ident = agent.enroll(cfg, enrollment_key)
    cached = 0
    if texts:
        with open_cache(cfg) as cache:
            for text in texts:
                cached += cache.add(text, FIELD_KIND)
            stats = cache.stats()
        # Typing ended long ago: the device is idle (eligibility itself is the per-round override).
        ActivityClock(Path(data_dir) / agent.ACTIVITY_FILE).note_keystroke()
    else:
        stats = {}
    return {"device_id": ident.device_id, "cached": cached, "stats": stats}


def device_checkin(job: DeviceJob) -> dict[str, Any]:
    """One check-in of one device through the real edge runtime, and the task it brings."""
    from edge_runtime import agent

    dev = agent.Device.open(device_config(job.data_dir, job.eligible))
    try:
        if job.eligible and job.unplug_after is not None:
            dev.eligibility = _Unplugged(job.unplug_after)  # type: ignore[assignment]
        res = agent.run_once(dev)
        return {"kind": res.kind, "outcome": res.outcome, "counts": res.counts, "version": res.version_id}
    except Exception as e:  # noqa: BLE001 - a failing device is an outcome of the simulation, not its end
        log.warning("device check-in failed: %s", e)
        return {"kind": "error", "outcome": f"error ({e.__class__.__name__})", "counts": {}, "version": None}
    finally:
        dev.close()
