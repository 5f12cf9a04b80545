"""Enrollment keys have a use count and a lifetime by default; the sampled epsilon's q is each
round's draw, which enrolled identities that never check in (possibly sybils) do not change."""

from __future__ import annotations

import pytest

from coordinator.__main__ import main as coordinator_main
from coordinator.models import EnrollmentKey
from protocol import wire
from tests.helpers.coordinator_fakes import FakeDevice, make_config, make_version, random_delta, serve


def _enroll(s, key):
    return FakeDevice(s.url, key)


def test_default_keys_are_limited_in_uses_and_time(tmp_path):
    with serve(make_config(tmp_path, enrollment_key_uses=3)) as s:
        key = s.coord.create_enrollment_key()
        for _ in range(3):
            _enroll(s, key)
        with pytest.raises(AssertionError):                      # the 4th is refused (FakeDevice asserts 200)
            _enroll(s, key)
        short = s.coord.create_enrollment_key(expires_in_s=60)
        _enroll(s, short)
        with s.coord.tx() as db:                                  # an hour later
            row = db.query(EnrollmentKey).order_by(EnrollmentKey.id.desc()).first()
            row.expires_at = row.created_at.replace(year=row.created_at.year - 1)
        with pytest.raises(AssertionError):
            _enroll(s, short)
        r = s.admin("POST", "/v1/admin/enrollment-keys", json={"expires_in_s": -1})
        assert r.status_code == 400
        # A label that breaks the enrollment-keys table, one cut silently, and a misspelt field
        # (ignored, where POST /rounds refuses it) are refused.
        for body, says in (({"label": "line\nbreak"}, "one line"), ({"label": "x" * 129}, "at most 128"),
                           ({"use": 5}, "unknown field(s) use")):
            r = s.admin("POST", "/v1/admin/enrollment-keys", json=body)
            assert r.status_code == 400 and says in r.json()["message"], r.text


def test_cli_key_defaults_come_from_settings(tmp_path, capsys):
    d = str(tmp_path / "c")
    assert coordinator_main(["init", "--data-dir", d]) == 0     # issue-11: only `init` creates a data dir
    capsys.readouterr()
    assert coordinator_main(["create-enrollment-key", "--data-dir", d, "--set", "enrollment_key_uses=2"]) == 0
    assert capsys.readouterr().out.strip()
    assert coordinator_main(["create-enrollment-key", "--data-dir", d, "--uses", "0"]) == 2
    assert "uses must be" in capsys.readouterr().err


