"""`tools.pretrain --init`: a version trained further keeps its word list, so its licence notice."""

from __future__ import annotations

import json
import shutil

from protocol.artifact import MANIFEST, read_manifest
from tests.tiny_version import SHAKESPEARE


def test_a_version_trained_from_another_keeps_its_word_lists_notice(exported_version, tmp_path, capsys):
    from tools.pretrain import main

    base = tmp_path / "base"
    shutil.copytree(exported_version, base)
    m = json.loads((base / MANIFEST).read_text())
    notices = {"tokenizer.model": "CC BY-SA 4.0: words from Someone (2022)"}
    (base / MANIFEST).write_text(json.dumps({**m, "notices": notices}))
    assert main(["--corpus", str(SHAKESPEARE), "--init", str(base), "--out", str(tmp_path / "out"),
                 "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8", "--seed", "1", "--no-progress"]) == 0
    out = read_manifest(tmp_path / "out")
    assert out.parent == m["version_id"] and out.notices == notices
    # --seed 1 trained on 18 of the 24 held-out users when it also split them:
    # a device corpus is split as every tool splits it, and the manifest says so
    assert out.metrics["split_seed"] == 0
    assert "24 test users" in capsys.readouterr().out
    # the folder as its files: readable by the service's user that imports it (it was mkdtemp's 0700)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755


def test_a_failed_run_leaves_the_version_in_out_as_it_was(exported_version, tmp_path, capsys, monkeypatch):
    """--out is written in a staging directory and moved into place at the end: a run that fails
    (here: a corpus with no text) leaves the earlier version loadable, and a run that succeeds
    replaces it whole."""
    import pytest

    from protocol.artifact import load_version
    from tools.pretrain import main

    out = tmp_path / "out"
    shutil.copytree(exported_version, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="holds a model version already.*--force"):   # `--out models/v0`
        main(["--corpus", str(SHAKESPEARE), "--init", str(exported_version), "--out", str(out), "--no-progress"])
    with pytest.raises(Exception, match="empty|no text|no records"):
        main(["--corpus", str(empty), "--init", str(exported_version), "--out", str(out), "--force", "--no-progress"])
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.jsonl", "out"]   # no staging left behind
    monkeypatch.chdir(out)   # `--out .`: it had no name to stage beside, and the run was lost at its end
    assert main(["--corpus", str(SHAKESPEARE), "--init", str(exported_version), "--out", ".", "--force",
                 "--version-id", "again", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8",
                 "--no-progress"]) == 0
    manifest, _ = load_version(out, verify=True)
    assert manifest.version_id == "again" and sorted(p.name for p in tmp_path.iterdir()) == ["empty.jsonl", "out"]


def test_settings_that_would_train_nothing_and_folders_that_are_not_versions_are_refused(tmp_path):
    import pytest

    from tools.pretrain import main

    base = ["--corpus", str(SHAKESPEARE), "--init", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]
    for bad, match in ((["--batch-size", "0"], "--batch-size must be >= 1"),
                       (["--epochs", "-1"], "--epochs must be >= 1"),
                       (["--steps-per-epoch", "-2"], "--steps-per-epoch must be >= 1"),
                       (["--seq-len", "0"], r"--seq-len must be in \[2, 512\]"),
                       (["--seq-len", "100000"], r"--seq-len must be in \[2, 512\]"),   # memory ran away
                       (["--hidden-dim", "200000"], "--hidden-dim must be <= 4,096"),   # a traceback
                       (["--version-id", "my model/v1"], "--version-id 'my model/v1' must be letters"),
                       (["--lr", "nan"], "--lr must be a positive number"),
                       (["--lr", "-1"], "--lr must be a positive number"),
                       (["--lr-decay-to", "nan"], r"--lr-decay-to must be in \(0, 1\]"),
                       (["--hidden-dim", "0"], "--hidden-dim must be >= 1"),
                       (["--vocab-size", "0"], "--vocab-size and --word-list-size must be >= 16")):
        with pytest.raises(ValueError, match=match):
            main([*base, *bad])
    assert not (tmp_path / "o").exists()
    mine = tmp_path / "my folder"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds files but no model version"):
        main([*base[:-1], str(mine)])
    (tmp_path / "a file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        main([*base[:-1], str(tmp_path / "a file")])
    assert (mine / "notes.txt").read_text() == "mine"
