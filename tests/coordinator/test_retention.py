"""Older versions' files are deleted, their records kept (`coordinator.retention`).

Every round's version (about 6.8 MB) was kept for ever: the README's hand-run pair filled 3.5 GB
an hour, and a production coordinator its disk. Now only the stable version, the candidate and
the `keep_versions` most recently retired and rejected versions keep their files."""

from __future__ import annotations

import json
import shutil

import pytest

from coordinator import deployment
from coordinator.errors import ApiError
from coordinator.service import Coordinator
from protocol import artifact, wire
from tests.helpers.coordinator_fakes import import_v0, make_config, make_version, serve


def _blobs(coord: Coordinator, version: dict) -> list[str]:
    from coordinator.models import Version

    with coord._sessions() as s:
        v = s.get(Version, version["version_id"])
        return [v.weights_sha256, v.graph_sha256, v.tokenizer_sha256]


def _world(tmp_path, keep: int) -> Coordinator:
    """v0000, then v0001..v0005 each imported as stable (five retired, v0005 stable), then
    c0001..c0004 imported as candidates (each rejects the one before: three rejected)."""
    coord = Coordinator(make_config(tmp_path, keep_versions=keep))
    coord.serving = True     # as `create_app` sets it: only the service prunes
    for i in range(6):
        make_version(tmp_path / f"v{i}", f"v000{i}", seed=i)
        coord.import_version(tmp_path / f"v{i}", as_candidate=False if i else None)
    for i in range(1, 5):
        make_version(tmp_path / f"c{i}", f"c000{i}", seed=10 + i)
        coord.import_version(tmp_path / f"c{i}", as_candidate=True)
    return coord


def test_old_retired_and_rejected_versions_lose_their_files_and_keep_their_records(tmp_path, capsys):
    from coordinator.__main__ import main as coordinator_main

    coord = _world(tmp_path, keep=2)
    try:
        coord.export_version("v0000", tmp_path / "v0-export")   # an operator's export, made in time
        before = {v["version_id"]: v for v in coord.list_versions()}
        assert [v for v in before.values() if v["files_pruned"]] == []
        coord.maintenance()
        after = {v["version_id"]: v for v in coord.list_versions()}
        assert after.keys() == before.keys()                     # every record stays
        pruned = {vid for vid, v in after.items() if v["files_pruned"]}
        assert pruned == {"v0000", "v0001", "v0002", "c0001"}   # past the 2 newest retired, the 2 newest rejected
        assert {vid: v["status"] for vid, v in after.items()} == {vid: v["status"] for vid, v in before.items()}
        for vid, v in after.items():
            assert v["epsilon"] == before[vid]["epsilon"] and v["privacy"] == before[vid]["privacy"]
            assert (v["decisions"][-1]["action"] == "prune") == (vid in pruned)
        weights, graph, tokenizer = _blobs(coord, after["v0000"])
        assert not coord.blobs.exists(weights)
        assert coord.blobs.exists(graph) and coord.blobs.exists(tokenizer)    # shared with the versions kept
        with coord._sessions() as s:
            from coordinator.models import Version

            held = {v.id: deployment.holds_files(coord, v) for v in s.query(Version)}
        assert held == {vid: vid not in pruned for vid in after}
        assert coord.maintenance() is None and {v["version_id"] for v in coord.list_versions()
                                                 if v["files_pruned"]} == pruned   # nothing more to do

        # What needs the files is refused in one line; a kept version still rolls back.
        with pytest.raises(ApiError) as e:
            coord.admin_decide("v0001", "rollback")
        assert e.value.status == 409 and "keep_versions" in e.value.message and "'prune' decision" in e.value.message
        with pytest.raises(ApiError) as e:
            coord.export_version("v0002", tmp_path / "nope")
        assert e.value.status == 409 and "keep_versions" in e.value.message
        with pytest.raises(ApiError) as e:
            coord.version_file("c0001", "weights_q8")
        assert e.value.status == 404 and "keep_versions" in e.value.message
        assert coord.version_file("c0001", "manifest")[0].startswith(b"{")   # the signed manifest stays
        assert coord.admin_decide("v0004", "rollback")["status"] == "stable"
    finally:
        coord.close()
    data, url = str(tmp_path / "data"), coord.config.database_url
    assert coordinator_main(["rollback", "v0001", "--data-dir", data, "--database-url", url]) != 0
    err = capsys.readouterr().err
    assert "keep_versions" in err and "Traceback" not in err

    # Importing the export puts the files back; rolled back to, the version is whole again.
    coord = Coordinator(coord.config)    # the same database (make_config would empty PostgreSQL's)
    coord.serving = True
    try:
        assert coord.import_version(tmp_path / "v0-export") == "v0000"
        v0 = next(v for v in coord.list_versions() if v["version_id"] == "v0000")
        assert v0["files_pruned"] is False and v0["decisions"][-1]["action"] == "restore"
        coord.maintenance()      # restored, it is the most recently decided: kept until newer ones come
        assert not next(v for v in coord.list_versions() if v["version_id"] == "v0000")["files_pruned"]
        assert coord.admin_decide("v0000", "rollback")["status"] == "stable"
        assert coord.version_file("v0000", "weights_q8")[0]
    finally:
        coord.close()


