"""A full round over real loopback HTTP: check-in, over-selection, upload, streaming FedAvg."""

from __future__ import annotations

import numpy as np
import pytest
import requests

from coordinator.models import Version
from protocol import artifact, wire
from tests.helpers.coordinator_fakes import (
    SHAPES,
    FakeDevice,
    import_v0,
    make_config,
    make_version,
    random_delta,
    serve,
)


def _setup(served, n_devices: int):
    """`n_devices` enrolled fake devices; the base weights (v0000's)."""
    key = served.coord.create_enrollment_key(label="test")
    return served.v0_weights, [FakeDevice(served.url, key) for _ in range(n_devices)]


def test_full_round_aggregate_equals_numpy_weighted_average(served, tmp_path):
    base_weights, devices = _setup(served, 6)
    r = served.admin("POST", "/v1/admin/rounds", json={"goal_count": 3, "min_count": 2, "overselect": 1.34,
                                                            "noise_multiplier": 0.0})
    assert r.status_code == 201, r.text
    rnd = r.json()
    assert rnd["max_selected"] == 5 and rnd["status"] == "open"   # ceil(3 * 1.34) = ceil(4.02)
    tasks = [d.checkin() for d in devices]
    kinds = [t.kind for t in tasks]
    assert kinds.count(wire.TASK_TRAIN) == rnd["max_selected"]
    assert kinds[-1] == wire.TASK_COME_BACK and tasks[-1].retry_after > 0
    t0 = tasks[0]
    assert t0.base_version_id == "v0000" and t0.use_version_id == "v0000" and t0.plan.round_id == rnd["round_id"]
    # A device asking again before uploading gets the same task back (its first answer may have been lost).
    again = devices[0].checkin()
    assert again.kind == wire.TASK_TRAIN and again.plan == t0.plan
    # Each round has its own random key: a restored coordinator's round ids repeat, its keys do not.
    assert all(t.plan.round_key == t0.plan.round_key for t in tasks[:5]) and len(t0.plan.round_key) == 16

    counts = [10, 30, 2500]            # the last one is capped at max_example_weight=1000
    deltas = [random_delta(i) for i in range(3)]
    for i, (dev, delta, n) in enumerate(zip(devices[:3], deltas, counts, strict=True)):
        enc = "float16" if i == 1 else "float32"
        examples = min(n, 1000)
        resp = dev.upload(delta, round_id=t0.plan.round_id, base="v0000", examples=examples, encoding=enc)
        assert resp.status_code == 200, resp.text
        assert wire.UpdateReceipt.from_dict(resp.json()).round_id == t0.plan.round_id
    rnd = served.admin("GET", f"/v1/admin/rounds/{t0.plan.round_id}").json()
    assert rnd["status"] == "done" and rnd["accepted"] == 3 and rnd["selected"] == 5
    cand = rnd["result_version_id"]

    # What the server should have computed, in plain numpy (float16 round-trip for the second device).
    weights = np.array([10, 30, 1000], dtype=np.float64)
    sent = [deltas[0], {k: v.astype(np.float16).astype(np.float32) for k, v in deltas[1].items()}, deltas[2]]
    for name in SHAPES:
        expected = base_weights[name] + np.average(np.stack([s[name] for s in sent]), axis=0, weights=weights)
        got = artifact.decode_weights(devices[3].get(wire.PATH_VERSION_WEIGHTS, cand).content)[name]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)

    manifest = artifact.Manifest.from_dict(devices[3].get(wire.PATH_VERSION_MANIFEST, cand).json())
    assert manifest.parent == "v0000" and manifest.metrics["updates"] == 3
    pub = wire.SigningKey.from_dict(served.admin("GET", wire.PATH_SIGNING_KEY).json()).public_key_hex
    artifact.verify_manifest(manifest, pub)
    assert manifest.weights_sha256 == artifact.sha256_bytes(devices[3].get(wire.PATH_VERSION_WEIGHTS, cand).content)
    # What devices download: the candidate's own quantized weights, signed through the manifest.
    q8 = devices[3].get(wire.PATH_VERSION_WEIGHTS_Q8, cand).content
    assert manifest.weights_q8_sha256 == artifact.sha256_bytes(q8)
    base_manifest = artifact.Manifest.from_dict(devices[3].get(wire.PATH_VERSION_MANIFEST, "v0000").json())
    assert base_manifest.weights_q8_sha256 and base_manifest.weights_q8_sha256 != manifest.weights_q8_sha256
    back = artifact.dequantize(artifact.decode_weights(q8), manifest.tensors)
    for name in SHAPES:
        got = artifact.decode_weights(devices[3].get(wire.PATH_VERSION_WEIGHTS, cand).content)[name]
        np.testing.assert_allclose(back[name], got, atol=float(np.abs(got).max()) / 127)
    assert manifest.privacy["epsilon"] == "inf"   # noise_multiplier 0: no formal guarantee, and we say so

    # The canary cohort (fraction 1.0 here) is told to use the candidate and to evaluate it.
    t = devices[4].checkin()
    assert t.kind == wire.TASK_EVALUATE and t.use_version_id == cand
    assert t.evaluate_version_ids == (cand, "v0000")


