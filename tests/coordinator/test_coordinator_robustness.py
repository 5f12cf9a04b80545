"""Concurrent devices respect over-selection and the goal; junk input never yields a 5xx."""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests

from protocol import artifact, wire
from tests.helpers.coordinator_fakes import (
    SHAPES,
    FakeDevice,
    hold_the_mean,
    make_config,
    make_version,
    open_round,
    random_delta,
    serve,
)


def test_concurrent_checkins_and_uploads(tmp_path):
    with serve(make_config(tmp_path, goal_count=6, min_count=6, overselect=1.5, canary_fraction=0.01)) as s:
        _, base = make_version(tmp_path / "v0")
        s.coord.import_version(tmp_path / "v0")
        key = s.coord.create_enrollment_key()
        devices = [FakeDevice(s.url, key) for _ in range(16)]
        rid = s.coord.start_round()
        with ThreadPoolExecutor(16) as pool:
            tasks = list(pool.map(lambda d: d.checkin(), devices))
        selected = [d for d, t in zip(devices, tasks, strict=True) if t.kind == wire.TASK_TRAIN]
        assert len(selected) == 9                                        # ceil(6 * 1.5), never more
        deltas = {d.device_id: random_delta(i) for i, d in enumerate(selected)}
        with ThreadPoolExecutor(9) as pool:
            codes = list(pool.map(lambda d: d.upload(deltas[d.device_id], round_id=rid, base="v0000",
                                                     examples=4), selected))
        statuses = sorted(r.status_code for r in codes)
        assert statuses.count(200) == 6 and all(c == 409 for c in statuses[6:]), statuses
        assert {r.json()["error"] for r in codes if r.status_code == 409} == {wire.E_LATE}
        rnd = s.coord.get_round(rid)
        assert rnd["status"] == "done" and rnd["accepted"] == 6
        # Exactly the six acknowledged updates are in the aggregate.
        accepted_ids = [d.device_id for d, r in zip(selected, codes, strict=True) if r.status_code == 200]
        weights = artifact.decode_weights(s.coord.version_file(rnd["result_version_id"], "weights")[0])
        for name in SHAPES:
            expected = base[name] + np.mean([deltas[i][name] for i in accepted_ids], axis=0)
            np.testing.assert_allclose(weights[name], expected, rtol=1e-5, atol=1e-6)


def test_junk_never_gets_a_5xx(tmp_path):
    with serve(make_config(tmp_path, canary_fraction=1.0)) as s:
        make_version(tmp_path / "v0")
        s.coord.import_version(tmp_path / "v0")
        dev = FakeDevice(s.url, s.coord.create_enrollment_key())
        s.coord.start_round()
        rng = random.Random(7)
        junk_values = [None, True, -1, 0, 2**70, 1e308, "", "x" * 300, [], {}, [1], {"a": 1}, "nan", -0.5]
        good = {
            wire.PATH_ENROLL: wire.EnrollRequest("k").to_dict(),
            wire.PATH_CHECKIN: wire.CheckinRequest(True).to_dict(),
            wire.PATH_EVALUATIONS: wire.EvaluationReport(
                "v0000", (wire.VersionMetrics("v0000", 1, 1, 1, 1),)).to_dict(),
            "/v1/admin/rounds": {"goal_count": 3},
            "/v1/admin/enrollment-keys": {"label": "x", "uses": 2},
        }
        admin = {wire.AUTH_HEADER: f"Bearer {s.config.admin_token}"}
        seen = set()
        for _ in range(120):
            path = rng.choice(list(good))
            body = dict(good[path])
            key = rng.choice([*body, "extra"])
            body[key] = rng.choice(junk_values)
            headers = admin if path.startswith("/v1/admin") else dev.headers
            r = requests.post(s.url + path, json=body, headers=headers, timeout=5)
            seen.add(r.status_code)
            assert r.status_code < 500, (path, body, r.text)
            assert "error" in r.json() or r.status_code in (200, 201)
            if path == "/v1/admin/rounds" and r.status_code == 201:
                s.coord.close_round(r.json()["round_id"], force=True)
        for _ in range(30):    # junk update metadata and bodies
            meta = wire.UpdateMeta(1, "v0000", 3, "k").to_dict()
            meta[rng.choice(list(meta))] = rng.choice(junk_values)
            body = bytes(rng.getrandbits(8) for _ in range(rng.choice([1, 8, 64, 300])))
            r = requests.post(s.url + wire.PATH_UPDATES, data=body, timeout=5,
                              headers=dev.headers | {wire.UPDATE_META_HEADER: json.dumps(meta)})
            assert 400 <= r.status_code < 500, r.text
        for path in ("/v1/versions/%00/weights", "/v1/versions/" + "a" * 500 + "/manifest",
                     "/v1/admin/rounds/99999999999999999999", "/v1/admin/versions/%ff/promote",
                     "/v1/admin/rejections?round_id=99999999999999999999", "/v1/admin/rejections?round_id=%C2%B2"):
            r = requests.request("POST" if "promote" in path else "GET", s.url + path,
                                 headers=admin | dev.headers if "admin" not in path else admin, timeout=5)
            assert 400 <= r.status_code < 500, (path, r.text)
        assert 400 in seen


