"""A man-in-the-middle replaying genuine, signed check-in replies cannot move a device back to a
retired or canary-rejected version: the device follows only fresh rollout statements signed
for it (edge_runtime.rollout_guard). Real coordinator over loopback HTTP, real device agent."""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from dataclasses import replace

from edge_runtime import agent, rollout_guard
from protocol import wire
from tests.helpers.coordinator_fakes import enrolled_observer, make_config, serve


def _copy_version(src, dst, version_id):
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    m["version_id"] = version_id
    m.pop("signature", None)
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def _replaying(dev, task):
    """The device's next check-in gets `task` instead of the coordinator's answer."""
    real = dev.client.checkin
    dev.client.checkin = lambda req: task
    return real


def test_replayed_replies_cannot_downgrade(tmp_path, exported_version):
    with serve(make_config(tmp_path, canary_fraction=1.0, canary_min_reports=50)) as s:
        v0 = s.coord.import_version(exported_version)
        dev = enrolled_observer(s, tmp_path / "dev")
        try:
            agent.run_once(dev)
            assert dev.store.current_id == v0
            v1 = s.coord.import_version(_copy_version(exported_version, tmp_path / "v1", "tiny-v1"))
            old_reply = dev.client.checkin(wire.CheckinRequest(eligible=False, current_version_id=v0))
            assert old_reply.use_version_id == v1 and old_reply.rollout.channel == "canary"
            agent.run_once(dev)
            assert dev.store.current_id == v1                        # canary: on the candidate
            s.coord.admin_decide(v1, "reject")
            agent.run_once(dev)                                      # a signed rollback to v0
            assert dev.store.current_id == v0
            assert rollout_guard.last_state(str(tmp_path / "dev")).rollback is True

            # Replay of the genuine (signed) reply that named the now-rejected candidate.
            real = _replaying(dev, old_reply)
            agent.run_once(dev)
            assert dev.store.current_id == v0, "replayed reply downgraded the device to a rejected version"

            # A new candidate is promoted; v0 is retired. Replaying a reply naming v0 is refused too.
            dev.client.checkin = real
            v0_reply = dev.client.checkin(wire.CheckinRequest(eligible=False, current_version_id=v0))
            v2 = s.coord.import_version(_copy_version(exported_version, tmp_path / "v2", "tiny-v2"))
            s.coord.admin_decide(v2, "promote")
            agent.run_once(dev)
            assert dev.store.current_id == v2
            _replaying(dev, replace(v0_reply, kind=wire.TASK_COME_BACK))
            agent.run_once(dev)
            assert dev.store.current_id == v2, "replayed reply moved the device to a retired version"

            # Tampering: an unsigned reply, a forged one, and one signed for another device.
            fresh = real(wire.CheckinRequest(eligible=False, current_version_id=v2))
            for bad in (replace(fresh, use_version_id=v0, rollout=None),
                        replace(fresh, use_version_id=v0, rollout=replace(fresh.rollout, version_id=v0,
                                                                          seq=fresh.rollout.seq + 9)),
                        replace(fresh, rollout=replace(fresh.rollout, device_id="d-other"))):
                _replaying(dev, bad)
                agent.run_once(dev)
                assert dev.store.current_id == v2
        finally:
            dev.close()