def test_round_with_noise_records_finite_epsilon(served, tmp_path):
    _, devices = _setup(served, 3)
    rid = served.coord.start_round(goal_count=2, min_count=2, noise_multiplier=1.0, clip_norm=1.0)
    for d in devices[:2]:
        assert d.checkin().kind == wire.TASK_TRAIN
    for i, d in enumerate(devices[:2]):
        delta = random_delta(i, scale=0.01)
        assert d.upload(delta, round_id=rid, base="v0000", examples=5).status_code == 200
    versions = served.admin("GET", "/v1/admin/versions").json()["versions"]
    cand = versions[-1]
    assert cand["status"] == "candidate" and cand["round_id"] == rid
    # A round without a check-in draw (first come) samples nothing at random: q = 1, sigma = 1, one round.
    assert cand["privacy"]["history"] == [[1.0, 1.0, 1]]
    assert 0 < cand["epsilon"] <= cand["privacy"]["epsilon_local"] < 100   # equal at q = 1


def _expire(served, round_id: int) -> None:
    """Move the round's deadline into the past (instead of sleeping through it)."""
    from datetime import timedelta

    from coordinator.models import Round, utcnow
    with served.coord.tx() as s:
        s.get(Round, round_id).deadline = utcnow() - timedelta(seconds=1)


def test_a_revocation_that_withdraws_accepted_updates_is_in_the_log(served, caplog):
    """An operator's revocation withdraws the device's accepted work and left no trace in the log."""
    import logging

    _, devices = _setup(served, 2)
    rid = served.coord.start_round(goal_count=2, min_count=1)
    assert devices[0].checkin().kind == wire.TASK_TRAIN
    assert devices[0].upload(random_delta(0), round_id=rid, base="v0000", examples=5).status_code == 200
    with caplog.at_level(logging.WARNING, logger="coordinator.enrollment"):
        served.coord.revoke_device(devices[0].device_id)
    assert f"device {devices[0].device_id} revoked: 1 accepted updates in open rounds" in caplog.text


def test_a_round_failed_long_after_its_deadline_says_how_late(served):
    """A clock stepped an hour forward failed the open round as "only 1 accepted updates", and the
    operator blamed the devices: the reason says how late it was closed."""
    from datetime import timedelta

    from coordinator.models import Round, utcnow

    _setup(served, 1)
    rid = served.coord.start_round(goal_count=2, min_count=1)
    with served.coord.tx() as s:
        s.get(Round, rid).deadline = utcnow() - timedelta(minutes=70)
    reason = served.coord.close_round(rid)["reason"]
    assert reason.startswith("only 0 accepted updates, minimum 1 (closed 70 minutes after its deadline"), reason


def test_round_deadline_with_minimum_aggregates_and_without_fails(served, tmp_path):
    _, devices = _setup(served, 3)
    rid = served.coord.start_round(goal_count=3, min_count=2)
    for d in devices:
        assert d.checkin().kind == wire.TASK_TRAIN
    for i, d in enumerate(devices[:2]):
        assert d.upload(random_delta(i), round_id=rid, base="v0000", examples=5).status_code == 200
    _expire(served, rid)
    late = devices[2].upload(random_delta(2), round_id=rid, base="v0000", examples=5)
    assert late.status_code == 409 and late.json()["error"] == wire.E_LATE
    assert late.json()["message"].startswith(f"round {rid} is past its deadline")   # not "closed (open, ...)"
    assert served.admin("GET", f"/v1/admin/rounds/{rid}").json()["status"] == "open"   # closed lazily ...
    status = served.admin("GET", "/v1/admin/status").json()                              # ... on the next status
    assert status["latest_round"]["status"] == "done" and status["latest_round"]["accepted"] == 2
    cand = status["candidate_version_id"]
    assert served.admin("POST", f"/v1/admin/versions/{cand}/reject").json()["status"] == "rejected"

    rid2 = served.coord.start_round(goal_count=3, min_count=2)
    assert devices[0].checkin().kind == wire.TASK_TRAIN
    assert devices[0].upload(random_delta(9), round_id=rid2, base="v0000", examples=5).status_code == 200
    _expire(served, rid2)
    assert devices[1].checkin().kind == wire.TASK_COME_BACK        # check-in closes it too
    r = served.admin("GET", f"/v1/admin/rounds/{rid2}").json()
    assert r["status"] == "failed" and "minimum 2" in r["reason"]