def test_import_as_stable_of_a_pruned_version_makes_it_stable(tmp_path):
    """`import-version --stable` of the export of a version held here restored its files, printed
    its id and exited 0, and left it retired: in an emergency the operator read "it is stable now".
    It is made stable, as `rollback` (retired) or `pin` (rejected) do."""
    coord = _world(tmp_path, keep=2)
    try:
        coord.export_version("v0000", tmp_path / "v0-export")
        coord.export_version("c0001", tmp_path / "c1-export")
        coord.maintenance()
        held = {v["version_id"]: v for v in coord.list_versions()}
        assert held["v0000"]["files_pruned"] and held["v0000"]["status"] == "retired"
        assert coord.import_version(tmp_path / "v0-export", as_candidate=False) == "v0000"
        v0 = next(v for v in coord.list_versions() if v["version_id"] == "v0000")
        assert v0["status"] == "stable" and [d["action"] for d in v0["decisions"][-2:]] == ["restore", "rollback"]
        assert coord.import_version(tmp_path / "c1-export", as_candidate=False) == "c0001"
        assert coord.status()["stable_version_id"] == "c0001"
    finally:
        coord.close()


def test_an_export_that_fails_midway_leaves_no_partial_folder(tmp_path, monkeypatch):
    """An export a full disk (or Ctrl-C) stopped left a folder with some of the files, which the
    next export refused as not empty, and which an operator could mistake for a whole version."""
    from coordinator import versions

    coord = _world(tmp_path, keep=0)
    try:
        write, written = versions.artifact.atomic_write, []

        def full_after_two(path, data, **kw):
            if len(written) == 2:
                raise OSError(28, "No space left on device")
            written.append(path)
            write(path, data, **kw)

        monkeypatch.setattr(versions.artifact, "atomic_write", full_after_two)
        with pytest.raises(OSError):
            coord.export_version("v0005", tmp_path / "exports" / "v5")
        assert not (tmp_path / "exports" / "v5").exists() and not list((tmp_path / "exports").iterdir())
        (tmp_path / "exports" / "v5").mkdir()   # an empty folder of that name (a mount point) is emptied again
        written.clear()
        with pytest.raises(OSError):
            coord.export_version("v0005", tmp_path / "exports" / "v5")
        assert not list((tmp_path / "exports" / "v5").iterdir())
        with monkeypatch.context() as m:   # a file system that refuses the files' mode (vfat): no temporary left
            m.setattr(versions.artifact, "atomic_write", write)
            m.setattr(versions.artifact.os, "fchmod", lambda *a: (_ for _ in ()).throw(PermissionError(1, "EPERM")))
            with pytest.raises(PermissionError):
                coord.export_version("v0005", tmp_path / "exports" / "v5")
        assert not list((tmp_path / "exports" / "v5").iterdir())
        monkeypatch.setattr(versions.artifact, "atomic_write", write)   # and filled, as before
        assert coord.export_version("v0005", tmp_path / "exports" / "v5") == tmp_path / "exports" / "v5"
        assert versions.artifact.load_version(tmp_path / "exports" / "v5")[0].version_id == "v0005"   # whole
    finally:
        coord.close()


