"""A secure round's life around its unmask: closed while summing, an outage longer than a phase,
a sum slower than the phase timeout, a sum whose close failed, a plan whose noise no ring
carries. Each happens with real devices; here each is set up in the database directly."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import requests
from sqlalchemy import func, select

from coordinator import queries
from coordinator import secagg as coord_secagg
from coordinator.models import utcnow
from coordinator.models_secagg import SecAggMember, SecAggRound
from protocol import secagg_wire as sw
from protocol import wire
from protocol.artifact import sha256_bytes
from tests.helpers.coordinator_fakes import FakeDevice, make_config, make_version, serve

PARAMS = {"n": 2, "k": 1, "t": 1, "n_min": 2, "seed": "00" * 32, "scale": 1.0, "mu": 1.0, "dropout": 0.0}


@pytest.fixture
def served(tmp_path):
    with serve(make_config(tmp_path, secagg_phase_timeout_s=5.0)) as s:
        make_version(tmp_path / "v0")
        s.coord.import_version(tmp_path / "v0")
        yield s


def _summing_round(s) -> int:
    """An open secure round at its summing step: two members' masked vectors stored, of a goal of 3."""
    rid = s.coord.start_round(secure_aggregation=True, goal_count=3, min_count=2, selection_window_s=0,
                              noise_multiplier=0.5)
    ids = _enrolled(s, 2)
    with s.coord.tx() as db:
        dim = queries.manifest(queries.stable(db)).num_params
        db.add(SecAggRound(round_id=rid, phase=coord_secagg.SUMMING, params_json=json.dumps({**PARAMS, "dim": dim})))
        for i, dev in enumerate(ids):
            digest = s.coord.uploads.put(rid, np.full(dim, 1 + i, "<u4").tobytes())
            db.add(SecAggMember(round_id=rid, device_id=dev, idx=i, enc_pk="00", mask_pk="00", shared=True,
                                masked_sha256=digest))
    return rid


def _enrolled(s, n: int) -> list[str]:
    key = s.coord.create_enrollment_key()
    return [FakeDevice(s.url, key).device_id for _ in range(n)]


def _no_masks(monkeypatch, during=None) -> None:
    """The unmask without secrets: the sum is the masked vectors' sum (`during` runs inside it)."""
    monkeypatch.setattr(coord_secagg, "_secrets", lambda s, rid, t: ({}, {}, [], []))

    def unmask(total, *a, **kw):
        if during is not None:
            during()
        return total

    monkeypatch.setattr(coord_secagg.secagg, "unmask_sum", unmask)


def test_a_round_closed_while_its_sum_is_unmasked_keeps_no_sum_and_counts_it_seen(served, monkeypatch):
    """The unmask's blob (the survivors' exact noised mean, or a discovery round's votes) stayed
    in the blob store for good, and the round counted in no epsilon."""
    s = served
    rid = _summing_round(s)
    _no_masks(monkeypatch, during=lambda: s.coord.close_round(rid, force=True))
    coord_secagg._sum(s.coord, rid)
    r = s.coord.get_round(rid)
    assert r["status"] == "failed" and "forced close" in r["reason"] and r["secure_phase"] == "summed"
    with s.coord._sessions() as db:
        dim = queries.manifest(queries.stable(db)).num_params
    assert not s.coord.blobs.exists(sha256_bytes(np.full(dim, 3, "<u4").tobytes()))   # 1 + 2, unmasked
    assert rid not in s.coord.uploads.rounds()   # nor the round's folder, made again by the sum
    with s.coord._sessions() as db:
        assert rid in {i for i in db.scalars(select(SecAggRound.round_id).where(SecAggRound.phase == "summed"))}
        assert queries.noise_seen(db) == {0.5: 1}   # one round at 0.5
    assert s.coord.status()["privacy"]["epsilon_local"] > 0


