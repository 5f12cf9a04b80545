"""Driving secure-aggregation rounds from a test: every device's one check-in in its own thread
(the protocol needs the cohort online at once), and waiting for the coordinator to finish."""

from __future__ import annotations

import threading
import time
from typing import Any

from edge_runtime import agent
from edge_runtime.config import EdgeConfig


def run_in_threads(cfgs: list[EdgeConfig]) -> tuple[list[agent.Device], list, list[threading.Thread]]:
    """Open each device and start one `run_once` per device in its own thread: (devices, their
    results as they finish, the threads). The caller joins the threads and closes the devices."""
    devs = [agent.Device.open(c) for c in cfgs]
    results: list = [None] * len(devs)
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, agent.run_once(devs[i])))
               for i in range(len(devs))]
    for t in threads:
        t.start()
    return devs, results, threads


def run_once_each(cfgs: list[EdgeConfig], timeout_s: float = 120.0) -> list:
    """`run_in_threads`, joined: every device's check-in result (None if it did not finish)."""
    devs, results, threads = run_in_threads(cfgs)
    try:
        for t in threads:
            t.join(timeout_s)
    finally:
        for d in devs:
            d.close()
    return results


def wait_closed(coord: Any, round_id: int, *, timeout_s: float = 60.0, maintain: bool = True) -> dict:
    """The round once it is no longer open (or at the timeout). The coordinator unmasks the sum
    off-thread after the last reveal, and phase timeouts act lazily: `maintain` drives them."""
    until = time.monotonic() + timeout_s
    while coord.get_round(round_id)["status"] == "open" and time.monotonic() < until:
        if maintain:
            coord.maintenance()
        time.sleep(0.1)
    return coord.get_round(round_id)
