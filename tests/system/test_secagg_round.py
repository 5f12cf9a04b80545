"""Secure aggregation end to end: real device processes on loopback, a real coordinator (SQLite,
blob store), 30% of the cohort killed after sharing their seeds and before uploading, and one
more killed after uploading, before revealing its shares.

The coordinator's database and blob store must hold no individual update (only masked vectors
and the sum), the aggregate must equal the plain mean of the survivors' updates up to the
stated quantization bound, and honest devices must refuse a coordinator that asks for both
kinds of share of one device.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from coordinator import privacy
from coordinator import secagg as coord_secagg
from coordinator.models import Update
from coordinator.models_secagg import SecAggMember, SecAggReveal, SecAggRound
from edge_runtime import agent, paths, secagg_client, trainer
from edge_runtime import cache as text_cache
from edge_runtime.cache import open_cache
from edge_runtime.config import EdgeConfig
from edge_runtime.identity import load_identity
from protocol import artifact, ddp, secagg, wire
from protocol import secagg_wire as sw
from protocol.artifact import read_manifest
from tests.helpers.coordinator_fakes import make_config, serve, start_server, stop_server
from tests.helpers.secure_rounds import run_in_threads, run_once_each, wait_closed

ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["see you at the station", "thanks for dinner", "call me later", "the kids loved it"]


def _devices(s, tmp_path: Path, n: int) -> list[EdgeConfig]:
    key = s.coord.create_enrollment_key()
    cfgs = []
    for i in range(n):
        cfg = EdgeConfig(data_dir=str(tmp_path / f"device{i}"), eligibility="override:eligible", coordinator=s.url,
                         public_key=s.coord.public_key_hex, min_wait_s=0.1)
        agent.enroll(cfg, key)
        for t in (TEXTS[i % 4], TEXTS[(i + 1) % 4], f"device {i} says hello"):
            assert text_cache.type_text(cfg, t, "message")
        cfgs.append(cfg)
    return cfgs


def _plain_update(cfg: EdgeConfig, version: Path, plan: wire.TrainPlan) -> np.ndarray:
    """What this device's clipped float update is: same text, same plan (one batch: order-free)."""
    with open_cache(cfg) as cache:
        texts = [r.text for r in cache.training_records()]
    windows = trainer.text_windows(version, texts, read_manifest(version))
    assert len(windows) <= plan.max_examples  # one deterministic batch
    return trainer.train(version, texts, secagg_client.local_plan(plan), shuffle_seed=0).update.vector


def _device_id(cfg: EdgeConfig) -> str:
    return load_identity(Path(cfg.data_dir)).device_id


