"""Round capture: devices that poll fastest no longer take every slot. During the check-in
window devices are only registered; after it, slots are drawn at random among them."""

from __future__ import annotations

from datetime import timedelta

import pytest
import requests

from coordinator.models import Round, utcnow
from protocol import wire
from tests.helpers.coordinator_fakes import FakeDevice, make_config, make_version, serve


def _close_window(s, round_id: int) -> None:
    """Move the window's end into the past (instead of sleeping through it)."""
    with s.coord.tx() as db:
        r = db.get(Round, round_id)
        r.selection_ends_at = utcnow() - timedelta(seconds=1)


def test_window_then_random_draw_not_first_come(tmp_path):
    with serve(make_config(tmp_path, goal_count=2, min_count=2, overselect=1.0, selection_window_s=120.0,
                           canary_fraction=0.001)) as s:
        make_version(tmp_path / "v0")
        s.coord.import_version(tmp_path / "v0")
        key = s.coord.create_enrollment_key()
        fast = [FakeDevice(s.url, key) for _ in range(4)]     # poll the moment a round opens
        slow = [FakeDevice(s.url, key) for _ in range(4)]     # honest: check in a little later
        honest_wins = 0
        rounds = 15
        for _ in range(rounds):
            rid = s.coord.start_round()
            for d in fast + slow:                              # everyone inside the window
                t = d.checkin()
                assert t.kind == wire.TASK_COME_BACK and 100 < t.retry_after < 130, t
            rnd = s.coord.get_round(rid)
            assert rnd["selected"] == 0 and rnd["waiting_for_draw"] == 8
            _close_window(s, rid)
            got = [d for d in fast + slow if d.checkin().kind == wire.TASK_TRAIN]
            after = s.coord.get_round(rid)
            assert len(got) == 2 and after["selected"] == 2 and after["waiting_for_draw"] == 0   # 6 lost the draw
            assert [d for d in got if d.checkin().kind == wire.TASK_TRAIN] == got   # the same task again
            honest_wins += sum(d in slow for d in got)
            late = FakeDevice(s.url, key)                      # after the draw: the slots are gone
            assert late.checkin().kind == wire.TASK_COME_BACK
            s.coord.close_round(rid, force=True)
        # First come, first served gave the fast devices every slot (0 of 30); a fair draw gives
        # the slow half about 15. P(<= 5 | fair) < 1e-4.
        assert honest_wins > 5, honest_wins
        print(f"selection: the slower half won {honest_wins} of {2 * rounds} slots")


def test_selection_window_is_a_round_setting_with_bounds(served):
    r = served.admin("POST", "/v1/admin/rounds", json={"selection_window_s": 10_000, "round_duration_s": 600})
    assert r.status_code == 400 and "selection_window_s" in r.json()["message"]
    r = served.admin("POST", "/v1/admin/rounds", json={"selection_window_s": 30})
    assert r.status_code == 201 and r.json()["selection_ends_at"] is not None


def test_devices_of_one_enrollment_key_share_a_checkin_budget(tmp_path):
    """Sybils minted from one (leaked) key slow down together; another key's devices do not."""
    with serve(make_config(tmp_path, rate_limit_per_key_per_minute=60.0, rate_limit_per_key_burst=5,
                           enrollment_key_uses=1000)) as s:
        make_version(tmp_path / "v0")
        s.coord.import_version(tmp_path / "v0")
        leaked, other = s.coord.create_enrollment_key(), s.coord.create_enrollment_key()
        sybils = [FakeDevice(s.url, leaked) for _ in range(8)]
        honest = FakeDevice(s.url, other)
        codes = []
        for d in sybils:
            r = requests.post(s.url + wire.PATH_CHECKIN, json={"protocol_version": 1, "eligible": True},
                              headers=d.headers, timeout=10)
            codes.append(r.status_code)
        assert codes.count(200) == 5 and codes.count(429) == 3, codes   # each device sent only one
        r = requests.post(s.url + wire.PATH_CHECKIN, json={"protocol_version": 1, "eligible": True},
                          headers=honest.headers, timeout=10)
        assert r.status_code == 200


def test_secure_round_members_must_be_drawn_and_need_the_plain_mean(tmp_path):
    """Where issue-12 (draw window, robust aggregators) meets issue-14 (secure rounds): a device
    only registered for the draw may not join the secure cohort, one drawn and joined is not
    handed the task again, and a secure round refuses a robust aggregator (it sees only the sum)."""
    from coordinator import secagg as coord_secagg
    from coordinator.config import ConfigError
    from protocol import secagg
    from protocol import secagg_wire as sw

    with pytest.raises(ConfigError, match="aggregator = mean"):
        make_config(tmp_path, secure_aggregation=True, aggregator="median")
    with serve(make_config(tmp_path, goal_count=2, min_count=2, overselect=1.0, selection_window_s=120.0,
                           canary_fraction=0.001)) as s:
        make_version(tmp_path / "v0")
        s.coord.import_version(tmp_path / "v0")
        key = s.coord.create_enrollment_key()
        devs = [FakeDevice(s.url, key) for _ in range(3)]
        rid = s.coord.start_round(secure_aggregation=True)
        assert all(d.checkin().kind == wire.TASK_COME_BACK for d in devs)
        keys = sw.SecAggKeys(secagg.generate_keypair()[1], secagg.generate_keypair()[1]).to_dict()
        for d in devs:   # registered for the draw, not selected: refused
            r = requests.post(f"{s.url}/v1/secagg/{rid}/keys", json=keys, headers=d.headers, timeout=5)
            assert r.status_code == 403 and r.json()["error"] == wire.E_NOT_SELECTED
        _close_window(s, rid)
        tasks = {d: d.checkin() for d in devs}
        drawn, _ = [d for d, t in tasks.items() if t.kind == wire.TASK_TRAIN]
        (left_out,) = [d for d, t in tasks.items() if t.kind == wire.TASK_COME_BACK]
        assert tasks[drawn].plan.secure_aggregation
        r = requests.post(f"{s.url}/v1/secagg/{rid}/keys", json=keys, headers=left_out.headers, timeout=5)
        assert r.status_code == 403 and r.json()["error"] == wire.E_NOT_SELECTED
        r = requests.post(f"{s.url}/v1/secagg/{rid}/keys", json=keys, headers=drawn.headers, timeout=5)
        assert r.status_code == 200, r.text
        with s.coord._sessions() as db:
            assert coord_secagg.joined(db, rid, drawn.device_id) is not None
        assert drawn.checkin().kind == wire.TASK_COME_BACK      # joined: not the same task again
        s.coord.close_round(rid, force=True)
    with serve(make_config(tmp_path / "robust", aggregator="median")) as s:
        make_version(tmp_path / "v1")
        s.coord.import_version(tmp_path / "v1")
        r = s.admin("POST", "/v1/admin/rounds", json={"secure_aggregation": True})
        assert r.status_code == 400 and "aggregator = mean" in r.json()["message"]