def test_upload_written_while_its_round_ends_is_late_not_a_5xx(tmp_path, monkeypatch):
    """A round that ends while an upload's bytes are being written deletes its folder under them
    (`forget_contributions`): that upload is late (409), never a 500, and leaves nothing behind."""
    with open_round(tmp_path, 2, goal_count=2, min_count=1) as (s, devices, rid):
        assert devices[0].upload(random_delta(0), round_id=rid, base="v0000", examples=4).status_code == 200
        real_replace, ended = artifact.os.replace, []

        def replace_after_the_round_ends(src, dst):
            if not ended and f"uploads/{rid}/" in str(dst):
                ended.append(s.coord.close_round(rid, force=True))   # deletes uploads/<rid> and the temp file
            return real_replace(src, dst)

        monkeypatch.setattr(artifact.os, "replace", replace_after_the_round_ends)
        r = devices[1].upload(random_delta(1), round_id=rid, base="v0000", examples=4)
        assert ended and s.coord.get_round(rid)["status"] == "done"
        assert r.status_code == 409 and r.json()["error"] == wire.E_LATE, r.text
        assert not (tmp_path / "data" / "uploads" / str(rid)).exists()


def test_a_device_revoked_while_its_round_closes_waits_for_the_close(tmp_path, monkeypatch):
    """A revocation deletes the device's updates in open rounds. Committed between the close's
    count and the aggregation's own read (PostgreSQL: another connection, no round lock), the
    candidate was averaged from fewer updates than `min_count`. It now waits on the round's lock;
    on SQLite the write lock serializes them already. Both updates are averaged either way."""
    import threading

    from coordinator import rounds
    from coordinator.models import Device
    from coordinator.service import Coordinator

    with open_round(tmp_path, 2, goal_count=3, min_count=2) as (s, devices, rid):
        for i, d in enumerate(devices):
            assert d.upload(random_delta(i), round_id=rid, base="v0000", examples=4).status_code == 200
        real, revoker = rounds._aggregate, []
        admin = Coordinator(s.config)   # another process's coordinator: `revoke-device` on the command line

        def aggregate_after_a_revocation(coord, session, r, *early):
            revoker.append(threading.Thread(target=admin.revoke_device, args=(devices[0].device_id,)))
            revoker[0].start()
            revoker[0].join(timeout=1.0)   # done within a second unless it waits for this close
            return real(coord, session, r, *early)

        monkeypatch.setattr(rounds, "_aggregate", aggregate_after_a_revocation)
        try:
            rnd = s.coord.close_round(rid, force=True)
            revoker[0].join(timeout=30)
            assert not revoker[0].is_alive()
        finally:
            admin.close()
        assert rnd["status"] == "done", rnd
        manifest = json.loads(s.coord.version_file(rnd["result_version_id"], "manifest")[0])
        assert manifest["metrics"]["updates"] == 2, manifest["metrics"]
        with s.coord._sessions() as db:   # and the revocation went through, after the close
            assert db.get(Device, devices[0].device_id).revoked


