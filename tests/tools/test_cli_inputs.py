"""Inputs a researcher's probe gave the tools: each refused in one line (exit 2) or answered."""

from __future__ import annotations

import pytest

from tools._cli import run


def _exit(main, argv) -> int:
    with pytest.raises(SystemExit) as e:
        run(main, argv)
    return e.value.code


def test_settings_doc_replaces_only_a_settings_reference(tmp_path, capsys):
    """`--out README.md` replaced the README (or a shipped corpus) without a word."""
    from tools.settings_doc import main

    mine = tmp_path / "README.md"
    mine.write_text("# My project\n")
    assert _exit(main, ["--out", str(mine)]) == 2 and mine.read_text() == "# My project\n"
    assert "is not a settings reference" in capsys.readouterr().err
    assert _exit(main, ["--out", str(tmp_path)]) == 2 and "is a folder" in capsys.readouterr().err
    ref = tmp_path / "settings.md"
    assert _exit(main, ["--out", str(ref)]) == 0 and _exit(main, ["--out", str(ref)]) == 0   # its own: replaced
    assert _exit(main, ["--out", str(mine), "--force"]) == 0 and mine.read_text() == ref.read_text()


def test_numbers_no_run_can_use_are_refused(capsys):
    from tools import __main__ as tools_main
    from tools import secagg_bench
    from tools.bench.__main__ import main as bench

    assert _exit(bench, ["swap", "--model", "models/v0", "--interval", "inf", "--versions", "1",
                         "--chars", "10"]) == 2   # it hung
    assert "--interval in (0, 3600]" in capsys.readouterr().err
    assert _exit(secagg_bench.main, ["epsilon", "--rounds", "8", "--for-epsilon", "nan"]) == 2   # "1,000,000"
    assert "--for-epsilon must be numbers > 0" in capsys.readouterr().err
    assert tools_main.main(["--version"]) == 0 and "python -m tools " in capsys.readouterr().out


def test_pretrain_refuses_a_missing_init_before_reading_the_corpus(tmp_path, capsys, monkeypatch):
    """`--corpus F --init nothere` read (and split) the whole corpus, minutes for a large one, before
    saying --init was not a version. It says so first, in one line, exit 2."""
    from model import corpus
    from tools import pretrain

    read = []
    monkeypatch.setattr(corpus, "read_corpus", lambda *a, **k: read.append(a) or [])
    out = tmp_path / "out"
    assert _exit(pretrain.main, ["--corpus", "corpora/shakespeare.jsonl", "--init", str(tmp_path / "nothere"),
                                 "--out", str(out)]) == 2
    assert "is not a model version directory" in capsys.readouterr().err and read == [] and not out.exists()
