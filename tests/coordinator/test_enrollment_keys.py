"""Enrollment keys have a use count and a lifetime by default; epsilon's population counts the
devices that took part, not every enrolled (possibly sybil) identity."""

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


def test_cli_key_defaults_come_from_settings(tmp_path, capsys):
    d = str(tmp_path / "c")
    assert coordinator_main(["init", "--data-dir", d]) == 0     # issue-11: only `init` creates a data dir
    capsys.readouterr()
    assert coordinator_main(["create-enrollment-key", "--data-dir", d, "--set", "enrollment_key_uses=2"]) == 0
    assert capsys.readouterr().out.strip()
    assert coordinator_main(["create-enrollment-key", "--data-dir", d, "--uses", "0"]) == 2
    assert "uses must be" in capsys.readouterr().err


def test_epsilon_population_is_participants_not_enrolled_sybils(tmp_path):
    with serve(make_config(tmp_path, goal_count=2, min_count=2, overselect=1.0, noise_multiplier=1.0,
                           enrollment_key_uses=1000)) as s:
        make_version(tmp_path / "v0")
        s.coord.import_version(tmp_path / "v0")
        key = s.coord.create_enrollment_key()
        honest = [_enroll(s, key) for _ in range(2)]
        for _ in range(40):                                       # sybils: enrolled, never contribute
            _enroll(s, key)
        rid = s.coord.start_round()
        assert s.coord.get_round(rid)["population"] == 0          # nobody has contributed yet: q = 1
        for i, d in enumerate(honest):
            t = d.checkin()
            assert t.kind == wire.TASK_TRAIN
            assert d.upload(random_delta(i, 0.01), round_id=rid, base="v0000", examples=5).status_code == 200
        cand = s.coord.get_round(rid)["result_version_id"]
        v = next(v for v in s.coord.list_versions() if v["version_id"] == cand)
        assert v["privacy"]["history"] == [[1.0, 1.0]]            # q = 2 / max(0, 2), not 2 / 42
        status = s.admin("GET", "/v1/admin/status").json()
        assert status["population"]["enrolled"] == 42 and status["population"]["assumed_by_epsilon"] == 2
        page = s.admin("GET", "/v1/admin/dashboard").json()   # main replaced /v1/dashboard-data with it
        assert page["privacy"]["population"]["assumed_by_epsilon"] == 2 and "contributed" in page[
            "privacy"]["population"]["basis"]