def test_the_sampled_epsilon_takes_each_rounds_draw_not_a_population(tmp_path):
    """q was accepted updates over a population (every device that ever contributed, or a
    configured size), which only grows, while a device's chance of taking part is its round's:
    the slots over the devices in the check-in draw, or 1 when the round drew nothing (first come)
    or drew everyone. Enrolled devices that never check in (sybils, idle phones) do not change
    it, and a slot a revoked device frees is not given to a device outside the draw."""
    from datetime import timedelta

    from coordinator.models import Round, utcnow

    def close_window(rid: int) -> None:
        with s.coord.tx() as db:
            db.get(Round, rid).selection_ends_at = utcnow() - timedelta(seconds=1)

    def train(devices, rid: int, base: str) -> str:
        for i, d in enumerate(devices):
            assert d.upload(random_delta(i, 0.01), round_id=rid, base=base, examples=5).status_code == 200
        return s.coord.get_round(rid)["result_version_id"]

    with serve(make_config(tmp_path, goal_count=2, min_count=2, overselect=1.5, noise_multiplier=1.0,
                           enrollment_key_uses=1000)) as s:
        make_version(tmp_path / "v0")
        s.coord.import_version(tmp_path / "v0")
        key = s.coord.create_enrollment_key()
        devices = [_enroll(s, key) for _ in range(6)]
        for _ in range(40):                                       # enrolled, never check in
            _enroll(s, key)
        rid = s.coord.start_round()                               # no window: first come, q = 1
        assert all(d.checkin().kind == wire.TASK_TRAIN for d in devices[:2])
        first = train(devices[:2], rid, "v0000")
        s.coord.admin_decide(first, "promote")

        rid = s.coord.start_round(selection_window_s=60)         # 3 slots drawn among the 6 that check in
        assert all(d.checkin().kind != wire.TASK_TRAIN for d in devices)
        close_window(rid)
        drawn = [d for d in devices if d.checkin().kind == wire.TASK_TRAIN]
        assert len(drawn) == 3 and s.coord.get_round(rid)["population"] == 6
        s.coord.revoke_device(drawn[0].device_id)                # frees a slot ...
        late = _enroll(s, key)
        assert late.checkin().kind != wire.TASK_TRAIN             # ... not for a device outside the draw
        second = train(drawn[1:], rid, first)

        s.coord.admin_decide(second, "promote")
        rid = s.coord.start_round(selection_window_s=60)         # 3 slots, 2 devices check in: both taken
        assert all(d.checkin().kind != wire.TASK_TRAIN for d in drawn[1:])
        close_window(rid)
        assert all(d.checkin().kind == wire.TASK_TRAIN for d in drawn[1:])
        third = train(drawn[1:], rid, second)

        history = {v["version_id"]: v["privacy"]["history"] for v in s.coord.list_versions()}
        assert history[first] == [[1.0, 1.0, 1]]
        assert history[second] == [[0.5, 1.0, 1], [1.0, 1.0, 1]]   # the 3 slots over the 6 drawn from, not 2 / 6
        assert history[third] == [[0.5, 1.0, 1], [1.0, 1.0, 2]]    # counted per distinct release
        status = s.admin("GET", "/v1/admin/status").json()
        assert status["population"]["enrolled"] == 46 and "check-in draw" in status["population"]["sampling"]
        page = s.admin("GET", "/v1/admin/dashboard").json()
        assert "check-in draw" in page["privacy"]["population"]["sampling"]


def test_a_leaked_key_is_revoked_and_so_are_its_devices(tmp_path, capsys):
    """A leaked enrollment key could not be stopped before it ran out or expired (a week, 100
    devices by default). The operator lists keys (never their secrets), revokes the one they hold
    by the key itself or its id, and with --devices revokes every device it minted."""
    import json

    from coordinator.__main__ import main as cli_main
    from coordinator.errors import ApiError
    from coordinator.service import Coordinator

    cfg = make_config(tmp_path)
    common = ["--data-dir", cfg.data_dir, "--database-url", cfg.resolved_database_url]
    assert cli_main(["init", *common]) == 0
    capsys.readouterr()
    c = Coordinator(cfg)
    try:
        leaked = c.create_enrollment_key(label="leaked", uses=10)
        kept = c.create_enrollment_key(label="kept", uses=10)
        sybils = [c.enroll(wire.EnrollRequest(enrollment_key=leaked, platform="x")) for _ in range(2)]
        honest = c.enroll(wire.EnrollRequest(enrollment_key=kept, platform="x"))
    finally:
        c.close()
    assert cli_main(["enrollment-keys", *common]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(k["label"], k["devices"], k["revoked"]) for k in listed] == [("leaked", 2, False), ("kept", 1, False)]
    assert leaked not in json.dumps(listed) and all("key_hash" not in k for k in listed)

    assert cli_main(["revoke-enrollment-key", leaked, *common]) == 0          # by the key itself
    assert json.loads(capsys.readouterr().out)["devices_revoked"] == 0
    c = Coordinator(cfg)
    try:
        with pytest.raises(ApiError) as e:
            c.enroll(wire.EnrollRequest(enrollment_key=leaked, platform="x"))
        assert e.value.status == 401
        assert c.authenticate(sybils[0].device_id, sybils[0].token) == sybils[0].device_id   # still enrolled
    finally:
        c.close()
    leaked_id = listed[0]["id"]
    assert cli_main(["revoke-enrollment-key", str(leaked_id), "--devices", *common]) == 0   # by id, and its devices
    assert json.loads(capsys.readouterr().out)["devices_revoked"] == 2
    c = Coordinator(cfg)
    try:
        for dev in sybils:
            with pytest.raises(ApiError):
                c.authenticate(dev.device_id, dev.token)
        assert c.authenticate(honest.device_id, honest.token) == honest.device_id    # another key's device
        assert c.enroll(wire.EnrollRequest(enrollment_key=kept, platform="x")).device_id
    finally:
        c.close()
    assert cli_main(["enrollment-keys", *common]) == 0
    assert [(k["revoked"], k["devices_revoked"]) for k in json.loads(capsys.readouterr().out)] == [(True, 2),
                                                                                                  (False, 0)]
    assert cli_main(["revoke-enrollment-key", "999", *common]) == 2
    assert "no enrollment key 999" in capsys.readouterr().err
    assert cli_main(["revoke-enrollment-key", "fk-not-a-key", *common]) == 2
    assert "no such enrollment key" in capsys.readouterr().err


