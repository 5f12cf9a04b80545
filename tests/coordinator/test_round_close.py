"""A round's close computes its mean before it takes the locks (coordinator.round_mean): the cases a
review of that change staged, each of which the first version got wrong or that had to stay right."""

from __future__ import annotations

import threading

import numpy as np
from sqlalchemy import select

from protocol import artifact
from tests.helpers.coordinator_fakes import SHAPES, hold_the_mean, open_round, random_delta


def test_an_update_revoked_during_the_mean_and_one_stored_under_its_id_are_told_apart(tmp_path, monkeypatch):
    """SQLite gives a deleted update's id to the next one: matched on ids, the early mean of a close
    held a revoked device's update and left out the one stored after it."""
    from coordinator.models import Update

    with open_round(tmp_path, 4, goal_count=3, min_count=2, overselect=1.34) as (s, devices, rid):
        base = artifact.decode_weights(s.coord.version_file("v0000", "weights")[0])
        deltas = [random_delta(i) for i in range(4)]
        for i in range(2):
            assert devices[i].upload(deltas[i], round_id=rid, base="v0000", examples=4).status_code == 200
        held = hold_the_mean(monkeypatch, lambda n, thread: n == 1)
        started, release, calls = held.started, held.release, held.calls
        results = {}
        t2 = threading.Thread(target=lambda: results.__setitem__(2, devices[2].upload(
            deltas[2], round_id=rid, base="v0000", examples=4)))
        t2.start()                      # reaches the goal: its request closes the round (early mean first)
        assert started.wait(30)
        with s.coord._sessions() as db:
            before = db.execute(select(Update.id, Update.device_id).order_by(Update.id)).all()
        s.coord.revoke_device(devices[2].device_id)   # its update is withdrawn: the round is below its goal
        t3 = threading.Thread(target=lambda: results.__setitem__(3, devices[3].upload(
            deltas[3], round_id=rid, base="v0000", examples=4)))
        t3.start()
        # wait until device 3's row is committed (its request then waits for the close under way)
        for _ in range(200):
            with s.coord._sessions() as db:
                after = db.execute(select(Update.id, Update.device_id).order_by(Update.id)).all()
            if len(after) == 3:
                break
            threading.Event().wait(0.05)
        assert len(after) == 3 and after != before
        release.set()
        t2.join(30)
        t3.join(30)
        r = s.coord.get_round(rid)
        assert r["status"] == "done" and len(calls) == 2, (r, calls)   # averaged again, inside
        w = artifact.decode_weights(s.coord.version_file(r["result_version_id"], "weights")[0])
        used_revoked = all(np.allclose(w[k], base[k] + np.mean([deltas[i][k] for i in (0, 1, 2)], axis=0),
                                       atol=1e-5) for k in SHAPES)
        used_new = all(np.allclose(w[k], base[k] + np.mean([deltas[i][k] for i in (0, 1, 3)], axis=0),
                                   atol=1e-5) for k in SHAPES)
        assert used_new and not used_revoked, "the revoked device's update is in the candidate"


def test_another_process_leaves_a_close_under_way_to_it(tmp_path, monkeypatch):
    """Two gunicorn workers on SQLite each computed the mean (the lock across processes was
    PostgreSQL's only): a file of the data directory is locked for it there."""
    from coordinator.service import Coordinator

    with open_round(tmp_path, 3, goal_count=3, min_count=2, overselect=1.0) as (s, devices, rid):
        for i in range(2):
            assert devices[i].upload(random_delta(i), round_id=rid, base="v0000", examples=4).status_code == 200
        held = hold_the_mean(monkeypatch, lambda n, thread: thread == "closer")
        started, release, calls = held.started, held.release, held.calls
        closer = threading.Thread(target=lambda: s.coord.close_round(rid, force=True), name="closer")
        closer.start()
        assert started.wait(30)
        other = Coordinator(s.config)   # a second gunicorn worker on the same SQLite database
        try:
            got = other.close_round(rid, force=True, wait=False)
        finally:
            other.close()
        release.set()
        closer.join(30)
        assert got is None and calls == ["closer"], (got, calls)
        assert s.coord.get_round(rid)["status"] == "done"


def test_an_operators_start_round_waits_for_the_close_under_way(tmp_path, monkeypatch):
    """Maintenance on an operator's command left the close under way to itself, as a device's
    request does, and start_round answered 409 "a round is already open"."""

    with open_round(tmp_path, 3, goal_count=3, min_count=2, overselect=1.0) as (s, devices, rid):
        for i in range(2):
            assert devices[i].upload(random_delta(i), round_id=rid, base="v0000", examples=4).status_code == 200
        held = hold_the_mean(monkeypatch)
        started, release = held.started, held.release
        t = threading.Thread(target=lambda: devices[2].upload(random_delta(2), round_id=rid, base="v0000",
                                                               examples=4))
        t.start()   # the goal: its request closes the round
        assert started.wait(30)
        threading.Timer(1.0, release.set).start()
        try:
            new = s.coord.start_round()
            assert new == rid + 1 and s.coord.get_round(rid)["status"] == "done"
        finally:
            release.set()
            t.join(30)