def test_a_sum_left_by_a_kill_before_it_was_recorded_goes_with_the_round(served, monkeypatch):
    """A kill between writing the unmasked sum and recording it in the round's row, and then the
    round closed (its deadline, a forced close): nothing named the file, which held the survivors'
    noised sum (a discovery round's votes) for good. It is kept with the round's uploads, which go
    when the round ends."""
    from coordinator import round_end
    from coordinator.models import Round

    s = served
    rid = _summing_round(s)
    _no_masks(monkeypatch)
    real_tx = s.coord.tx

    def killed(*a, **kw):
        if kw.get("decides"):
            raise SystemExit("killed")
        return real_tx(*a, **kw)

    monkeypatch.setattr(s.coord, "tx", killed)
    with pytest.raises(SystemExit):
        coord_secagg._sum(s.coord, rid)
    monkeypatch.setattr(s.coord, "tx", real_tx)
    with s.coord._sessions() as db:
        dim = queries.manifest(queries.stable(db)).num_params
        assert db.get(SecAggRound, rid).sum_sha256 is None
    unmasked = np.full(dim, 3, "<u4").tobytes()   # 1 + 2
    data = Path(s.config.data_dir)
    assert any(p.read_bytes() == unmasked for p in data.rglob("*") if p.is_file() and p.stat().st_size == len(unmasked))
    with s.coord.tx() as db:
        round_end.fail_round(s.coord, db, db.get(Round, rid), "not finished by its deadline")
    assert not any(p.read_bytes() == unmasked for p in data.rglob("*")
                   if p.is_file() and p.stat().st_size == len(unmasked))


def test_a_sum_slower_than_the_phase_timeout_runs_once(served, monkeypatch):
    """Each phase timeout started the unmask again beside the one still running (9 at once, a
    6 s sum took 27 s)."""
    s = served
    rid = _summing_round(s)
    started, release = [], threading.Event()

    def slow(coord, round_id):
        started.append(round_id)
        release.wait(10)

    monkeypatch.setattr(coord_secagg, "_sum", slow)
    with s.coord.tx() as db:
        db.get(SecAggRound, rid).phase_started_at = utcnow() - timedelta(hours=1)
    for _ in range(3):
        coord_secagg.advance(s.coord, rid)
        with s.coord.tx() as db:
            db.get(SecAggRound, rid).phase_started_at = utcnow() - timedelta(hours=1)   # timed out again
    release.set()
    time.sleep(0.2)
    assert started == [rid]


def test_a_summed_round_whose_close_failed_is_closed_by_the_next_request(served, monkeypatch):
    """The unmask's own close failed (a kill, a full disk): the round stayed open, summed, until
    its deadline (30 minutes by default), and no round could start."""
    s = served
    rid = _summing_round(s)
    # and /metrics counts a secure round's inputs, its masked vectors (it read 0 all along), apart
    # from its accepted updates, which every view counts once summed (the gauge said 2, they said 0)
    metrics = s.admin("GET", "/metrics").text
    assert "fedkeys_round_masked_inputs 2.0" in metrics and "fedkeys_round_accepted_updates 0.0" in metrics
    rnd = s.coord.get_round(rid)
    assert (rnd["masked"], rnd["accepted"]) == (2, 0)
    assert s.admin("GET", "/v1/admin/dashboard").json()["round"]["uploaded"] == 2
    _no_masks(monkeypatch)
    real = s.coord.close_round
    monkeypatch.setattr(s.coord, "close_round", lambda *a, **kw: None)   # the close after the sum is lost
    coord_secagg._sum(s.coord, rid)
    monkeypatch.setattr(s.coord, "close_round", real)
    assert s.coord.get_round(rid)["status"] == "open"
    s.coord.maintenance()
    assert s.coord.get_round(rid)["status"] == "done"