def test_revoked_devices_updates_slots_and_canary_reports_stop_counting(tmp_path):
    """Revoking a leaked key's devices also takes back what they put into work not yet done: their
    updates and slots in the open round and their canary reports on the pending candidate. Before,
    a sybil's update already sent was still averaged, and its report still judged the candidate."""
    with serve(make_config(tmp_path, goal_count=4, min_count=3, overselect=2.0)) as s:
        make_version(tmp_path / "v0")
        s.coord.import_version(tmp_path / "v0")
        leaked, kept = s.coord.create_enrollment_key(label="leaked"), s.coord.create_enrollment_key(label="kept")
        sybils = [_enroll(s, leaked) for _ in range(2)]
        honest = [_enroll(s, kept) for _ in range(2)]
        rid = s.coord.start_round()
        for i, d in enumerate([*sybils, honest[0]]):
            assert d.checkin().kind == wire.TASK_TRAIN
            assert d.upload(random_delta(i, 0.01), round_id=rid, base="v0000", examples=5).status_code == 200
        assert s.coord.get_round(rid)["accepted"] == 3
        make_version(tmp_path / "v1", "v1")
        cand = s.coord.import_version(tmp_path / "v1", as_candidate=True)
        keyid = next(k["id"] for k in s.coord.list_enrollment_keys() if k["label"] == "leaked")
        from coordinator.models import Evaluation
        ids = [d.device_id for d in sybils]
        with s.coord.tx() as tx:   # the sybils' canary reports on the pending candidate
            for d in ids:
                tx.add(Evaluation(candidate_version_id=cand, device_id=d, report_json="{}"))

        def count() -> int:
            with s.coord._sessions() as ss:
                return ss.query(Evaluation).filter(Evaluation.device_id.in_(ids)).count()

        assert count() == 2
        assert s.coord.revoke_enrollment_key(key_id=keyid, devices=True)["devices_revoked"] == 2
        r = s.coord.get_round(rid)
        assert r["status"] == "open" and r["accepted"] == 1                 # only the honest update counts
        assert count() == 0
        from coordinator.models import Assignment
        with s.coord._sessions() as ss:                                    # their round slots are free again
            assert ss.query(Assignment).filter(Assignment.device_id.in_(ids)).count() == 0
            assert ss.query(Assignment).filter(Assignment.device_id == honest[0].device_id).count() == 1


def _drawn_device(s, tmp_path):
    """One device on a coordinator holding a version, drawn for the round just opened: (it, round id)."""
    make_version(tmp_path / "v0")
    s.coord.import_version(tmp_path / "v0")
    device = _enroll(s, s.coord.create_enrollment_key())
    rid = s.coord.start_round()
    assert device.checkin().kind == wire.TASK_TRAIN
    return device, rid