def test_keep_versions_0_keeps_every_versions_files(tmp_path):
    coord = _world(tmp_path, keep=0)
    try:
        coord.maintenance()
        assert not any(v["files_pruned"] for v in coord.list_versions())
        with coord._sessions() as s:
            from coordinator.models import Version

            assert all(deployment.holds_files(coord, v) for v in s.query(Version))
    finally:
        coord.close()


def test_a_pruned_versions_download_is_a_404_over_http(tmp_path):
    """A device's request runs maintenance (check-in), which prunes; the download of a version
    pruned is a 404 that says why, not a 500 from a missing file."""
    with serve(make_config(tmp_path, keep_versions=1)) as s:
        import_v0(s, tmp_path / "v0")
        for i in (1, 2):
            make_version(tmp_path / f"v{i}", f"v000{i}", seed=i)
            s.coord.import_version(tmp_path / f"v{i}", as_candidate=False)
        assert s.admin("GET", "/v1/admin/status").status_code == 200    # maintenance, as a check-in runs it
        pruned = [v["version_id"] for v in s.admin("GET", "/v1/admin/versions").json()["versions"] if v["files_pruned"]]
        assert pruned == ["v0000"]
        r = s.admin("GET", wire.version_path(wire.PATH_VERSION_WEIGHTS, "v0000"))
        assert r.status_code == 404 and "keep_versions" in r.json()["message"], r.text
        assert s.admin("GET", wire.version_path(wire.PATH_VERSION_WEIGHTS, "v0001")).status_code == 200
        board = s.admin("GET", "/v1/admin/dashboard").json()     # the page says which versions lost their files
        assert {v["version_id"]: v["files_pruned"] for v in board["versions"]} == {
            "v0000": True, "v0001": False, "v0002": False}
        assert "prune" not in {d["action"] for d in board["decisions"]}   # kept out of the decision log


def test_keep_versions_is_validated():
    from coordinator.config import Config, ConfigError

    with pytest.raises(ConfigError, match="keep_versions"):
        Config(keep_versions=-1)


def test_an_export_restores_a_rounds_version_whose_parent_lost_its_files_too(tmp_path):
    """A round's version quantizes its download form on its parent's row scales: once retention
    had deleted the parent's files too, the form could not be rebuilt, and importing the export
    was refused ("its parent's is lost too"). The export now carries the form itself."""
    from tests.helpers.coordinator_fakes import FakeDevice, random_delta

    with serve(make_config(tmp_path, keep_versions=1, goal_count=2, min_count=2)) as s:
        import_v0(s, tmp_path / "v0")
        key = s.coord.create_enrollment_key()
        devices = [FakeDevice(s.url, key) for _ in range(2)]

        def promoted_round(seed: int) -> str:
            rid = s.coord.start_round()
            for i, d in enumerate(devices):
                t = d.checkin()
                assert t.kind == wire.TASK_TRAIN, t
                r = d.upload(random_delta(seed + i), round_id=rid, base=t.base_version_id, examples=10)
                assert r.status_code == 200, r.text
            vid = s.coord.get_round(rid)["result_version_id"]
            assert s.coord.admin_decide(vid, "promote")["status"] == "stable"
            return vid

        first = promoted_round(0)
        promoted_round(10)                                  # v0000 past the newest retired: pruned
        s.coord.export_version(first, tmp_path / "first")
        shutil.copytree(tmp_path / "first", tmp_path / "old-export")
        (tmp_path / "old-export" / artifact.WEIGHTS_Q8).unlink()     # as a release before this one exported
        promoted_round(20)                                  # and now `first`, v0000 still gone
        s.coord.maintenance()
        pruned = {v["version_id"] for v in s.coord.list_versions() if v["files_pruned"]}
        assert pruned == {"v0000", first}
        weights_blob = _blobs(s.coord, {"version_id": first})[0]
        with pytest.raises(ApiError) as e:   # the form cannot be rebuilt: nothing is written
            s.coord.import_version(tmp_path / "old-export")
        assert e.value.status == 409 and "made by this release" in e.value.message
        assert not s.coord.blobs.exists(weights_blob)
        assert s.coord.import_version(tmp_path / "first") == first
        assert s.coord.admin_decide(first, "rollback")["status"] == "stable"
        manifest = s.coord.version_file(first, "manifest")[0]
        q8 = devices[0].get(wire.PATH_VERSION_WEIGHTS_Q8, first)
        assert q8.status_code == 200
        assert artifact.sha256_bytes(q8.content) == json.loads(manifest)["weights_q8_sha256"]