def test_the_service_answers_while_a_round_is_averaged_and_averages_it_once(tmp_path, monkeypatch):
    """Averaging 1,000 updates took 16 s inside the close's transaction, and every request of the
    service waited on its locks, /healthz too. The mean is now computed before
    them: a check-in answers meanwhile, the maintenance of other requests leaves that close to
    itself, and the mean is not computed again inside."""
    import threading

    from coordinator import round_mean

    with open_round(tmp_path, 3, goal_count=3, min_count=2) as (s, devices, rid):
        for i, d in enumerate(devices[:2]):
            assert d.upload(random_delta(i), round_id=rid, base="v0000", examples=4).status_code == 200
        held = hold_the_mean(monkeypatch)
        started, release, calls = held.started, held.release, held.calls
        closed: list = []
        closer = threading.Thread(target=lambda: closed.append(s.coord.close_round(rid, force=True)), name="closer")
        closer.start()
        try:
            assert started.wait(30)
            answers: list = []
            asker = threading.Thread(target=lambda: answers.append(devices[2].checkin().kind))
            asker.start()
            asker.join(timeout=20)
            assert answers, "a check-in waited for the round's mean"
            assert s.coord.close_round(rid, force=True, wait=False) is None   # maintenance leaves it be
            if s.coord.engine.dialect.name == "postgresql":   # and so does another process's
                from coordinator.service import Coordinator

                other = Coordinator(s.config)
                try:
                    assert other.close_round(rid, force=True, wait=False) is None
                finally:
                    other.close()
            assert s.admin("GET", "/healthz").status_code == 200
        finally:
            release.set()
            closer.join(timeout=60)
        assert closed and closed[0]["status"] == "done" and calls == ["closer"], (closed, calls)
        manifest = json.loads(s.coord.version_file(closed[0]["result_version_id"], "manifest")[0])
        assert manifest["metrics"]["updates"] == 2
        assert not round_mean._claimed


def _submit(coord, device_id: str, rid: int, data: bytes):
    import uuid

    from coordinator.errors import ApiError

    meta = wire.UpdateMeta(round_id=rid, base_version_id="v0000", example_count=4,
                           idempotency_key=uuid.uuid4().hex, encoding="float32")
    try:
        return coord.submit_update(device_id, meta.to_header(), data)
    except ApiError as e:
        return e.code


def test_equal_bytes_dropped_for_another_upload_are_written_again_before_a_row_names_them(tmp_path, monkeypatch):
    """Uploads are files named by their sha256, so two devices' equal updates are one file. One
    device's refused duplicate (equal bytes, its other update stored meanwhile) deleted the file
    while the other's row was about to name it: that round could never close, and no other opened."""
    from coordinator import round_end

    with open_round(tmp_path, 3, goal_count=3, min_count=2) as (s, (a, b, c), rid):
        same = artifact.encode_weights(random_delta(7))
        real, calls, answers = round_end.store_upload, [], []

        def store(coord, round_id, data):
            digest = real(coord, round_id, data)
            calls.append(digest)
            if len(calls) == 1:     # a's bytes written, its row not yet: b sends the same bytes
                answers.append(_submit(s.coord, b.device_id, rid, same))
            elif len(calls) == 2:   # ... while b's first update (other bytes) is stored
                answers.append(_submit(s.coord, b.device_id, rid, artifact.encode_weights(random_delta(8))))
            return digest

        monkeypatch.setattr(round_end, "store_upload", store)
        receipt = _submit(s.coord, a.device_id, rid, same)
        monkeypatch.setattr(round_end, "store_upload", real)
        # b's first update is stored (answered first: it ran inside b's second), its second refused
        assert isinstance(receipt, wire.UpdateReceipt) and isinstance(answers[0], wire.UpdateReceipt), answers
        assert answers[1] == wire.E_DUPLICATE, answers
        assert s.coord.uploads.path(rid, calls[0]).is_file()
        assert c.upload(random_delta(9), round_id=rid, base="v0000", examples=4).status_code == 200
        rnd = s.coord.get_round(rid)
        assert rnd["status"] == "done" and rnd["accepted"] == 3, rnd


