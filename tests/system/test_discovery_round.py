"""A word-discovery round end to end: real device agents and a real coordinator over HTTP
(SQLite, blob store, secure aggregation). Devices vote for their most typed word-list words
without a softmax row; the coordinator sees only the sum, finds the words that many devices
typed, and writes a canary candidate in which those words have softmax rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sqlalchemy import func, select

from coordinator.models import Update
from coordinator.models_secagg import SecAggMember, SecAggRound
from edge_runtime import agent, paths
from edge_runtime.cache import type_text
from edge_runtime.config import EdgeConfig
from protocol import artifact
from protocol.artifact import TOKENIZER
from protocol.text import load_tokenizer
from protocol.vocab import dictionary
from tests.helpers.coordinator_fakes import make_config, serve
from tests.helpers.secure_rounds import run_once_each, wait_closed


def _tail_words(version: Path) -> list[str]:
    V = artifact.read_manifest(version).architecture().model.vocab_size
    return [w for w in dictionary((version / TOKENIZER).read_bytes(), V) if w.isalpha() and len(w) > 3]


def test_devices_vote_and_the_coordinator_finds_the_shared_words_from_the_sum_only(tmp_path, exported_version,
                                                                                    monkeypatch):
    n = 5
    tail = _tail_words(exported_version)
    shared, own = tail[:2], tail[2:2 + n]           # typed by every device / by one device each
    conf = make_config(tmp_path, goal_count=n, min_count=3, overselect=1.0, secagg_poll_s=1.0,
                       secagg_phase_timeout_s=10.0, round_duration_s=300.0)
    with serve(conf) as s:
        base_id = s.coord.import_version(exported_version)
        key = s.coord.create_enrollment_key()
        cfgs = []
        for i in range(n):
            cfg = EdgeConfig(data_dir=str(tmp_path / f"device{i}"), eligibility="override:eligible",
                             coordinator=s.url, public_key=s.coord.public_key_hex, min_wait_s=0.1,
                             min_noise_multiplier=0.0)    # a noise-free vote: the devices opt out of the floor
            agent.enroll(cfg, key)
            for t in (f"so {shared[0]} and {shared[1]} again", f"{own[i]} {own[i]} {own[i]} said {shared[0]}",
                      f"then {shared[1]} {own[i]}"):
                assert type_text(cfg, t, "message")
            cfgs.append(cfg)
        rid = s.coord.start_round(noise_multiplier=0.0, secure_aggregation=True, discover_words=3)
        # The first close fails writing the candidate (a full disk): it rolls back, and the retry
        # must still find the vote sum (it was deleted before the commit, and every retry failed).
        from coordinator import versions as coord_versions
        write, failed = coord_versions.write_candidate, []

        def full_once(*a, **kw):
            if not failed:
                failed.append(1)
                raise OSError(28, "No space left on device")
            return write(*a, **kw)

        monkeypatch.setattr(coord_versions, "write_candidate", full_once)
        results = run_once_each(cfgs)
        assert all(r is not None and r.outcome == "uploaded" and r.counts["task"] == "discover"
                   and r.counts["words_voted"] == 3 for r in results), results
        rnd = wait_closed(s.coord, rid)
        assert failed and rnd["status"] == "done" and "2 of" in rnd["reason"], rnd
        cand = rnd["result_version_id"]
        assert s.coord.status()["candidate_version_id"] == cand

        manifest = json.loads(s.coord.version_file(cand, "manifest")[0])
        assert manifest["metrics"]["discovered_words"] == 2 and manifest["parent"] == base_id
        assert manifest["privacy"]["word_discovery"]["words_per_device"] == 3
        tok = tmp_path / "cand.model"
        tok.write_bytes(s.coord.version_file(cand, "tokenizer")[0])
        V = artifact.read_manifest(exported_version).architecture().model.vocab_size
        sp = load_tokenizer(tok)
        ids = {w: sp.piece_to_id("\u2581" + w) for w in shared + own}
        assert all(ids[w] < V for w in shared), ids                      # the shared words have rows now
        assert all(ids[w] >= V for w in own), ids                        # one device's word does not
        assert artifact.sha256_bytes(tok.read_bytes()) == manifest["tokenizer_sha256"]

        with s.coord._sessions() as db:
            assert db.scalar(select(func.count()).select_from(Update)) == 0
            masked = [m.masked_sha256 for m in db.scalars(select(SecAggMember).where(SecAggMember.round_id == rid))]
            # the unmasked histogram (what one device alone typed, below the bar) is not kept
            assert db.get(SecAggRound, rid).sum_sha256 is None
        blobs = {p.name for p in (Path(s.config.data_dir) / "blobs").rglob("*") if p.is_file()}
        for digest in blobs:
            votes = np.frombuffer(s.coord.blobs.get(digest), "<u4")
            assert votes.size != len(dictionary((exported_version / TOKENIZER).read_bytes(),
                                                artifact.read_manifest(exported_version)
                                                .architecture().model.vocab_size)) \
                or np.count_nonzero(votes) > 0.9 * votes.size, "an unmasked vote sum is still stored"
        assert len(masked) == n and all(masked)
        # each device's masked vote was needed for the sum only: gone with the round
        assert not any(s.coord.uploads.path(rid, digest).exists() for digest in masked)
        coordinator_files = b"".join(p.read_bytes() for p in Path(s.config.data_dir).rglob("*") if p.is_file())
        coordinator_files += b"".join(p.read_bytes() for p in tmp_path.glob("coordinator.db*"))
        for i in range(n):          # what a device typed is nowhere on the coordinator
            assert f"{own[i]} {own[i]} {own[i]} said".encode() not in coordinator_files

    for cfg in cfgs:                # each device charged its own ledger for the vote
        ledger = json.loads((Path(cfg.data_dir) / paths.LEDGER_FILE).read_text())
        assert [e["round_id"] for e in ledger["releases"]] == [rid]


def test_a_discovery_round_needs_a_version_with_a_word_list_to_vote_over(tmp_path):
    from tests.helpers.coordinator_fakes import make_version

    with serve(make_config(tmp_path)) as s:
        make_version(tmp_path / "v0")                  # no model config, no real word list: a 400, not a 500
        s.coord.import_version(tmp_path / "v0")
        r = s.admin("POST", "/v1/admin/rounds", json={"discover_words": 8, "secure_aggregation": True})
        assert r.status_code == 400 and r.json()["message"].startswith("invalid round settings: "), r.text
        assert s.coord.list_rounds() == {"rounds": [], "total": 0, "next_before": None}