def test_metrics_say_a_round_past_its_deadline_is_over_without_closing_it(served):
    """With every device away, /metrics said a round was open until someone opened the dashboard.
    A scrape does not close it (it would wait for the aggregation): the gauges say it is due."""
    _setup(served, 2)
    rid = served.coord.start_round(goal_count=2, min_count=2)
    metrics = served.admin("GET", "/metrics").text
    assert "fedkeys_round_open 1.0" in metrics and "fedkeys_round_overdue 0.0" in metrics
    _expire(served, rid)
    metrics = served.admin("GET", "/metrics").text
    assert "fedkeys_round_open 0.0" in metrics and "fedkeys_round_overdue 1.0" in metrics
    assert served.admin("GET", f"/v1/admin/rounds/{rid}").json()["status"] == "open"   # closed by a request
    assert served.admin("GET", "/v1/admin/status").json()["latest_round"]["status"] == "failed"
    assert "fedkeys_round_overdue 0.0" in served.admin("GET", "/metrics").text
    assert "fedkeys_round_secure_phase{" not in served.admin("GET", "/metrics").text   # a plain round: no step


def test_rounds_an_admin_command_opened_and_failed_are_counted(served):
    """An admin command is a process of its own: the rounds it opened or failed (`start-round`,
    `status` closing a due round) never reached the service's counters."""
    from coordinator.service import Coordinator

    admin = Coordinator(served.coord.config)
    try:
        rid = admin.start_round(goal_count=2, min_count=2)
        admin.close_round(rid, force=True)
    finally:
        admin.close()
    metrics = served.admin("GET", "/metrics").text
    assert 'fedkeys_rounds_total{event="started"} 1.0' in metrics
    assert 'fedkeys_rounds_total{event="failed"} 1.0' in metrics


def test_metrics_say_which_step_a_secure_round_is_at(served):
    """The dashboard showed a secure round's step; /metrics did not, so a round stuck on its keys
    step could not be alerted on."""
    _setup(served, 2)
    rid = served.coord.start_round(goal_count=2, min_count=2, secure_aggregation=True)
    assert 'fedkeys_round_secure_phase{phase="keys"} 1.0' in served.admin("GET", "/metrics").text
    served.coord.close_round(rid, force=True)
    assert "fedkeys_round_secure_phase{" not in served.admin("GET", "/metrics").text


def test_a_round_whose_aggregate_is_not_finite_fails_and_is_counted_failed(served, monkeypatch, caplog):
    """Such a round was marked failed but counted as done, with no log line (the other ways a round
    fails each wrote their own record; coordinator.round_end now writes it once for all)."""
    import dataclasses

    from coordinator import aggregation

    real = aggregation.round_step
    monkeypatch.setattr(aggregation, "round_step", lambda *a, **k: dataclasses.replace(real(*a, **k), weights=None))
    _, devices = _setup(served, 2)
    rid = served.coord.start_round(goal_count=2, min_count=2)
    for i, d in enumerate(devices):
        assert d.checkin().kind == wire.TASK_TRAIN
        assert d.upload(random_delta(i), round_id=rid, base="v0000", examples=5).status_code == 200
    r = served.admin("GET", f"/v1/admin/rounds/{rid}").json()
    assert r["status"] == "failed" and r["reason"] == "aggregate is not finite" and r["result_version_id"] is None
    metrics = served.admin("GET", "/metrics").text
    assert 'fedkeys_rounds_total{event="failed"} 1.0' in metrics and 'fedkeys_rounds_total{event="done"} 0.0' in metrics
    assert f"round {rid} failed: aggregate is not finite" in caplog.text


def test_ineligible_device_is_told_to_come_back(served, tmp_path):
    _, devices = _setup(served, 1)
    served.coord.start_round()
    t = devices[0].checkin(eligible=False)
    assert t.kind == wire.TASK_COME_BACK and t.use_version_id == "v0000"
    assert 60 / 4 * 0.5 <= t.retry_after <= 60 / 4 * 1.5   # open round: come back sooner, jittered