def test_a_round_whose_update_file_is_lost_fails_and_lets_the_next_one_open(tmp_path):
    """Whatever deleted it (a disk, a hand), an accepted update's missing file failed every close
    of its round, which then stayed open past its deadline and refused every new round."""
    with open_round(tmp_path, 2, goal_count=3, min_count=2) as (s, devices, rid):
        for i, d in enumerate(devices):
            assert d.upload(random_delta(i), round_id=rid, base="v0000", examples=4).status_code == 200
        next(s.coord.uploads.path(rid, "0" * 64).parent.iterdir()).unlink()
        rnd = s.coord.close_round(rid, force=True)
        assert rnd["status"] == "failed" and "file is missing" in rnd["reason"], rnd
        assert s.coord.start_round() == rid + 1


def test_a_round_that_cannot_close_says_why_where_an_operator_looks(tmp_path, monkeypatch):
    """A round whose close failed on every request (its base version's files deleted) stayed
    "open" with no reason in `status` and on the dashboard, overdue for ever, and nothing counted
    it. Its reason says why now, it is overdue in every view, and the
    failures are counted."""
    from datetime import timedelta

    from coordinator import rounds
    from coordinator.models import Round

    with open_round(tmp_path, 2, goal_count=3, min_count=1) as (s, devices, rid):
        with s.coord.tx() as db:
            db.get(Round, rid).deadline -= timedelta(hours=1)

        def lost(*a, **k):
            raise FileNotFoundError(2, "No such file or directory", "/srv/blobs/ab/abcdef")

        monkeypatch.setattr(s.coord, "close_round", lost)
        for _ in range(3):
            rounds.safe_maintenance(s.coord)
        rnd = s.coord.get_round(rid)
        assert rnd["status"] == "open" and rnd["overdue"], rnd
        assert rnd["reason"].startswith("closing failed, retried on every request: FileNotFoundError"), rnd
        metrics = requests.get(s.url + wire.PATH_METRICS, timeout=5).text
        assert "fedkeys_maintenance_failures_total 3.0" in metrics and "fedkeys_round_overdue 1.0" in metrics
        monkeypatch.undo()
        rounds.safe_maintenance(s.coord)                   # the files back: it closes, with its own reason
        rnd = s.coord.get_round(rid)
        assert rnd["status"] == "failed" and not rnd["overdue"] and "closing failed" not in rnd["reason"], rnd


def test_an_upload_whose_last_step_fails_leaves_no_bytes_behind(tmp_path, monkeypatch):
    """The round ended before the bytes were written (so the write made its folder again), and
    the request's last transaction then failed (the device revoked meanwhile: 401): its bytes
    stayed on disk after the round had ended, until the service's next start."""
    from coordinator import round_end

    with open_round(tmp_path, 2, goal_count=3, min_count=1) as (s, (a, b), rid):
        assert a.upload(random_delta(0), round_id=rid, base="v0000", examples=4).status_code == 200
        real = round_end.store_upload

        def store_after_the_end(coord, round_id, data):
            coord.close_round(rid, force=True)   # another request ends the round: its folder goes
            coord.revoke_device(b.device_id)     # and an operator revokes b
            return real(coord, round_id, data)

        monkeypatch.setattr(round_end, "store_upload", store_after_the_end)
        r = b.upload(random_delta(1), round_id=rid, base="v0000", examples=4)
        assert r.status_code == 401, r.text
        assert s.coord.get_round(rid)["status"] == "done"
        assert not (s.coord.uploads.root / str(rid)).exists()