def test_a_masked_vector_of_random_bytes_fails_the_round_instead_of_making_a_candidate(served, monkeypatch):
    """A device that sent a masked vector of the right length but not made by `encode` (random
    bytes, NaN floats) made the round finish "done" with a random mean written as the candidate,
    which went out to the canary cohort. The mean's norm gives it away; the round fails, saying so."""
    s = served
    rid = _summing_round(s)
    with s.coord.tx() as db:
        dim = queries.manifest(queries.stable(db)).num_params
        member = db.scalars(select(SecAggMember).where(SecAggMember.round_id == rid, SecAggMember.idx == 1)).one()
        member.masked_sha256 = s.coord.uploads.put(
            rid, np.random.default_rng(0).integers(0, 2**32, size=dim, dtype=np.uint32).astype("<u4").tobytes())
    versions_before = len(s.coord.list_versions())
    _no_masks(monkeypatch)
    coord_secagg._sum(s.coord, rid)
    r = s.coord.get_round(rid)
    assert r["status"] == "failed" and "not made as the protocol says" in r["reason"], r["reason"]
    assert r["result_version_id"] is None and len(s.coord.list_versions()) == versions_before
    assert rid not in s.coord.uploads.rounds()


def test_a_restart_gives_each_open_phase_its_whole_timeout(tmp_path):
    """An outage longer than the phase timeout counted against the phase: the first request after
    the restart closed it with whoever got through first, and the devices that were retrying were
    dropped. A round being unmasked is unmasked again at once."""
    from coordinator.app import create_app

    cfg = make_config(tmp_path, secagg_phase_timeout_s=5.0)
    with serve(cfg) as s:
        make_version(tmp_path / "v0")
        s.coord.import_version(tmp_path / "v0")
        rid = s.coord.start_round(secure_aggregation=True, goal_count=4, min_count=3, selection_window_s=0)
        with s.coord.tx() as db:   # the phase began an hour ago: the coordinator was down
            db.add(SecAggRound(round_id=rid, phase=coord_secagg.SHARES, phase_started_at=utcnow() - timedelta(hours=1),
                               params_json=json.dumps({"n": 4, "n_min": 3})))
    app = create_app(cfg)   # the restart
    coord = app.extensions["fedkeys"]
    try:
        coord_secagg.advance(coord, rid)
        r = coord.get_round(rid)
        assert r["status"] == "open" and r["secure_phase"] == "shares", r
        with coord._sessions() as db:
            began = db.get(SecAggRound, rid).phase_started_at
        another = create_app(cfg)   # a second gunicorn worker starts: a phase within its timeout is left alone
        another.extensions["fedkeys"].close()
        with coord._sessions() as db:
            assert db.get(SecAggRound, rid).phase_started_at == began
    finally:
        coord.close()


def test_a_plan_whose_noise_no_ring_carries_fails_the_round_once(served, monkeypatch):
    """The keys step that reached the goal answered 500, and so did every roster request after it,
    until the round's deadline."""
    s = served
    rid = s.coord.start_round(secure_aggregation=True, goal_count=2, min_count=2, selection_window_s=0)
    ids = _enrolled(s, 2)
    with s.coord.tx() as db:
        db.add(SecAggRound(round_id=rid, phase=coord_secagg.KEYS))
        for dev in ids:
            db.add(SecAggMember(round_id=rid, device_id=dev, enc_pk="00", mask_pk="00"))

    def too_large(*a, **kw):
        raise ValueError("the noise is too large for this ring and dimension")

    monkeypatch.setattr(coord_secagg.ddp, "choose_scale", too_large)
    coord_secagg.advance(s.coord, rid)
    r = s.coord.get_round(rid)
    assert r["status"] == "failed" and "too large for this ring" in r["reason"]
    with s.coord._sessions() as db:
        assert db.scalar(select(func.count()).select_from(SecAggMember)) == 2


