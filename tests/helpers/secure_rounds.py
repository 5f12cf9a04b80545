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


class ScriptedDevice:
    """A device that walks a secure round's steps one call at a time over real HTTP, with the
    device's own crypto, so a test can stop it at a phase or make it misbehave there."""

    def __init__(self, served: Any, enrollment_key: str) -> None:
        from tests.helpers.coordinator_fakes import FakeDevice

        self.fake = FakeDevice(served.url, enrollment_key)
        self.url, self.device_id = served.url, self.fake.device_id

    def _req(self, method: str, step: str, **kw: Any):
        import requests

        from protocol import secagg_wire as sw

        return requests.request(method, self.url + sw.secagg_path(self.plan.round_id, step),
                                headers=self.fake.headers, timeout=30, **kw)

    def checkin(self) -> None:
        self.plan = self.fake.checkin().plan
        assert self.plan is not None and self.plan.secure_aggregation

    def keys(self) -> None:
        from protocol import secagg
        from protocol import secagg_wire as sw

        self.enc_sk, enc_pk = secagg.generate_keypair()
        self.mask_sk, mask_pk = secagg.generate_keypair()
        assert self._req("POST", "keys", json=sw.SecAggKeys(enc_pk, mask_pk).to_dict()).status_code == 200

    def roster_and_shares(self, dim: int) -> None:
        import hashlib
        import os

        from edge_runtime import secagg_client
        from protocol import secagg
        from protocol import secagg_wire as sw

        self.roster = sw.SecAggRoster.from_dict(self._req("GET", "roster").json())
        self.nbs = secagg_client.check_roster(self.roster, self.plan, dim)
        self.seed = os.urandom(secagg.SEED_BYTES)
        r, cts = self.roster, {}
        pairs = zip(secagg.share_secret(self.seed, r.t, r.k), secagg.share_secret(self.mask_sk, r.t, r.k), strict=True)
        for (j, nb), (a, b) in zip(sorted(self.nbs.items()), pairs, strict=True):
            key = secagg.agree(self.enc_sk, nb.enc_pk, b"enc", r.round_id, r.index, j)
            cts[j] = secagg.encrypt_share(key, r.round_id, r.index, j, a + b)
        body = sw.SecAggShares(cts, hashlib.sha256(self.seed).digest()).to_dict()
        assert self._req("POST", "shares", json=body).status_code == 200

    def inbox_ready(self) -> bool:
        return bool(self._req("GET", "inbox").json().get("ready"))