def test_a_file_gone_between_the_check_and_the_read_is_a_404_and_a_kill_mid_prune_is_swept(tmp_path):
    """Another worker's prune deletes files after its commit: a download that read the version
    unmarked met a missing file, a 500. And a kill between that commit and the deletions left
    the files of marked versions on disk for ever."""
    from sqlalchemy import update

    from coordinator.models import Version

    with serve(make_config(tmp_path, keep_versions=1)) as s:
        import_v0(s, tmp_path / "v0")
        make_version(tmp_path / "v1", "v0001", seed=1)
        s.coord.import_version(tmp_path / "v1", as_candidate=False)
        weights = _blobs(s.coord, {"version_id": "v0000"})[0]
        s.coord.blobs.discard(weights)                      # gone, the row not yet marked
        r = s.admin("GET", wire.version_path(wire.PATH_VERSION_WEIGHTS, "v0000"))
        assert r.status_code == 404 and "no longer in the data directory" in r.json()["message"], r.text
        with pytest.raises(ApiError) as e:
            s.coord.export_version("v0000", tmp_path / "nope")
        assert e.value.status == 409 and "no longer in the data directory" in e.value.message
        cfg = s.config

    coord = Coordinator(cfg)    # the same database (make_config would empty PostgreSQL's)
    try:
        make_version(tmp_path / "v2", "v0002", seed=2)
        coord.import_version(tmp_path / "v2", as_candidate=False)    # v0001 retired, files kept (keep 1)
        with coord.tx() as db:                               # marked, as a prune's commit does; files left
            db.execute(update(Version).where(Version.id == "v0001").values(files_pruned=True))
        kept = _blobs(coord, {"version_id": "v0001"})[0]
        assert coord.blobs.exists(kept)
    finally:
        coord.close()
    with serve(cfg) as s:                                    # the service's start sweeps them
        assert not s.coord.blobs.exists(kept)
        graph = _blobs(s.coord, {"version_id": "v0002"})[1]
        assert s.coord.blobs.exists(graph)                   # shared with the stable version: kept
        assert json.loads(s.coord.version_file("v0002", "manifest")[0])["version_id"] == "v0002"