def test_a_failed_rounds_sum_is_not_kept(served):
    """A summed round failed before its close (a pin, a stable change: its close kept failing on a
    full disk) kept its sum for good: for a discovery round, the vote histogram, which at low noise
    shows one device's rare word."""
    from coordinator import round_end
    from coordinator.models import Round

    s = served
    rid = _summing_round(s)
    digest = s.coord.blobs.put(b"\x01\x00\x00\x00" * 8)
    with s.coord.tx() as db:
        row = db.get(SecAggRound, rid)
        row.phase, row.sum_sha256, row.survivors = coord_secagg.SUMMED, digest, 2
        masked = list(db.scalars(select(SecAggMember.masked_sha256).where(SecAggMember.round_id == rid)))
    assert len(masked) == 2 and all(s.coord.uploads.path(rid, d).is_file() for d in masked)
    with s.coord.tx() as db:
        round_end.fail_round(s.coord, db, db.get(Round, rid), "the stable version changed")
    assert not s.coord.blobs.exists(digest)
    assert not any(s.coord.uploads.path(rid, d).exists() for d in masked)   # each device's masked vector too
    with s.coord._sessions() as db:
        assert db.get(SecAggRound, rid).phase == coord_secagg.SUMMED and rid in {
            i for i in db.scalars(select(SecAggRound.round_id).where(SecAggRound.phase == "summed"))}


def test_an_unmask_that_could_not_start_is_tried_again(served, monkeypatch):
    """The round was marked as being unmasked before its thread started; a thread that could not
    start left the mark, and the round was never unmasked in that process."""
    s = served
    rid = _summing_round(s)
    started = []
    real_thread = coord_secagg.threading.Thread

    class OnceFailing(real_thread):
        def start(self):
            if not started:
                started.append("refused")
                raise RuntimeError("can't start new thread")
            started.append("started")

    monkeypatch.setattr(coord_secagg.threading, "Thread", OnceFailing)
    with s.coord.tx() as db:
        db.get(SecAggRound, rid).phase_started_at = utcnow() - timedelta(hours=1)
    with pytest.raises(RuntimeError):
        coord_secagg.advance(s.coord, rid)
    with s.coord.tx() as db:
        db.get(SecAggRound, rid).phase_started_at = utcnow() - timedelta(hours=1)
    coord_secagg.advance(s.coord, rid)
    assert started == ["refused", "started"]


def test_a_secure_step_of_another_protocol_version_is_answered_as_one(served):
    """A device of another protocol version is told so (final), at the secure steps as elsewhere:
    the steps parsed in coordinator.secagg answered `bad_request`, which a device retries."""
    dev = FakeDevice(served.url, served.coord.create_enrollment_key())
    rid = served.coord.start_round(secure_aggregation=True, goal_count=3, min_count=2, selection_window_s=0,
                                   noise_multiplier=0.5)
    for step in ("keys", "shares"):
        r = requests.post(served.url + sw.secagg_path(rid, step), json={"protocol_version": 99},
                          headers=dev.headers, timeout=10)
        assert (r.status_code, r.json()["error"]) == (400, wire.E_PROTOCOL_VERSION), (step, r.text)


def test_a_masked_vector_written_while_its_round_fails_is_late(served, monkeypatch):
    """A round that fails while a masked vector is being written deletes its folder under the bytes
    (`forget_contributions`): the device is told it is late (409), never a 500, and nothing stays."""
    from coordinator import round_end
    from coordinator.models import Assignment, Round
    from protocol import artifact

    s = served
    rid = s.coord.start_round(secure_aggregation=True, goal_count=3, min_count=2, selection_window_s=0,
                              noise_multiplier=0.5)
    dev = _enrolled(s, 1)[0]
    with s.coord.tx() as db:
        dim = queries.manifest(queries.stable(db)).num_params
        db.add(SecAggRound(round_id=rid, phase=coord_secagg.MASKED, params_json=json.dumps({**PARAMS, "dim": dim})))
        db.add(SecAggMember(round_id=rid, device_id=dev, idx=0, enc_pk="00", mask_pk="00", shared=True))
        db.add(Assignment(round_id=rid, device_id=dev, selected=True))
    real_replace, failed = artifact.os.replace, []

    def replace_after_the_round_fails(src, dst):
        if not failed and f"uploads/{rid}/" in str(dst):
            with s.coord.tx() as db:
                round_end.fail_round(s.coord, db, db.get(Round, rid), "the stable version changed")
            failed.append(rid)
        return real_replace(src, dst)

    monkeypatch.setattr(artifact.os, "replace", replace_after_the_round_fails)
    with pytest.raises(coord_secagg.ApiError) as e:
        coord_secagg.post_masked(s.coord, dev, rid, np.full(dim, 7, "<u4").tobytes())
    assert failed and e.value.status == 409 and e.value.code == wire.E_LATE, e.value.message
    assert not (s.coord.uploads.root / str(rid)).exists()