def test_devices_follow_a_coordinator_restored_from_a_backup(tmp_path, exported_version):
    """Restored from a backup, the coordinator's sequence numbers went back with its database: a
    device that had moved on since refused every statement as a replay and kept a version the
    restored coordinator did not know (nor could reject). SQLite: the backup is a file copy."""
    conf = make_config(tmp_path, database_url=f"sqlite:///{tmp_path / 'coordinator.db'}")
    backup = tmp_path / "backup"
    with serve(conf) as s:
        v0 = s.coord.import_version(exported_version)
        dev = enrolled_observer(s, tmp_path / "dev")
    try:
        shutil.copytree(tmp_path / "data", backup / "data")               # the backup: both, together
        shutil.copy2(tmp_path / "coordinator.db", backup / "coordinator.db")
        with serve(conf) as s:
            dev.client.base_url = s.url
            agent.run_once(dev)
            v1 = s.coord.import_version(_copy_version(exported_version, tmp_path / "v1", "tiny-v1"))
            s.coord.admin_decide(v1, "promote")
            agent.run_once(dev)
            assert dev.store.current_id == v1
        shutil.rmtree(tmp_path / "data")                                   # the restore
        shutil.copytree(backup / "data", tmp_path / "data")
        shutil.copy2(backup / "coordinator.db", tmp_path / "coordinator.db")
        with serve(conf) as s:
            dev.client.base_url = s.url
            assert [v["version_id"] for v in s.coord.list_versions()] == [v0]
            agent.run_once(dev)
            assert dev.store.current_id == v0, "the device stayed on a version the restored coordinator lost"
    finally:
        dev.close()


@contextmanager
def _canary_on_a_candidate(tmp_path, exported_version):
    """A coordinator with v0 stable and candidate v1, and a canary device using v1: (s, dev, v0, v1)."""
    with serve(make_config(tmp_path, canary_fraction=1.0, canary_min_reports=50)) as s:
        v0 = s.coord.import_version(exported_version)
        dev = enrolled_observer(s, tmp_path / "dev")
        try:
            agent.run_once(dev)
            v1 = s.coord.import_version(_copy_version(exported_version, tmp_path / "v1", "tiny-v1"))
            agent.run_once(dev)
            assert dev.store.current_id == v1
            yield s, dev, v0, v1
        finally:
            dev.close()


def test_a_device_that_lost_its_pointer_on_a_rejected_candidate_goes_back_to_stable(tmp_path, exported_version):
    """A canary device whose `current.json` was lost reported no version; the coordinator then
    signed the move back to stable as no rollback, and the device refused it as a downgrade on
    every check-in: no model at all until a newer version shipped. And once back, the rejected
    candidate stayed as the fallback that damage would bring back."""
    from edge_runtime.paths import MODELS_DIR

    with _canary_on_a_candidate(tmp_path, exported_version) as (s, dev, v0, v1):
        (tmp_path / "dev" / MODELS_DIR / "current.json").unlink()
        s.coord.admin_decide(v1, "reject")
        agent.run_once(dev)
        assert dev.store.current_id == v0 and dev.store.in_use() == v0
        assert dev.store.previous_id is None and dev.store.installed() == [v0]


def test_a_device_with_no_usable_version_takes_stable_after_a_rejection(tmp_path, exported_version):
    """With its pointer lost and the candidate it named damaged, a canary device had no version
    in use and reported none; the coordinator then signed the move back to stable as no rollback,
    and the device refused it as a downgrade on every check-in."""
    from edge_runtime.paths import MODELS_DIR
    from protocol.artifact import WEIGHTS_Q8

    with _canary_on_a_candidate(tmp_path, exported_version) as (s, dev, v0, v1):
        (tmp_path / "dev" / MODELS_DIR / "current.json").unlink()
        (dev.store.path(v1) / WEIGHTS_Q8).write_bytes(b"bit rot")
        assert dev.store.in_use() is None and dev.store.current_id is None
        s.coord.admin_decide(v1, "reject")
        agent.run_once(dev)
        assert dev.store.current_id == v0 and dev.store.in_use() == v0


def test_a_promoted_candidate_stays_the_fallback_of_the_next_one(tmp_path, exported_version):
    """Moving off a canary version is no reason to drop it as the fallback: a candidate promoted
    to stable and then followed by a new candidate before the device checked in lost its place,
    and damage to the new one left the device with no model (a gap in the first fix)."""
    with _canary_on_a_candidate(tmp_path, exported_version) as (s, dev, _, v1):
        s.coord.admin_decide(v1, "promote")
        v2 = s.coord.import_version(_copy_version(exported_version, tmp_path / "v2", "tiny-v2"))
        agent.run_once(dev)
        assert (dev.store.current_id, dev.store.previous_id) == (v2, v1) and v1 in dev.store.installed()