def test_maintenance_on_a_full_disk_says_so_once_a_minute_without_a_traceback(monkeypatch, caplog):
    """A full data disk logged "round maintenance failed" with a traceback on every check-in (50 a
    minute) without saying why: one line a minute now names the disk and the
    data directory. Any other failure keeps its traceback, every time."""
    import errno
    import logging
    import sqlite3
    import types

    from sqlalchemy.exc import OperationalError

    from coordinator import rounds

    errors = [OSError(errno.ENOSPC, "No space left on device"),
              OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full"))]
    from coordinator.metrics import Metrics

    coord = types.SimpleNamespace(config=types.SimpleNamespace(data_dir="/srv/coord"), maintenance=None,
                                  metrics=Metrics(None, 1e-5),
                                  maintenance_failing={"what": None, "at": -float("inf"), "times": 0})
    clock = [1000.0]
    monkeypatch.setattr(rounds.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(rounds, "_full_disk_said", [-float("inf")])
    caplog.set_level(logging.ERROR, logger="coordinator.rounds")
    for i in range(6):
        def full(e=errors[i % 2], wait=False):
            raise e
        coord.maintenance = full
        rounds.safe_maintenance(coord)
        clock[0] += 15.0
    said = [r for r in caplog.records if "maintenance failed" in r.getMessage()]
    assert len(said) == 2 and all("the disk is full" in r.getMessage() and "/srv/coord" in r.getMessage()
                                  and not r.exc_info for r in said), [r.getMessage() for r in said]
    caplog.clear()

    # Any other failure: its traceback once, then one line every 10 minutes while it repeats (a close
    # that failed on every request wrote 931 lines for 30 check-ins), all of them counted.
    def other(wait=False):
        raise ValueError("a bug")
    coord.maintenance = other
    for _ in range(30):
        rounds.safe_maintenance(coord)
        clock[0] += 15.0
    said = [r for r in caplog.records if "maintenance" in r.getMessage()]
    assert [bool(r.exc_info) for r in said] == [True] and "a bug" not in said[0].getMessage()
    clock[0] += rounds.FAILURE_SAID_EVERY_S
    rounds.safe_maintenance(coord)
    assert caplog.records[-1].getMessage().startswith("round maintenance still failing (31 times")
    assert "ValueError: a bug" in caplog.records[-1].getMessage() and not caplog.records[-1].exc_info

    def another(wait=False):
        raise KeyError("another bug")
    coord.maintenance = another
    rounds.safe_maintenance(coord)
    assert caplog.records[-1].exc_info                     # a new failure: its traceback
    assert coord.metrics.maintenance_failures._value.get() == 6 + 32


def test_a_full_disk_on_the_running_service_answers_503_and_its_status_still_reads(tmp_path, monkeypatch, caplog):
    """With the data disk full, the running service answered 500 with a traceback on its status,
    dashboard, check-ins and uploads (600 log lines in 30 s from 3 devices):
    the status re-raised the round's failed aggregation, and a full disk was taken for a fault.
    Now a request the disk stops is a 503 with a minute's Retry-After and one log line a minute,
    and the status and dashboard answer while the round waits for space."""
    import errno
    import logging
    import shutil
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from coordinator import checkin, round_end, rounds, versions

    monkeypatch.setattr(rounds, "_full_disk_said", [-float("inf")])
    caplog.set_level(logging.ERROR)
    with serve(make_config(tmp_path, goal_count=2, min_count=2)) as s:
        make_version(tmp_path / "v0")
        s.coord.import_version(tmp_path / "v0")
        key = s.coord.create_enrollment_key()
        a, b = FakeDevice(s.url, key), FakeDevice(s.url, key)
        rid = s.coord.start_round(goal_count=2, min_count=2)
        assert a.checkin().kind == wire.TASK_TRAIN and b.checkin().kind == wire.TASK_TRAIN

        def no_space(*args, **kw):
            raise OSError(errno.ENOSPC, "No space left on device")
        with monkeypatch.context() as m:   # no room for the upload: refused before its body is read
            from coordinator import blobs
            from coordinator.api import devices
            read = []
            m.setattr(devices, "read_body", lambda *a, **kw: read.append(a) or b"")
            usage = shutil.disk_usage
            m.setattr(blobs.shutil, "disk_usage", lambda p: usage(p)._replace(free=2**20))
            r = a.upload(random_delta(0), round_id=rid, base="v0000", examples=4)
        assert r.status_code == 503 and r.headers[wire.RETRY_AFTER_HEADER] == "60" and not read, r.text
        with monkeypatch.context() as m:   # the upload's own file
            m.setattr(round_end, "store_upload", no_space)
            r = a.upload(random_delta(0), round_id=rid, base="v0000", examples=4)
        assert r.status_code == 503 and r.headers[wire.RETRY_AFTER_HEADER] == "60", r.text
        assert "disk is full" in r.json()["message"]
        with monkeypatch.context() as m:   # both stored; the candidate's files do not fit
            m.setattr(versions, "write_candidate", no_space)
            for i, d in enumerate((a, b)):
                assert d.upload(random_delta(i), round_id=rid, base="v0000", examples=4).status_code == 200
            for path in ("/v1/admin/status", "/v1/admin/dashboard"):
                assert s.admin("GET", path).status_code == 200, path
            assert s.coord.get_round(rid)["status"] == "open"
        with monkeypatch.context() as m:   # the database's own file
            def db_full(*args, **kw):
                raise OperationalError("UPDATE devices", {}, sqlite3.OperationalError("database or disk is full"))
            m.setattr(checkin, "checkin", db_full)
            r = requests.post(s.url + wire.PATH_CHECKIN, json=wire.CheckinRequest(eligible=True).to_dict(),
                              headers=a.headers, timeout=10)
        assert r.status_code == 503 and r.headers[wire.RETRY_AFTER_HEADER] == "60", r.text
        assert s.admin("GET", "/v1/admin/status").json()["candidate_version_id"] is not None   # space back: it goes on
        assert s.coord.get_round(rid)["status"] == "done"
    full = [r for r in caplog.records if "the disk is full" in r.getMessage()]
    assert len(full) == 1 and not full[0].exc_info, [r.getMessage() for r in caplog.records]
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]


def test_a_database_that_turned_read_only_is_a_503_to_retry(tmp_path, monkeypatch, caplog):
    """PostgreSQL turned read-only (a primary demoted after a failover) raises SQLSTATE 25006, an
    InternalError, not an OperationalError: every write route answered 500 with a traceback (two
    per check-in). It is a 503 with Retry-After and one line, as a database
    out of reach is; the service goes on by itself when writes come back."""
    import logging

    from sqlalchemy.exc import InternalError

    from coordinator import checkin

    class ReadOnlySqlTransaction(Exception):   # psycopg's, as SQLAlchemy wraps it
        sqlstate = "25006"

    def read_only(*args, **kw):
        raise InternalError("UPDATE devices SET last_seen_at", {},
                            ReadOnlySqlTransaction("cannot execute UPDATE in a read-only transaction"))
    caplog.set_level(logging.ERROR)
    with serve(make_config(tmp_path)) as s:
        make_version(tmp_path / "v0")
        s.coord.import_version(tmp_path / "v0")
        a = FakeDevice(s.url, s.coord.create_enrollment_key())
        with monkeypatch.context() as m:
            m.setattr(checkin, "checkin", read_only)
            r = requests.post(s.url + wire.PATH_CHECKIN, json=wire.CheckinRequest(eligible=True).to_dict(),
                              headers=a.headers, timeout=10)
        assert r.status_code == 503 and wire.RETRY_AFTER_HEADER in r.headers, r.text
        assert "read-only" in r.json()["message"]
        assert a.checkin().kind is not None   # writes back: it goes on
    assert not [x for x in caplog.records if x.exc_info], [x.getMessage() for x in caplog.records]
    assert any("read-only" in x.getMessage() for x in caplog.records)


def test_an_idle_devices_check_ins_write_its_last_seen_time_once_in_a_while(tmp_path, monkeypatch):
    """Every check-in wrote the device's last_seen_at: a write per device per minute for a
    population that only asks, and on a full disk no check-in could answer, so no device heard of
    a rollback. It is written once in `LAST_SEEN_EVERY`, which "active"
    (seen within a day) does not notice."""
    from datetime import timedelta

    from coordinator import checkin
    from coordinator.models import Device, utcnow

    with serve(make_config(tmp_path)) as s:
        make_version(tmp_path / "v0")
        s.coord.import_version(tmp_path / "v0")
        d = FakeDevice(s.url, s.coord.create_enrollment_key())

        def seen():
            with s.coord._sessions() as ss:
                return ss.get(Device, d.device_id).last_seen_at

        d.checkin()
        first = seen()
        assert first is not None and d.checkin() and seen() == first   # a minute later: not written
        with s.coord.tx() as ss:
            ss.get(Device, d.device_id).last_seen_at = utcnow() - checkin.LAST_SEEN_EVERY - timedelta(seconds=1)
        d.checkin()
        assert utcnow() - seen() < timedelta(minutes=1)   # written again