def test_secure_round_real_device_processes_30pct_dropout(tmp_path, exported_version):
    n, n_drop = 10, 3
    conf = make_config(tmp_path, goal_count=n, min_count=7, overselect=1.0, secagg_poll_s=1.0,
                       secagg_phase_timeout_s=15.0, clip_norm=1.0, round_duration_s=600.0)
    with serve(conf) as s:
        # The masked vectors are deleted when the round ends: what they held is read as they go.
        discarded: dict[str, bytes] = {}
        discard_round = s.coord.uploads.discard_round

        def read_then_discard(round_id: int) -> None:
            folder = s.coord.uploads.root / str(round_id)
            discarded.update({f.name: f.read_bytes() for f in folder.glob("*") if f.is_file()})
            discard_round(round_id)

        s.coord.uploads.discard_round = read_then_discard
        base_id = s.coord.import_version(exported_version)
        cfgs = _devices(s, tmp_path, n)
        rid = s.coord.start_round(epochs=1, batch_size=4, learning_rate=0.5, noise_multiplier=0.0, max_examples=4,
                                  secure_aggregation=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEDKEYS_")} | {"PYTHONPATH": str(ROOT)}
        procs = {}
        for cfg in cfgs:
            with open(Path(cfg.data_dir) / "run.log", "wb") as log:
                procs[_device_id(cfg)] = subprocess.Popen(
                    [sys.executable, "-m", "edge_runtime", "run", "--once", "--data-dir", cfg.data_dir,
                     # noise-free, so the sum can be compared with the plain mean: they opt out of the floor
                     "--eligibility", "override:eligible", "--set", "min_noise_multiplier=0"], cwd=ROOT, env=env,
                    stdout=log, stderr=log)
        killed: list[str] = []
        mute: str | None = None       # a survivor that dies after masking: its seed comes from shares
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and any(p.poll() is None for p in procs.values()):
                with s.coord._sessions() as db:
                    rows = db.execute(select(SecAggMember.device_id, SecAggMember.shared, SecAggMember.masked_sha256)
                                      .where(SecAggMember.round_id == rid).order_by(SecAggMember.id)).all()
                for dev, shared, masked in rows:
                    if shared and dev not in killed and len(killed) < n_drop:   # the first to share drop out
                        procs[dev].send_signal(signal.SIGKILL)
                        killed.append(dev)
                    elif masked and mute is None and dev not in killed:
                        procs[dev].send_signal(signal.SIGKILL)
                        mute = dev
                time.sleep(0.02)
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
                p.wait(10)
        logs = {d: (Path(c.data_dir) / "run.log").read_text(errors="replace")[-1500:]
                for d, c in zip(procs, cfgs, strict=True)}
        rnd = wait_closed(s.coord, rid)
        with s.coord._sessions() as db:
            row = db.get(SecAggRound, rid)
            state = (row.phase, row.survivors, row.stats_json, [(m.idx, m.shared, m.masked_sha256 is not None,
                     m.revealed) for m in db.scalars(select(SecAggMember).where(SecAggMember.round_id == rid))])
        assert rnd["status"] == "done", (rnd["reason"], state, killed, logs)
        with s.coord._sessions() as db:
            members = {m.device_id: m for m in db.scalars(select(SecAggMember).where(SecAggMember.round_id == rid))}
            row = db.get(SecAggRound, rid)
            assert all(members[d].shared and members[d].masked_sha256 is None for d in killed), "dropped too late"
            assert all(m.seed_sha256 and len(m.seed_sha256) == 64 for m in members.values())   # seeds committed
            assert mute is not None and members[mute].masked_sha256 and not members[mute].revealed
            assert row.survivors == n - n_drop and rnd["accepted"] == n - n_drop
            assert db.scalar(select(func.count()).select_from(Update)) == 0             # no plain update rows
            assert db.scalar(select(func.count()).select_from(SecAggReveal)) == 0       # reveals deleted
            params = coord_secagg._params(row)
            sum_digest = row.sum_sha256
        for d in set(procs) - set(killed) - {mute}:
            assert "task train: uploaded" in logs[d] and "mode=secure" in logs[d], logs[d]

        # The aggregate equals the plain mean of the survivors' updates, up to the stated bound.
        plan = wire.TrainPlan.from_dict(rnd["plan"])
        by_id = {_device_id(c): c for c in cfgs}
        # Each device trained from the version as it downloaded it (the signed int8 form, dequantized).
        installed = {d: Path(by_id[d].data_dir) / paths.MODELS_DIR / base_id for d in procs}
        assert all((v / artifact.WEIGHTS_Q8).is_file() for v in installed.values())
        plain = {d: _plain_update(by_id[d], installed[d], plan) for d in procs}
        survivors = [d for d in procs if d not in killed]
        want = np.mean([plain[d] for d in survivors], axis=0)
        cand = rnd["result_version_id"]
        tensors = artifact.load_version(exported_version)[0].tensors
        new = artifact.flatten(artifact.decode_weights(s.coord.version_file(cand, "weights")[0]), tensors)
        base = artifact.flatten(artifact.decode_weights(s.coord.version_file(base_id, "weights")[0]), tensors)
        got = new.astype(np.float64) - base
        # quantization (stated bound) + float32 rounding when the new weights were stored
        bound = ddp.mean_error_bound(params["scale"]) + float(np.spacing(np.abs(new).max()))
        assert np.abs(got - want).max() <= bound, (np.abs(got - want).max(), bound)
        everyone = np.mean([plain[d] for d in procs], axis=0)  # positive control: a different set is far off
        assert np.abs(got - everyone).max() > 100 * bound
        assert np.linalg.norm(want) > 1e-3

        # Nothing the coordinator stored is an individual update.
        data_dir = Path(s.config.data_dir)
        files = {p: p.read_bytes() for p in data_dir.rglob("*") if p.is_file()}
        files |= {p: p.read_bytes() for p in tmp_path.glob("coordinator.db*")}
        for d in survivors:
            v = plain[d]
            for probe in (v[:32].astype("<f4").tobytes(), v[:32].astype("<f2").tobytes(),
                          ddp.encode(v[:32], params["scale"], 0.0, seed=1).astype("<u4").tobytes()[:16]):
                assert not any(probe in data for data in files.values()), d
            masked = np.frombuffer(discarded[members[d].masked_sha256], "<u4").view(np.int32)
            unmasked = ddp.encode(v, params["scale"], 0.0, seed=2).view(np.int32)
            assert np.corrcoef(unmasked.astype(float), v)[0, 1] > 0.99          # the control correlates
            assert abs(np.corrcoef(masked.astype(float), v)[0, 1]) < 0.1        # the stored one does not
        masked_digests = {m.masked_sha256 for m in members.values() if m.masked_sha256}
        blob_names = {p.name for p in (data_dir / "blobs").rglob("*") if p.is_file()}
        upload_names = {p.name for p in (data_dir / "uploads").rglob("*") if p.is_file()}
        assert not ({sum_digest} | masked_digests) & (blob_names | upload_names)   # gone with the round
        assert masked_digests <= set(discarded)
        print(f"secure round: {n} devices, {len(killed)} killed after sharing, 1 after masking, sum of "
              f"{len(survivors)} within {np.abs(got - want).max():.2e} of the plain mean (bound {bound:.2e})")


def test_honest_devices_refuse_a_coordinator_asking_for_both_shares(tmp_path, exported_version, monkeypatch):
    n = 4
    conf = make_config(tmp_path, goal_count=n, min_count=3, overselect=1.0, secagg_poll_s=1.0,
                       secagg_phase_timeout_s=8.0, clip_norm=1.0)
    honest = coord_secagg.unmask_request_for

    def greedy(s, row, m):     # the attacker: "every neighbour survived AND dropped"
        req = honest(s, row, m)
        everyone = tuple(sorted(set(req.survivors) | set(req.dropped)))
        return sw.SecAggUnmaskRequest(everyone, everyone, req.survivor_count)

    monkeypatch.setattr(coord_secagg, "unmask_request_for", greedy)
    with serve(conf) as s:
        s.coord.import_version(exported_version)
        cfgs = _devices(s, tmp_path, n)
        rid = s.coord.start_round(epochs=1, batch_size=4, learning_rate=0.5, max_examples=4, secure_aggregation=True)
        results = run_once_each(cfgs)
        assert all(r is not None and r.outcome.startswith("refused (asked for both") for r in results), results
        with s.coord._sessions() as db:
            assert db.scalar(select(func.count()).select_from(SecAggReveal)) == 0     # nothing revealed
            assert db.get(SecAggRound, rid).phase == "unmask"
        assert s.coord.get_round(rid)["status"] == "open"


def test_a_device_whose_inbox_is_withheld_uploads_nothing(tmp_path, exported_version, monkeypatch):
    """A coordinator that showed one device an empty inbox (and relayed honestly to the others)
    got that device's vector masked by its self mask alone, which the ordinary unmask step then
    reveals: its update, or its word vote, in the clear. The device now refuses with fewer than t
    neighbours' shares (Bonawitz et al.'s round-2 abort)."""
    n = 4
    conf = make_config(tmp_path, goal_count=n, min_count=3, overselect=1.0, secagg_poll_s=1.0,
                       secagg_phase_timeout_s=8.0, clip_norm=1.0)
    honest, targeted = coord_secagg.inbox, []

    def withholding(coord, device_id, round_id):
        answer = honest(coord, device_id, round_id)
        if answer.get("ready") and (not targeted or targeted == [device_id]):
            targeted[:] = [device_id]
            return {**answer, "shares": []}
        return answer

    monkeypatch.setattr(coord_secagg, "inbox", withholding)
    with serve(conf) as s:
        s.coord.import_version(exported_version)
        cfgs = _devices(s, tmp_path, n)
        rid = s.coord.start_round(epochs=1, batch_size=4, learning_rate=0.5, max_examples=4, secure_aggregation=True)
        results = {_device_id(c): r for c, r in zip(cfgs, run_once_each(cfgs), strict=True)}
        assert len(targeted) == 1, targeted
        assert results[targeted[0]].outcome.startswith("refused (only 0 of 3 neighbours' shares arrived"), results
        with s.coord._sessions() as db:
            target = db.scalar(select(SecAggMember).where(SecAggMember.round_id == rid,
                                                          SecAggMember.device_id == targeted[0]))
            assert target.masked_sha256 is None   # nothing of its vector reached the coordinator
        # the others' round ends without it (and no unmask is left running when the service stops)
        rnd = wait_closed(s.coord, rid)
        assert (rnd["status"], rnd["accepted"]) == ("done", n - 1), rnd


def test_a_device_whose_text_is_wiped_during_the_round_sends_no_vector(tmp_path, exported_version, monkeypatch):
    """A wipe while the device waited in a secure round (its waits last minutes) did not stop it:
    its masked vector, learned from the wiped text, was summed into the candidate (a
    discovery round's vote the same). It now drops out before the masked vector goes."""
    from edge_runtime.cache import TextCache

    n = 4
    conf = make_config(tmp_path, goal_count=n, min_count=3, overselect=1.0, secagg_poll_s=1.0,
                       secagg_phase_timeout_s=8.0, clip_norm=1.0)
    honest, wiped = coord_secagg.inbox, []
    with serve(conf) as s:
        s.coord.import_version(exported_version)
        cfgs = _devices(s, tmp_path, n)
        by_id = {_device_id(c): c for c in cfgs}

        def wiping_one(coord, device_id, round_id):
            answer = honest(coord, device_id, round_id)
            if answer.get("ready") and not wiped:   # the user wipes while the device waits in the round
                wiped.append(device_id)
                with TextCache(by_id[device_id].data_dir) as cache:
                    cache.wipe()
            return answer

        monkeypatch.setattr(coord_secagg, "inbox", wiping_one)
        rid = s.coord.start_round(epochs=1, batch_size=4, learning_rate=0.5, max_examples=4, secure_aggregation=True)
        results = {_device_id(c): r for c, r in zip(cfgs, run_once_each(cfgs), strict=True)}
        assert results[wiped[0]].outcome == "discarded (the text was wiped meanwhile)", results
        with s.coord._sessions() as db:
            member = db.scalar(select(SecAggMember).where(SecAggMember.round_id == rid,
                                                          SecAggMember.device_id == wiped[0]))
            assert member.masked_sha256 is None   # nothing learned from the wiped text reached the coordinator
        rnd = wait_closed(s.coord, rid)
        assert (rnd["status"], rnd["accepted"]) == ("done", n - 1), rnd


def test_a_key_no_exchange_can_use_is_refused_at_the_keys_step(tmp_path):
    """One device posting a low-order X25519 key (all zeros) was stored and relayed: every
    neighbour's key agreement then failed and so did the whole round. Refused now, as a device
    that dropped out would be tolerated."""
    import requests

    from tests.helpers.coordinator_fakes import FakeDevice, make_version

    with serve(make_config(tmp_path, goal_count=3, min_count=2, overselect=1.0)) as s:
        make_version(tmp_path / "v0")
        s.coord.import_version(tmp_path / "v0")
        key = s.coord.create_enrollment_key()
        evil, good = FakeDevice(s.url, key), FakeDevice(s.url, key)
        rid = s.coord.start_round(secure_aggregation=True, selection_window_s=0)
        for d in (evil, good):
            assert d.checkin().kind == wire.TASK_TRAIN
        post = lambda d, enc, mask: requests.post(   # noqa: E731
            s.url + sw.secagg_path(rid, "keys"), json=sw.SecAggKeys(enc, mask).to_dict(), headers=d.headers, timeout=10)
        fine = secagg.generate_keypair()[1]
        for enc, mask in ((bytes(32), fine), (fine, bytes(32))):
            r = post(evil, enc, mask)
            assert (r.status_code, r.json()["error"]) == (400, wire.E_BAD_REQUEST), r.text
        assert post(good, fine, secagg.generate_keypair()[1]).status_code == 200
        with s.coord._sessions() as db:
            assert [m.device_id for m in db.scalars(select(SecAggMember).where(SecAggMember.round_id == rid))] == [
                good.device_id]


def test_one_device_revealing_wrong_shares_does_not_sink_the_round(tmp_path, exported_version, monkeypatch):
    """A wrong share (right x, random y) made the unmask raise, which was retried at every phase
    timeout until the round's deadline, then failed as 'only 0 accepted updates'. Each owner's
    secret now comes from a set of t shares that reconstructs (each has k); a round whose shares
    reconstruct nothing fails at once, saying so."""
    n = 4   # k = 3 neighbours, t = 2: every owner's secret has one share to spare
    conf = make_config(tmp_path, goal_count=n, min_count=3, overselect=1.0, secagg_poll_s=1.0,
                       secagg_phase_timeout_s=8.0, clip_norm=1.0)
    honest = secagg_client.Revealer.answer

    def lying(self, req):
        out = honest(self, req)
        if self.index != 1:
            return out
        bad = lambda sh: sh[:2] + os.urandom(secagg.SHARE_BYTES - 2)   # noqa: E731
        return sw.SecAggReveal({j: bad(v) for j, v in out.self_shares.items()},
                               {j: bad(v) for j, v in out.key_shares.items()})

    monkeypatch.setattr(secagg_client.Revealer, "answer", lying)
    with serve(conf) as s:
        s.coord.import_version(exported_version)
        cfgs = _devices(s, tmp_path, n)
        rid = s.coord.start_round(epochs=1, batch_size=4, learning_rate=0.5, max_examples=4, secure_aggregation=True)
        assert all(r is not None and r.outcome == "uploaded" for r in run_once_each(cfgs))
        rnd = wait_closed(s.coord, rid)
        assert (rnd["status"], rnd["accepted"]) == ("done", n), rnd


def test_a_forged_self_mask_share_is_caught_by_the_seeds_commitment():
    """A survivor's share crafted so that it and one honest share interpolate to seed + 1: nothing
    checked a recovered self seed, and the round closed "done" on a random sum. The
    device now posts sha256 of its seed, and a set of shares that misses it is passed over."""
    import hashlib
    import struct

    seed = os.urandom(secagg.SEED_BYTES)
    shares = secagg.share_secret(seed, 2, 3)              # k = 3 neighbours, t = 2
    xa, ya = struct.unpack("<H", shares[0][:2])[0], int.from_bytes(shares[0][2:], "little")
    xt = struct.unpack("<H", shares[1][:2])[0]
    p = secagg.SHAMIR_PRIME
    lam = xt * pow(xt - xa, -1, p) % p                     # the forger's Lagrange weight beside share 1
    forged = struct.pack("<H", xa) + ((ya + pow(lam, -1, p)) % p).to_bytes(66, "little")
    revealed = [forged, shares[1], shares[2]]              # the forger revealed first
    wrong = coord_secagg._recovered(revealed, 2, None)     # a device from before the commitment
    assert wrong is not None and wrong != seed
    member = SecAggMember(mask_pk="00" * 32, seed_sha256=hashlib.sha256(seed).hexdigest())
    assert coord_secagg._recovered(revealed, 2, coord_secagg._fits(member, "self")) == seed
    assert coord_secagg._recovered(revealed[:2], 2, coord_secagg._fits(member, "self")) is None
    body = sw.SecAggShares({1: b"x" * secagg.CIPHERTEXT_BYTES}, hashlib.sha256(seed).digest()).to_dict()
    assert sw.SecAggShares.from_dict(body, secagg.CIPHERTEXT_BYTES).seed_sha256 == hashlib.sha256(seed).digest()
    del body["seed_sha256"]                                # a device from before: no commitment
    assert sw.SecAggShares.from_dict(body, secagg.CIPHERTEXT_BYTES).seed_sha256 is None


def test_a_masked_vector_posted_twice_at_once_is_a_duplicate_the_second_time(tmp_path, monkeypatch):
    """Both posts passed the first check before either was written: three of six
    concurrent posts of one device were answered 200, and only the last one's vector summed."""
    from coordinator import round_end
    from coordinator.errors import ApiError
    from tests.helpers.coordinator_fakes import import_v0
    from tests.helpers.secure_rounds import ScriptedDevice

    conf = make_config(tmp_path, goal_count=3, min_count=2, overselect=1.0, secagg_poll_s=0.5,
                       secagg_phase_timeout_s=30.0, clip_norm=1.0, noise_multiplier=0.0)
    with serve(conf) as s:
        weights = import_v0(s, tmp_path / "v0")
        dim = sum(w.size for w in weights.values())
        key = s.coord.create_enrollment_key()
        devs = [ScriptedDevice(s, key) for _ in range(3)]
        rid = s.coord.start_round(secure_aggregation=True, selection_window_s=0)
        for d in devs:
            d.checkin()
        for d in devs:
            d.keys()
        for d in devs:
            d.roster_and_shares(dim)
        assert all(d.inbox_ready() for d in devs)
        first, second = (np.full(dim, v, "<u4").tobytes() for v in (1, 2))
        store, inner = round_end.store_upload, []

        def racing(coord, round_id, body):   # the second post lands while the first is being stored
            digest = store(coord, round_id, body)
            if body == first:
                inner.append(coord_secagg.post_masked(coord, devs[0].device_id, round_id, second))
            return digest

        monkeypatch.setattr(round_end, "store_upload", racing)
        with pytest.raises(ApiError) as refused:
            coord_secagg.post_masked(s.coord, devs[0].device_id, rid, first)
        assert refused.value.status == 409 and refused.value.code == wire.E_DUPLICATE
        assert inner and inner[0]["accepted"]
        with s.coord._sessions() as db:
            kept = db.scalar(select(SecAggMember.masked_sha256).where(SecAggMember.device_id == devs[0].device_id))
        import hashlib

        assert kept == hashlib.sha256(second).hexdigest()
        uploads = [p for p in (tmp_path / "data").rglob("*") if p.is_file() and p.stat().st_size == 4 * dim]
        assert len(uploads) == 1, uploads                  # the refused vector is not left on disk


def test_revealer_checks_the_survivor_count_against_the_survivors_listed():
    """The count is the coordinator's word: a complete graph's lists showing one other survivor
    with a count of 7 had the device reveal, and a sum of two updates, with 2/7 of the noise the
    device charged, could be unmasked."""
    shares = {j: (bytes([j]) * 34, bytes([j + 100]) * 34) for j in range(1, 10)}
    lie = sw.SecAggUnmaskRequest((1,), tuple(range(2, 10)), 7)
    with pytest.raises(secagg_client.Refused, match="only 2 survivors"):
        secagg_client.Revealer(0, shares, 7, complete=True).answer(lie)
    with pytest.raises(secagg_client.Refused, match="survivor count of 2"):
        secagg_client.Revealer(0, shares, 2).answer(sw.SecAggUnmaskRequest((1, 2, 3), (), 2))
    honest = sw.SecAggUnmaskRequest(tuple(range(1, 8)), (8, 9), 8)
    assert len(secagg_client.Revealer(0, shares, 7, complete=True).answer(honest).self_shares) == 7


@pytest.mark.parametrize("flip", ["self-then-key", "key-then-self"])
def test_revealer_refuses_the_other_kind_in_a_later_request(flip):
    shares = {j: (bytes([j]) * 34, bytes([j + 100]) * 34) for j in (1, 2, 3)}
    r = secagg_client.Revealer(0, shares, n_min=2)
    first = sw.SecAggUnmaskRequest((1, 2), (3,), 3) if flip == "self-then-key" else sw.SecAggUnmaskRequest((2,),
                                                                                                        (1, 3), 3)
    out = r.answer(first)
    assert set(out.self_shares) | set(out.key_shares) == {1, 2, 3}
    assert r.answer(first) == out                                    # a retried identical request is fine
    second = sw.SecAggUnmaskRequest((2, 3), (1,), 3) if flip == "self-then-key" else sw.SecAggUnmaskRequest(
        (1, 2), (3,), 3)
    with pytest.raises(secagg_client.Refused, match="other way"):
        r.answer(second)
    with pytest.raises(secagg_client.Refused, match="claims this device dropped"):
        secagg_client.Revealer(0, shares, 2).answer(sw.SecAggUnmaskRequest((1,), (0,), 3))
    with pytest.raises(secagg_client.Refused, match="fewer than"):
        secagg_client.Revealer(0, shares, 5).answer(sw.SecAggUnmaskRequest((1, 2), (3,), 4))


@pytest.mark.parametrize("coordinator", ["down", "not ready"])
def test_a_stopping_device_leaves_a_secure_round_at_once(coordinator):
    """Stopped (SIGTERM) in a secure round, a device kept polling or retrying with no pause until
    the round's deadline: the agent's sleep is its stop event's `wait`, which then returns at once.
    Now the first wait after the stop ends the exchange, one request and no more."""
    from types import SimpleNamespace

    from edge_runtime.client import TransientError

    calls = []

    class Client:
        def _request(self, method, path, **kw):
            calls.append((method, path))
            if coordinator == "down":
                raise TransientError("cannot connect; retrying")
            return SimpleNamespace(request=SimpleNamespace(body=b""), content=b"",
                                   json=lambda: sw.wait("keys", 1.0))

        _json = staticmethod(lambda resp: resp.json())

    plan = wire.TrainPlan(round_id=7, epochs=1, batch_size=4, learning_rate=0.5, clip_norm=1.0,
                          noise_multiplier=0.5, max_examples=4, secure_aggregation=True)
    def stopped_wait(seconds):          # the stop event is set: Event.wait returns True at once
        assert len(calls) < 20, "still calling the coordinator after the stop"
        return True

    outcome, counts = secagg_client.contribute(Client(), plan, np.zeros(10, np.float32), 600.0, sleep=stopped_wait)
    assert outcome == "stopped (the device is stopping)" and counts["round"] == 7
    assert len(calls) == (1 if coordinator == "down" else 2), calls             # keys (+ one roster poll)


def test_devices_recompute_their_noise_instead_of_taking_the_rosters_word():
    """A coordinator that forges the roster's noise fields (mu 0, n_min 1 of 5: one device's
    vector unmasked with no noise) is refused; the roster the coordinator really sends passes."""
    plan = wire.TrainPlan(round_id=1, epochs=1, batch_size=4, learning_rate=0.5, clip_norm=1.0,
                          noise_multiplier=0.5, max_examples=4, secure_aggregation=True)
    n, dim, n_min = 5, 100, 4
    k, t = 4, 3
    scale = ddp.choose_scale(plan.clip_norm, n, plan.noise_multiplier, dim, n_min)
    mu = ddp.skellam_mu(plan.noise_multiplier, scale, plan.clip_norm, dim, n_min)
    seed = b"\x07" * 32
    nbs = tuple(sw.Neighbour(j, bytes([j]) * 32, bytes([j + 1]) * 32)
                for j in secagg.neighbours(n, k, seed)[0])

    def roster(**over):
        fields = dict(round_id=1, index=0, n=n, k=k, t=t, n_min=n_min, graph_seed=seed, dim=dim, scale=scale,
                      mu=mu, neighbours=nbs) | over
        return sw.SecAggRoster(**fields)

    assert set(secagg_client.check_roster(roster(), plan, dim)) == {nb.index for nb in nbs}
    for forged, why in [({"mu": 0.0}, "less than the plan's noise"), ({"mu": mu / 2}, "less than the plan's noise"),
                        ({"n_min": 1}, "not a majority"), ({"n_min": 2}, "not a majority"),
                        ({"dim": dim - 1}, "values, the round expects"), ({"scale": 0.0}, "less than the plan's"),
                        ({"round_id": 2}, "the plan for round 1"),
                        # 2 neighbours of 40: two devices of the coordinator's own would unmask it
                        ({"n": 40, "n_min": 30, "k": 2, "t": 2}, "under the floor of 16"),
                        # numbers no sampler takes: they escaped as OverflowError / ValueError, not refusals
                        ({"scale": 1e200}, "out of range"), ({"mu": 1e30}, "lose their low bits"),
                        ({"scale": scale * 1e6, "mu": mu * 1e12}, "lose their low bits"),
                        # numpy's draws at mu 1e17 are all multiples of 16: the sum's low bits unnoised
                        ({"scale": scale * 1e4, "mu": 1e17}, "lose their low bits")]:
        with pytest.raises(secagg_client.Refused, match=why):
            secagg_client.check_roster(roster(**forged), plan, dim)
    # more noise than needed is the device's gain, not a reason to refuse
    assert secagg_client.check_roster(roster(mu=mu * 2), plan, dim)
    # an honest roster of a small cohort at moderate noise, at the model's size: its mu is kept where
    # numpy samples Poisson exactly (choose_scale), and a coordinator from before that cap sends
    # mu about 1.5e15 (a bound of 1e15 refused it, and every device left the round): both pass
    small = wire.TrainPlan(round_id=1, epochs=1, batch_size=4, learning_rate=0.5, clip_norm=3.0,
                           noise_multiplier=0.5, max_examples=4, secure_aggregation=True)
    big_dim, n2 = 1_356_048, 2
    s2 = ddp.choose_scale(small.clip_norm, n2, small.noise_multiplier, big_dim, n2)
    ring_s2 = (ddp.HALF_RING / 2 - n2 - 10 * 0.5 * big_dim ** 0.5) / (3.0 * (n2 + 10 * 0.5))   # before the cap
    assert s2 < ring_s2
    for s in (s2, ring_s2):
        mu2 = ddp.skellam_mu(small.noise_multiplier, s, small.clip_norm, big_dim, n2)
        assert (mu2 <= ddp.MAX_SAMPLED_MU * 1.0001) if s == s2 else mu2 > 1e15
        pair = sw.SecAggRoster(round_id=1, index=0, n=n2, k=1, t=1, n_min=n2, graph_seed=seed, dim=big_dim,
                               scale=s, mu=mu2, neighbours=(sw.Neighbour(1, bytes([1]) * 32, bytes([2]) * 32),))
        assert secagg_client.check_roster(pair, small, big_dim)


def test_secure_round_is_an_operator_choice_and_refuses_plain_uploads(tmp_path, capsys):
    from coordinator.__main__ import main as cli_main
    from tests.helpers.coordinator_fakes import FakeDevice, make_version, random_delta

    cfg = make_config(tmp_path)
    assert cfg.secure_aggregation is False                                   # off by default (docs/privacy.md)
    common = ["--data-dir", cfg.data_dir, "--database-url", cfg.resolved_database_url]
    assert cli_main(["init", *common]) == 0
    make_version(tmp_path / "v0")
    assert cli_main(["import-version", str(tmp_path / "v0"), *common]) == 0
    # A secure round of one device is refused in one line: it was accepted, froze a cohort of one,
    # and every request after it answered 500 until `close-round --force`. So is a coordinator
    # set to open such rounds itself (the small profile's goal of 1).
    capsys.readouterr()
    assert cli_main(["start-round", "--secure-aggregation", "--goal-count", "1", *common]) == 2
    assert "secure_aggregation needs goal_count >= 2" in capsys.readouterr().err
    assert cli_main(["status", "--profile", "small", "--set", "secure_aggregation=true", *common]) == 2
    assert "secure_aggregation needs goal_count >= 2" in capsys.readouterr().err
    assert cli_main(["start-round", "--secure-aggregation", "--goal-count", "2", "--min-count", "2",
                     "--selection-window-s", "0", *common]) == 0     # issue-12's draw window: none here
    with serve(cfg) as s:
        rnd = s.coord.list_rounds()["rounds"][-1]
        assert rnd["plan"]["secure_aggregation"] is True
        dev = FakeDevice(s.url, s.coord.create_enrollment_key())
        task = dev.checkin()
        assert task.plan.secure_aggregation
        r = dev.upload(random_delta(0), round_id=task.plan.round_id, base=task.base_version_id, examples=1)
        assert r.status_code == 400 and "secure aggregation" in r.json()["message"]
        with s.coord._sessions() as db:
            assert db.scalar(select(func.count()).select_from(Update)) == 0
        s.coord.close_round(rnd["round_id"], force=True)
        plain = s.coord.start_round(goal_count=2, min_count=1)
        assert "secure_aggregation" not in s.coord.get_round(plain)["plan"]   # plain plans are unchanged


def test_secure_round_survives_a_coordinator_restart_mid_round(tmp_path, exported_version, caplog):
    """Devices keep their secrets in memory and retry through the outage; state is in the database."""
    from coordinator.app import create_app

    caplog.set_level(logging.INFO, logger="edge_runtime.secagg_client")
    n = 4
    conf = make_config(tmp_path, goal_count=n, min_count=3, overselect=1.0, secagg_poll_s=1.0,
                       secagg_phase_timeout_s=30.0, clip_norm=1.0, noise_multiplier=0.5)

    def start(port: int):
        app = create_app(conf)
        srv, th = start_server(app, port)
        return app, srv, th

    app, srv, th = start(0)
    port = srv.server_port
    coord = app.extensions["fedkeys"]
    coord.import_version(exported_version)

    class _S:     # what _devices needs
        url = f"http://127.0.0.1:{port}"

    _S.coord = coord
    cfgs = _devices(_S, tmp_path, n)
    rid = coord.start_round(epochs=1, batch_size=4, learning_rate=0.5, max_examples=4, secure_aggregation=True)
    devs, results, threads = run_in_threads(cfgs)
    try:
        until = time.monotonic() + 120
        while time.monotonic() < until:      # everyone has shared: the coordinator goes down
            with coord._sessions() as db:
                if db.scalar(select(func.count()).select_from(SecAggMember).where(
                        SecAggMember.round_id == rid, SecAggMember.shared.is_(True))) == n:
                    break
            time.sleep(0.05)
        stop_server(srv, th)
        coord.close()
        time.sleep(2.0)
        app, srv, th = start(port)
        coord = app.extensions["fedkeys"]
        for t in threads:
            t.join(120)
        wait_closed(coord, rid, maintain=False)
        assert all(r is not None and r.outcome == "uploaded" for r in results), results
        assert any("retrying" in r.getMessage() for r in caplog.records if r.name == "edge_runtime.secagg_client")
        rnd = coord.get_round(rid)
        assert rnd["status"] == "done" and rnd["accepted"] == n, rnd
        # The same release in both ledgers: each device charged one secure release at the central z ...
        for cfg in cfgs:
            ledger = json.loads((Path(cfg.data_dir) / paths.LEDGER_FILE).read_text())["releases"]
            assert [(e["round_id"], e["noise_multiplier"], e.get("secure_aggregation")) for e in ledger] == [
                (rid, 0.5, True)]
        # ... and the candidate's record holds the central epsilon against the coordinator and how it was made
        priv = next(v for v in coord.list_versions() if v.get("round_id") == rid)["privacy"]
        assert priv["history"] == [[1.0, 0.5, 1]] and priv["epsilon_local"] == pytest.approx(
            privacy.summarize([privacy.RoundPrivacy(1.0, 0.5)], priv["delta"])["epsilon_local"])
        assert priv["secure_aggregation"]["survivors"] == n and priv["secure_aggregation"]["skellam_mu_per_device"] > 0
    finally:
        for d in devs:
            d.close()
        stop_server(srv, th)
        coord.close()


@pytest.mark.parametrize("how", ["close-round --force", "a stable change"])
def test_a_secure_round_closed_without_its_sum_deletes_the_revealed_shares(tmp_path, how):
    """Revealed shares are deleted after the sum; a secure round failed mid-unmask (forced closed
    below its minimum, or failed by a new stable version) kept them, and its phase said unmask."""
    from tests.helpers.coordinator_fakes import make_version

    with serve(make_config(tmp_path)) as s:
        make_version(tmp_path / "v0")
        s.coord.import_version(tmp_path / "v0")
        make_version(tmp_path / "v1", "v0001", seed=1)
        s.coord.import_version(tmp_path / "v1", as_candidate=True)
        rid = s.coord.start_round(secure_aggregation=True, goal_count=4, min_count=3, selection_window_s=0)
        with s.coord.tx() as db:                       # as if mid-unmask: two shares revealed
            db.add(SecAggRound(round_id=rid, phase=coord_secagg.UNMASK))
            db.add_all([SecAggReveal(round_id=rid, revealer=i, owner=2, kind="self", share="00") for i in (0, 1)])
        if how == "a stable change":
            s.coord.admin_decide("v0001", "promote")
        else:
            s.coord.close_round(rid, force=True)
        assert s.coord.get_round(rid)["status"] == "failed"
        with s.coord._sessions() as db:
            assert db.scalar(select(func.count()).select_from(SecAggReveal)) == 0
            assert db.get(SecAggRound, rid).phase == coord_secagg.FAILED
        assert 'fedkeys_rounds_total{event="failed"} 1.0' in s.admin("GET", "/metrics").text


@pytest.mark.parametrize("phase,reason", [
    ("shares", "only 0 of 4 devices shared their seeds, need 3"),
    ("masked", "only 0 masked vectors, need 3"),
])
def test_a_secure_round_short_of_devices_at_a_phase_fails_counted_and_logged(tmp_path, caplog, phase, reason):
    """A secure round that gave up at a phase short of devices was marked failed but never counted
    in fedkeys_rounds_total{failed} (only the other ways a round fails were)."""
    from datetime import timedelta

    from coordinator.models import utcnow
    from tests.helpers.coordinator_fakes import make_version

    with serve(make_config(tmp_path)) as s:
        make_version(tmp_path / "v0")
        s.coord.import_version(tmp_path / "v0")
        rid = s.coord.start_round(secure_aggregation=True, goal_count=4, min_count=3, selection_window_s=0)
        with s.coord.tx() as db:   # a cohort of 4 frozen, and nobody answered before the phase timed out
            db.add(SecAggRound(round_id=rid, phase=phase, phase_started_at=utcnow() - timedelta(hours=1),
                               params_json=json.dumps({"n": 4, "n_min": 3})))
        coord_secagg.advance(s.coord, rid)
        r = s.coord.get_round(rid)
        assert r["status"] == "failed" and r["reason"] == f"secure aggregation: {reason}"
        assert 'fedkeys_rounds_total{event="failed"} 1.0' in s.admin("GET", "/metrics").text
        assert f"round {rid} failed: secure aggregation: {reason}" in caplog.text
        with s.coord._sessions() as db:
            assert db.get(SecAggRound, rid).phase == coord_secagg.FAILED