def test_a_close_that_fails_frees_the_one_waiting_for_it(tmp_path, monkeypatch):
    from coordinator import round_mean, rounds
    from coordinator.service import Coordinator

    with open_round(tmp_path, 3, goal_count=3, min_count=2, overselect=1.0) as (s, devices, rid):
        for i in range(2):
            assert devices[i].upload(random_delta(i), round_id=rid, base="v0000", examples=4).status_code == 200
        real_close, held = rounds._close, hold_the_mean(monkeypatch)
        started, release, errors, results = held.started, held.release, [], []

        def failing_close(coord, rid_, force, early, t0):
            if threading.current_thread().name == "owner":
                raise OSError(28, "No space left on device")
            return real_close(coord, rid_, force, early, t0)

        monkeypatch.setattr(rounds, "_close", failing_close)

        def owner():
            try:
                s.coord.close_round(rid, force=True)
            except OSError as e:
                errors.append(e)

        o = threading.Thread(target=owner, name="owner")
        o.start()
        assert started.wait(30)
        w = threading.Thread(target=lambda: results.append(s.coord.close_round(rid, force=True)), name="waiter")
        w.start()
        threading.Event().wait(0.5)
        assert not results   # waits for the owner
        release.set()
        o.join(30)
        w.join(30)
        assert errors and results and results[0]["status"] == "done" and not round_mean._claimed
        if s.coord.engine.dialect.name == "postgresql":
            other = Coordinator(s.config)
            try:
                with round_mean.claim(other, rid, wait=False) as mine:
                    assert mine
            finally:
                other.close()


def test_a_long_close_runs_off_the_request_that_starts_it(tmp_path, monkeypatch, caplog):
    """The upload that reached a goal of 1,000 waited 24 s for the mean, and a check-in after the
    deadline could pass the devices' 30 s timeout. Past `OFF_REQUEST_AT` updates
    the close runs on a thread of its own; a close that fails there says so in the round's reason,
    is logged with its traceback once, and is tried again by the next request."""
    from coordinator import rounds, versions
    from protocol import wire

    monkeypatch.setattr(rounds, "OFF_REQUEST_AT", 3)
    with open_round(tmp_path, 4, goal_count=3, min_count=2, overselect=1.34) as (s, devices, rid):
        for i in range(2):
            assert devices[i].upload(random_delta(i), round_id=rid, base="v0000", examples=4).status_code == 200
        real_write, held = versions.write_candidate, hold_the_mean(monkeypatch, lambda n, thread: n == 1)
        started, release, means, writes = held.started, held.release, held.calls, []

        def failing_once(*a, **kw):   # the first close fails after its mean
            writes.append(threading.current_thread().name)
            if len(writes) == 1:
                raise OSError("the first close fails")
            return real_write(*a, **kw)

        monkeypatch.setattr(versions, "write_candidate", failing_once)
        got = {}
        t = threading.Thread(target=lambda: got.setdefault("r", devices[2].upload(
            random_delta(2), round_id=rid, base="v0000", examples=4)))
        t.start()
        assert started.wait(30)
        t.join(10)   # answered while its round's mean is still being computed
        assert not t.is_alive() and got["r"].status_code == 200, got
        assert means[0].startswith("close-")
        assert devices[3].checkin().kind in (wire.TASK_COME_BACK, wire.TASK_TRAIN)   # not kept waiting either
        assert s.coord.get_round(rid)["status"] == "open" and len(means) == 1   # one close at a time
        release.set()
        said = "closing failed, retried on every request: OSError: the first close fails"
        for _ in range(400):   # the failure is said in the round's reason (no request meanwhile)
            if s.coord.get_round(rid)["reason"] == said:
                break
            threading.Event().wait(0.05)
        assert s.coord.get_round(rid)["reason"] == said
        for _ in range(200):   # a request after it starts another close
            r = s.coord.get_round(rid)
            if r["status"] == "done":
                break
            devices[3].checkin()
            threading.Event().wait(0.05)
        assert r["status"] == "done" and r["accepted"] == 3, (r, writes)
        assert len(writes) == 2 and all(w.startswith("close-") for w in writes), writes
        assert caplog.text.count("round maintenance failed; will retry on the next request") == 1
        assert "the first close fails" in caplog.text


def test_aggregation_seconds_counts_the_close_not_the_wait_for_another(tmp_path):
    """A close that waited for another one under way observed the wait as aggregation time."""
    from coordinator import round_mean

    with open_round(tmp_path, 3, goal_count=3, min_count=2, overselect=1.0) as (s, devices, rid):
        for i in range(2):
            assert devices[i].upload(random_delta(i), round_id=rid, base="v0000", examples=4).status_code == 200
        results = []
        with round_mean.claim(s.coord, rid, wait=True) as mine:   # another close under way
            assert mine
            t = threading.Thread(target=lambda: results.append(s.coord.close_round(rid, force=True)))
            t.start()
            threading.Event().wait(1.5)
            assert not results
        t.join(30)
        assert results and results[0]["status"] == "done"
        samples = {m.name: m.value for m in s.coord.metrics.aggregation_seconds.collect()[0].samples}
        assert samples["fedkeys_aggregation_seconds_count"] == 1
        assert samples["fedkeys_aggregation_seconds_sum"] < 1.0, samples
