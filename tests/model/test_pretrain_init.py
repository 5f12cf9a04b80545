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
                 "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8", "--no-progress"]) == 0
    out = read_manifest(tmp_path / "out")
    assert out.parent == m["version_id"] and out.notices == notices