def test_a_command_that_moves_a_round_to_its_sum_sums_it_before_it_exits(served, monkeypatch):
    """`tick` and `start-round` run maintenance, which can time out a secure round's unmask: the
    sum then ran on a daemon thread that died with the command, and the round waited another
    phase timeout for the service. A process that serves nothing sums in the foreground."""
    s = served
    rid = _summing_round(s)
    threads, summed = [], []
    monkeypatch.setattr(coord_secagg, "_sum", lambda coord, round_id: summed.append(threading.current_thread()))
    real_thread = threading.Thread
    monkeypatch.setattr(coord_secagg.threading, "Thread",
                        lambda *a, **kw: threads.append(real_thread(*a, **kw)) or threads[-1])
    for serving in (True, False):
        s.coord.serving = serving
        with s.coord.tx() as db:
            db.get(SecAggRound, rid).phase_started_at = utcnow() - timedelta(hours=1)   # timed out
        coord_secagg.advance(s.coord, rid)
        for t in threads:
            t.join(timeout=30)
    s.coord.serving = True
    assert len(threads) == 1 and len(summed) == 2, (threads, summed)   # the service's on a thread of its own
    assert summed[1] is threading.current_thread()   # the command's, before `advance` returned


def test_a_secure_round_whose_phase_cannot_advance_does_not_stop_the_maintenance(served, monkeypatch, caplog):
    """An error advancing one secure round (graph_degree's overflow) escaped
    `maintenance`, which every request runs first: no due round closed, and no canary decision,
    retention or schedule ran until the round was closed by hand."""
    s = served
    rid = _summing_round(s)
    with s.coord.tx() as db:   # past its deadline: the maintenance closes it
        db.get(coord_secagg.Round, rid).deadline = utcnow() - timedelta(seconds=1)

    def broken(coord, round_id):
        raise OverflowError("int too large to convert to float")

    monkeypatch.setattr(coord_secagg, "advance", broken)
    with caplog.at_level("ERROR", logger="coordinator.secagg"):
        s.coord.maintenance()
    assert f"secure round {rid}: its phase could not be advanced" in caplog.text
    assert s.coord.get_round(rid)["status"] != "open"


def test_a_secret_is_recovered_past_several_wrong_reveals():
    """32 sets of t were tried per secret: with 3 wrong revealers among 9 shares (t = 5), a
    quarter of the secrets were not found and the round failed. Every set is tried
    while there are at most `TRIES`."""
    import os

    from protocol import secagg

    secret = os.urandom(32)
    found = 0
    for trial in range(20):
        shares = secagg.share_secret(secret, 5, 9)
        rng = np.random.default_rng(trial)
        for i in rng.choice(9, 3, replace=False):   # a wrong share at the same point
            shares[i] = shares[i][:2] + os.urandom(len(shares[i]) - 2)
        order = [shares[i] for i in rng.permutation(9)]
        found += coord_secagg._recovered(order, 5, None) == secret
    assert found == 20


def test_a_secure_round_whose_cohort_is_fixed_trains_no_more_devices(served):
    """A secure round overselects like a plain one; a selected device that checked in after its
    cohort was fixed was handed the train task at every check-in, trained, and was refused its
    keys as late, until the round ended (an operator probe: one device trained twice for nothing)."""
    s = served
    rid = s.coord.start_round(secure_aggregation=True, goal_count=2, min_count=2, overselect=1.5,
                              selection_window_s=0, noise_multiplier=0.5)
    key = s.coord.create_enrollment_key()
    devices = [FakeDevice(s.url, key) for _ in range(3)]
    assert [d.checkin().kind for d in devices[:2]] == [wire.TaskKind.TRAIN] * 2
    with s.coord.tx() as db:   # the first two joined, and the cohort was fixed at the goal
        dim = queries.manifest(queries.stable(db)).num_params
        db.add(SecAggRound(round_id=rid, phase=coord_secagg.SHARES, params_json=json.dumps({**PARAMS, "dim": dim})))
        for i, dev in enumerate(devices[:2]):
            db.add(SecAggMember(round_id=rid, device_id=dev.device_id, idx=i, enc_pk="00", mask_pk="00"))
    task = devices[2].checkin()
    assert task.kind == wire.TaskKind.COME_BACK and task.plan is None