def test_fedavgm_carries_momentum_across_rounds(tmp_path):
    with serve(make_config(tmp_path, server_optimizer="fedavgm", server_momentum=0.5, server_learning_rate=1.0,
                           canary_fraction=0.01)) as served:
        import_v0(served, tmp_path / "v0")
        base, devices = _setup(served, 2)
        expected = {k: v.astype(np.float64) for k, v in base.items()}
        buf = None
        for rnd_no in range(2):
            rid = served.coord.start_round(goal_count=2, min_count=2)
            stable = served.coord.status()["stable_version_id"]
            deltas = [random_delta(10 * rnd_no + i) for i in range(2)]
            for d, delta in zip(devices, deltas, strict=True):
                assert d.checkin().kind == wire.TASK_TRAIN
                assert d.upload(delta, round_id=rid, base=stable, examples=3).status_code == 200
            cand = served.coord.get_round(rid)["result_version_id"]
            mean = {k: (deltas[0][k] + deltas[1][k]) / 2 for k in SHAPES}
            buf = mean if buf is None else {k: 0.5 * buf[k] + mean[k] for k in SHAPES}
            expected = {k: expected[k] + buf[k] for k in SHAPES}
            got = artifact.decode_weights(served.coord.version_file(cand, "weights")[0])
            for k in SHAPES:
                np.testing.assert_allclose(got[k], expected[k], rtol=1e-5, atol=1e-6)
            assert served.admin("POST", f"/v1/admin/versions/{cand}/promote").status_code == 200


def test_a_rounds_version_keeps_its_parents_licence_notices_signed(tmp_path):
    # The word list's CC BY-SA notice rides in the manifest (`tools.add_words --tail`): every
    # version a round makes from it carries it on, under the coordinator's signature.
    notices = {artifact.TOKENIZER: "CC BY-SA 4.0: word frequencies from Someone (2022)"}
    with serve(make_config(tmp_path)) as served:
        make_version(tmp_path / "v0", notices=notices)
        assert served.coord.import_version(tmp_path / "v0") == "v0000"
        key = served.coord.create_enrollment_key(label="test")
        devices = [FakeDevice(served.url, key) for _ in range(2)]
        r = served.admin("POST", "/v1/admin/rounds", json={"goal_count": 2, "min_count": 2, "noise_multiplier": 0.0})
        assert r.status_code == 201, r.text
        tasks = [d.checkin() for d in devices]
        for i, (dev, t) in enumerate(zip(devices, tasks, strict=True)):
            assert t.kind == wire.TASK_TRAIN
            assert dev.upload(random_delta(i), round_id=t.plan.round_id, base="v0000", examples=10).status_code == 200
        cand = served.admin("GET", f"/v1/admin/rounds/{tasks[0].plan.round_id}").json()["result_version_id"]
        manifest = artifact.Manifest.from_dict(devices[0].get(wire.PATH_VERSION_MANIFEST, cand).json())
        assert manifest.parent == "v0000" and manifest.notices == notices
        pub = wire.SigningKey.from_dict(served.admin("GET", wire.PATH_SIGNING_KEY).json()).public_key_hex
        artifact.verify_manifest(manifest, pub)


def test_a_device_with_nothing_to_train_on_takes_no_slot(served):
    """A device whose text is all held out (or none) was selected, answered "no training text",
    and kept its slot: with the goal at the devices there were, the round waited to its deadline."""
    _, devices = _setup(served, 2)
    rid = served.coord.start_round(goal_count=1, min_count=1, overselect=1.0)
    r = requests.post(served.url + wire.PATH_CHECKIN, headers=devices[0].headers, timeout=10,
                      json=wire.CheckinRequest(eligible=True, can_train=False).to_dict())
    assert r.status_code == 200 and r.json()["kind"] == wire.TASK_COME_BACK, r.text
    assert devices[1].checkin().kind == wire.TASK_TRAIN                 # the slot went to one that can
    assert served.admin("GET", f"/v1/admin/rounds/{rid}").json()["selected"] == 1


def test_what_single_devices_sent_is_deleted_once_their_round_ends(served):
    """Each plain update is one device's noised update (at the default noise close to its raw
    update): kept to be averaged, and then for good, about 2.7 MB per device per round. Once the
    round is aggregated or failed its files are gone; the rows (norms, counts) and the versions stay."""
    from sqlalchemy import select

    from coordinator.models import Update

    def files(rid: int) -> list:
        with served.coord._sessions() as db:
            return [served.coord.uploads.path(rid, d)
                    for d in db.scalars(select(Update.blob_sha256).where(Update.round_id == rid))]

    _, devices = _setup(served, 3)
    rid = served.coord.start_round(goal_count=2, min_count=2, noise_multiplier=0.0)
    for i, d in enumerate(devices[:2]):
        assert d.checkin().kind == wire.TASK_TRAIN
        if i == 1:   # the goal's last upload: just before it, the first update's file is there
            assert len(files(rid)) == 1 and files(rid)[0].is_file()
        assert d.upload(random_delta(i), round_id=rid, base="v0000", examples=5).status_code == 200
    done = served.admin("GET", f"/v1/admin/rounds/{rid}").json()
    assert done["status"] == "done" and len(files(rid)) == 2
    assert not any(f.exists() for f in files(rid))
    cand = done["result_version_id"]
    assert devices[2].get(wire.PATH_VERSION_WEIGHTS, cand).status_code == 200   # the candidate stays

    served.admin("POST", f"/v1/admin/versions/{cand}/reject")
    rid2 = served.coord.start_round(goal_count=3, min_count=2)
    assert devices[0].checkin().kind == wire.TASK_TRAIN
    assert devices[0].upload(random_delta(7), round_id=rid2, base="v0000", examples=5).status_code == 200
    assert files(rid2)[0].is_file()
    _expire(served, rid2)
    assert served.admin("GET", "/v1/admin/status").json()["latest_round"]["status"] == "failed"
    assert not files(rid2)[0].exists()