def test_the_upgrade_dates_retirements_an_import_as_stable_left_undated(tmp_path):
    """Until 4 December an import as stable retired the stable version without setting its
    decided_at: the newest rollback target sorted as the oldest and lost its files first. A
    retirement a rollback or pin dated stays as it was (a bound from the next
    version's creation re-dated those too)."""
    from sqlalchemy import text

    from coordinator.db import make_engine, migrate

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    migrate(engine, "0005")
    day = "2026-12-01 {}:00:00.000000"
    with engine.begin() as conn:
        for seq, (vid, status, decided) in enumerate([
                ("v1", "retired", day.format(11)),   # stable by import at 10, retired by v2's promotion at 11
                ("v2", "retired", day.format(11)),   # promoted at 11; retired by v3's import at 12, undated
                ("v3", "retired", day.format(14)),   # imported as stable at 12, retired by the rollback at 14
                ("v4", "retired", day.format(16)),   # rolled back to at 14, retired by the pin of v5 at 16
                ("v5", "stable", day.format(16))], start=1):
            conn.execute(text("INSERT INTO versions (id, seq, status, manifest_json, weights_sha256, graph_sha256, "
                              "tokenizer_sha256, epsilon, delta, privacy_json, created_at, decided_at) VALUES (:id, "
                              ":seq, :st, '{}', 'w', 'g', 't', 0, 1e-6, '{}', :c, :d)"),
                         {"id": vid, "seq": seq, "st": status, "c": day.format(9 + seq), "d": decided})
        for i, (vid, action, reason, hour) in enumerate([
                ("v1", "import", "imported from v1 as stable", 10), ("v2", "promote", "canary", 11),
                ("v3", "import", "imported from v3 as stable", 12), ("v4", "rollback", "admin rollback", 14),
                ("v5", "pin", "admin pin", 16), ("v5", "import", "imported from v5 as candidate", 15)], start=1):
            conn.execute(text("INSERT INTO decisions (id, version_id, action, actor, reason, numbers_json, "
                              "created_at) VALUES (:i, :v, :a, 'admin', :r, '{}', :t)"),
                         {"i": i, "v": vid, "a": action, "r": reason, "t": day.format(hour)})
    migrate(engine)
    with engine.connect() as conn:
        dated = {vid: t[11:13] for vid, t in conn.execute(text("SELECT id, decided_at FROM versions")).all()}
    engine.dispose()
    assert dated == {"v1": "11", "v2": "12", "v3": "14", "v4": "16", "v5": "16"}


def test_a_file_stored_again_between_the_mark_and_the_deletion_stays(tmp_path, monkeypatch):
    """Content addressing: a version stored after a prune marked another with equal bytes finds
    the file present and does not write it; the deletion that followed then took it from under
    the new version. The deletions count what is in use when they run, under the same lock."""
    from coordinator import retention

    coord = Coordinator(make_config(tmp_path, keep_versions=1))
    coord.serving = True     # as `create_app` sets it: only the service prunes
    try:
        for i in range(3):                                      # v0000 and v0001 retired, v0002 stable
            make_version(tmp_path / f"v{i}", f"v000{i}", seed=i)
            coord.import_version(tmp_path / f"v{i}", as_candidate=False if i else None)
        make_version(tmp_path / "again", "v0009", seed=0)       # v0000's weights under another id
        delete = retention._delete_unused

        def meanwhile(*args):
            coord.import_version(tmp_path / "again", as_candidate=True)   # between the mark and the deletion
            return delete(*args)

        monkeypatch.setattr(retention, "_delete_unused", meanwhile)
        assert retention.prune(coord) == ["v0000"]
        weights = _blobs(coord, {"version_id": "v0009"})[0]
        assert weights == _blobs(coord, {"version_id": "v0000"})[0] and coord.blobs.exists(weights)
        assert coord.version_file("v0009", "weights")[0]
    finally:
        coord.close()


def test_an_admin_command_never_deletes_files_whatever_its_keep_versions(tmp_path, capsys):
    """`status --set keep_versions=1` (an inspection) deleted files the service would have kept,
    a version just restored among them: only the service prunes, with its
    own setting."""
    from coordinator.__main__ import main as coordinator_main

    coord = _world(tmp_path, keep=0)
    coord.close()
    common = ["--data-dir", str(tmp_path / "data"), "--database-url", coord.config.database_url]
    for command in (["status"], ["tick"], ["pin", "v0005"]):
        assert coordinator_main([*command, *common, "--set", "keep_versions=1"]) == 0, capsys.readouterr().err
    coord = Coordinator(coord.config)
    try:
        assert not any(v["files_pruned"] for v in coord.list_versions())
    finally:
        coord.close()