def test_a_device_revoked_before_the_cohort_is_fixed_takes_no_place_in_it(served):
    """Revoking deleted the device's slot in the round but not the keys it had posted, so it could
    take a place in the cohort when it was fixed and then only count as a dropout (it can no
    longer post). Its keys go with its slot; after the cohort is fixed its place stays."""
    s = served
    rid = s.coord.start_round(secure_aggregation=True, goal_count=2, min_count=2, selection_window_s=0,
                              noise_multiplier=0.5)
    key = s.coord.create_enrollment_key()
    devices = [FakeDevice(s.url, key) for _ in range(3)]
    with s.coord.tx() as db:
        db.add(SecAggRound(round_id=rid, phase=coord_secagg.KEYS, params_json="{}"))
        for i, dev in enumerate(devices[:2]):
            db.add(SecAggMember(round_id=rid, device_id=dev.device_id, idx=i, enc_pk="00", mask_pk="00"))
    s.coord.revoke_device(devices[0].device_id)
    with s.coord._sessions() as db:
        left = db.scalars(select(SecAggMember.device_id).where(SecAggMember.round_id == rid)).all()
    assert left == [devices[1].device_id]
    with s.coord.tx() as db:   # the cohort fixed: a revoked member stays in the graph, as a dropout
        db.get(SecAggRound, rid).phase = coord_secagg.SHARES
    s.coord.revoke_device(devices[1].device_id)
    with s.coord._sessions() as db:
        assert db.scalars(select(SecAggMember.device_id).where(SecAggMember.round_id == rid)).all() == left


def test_a_summing_round_whose_masked_vector_is_lost_fails_at_once_saying_why(served, monkeypatch, caplog):
    """A survivor's masked vector missing from the data directory: no unmask can ever read it. The
    unmask raised FileNotFoundError, logged a traceback and was started again at every phase
    timeout until the round's deadline, which then failed it as "not finished (at its summing
    step)". A plain round's missing update fails its round at once, saying so; so does this."""
    s = served
    rid = _summing_round(s)
    _no_masks(monkeypatch)
    with s.coord._sessions() as db:
        lost = db.scalars(select(SecAggMember.masked_sha256).where(SecAggMember.round_id == rid)).first()
    s.coord.uploads.path(rid, lost).unlink()
    with caplog.at_level("WARNING"):
        coord_secagg._sum(s.coord, rid)
    r = s.coord.get_round(rid)
    assert r["status"] == "failed" and "masked vector's file is missing" in r["reason"], r
    assert "Traceback" not in caplog.text
    with s.coord._sessions() as db:
        assert queries.noise_seen(db) == {}   # nothing was unmasked


def test_a_round_whose_shares_reconstruct_nothing_is_not_logged_as_unmasked(served, monkeypatch, caplog):
    """Shares that reconstruct no secret fail the round; the log then also said "sum of 2 masked
    updates unmasked", for a sum that was never computed."""
    s = served
    rid = _summing_round(s)
    monkeypatch.setattr(coord_secagg, "_secrets", lambda db, round_id, t: ({}, {}, [], [1]))
    with caplog.at_level("INFO", logger="coordinator"):
        coord_secagg._sum(s.coord, rid)
    r = s.coord.get_round(rid)
    assert r["status"] == "failed" and "reconstruct no secret" in r["reason"], r
    assert "unmasked" not in caplog.text, caplog.text