def test_an_update_equal_to_a_versions_weights_deletes_nothing_of_the_version(served):
    """A device can download the stable version's weights and upload those very bytes as its
    update (they pass validation at a norm bound this large): with every upload in the
    content-addressed store, deleting the round's uploads when it ended deleted the stable
    version's weights (every download of them a 500, and the service refused to start).
    Uploads have a store of their own. A revoked device's update goes with its round too."""
    _, devices = _setup(served, 3)
    rid = served.coord.start_round(goal_count=2, min_count=2, clip_norm=100.0, noise_multiplier=0.0)
    for d in devices[:2]:
        assert d.checkin().kind == wire.TASK_TRAIN
    stable = devices[0].get(wire.PATH_VERSION_WEIGHTS, "v0000").content
    assert devices[0].upload({}, round_id=rid, base="v0000", examples=5, body=stable).status_code == 200
    assert devices[1].upload(random_delta(1), round_id=rid, base="v0000", examples=5).status_code == 200
    done = served.admin("GET", f"/v1/admin/rounds/{rid}").json()
    assert done["status"] == "done"
    served.admin("POST", f"/v1/admin/versions/{done['result_version_id']}/reject")
    got = devices[2].get(wire.PATH_VERSION_WEIGHTS, "v0000")
    assert got.status_code == 200 and got.content == stable
    assert not (served.coord.uploads.root / str(rid)).exists()

    rid2 = served.coord.start_round(goal_count=3, min_count=2, noise_multiplier=0.0)
    assert devices[2].checkin().kind == wire.TASK_TRAIN
    assert devices[2].upload(random_delta(3), round_id=rid2, base="v0000", examples=5).status_code == 200
    served.admin("POST", f"/v1/admin/devices/{devices[2].device_id}/revoke")   # its row goes, not its file
    _expire(served, rid2)
    assert served.coord.close_round(rid2, force=True)["status"] == "failed"
    assert not (served.coord.uploads.root / str(rid2)).exists()


def test_at_start_uploads_of_ended_rounds_are_deleted_but_no_version_file(served):
    """A release before the upload store kept every update among the content-addressed blobs, and
    a kill between a round's end and its deletion leaves its folder: the service's start deletes
    both, never a file a version also names, nor an open round's uploads."""
    from coordinator import round_end
    from coordinator.models import Update, Version

    _, devices = _setup(served, 2)
    rid = served.coord.start_round(goal_count=1, min_count=1, noise_multiplier=0.0)
    assert devices[0].checkin().kind == wire.TASK_TRAIN
    assert devices[0].upload(random_delta(0), round_id=rid, base="v0000", examples=5).status_code == 200
    with served.coord.tx() as db:
        old = db.query(Update).filter(Update.round_id == rid).one().blob_sha256
        stable = db.get(Version, "v0000").weights_sha256
        db.add(Update(round_id=rid, device_id=devices[1].device_id, idempotency_key="k", blob_sha256=stable,
                      example_count=1, encoding="float32", l2_norm=1.0))   # as if it had sent v0's bytes
    legacy = served.coord.blobs.put(artifact.encode_weights(random_delta(0)))   # where the old release kept it
    assert legacy == old
    served.coord.uploads.put(rid, b"left by a kill")
    served.admin("POST", f"/v1/admin/versions/{served.admin('GET', '/v1/admin/status').json()['candidate_version_id']}"
                         "/reject")
    rid2 = served.coord.start_round(goal_count=2, min_count=2, noise_multiplier=0.0)
    served.coord.uploads.put(rid2, b"an open round's")
    (served.coord.uploads.root / served.coord.uploads.LEGACY_SWEPT).unlink()   # as an older release's data dir
    assert round_end.forget_ended_uploads(served.coord) == 2
    assert served.coord.uploads.legacy_swept()   # once: later starts do not read every update row again
    assert not served.coord.blobs.exists(old) and served.coord.blobs.exists(stable)
    assert not (served.coord.uploads.root / str(rid)).exists() and (served.coord.uploads.root / str(rid2)).is_dir()


