"""A curious coordinator cannot talk a device out of its privacy: the device enforces its own
plan floor and its own ε ledger, over real HTTP against a real coordinator that sends
hostile plans (no noise, a huge clip bound, many epochs, batch 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_runtime import agent
from edge_runtime import cache as text_cache
from edge_runtime.config import EdgeConfig
from edge_runtime.paths import LEDGER_FILE
from edge_runtime.plan_guard import gaussian_epsilon
from tests.helpers.coordinator_fakes import make_config, serve

TEXTS = ["see you at the station tomorrow morning", "thanks for the lovely dinner last night",
         "can you send me the notes from the meeting", "my train is running late again today"]


def _device(s, tmp_path: Path, name: str, **floor) -> agent.Device:
    cfg = EdgeConfig(data_dir=str(tmp_path / name), eligibility="override:eligible", coordinator=s.url,
                     public_key=s.coord.public_key_hex, min_wait_s=0.1, **floor)
    agent.enroll(cfg, s.coord.create_enrollment_key())
    for t in TEXTS:
        assert text_cache.type_text(cfg, t, "message")
    return agent.Device.open(cfg)


@pytest.mark.parametrize("hostile, floor, why", [
    ({"noise_multiplier": 0.0, "clip_norm": 1e6, "epochs": 30, "batch_size": 1, "max_examples": 10**6}, {},
     "noise_multiplier 0 below this device's minimum 0.01"),             # the default floor refuses no noise
    ({"noise_multiplier": 0.0, "clip_norm": 10.0, "epochs": 20, "batch_size": 1, "max_examples": 5000}, {},
     "noise_multiplier 0 below"),                                         # ... even inside every other limit
    ({"noise_multiplier": 0.01, "clip_norm": 1e6, "epochs": 30, "batch_size": 1}, {}, "clip_norm"),
    ({"noise_multiplier": 0.0, "clip_norm": 1.0, "epochs": 1, "batch_size": 1}, {"min_noise_multiplier": 0.5},
     "noise_multiplier 0 below"),
    ({"noise_multiplier": 1.0, "clip_norm": 1.0, "epochs": 30, "batch_size": 1}, {}, "epochs 30"),
    ({"noise_multiplier": 1.0, "clip_norm": 1.0, "epochs": 1, "max_examples": 10**6}, {}, "max_examples"),
])
def test_device_refuses_a_hostile_plan_and_sends_nothing(tmp_path, exported_version, hostile, floor, why):
    with serve(make_config(tmp_path, goal_count=1, min_count=1, overselect=1.0)) as s:
        s.coord.import_version(exported_version)
        dev = _device(s, tmp_path, "dev", **floor)
        try:
            rid = s.coord.start_round(**hostile)
            res = agent.run_once(dev)
        finally:
            dev.close()
        assert res.kind == "train" and res.outcome.startswith("refused") and why in res.outcome, res
        rnd = s.coord.get_round(rid)
        assert rnd["selected"] == 1 and rnd["accepted"] == 0 and rnd["rejected"] == 0   # nothing was uploaded
        assert not (tmp_path / "dev" / LEDGER_FILE).exists()                            # nothing was released


def test_local_epsilon_ledger_stops_training_when_the_budget_is_spent(tmp_path, exported_version):
    sigma, delta = 2.0, 1e-6
    one, two = gaussian_epsilon([sigma], delta), gaussian_epsilon([sigma, sigma], delta)
    budget = (one + two) / 2            # room for exactly one release
    with serve(make_config(tmp_path, goal_count=1, min_count=1, overselect=1.0, canary_fraction=0.001,
                           noise_multiplier=sigma, clip_norm=1.0)) as s:
        s.coord.import_version(exported_version)
        dev = _device(s, tmp_path, "dev", min_noise_multiplier=0.5, local_epsilon_budget=budget, local_delta=delta)
        try:
            s.coord.start_round(epochs=1, batch_size=4, learning_rate=0.1, max_examples=50)
            first = agent.run_once(dev)
            assert first.outcome == "uploaded", first
            assert first.counts["local_epsilon"] == pytest.approx(one, rel=1e-3)
            s.coord.admin_decide(s.coord.status()["candidate_version_id"], "reject")
            rid2 = s.coord.start_round(epochs=1, batch_size=4, learning_rate=0.1, max_examples=50)
            second = agent.run_once(dev)
        finally:
            dev.close()
        assert second.outcome.startswith("refused (local privacy budget"), second
        assert s.coord.get_round(rid2)["accepted"] == 0
        ledger = json.loads((tmp_path / "dev" / LEDGER_FILE).read_text())
        assert [e["noise_multiplier"] for e in ledger["releases"]] == [sigma]


def test_damaged_ledger_stops_training_instead_of_forgetting(tmp_path, exported_version, caplog):
    """The device checks in as unable to train (it took a slot it would refuse before) and says why."""
    with serve(make_config(tmp_path, goal_count=1, min_count=1, overselect=1.0, noise_multiplier=1.0,
                           clip_norm=1.0)) as s:
        s.coord.import_version(exported_version)
        dev = _device(s, tmp_path, "dev")
        (tmp_path / "dev" / LEDGER_FILE).write_text("{not json")
        try:
            rid = s.coord.start_round(epochs=1, batch_size=4, max_examples=50)
            assert agent.run_loop(dev, once=True) == 0       # not a crash, and no slot taken
            assert "is damaged" in caplog.text and "refusing to train" in caplog.text
        finally:
            dev.close()
        assert s.coord.get_round(rid)["accepted"] == 0


def test_a_noise_multiplier_whose_square_underflows_spends_an_infinite_epsilon():
    """1 / sigma**2 divided by zero for sigma under 1e-162: the device's check of such a plan
    raised instead of refusing it (the coordinator's accounting did the same)."""
    for sigma in (1e-170, 5e-324):
        assert gaussian_epsilon([sigma], 1e-6) == float("inf")
        assert gaussian_epsilon([1.0, sigma], 1e-6) == float("inf")
    assert 1e5 < gaussian_epsilon([1e-3], 1e-6) < 1e7