def test_a_revoked_devices_round_still_counts_against_the_coordinator(tmp_path):
    """The coordinator received the update of a device revoked afterwards: when its round then
    failed with no other update, nothing recorded that round, and ε against the coordinator
    left it out. The withdrawn update is a rejection with reason `revoked`."""
    from coordinator import queries

    with serve(make_config(tmp_path, goal_count=3, min_count=2)) as s:
        device, rid = _drawn_device(s, tmp_path)
        assert device.upload(random_delta(0, 0.01), round_id=rid, base="v0000", examples=5).status_code == 200
        s.coord.revoke_device(device.device_id)
        assert s.coord.close_round(rid, force=True)["status"] == "failed"
        assert [(x["round_id"], x["reason"]) for x in s.coord.rejections()["rejections"]] == [(rid, wire.E_REVOKED)]
        with s.coord._sessions() as ss:
            assert sum(queries.noise_seen(ss).values()) == 1


def test_posts_from_devices_a_round_never_drew_do_not_count_against_the_coordinator(tmp_path):
    """Any enrolled device could post bytes to any round: each post was a rejection with its round
    id, and every round so posted to counted in epsilon against the coordinator, so one device
    could raise the number the operator quotes at will. A post counts only
    from a device the round drew; a drawn device's refused update still counts."""
    from coordinator import queries

    def rounds_seen() -> int:
        with s.coord._sessions() as ss:
            return sum(queries.noise_seen(ss).values())

    with serve(make_config(tmp_path, goal_count=3, min_count=2)) as s:
        make_version(tmp_path / "v0")
        s.coord.import_version(tmp_path / "v0")
        key = s.coord.create_enrollment_key()
        drawn, stranger = _enroll(s, key), _enroll(s, key)
        empty = s.coord.start_round()
        assert s.coord.close_round(empty, force=True)["status"] == "failed"
        for rid in (empty, empty + 1000):
            assert stranger.upload(random_delta(0, 0.01), round_id=rid, base="v0000", examples=5).status_code in (
                403, 404)
        rid = s.coord.start_round()
        assert drawn.checkin().kind == wire.TASK_TRAIN
        assert stranger.upload(random_delta(0, 0.01), round_id=rid, base="v0000", examples=5).status_code == 403
        assert {x["reason"] for x in s.coord.rejections()["rejections"]} == {wire.E_NOT_SELECTED, wire.E_UNKNOWN_ROUND}
        assert rounds_seen() == 0
        assert drawn.upload({}, body=b"not an update", round_id=rid, base="v0000", examples=5).status_code == 422
        assert rounds_seen() == 1
        s.coord.revoke_device(drawn.device_id)   # which deletes its draw: the refused post still counts
        s.coord.revoke_device(stranger.device_id)   # and a stranger's posts do not start to
        assert s.coord.close_round(rid, force=True)["status"] == "failed" and rounds_seen() == 1


def test_an_update_received_from_a_device_revoked_meanwhile_counts_against_the_coordinator(tmp_path, monkeypatch):
    """A drawn device revoked while its update was validated got a 401 and left no trace: the
    revocation found no update to withdraw, so a round whose bytes were received counted in no
    epsilon. Its refusal is now a rejection with reason `revoked`, which counts."""
    from coordinator import queries, updates

    with serve(make_config(tmp_path, goal_count=3, min_count=2)) as s:
        device, rid = _drawn_device(s, tmp_path)
        validate = updates.validate_update

        def revoked_meanwhile(*a, **kw):
            s.coord.revoke_device(device.device_id)
            return validate(*a, **kw)

        monkeypatch.setattr(updates, "validate_update", revoked_meanwhile)
        assert device.upload(random_delta(0, 0.01), round_id=rid, base="v0000", examples=5).status_code == 401
        assert s.coord.close_round(rid, force=True)["status"] == "failed"
        assert [(x["round_id"], x["reason"]) for x in s.coord.rejections()["rejections"]] == [(rid, wire.E_REVOKED)]
        with s.coord._sessions() as ss:
            assert sum(queries.noise_seen(ss).values()) == 1