def test_close_takes_force_in_its_body_too(served):
    """POST /rounds/N/close with {"force": true} was answered 200 with the round left open: only
    ?force=1 counted."""
    _, devices = _setup(served, 1)
    rid = served.coord.start_round(goal_count=3, min_count=1, noise_multiplier=0.0)
    assert devices[0].checkin().kind == wire.TASK_TRAIN
    assert devices[0].upload(random_delta(0), round_id=rid, base="v0000", examples=5).status_code == 200
    bad = served.admin("POST", f"/v1/admin/rounds/{rid}/close", json={"force": "yes"})
    assert bad.status_code == 400 and "force" in bad.json()["message"]
    r = served.admin("POST", f"/v1/admin/rounds/{rid}/close", json={"force": True})
    assert r.status_code == 200 and r.json()["status"] == "done", r.text


def test_a_lost_or_damaged_server_optimizer_state_restarts_the_optimizer(tmp_path, caplog):
    """The momentum a version's round left (`opt_state`) is not in an export, so no import can
    bring it back; a data directory that lost it, or holds it damaged, must not stop every later
    round from closing. The step starts the optimizer afresh, as after an import, and says so."""
    with serve(make_config(tmp_path, server_optimizer="fedavgm", server_momentum=0.5, server_learning_rate=1.0,
                           canary_fraction=0.01)) as served:
        import_v0(served, tmp_path / "v0")
        _, devices = _setup(served, 2)
        for rnd_no, harm in enumerate([None, "lose", "damage"]):
            rid = served.coord.start_round(goal_count=2, min_count=2)
            stable = served.coord.status()["stable_version_id"]
            if harm is not None:
                with served.coord._sessions() as s:
                    state = served.coord.blobs.path(s.get(Version, stable).opt_state_sha256)
                state.unlink() if harm == "lose" else state.write_bytes(b"\x00" * 9)
            deltas = [random_delta(10 * rnd_no + i) for i in range(2)]
            for d, delta in zip(devices, deltas, strict=True):
                assert d.checkin().kind == wire.TASK_TRAIN
                assert d.upload(delta, round_id=rid, base=stable, examples=3).status_code == 200
            cand = served.coord.get_round(rid)["result_version_id"]
            assert cand is not None, served.coord.get_round(rid)
            base = artifact.decode_weights(served.coord.version_file(stable, "weights")[0])
            got = artifact.decode_weights(served.coord.version_file(cand, "weights")[0])
            for k in SHAPES:   # a fresh optimizer's first step: the mean update itself
                np.testing.assert_allclose(got[k], base[k] + (deltas[0][k] + deltas[1][k]) / 2, rtol=1e-5, atol=1e-6)
            if harm is not None:
                assert f"version {stable}: its server optimizer state" in caplog.text
            assert served.admin("POST", f"/v1/admin/versions/{cand}/promote").status_code == 200


def test_a_body_limit_no_update_fits_under_opens_no_round(tmp_path):
    """`max_body_bytes` under the stable version's update (an operator's 1 MB for a 2.7 MB float16
    update): every selected device trained, charged its privacy ledger and was refused (413) with
    nothing in the coordinator's log or rejections; the round sat at 0 accepted until its deadline."""
    import pytest

    from coordinator.errors import ApiError
    from tests.helpers.coordinator_fakes import make_config, serve
    from tests.helpers.versions import SHAPES

    params = sum(int(np.prod(s)) for s in SHAPES.values())
    with serve(make_config(tmp_path, max_body_bytes=2 * params - 1)) as s:
        import_v0(s, tmp_path / "v0")
        with pytest.raises(ApiError, match="max_body_bytes .* under .* update") as e:
            s.coord.start_round()
        assert e.value.status == 400
        assert s.coord.status()["latest_round"] is None
    with serve(make_config(tmp_path / "big", max_body_bytes=4 * params - 1)) as s:   # float16 fits, a masked vector not
        import_v0(s, tmp_path / "big" / "v0")
        with pytest.raises(ApiError, match="max_body_bytes"):
            s.coord.start_round(secure_aggregation=True)
        assert s.coord.start_round() == 1


def test_a_lasting_refusal_of_a_scheduled_round_is_logged_once_a_while(tmp_path, monkeypatch, caplog):
    """Maintenance runs on every check-in: a scheduled round the settings refuse for good (a body
    limit no update fits in) logged "scheduled round not opened" on every pass."""
    import logging

    from coordinator import schedule
    from coordinator.errors import ApiError
    from protocol import wire
    from tests.helpers.coordinator_fakes import make_config, serve

    with serve(make_config(tmp_path, round_interval_s=5.0)) as s:
        said = ["max_body_bytes 10 is under the smallest update"]

        def refused() -> int:
            raise ApiError(400, wire.E_BAD_REQUEST, said[0])

        monkeypatch.setattr(schedule, "next_round_due", lambda *a, **kw: True)
        monkeypatch.setattr(s.coord, "start_round", refused)
        with caplog.at_level(logging.INFO, logger="coordinator.schedule"):
            for _ in range(5):
                schedule.open_if_due(s.coord)
            said[0] = "a round is already open"   # another reason is said at once
            schedule.open_if_due(s.coord)
        lines = [r.getMessage() for r in caplog.records if "scheduled round not opened" in r.getMessage()]
        assert lines == ["scheduled round not opened: max_body_bytes 10 is under the smallest update",
                         "scheduled round not opened: a round is already open"], lines


def _set_right(coord, lead) -> None:
    """This process saw the clock `lead` ahead before it was set right (the stamps below are what
    the fast clock wrote)."""
    import time

    coord.clock_skew = time.time() - time.monotonic() + lead.total_seconds()


def test_a_clock_that_ran_ahead_holds_no_round_up_once_it_is_set_right(tmp_path):
    """A coordinator whose clock ran 5 hours fast, then was set right: the open round's check-in
    window told every device checking in to come back in 5 hours, and no scheduled round opened
    until the clock caught up with the close of the last one, 5 hours later."""
    import time
    from datetime import timedelta

    from coordinator.models import Round, utcnow

    lead = timedelta(hours=5)
    with serve(make_config(tmp_path, round_interval_s=1.0, selection_window_s=30.0, goal_count=1,
                           min_count=1)) as s:
        import_v0(s, tmp_path / "v0")
        device = FakeDevice(s.url, s.coord.create_enrollment_key())
        rid = s.coord.start_round()
        with s.coord.tx() as t:   # as the fast clock stamped it
            r = t.get(Round, rid)
            r.created_at, r.deadline, r.selection_ends_at = (r.created_at + lead, r.deadline + lead,
                                                             r.selection_ends_at + lead)
        _set_right(s.coord, lead)
        task = device.checkin()
        assert task.kind == wire.TASK_COME_BACK and task.retry_after <= 40, task.retry_after   # the window's 30 s
        with s.coord.tx() as t:
            r = t.get(Round, rid)
            assert timedelta(seconds=590) <= r.deadline - utcnow() <= timedelta(seconds=600)   # its time left
        s.coord.close_round(rid, force=True)
        with s.coord.tx() as t:
            t.get(Round, rid).closed_at = utcnow() + lead
        _set_right(s.coord, lead)
        s.coord.maintenance()
        time.sleep(1.1)   # round_interval_s after the clock was set right
        s.coord.maintenance()
        assert s.coord.status()["latest_round"]["round_id"] == rid + 1


def test_a_round_a_fast_clock_opened_keeps_the_time_it_had_left(tmp_path):
    """Opened 5 minutes before a clock 5 hours fast was set right, a 600 s round was given its 600 s
    again from the correction, not the 300 s it had left. And a database out of reach at the
    correction left the stamps ahead for good: the step was forgotten before they were moved."""
    from datetime import timedelta

    from sqlalchemy.exc import OperationalError

    from coordinator import rounds
    from coordinator.models import Round, utcnow

    lead = timedelta(hours=5)
    with serve(make_config(tmp_path, goal_count=1, min_count=1)) as s:
        import_v0(s, tmp_path / "v0")
        rid = s.coord.start_round()
        with s.coord.tx() as t:   # opened 5 minutes ago, as the fast clock stamped it
            r = t.get(Round, rid)
            shift = lead - timedelta(minutes=5)
            r.created_at, r.deadline = r.created_at + shift, r.deadline + shift
        _set_right(s.coord, lead)
        sessions = s.coord._sessions

        def out_of_reach():
            raise OperationalError("SELECT 1", {}, Exception("could not connect"))

        s.coord._sessions = out_of_reach
        with pytest.raises(OperationalError):
            rounds.restamp_ahead(s.coord)
        s.coord._sessions = sessions
        rounds.restamp_ahead(s.coord)      # the next request
        with s.coord.tx() as t:
            left = t.get(Round, rid).deadline - utcnow()
        assert timedelta(seconds=290) <= left <= timedelta(seconds=300), left


def test_versions_decided_and_canary_tasks_issued_by_a_clock_that_ran_ahead_are_stamped_now(tmp_path):
    """Retired while the clock ran 5 hours fast, v0000 sorted as the most recently decided for 5
    hours once the clock was set right: with keep_versions 1 the next retired stable version,
    v0001, lost its files at once and could not be rolled back to. A canary task issued then held
    its place for 5 hours and 10 minutes, an enrollment key made then enrolled devices 5 hours past
    its expiry, and a device seen then counted as active 5 hours longer."""
    from datetime import timedelta

    from coordinator.models import Device, EnrollmentKey, Evaluation, Version, utcnow

    lead = timedelta(hours=5)
    with serve(make_config(tmp_path, keep_versions=1)) as s:
        import_v0(s, tmp_path / "v0")
        device = FakeDevice(s.url, s.coord.create_enrollment_key())
        make_version(tmp_path / "v1", "v0001", seed=1)
        s.coord.import_version(tmp_path / "v1", as_candidate=False)   # v0000 retired
        with s.coord.tx() as t:   # as the fast clock stamped them
            t.get(Version, "v0000").decided_at = utcnow() + lead
            t.add(Evaluation(candidate_version_id="v0001", device_id=device.device_id, report_json="",
                             created_at=utcnow() + lead))
            t.get(Device, device.device_id).last_seen_at = utcnow() + lead
            for k in t.query(EnrollmentKey):
                k.created_at, k.expires_at = k.created_at + lead, k.expires_at + lead
        _set_right(s.coord, lead)
        s.coord.maintenance()
        make_version(tmp_path / "v2", "v0002", seed=2)
        s.coord.import_version(tmp_path / "v2", as_candidate=False)   # v0001 retired after the correction
        s.coord.maintenance()
        with s.coord.tx() as t:
            assert not t.get(Version, "v0001").files_pruned and t.get(Version, "v0000").files_pruned
            assert all(e.created_at <= utcnow() for e in t.query(Evaluation))
            assert t.get(Device, device.device_id).last_seen_at <= utcnow()
            week = timedelta(seconds=s.config.enrollment_key_ttl_s)
            assert all(week - timedelta(minutes=1) <= k.expires_at - utcnow() <= week for k in t.query(EnrollmentKey))
        assert s.admin("POST", "/v1/admin/versions/v0001/rollback").json()["status"] == "stable"


def test_a_secure_rounds_step_a_clock_that_ran_ahead_started_times_out_from_now(tmp_path):
    """A secure round's step started while the clock ran 5 hours fast did not time out for 5 hours
    once the clock was set right, even in a round opened before the clock ran ahead."""
    from datetime import timedelta

    from coordinator.models import utcnow
    from coordinator.models_secagg import SecAggRound
    from coordinator.states import SecAggPhase

    with serve(make_config(tmp_path, goal_count=3, min_count=2)) as s:
        import_v0(s, tmp_path / "v0")
        rid = s.coord.start_round(secure_aggregation=True)
        with s.coord.tx() as t:   # its first device's keys, as the fast clock stamped them
            t.add(SecAggRound(round_id=rid, phase=SecAggPhase.KEYS, phase_started_at=utcnow() + timedelta(hours=5),
                              params_json="{}", survivors=0, stats_json="{}"))
        _set_right(s.coord, timedelta(hours=5))
        s.coord.maintenance()
        with s.coord.tx() as t:
            assert t.get(SecAggRound, rid).phase_started_at <= utcnow()


def test_stamps_ahead_are_looked_for_when_the_clock_steps_back_not_at_start(tmp_path, monkeypatch):
    """Not a read on every request: after this host's wall clock fell behind its monotonic one
    (a step forward and back again too). Not at a start, where the clock may be the wrong one."""
    import time
    from datetime import timedelta
    from types import SimpleNamespace

    from coordinator import rounds
    from coordinator.models import Round, utcnow

    offset = [0.0]
    monkeypatch.setattr(rounds, "time", SimpleNamespace(**vars(time) | {"time": lambda: time.time() + offset[0]}))
    with serve(make_config(tmp_path, goal_count=1, min_count=1)) as s:
        import_v0(s, tmp_path / "v0")
        rid = s.coord.start_round()
        s.coord.close_round(rid, force=True)

        def ahead() -> bool:
            with s.coord.tx() as t:
                return t.get(Round, rid).closed_at > utcnow() + timedelta(minutes=1)

        offset[0] = 3600.0                 # stepped forward: nothing it stamps needs moving yet
        s.coord.maintenance()
        with s.coord.tx() as t:            # what it stamped meanwhile
            t.get(Round, rid).closed_at = utcnow() + timedelta(hours=1)
        s.coord.maintenance()
        assert ahead()                     # no step back seen: not looked for
        offset[0] = 0.0                    # set right
        s.coord.maintenance()
        assert not ahead()
        with s.coord.tx() as t:
            t.get(Round, rid).closed_at = utcnow() + timedelta(hours=1)
        s.coord.clock_skew = time.time() - time.monotonic()   # as a process that starts now
        s.coord.maintenance()
        assert ahead()
