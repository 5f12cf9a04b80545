"""tools.proxy_ngram refuses what it cannot write or count, in one line, leaving nothing behind."""

from __future__ import annotations

import json
import os
import stat

import pytest

from edge_runtime.ngram import KneserNeyLM
from tools.proxy_ngram import main


def _corpus(tmp_path):
    path = tmp_path / "proxy.jsonl"
    path.write_text("".join(json.dumps({"user": f"u{i % 3}", "text": f"the cat sat on mat number {i}"}) + "\n"
                            for i in range(30)))
    return path


def test_an_order_too_high_for_the_keys_is_refused_at_once(tmp_path):
    # 10**12 would once compute base**order exactly before refusing: minutes, then memory
    with pytest.raises(ValueError, match="order 1000000000000 is too high"):
        main(["--proxy", str(_corpus(tmp_path)), "--out", str(tmp_path / "n.npz"), "--order", "1000000000000"])
    with pytest.raises(ValueError, match="too high"):
        KneserNeyLM.fit(["a b c"] * 3, order=63)
    assert not (tmp_path / "n.npz").exists()


def test_out_that_is_a_directory_is_refused_and_a_good_run_leaves_only_the_model(tmp_path, capsys):
    corpus = _corpus(tmp_path)
    (tmp_path / "adir").mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder"):
        main(["--proxy", str(corpus), "--out", str(tmp_path / "adir")])
    before = corpus.read_bytes()
    with pytest.raises(FileExistsError, match="is also an input"):     # once it replaced its own proxy text
        main(["--proxy", str(corpus), "--out", str(corpus)])
    assert corpus.read_bytes() == before
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(FileExistsError, match="not a regular file"):
        main(["--proxy", str(corpus), "--out", str(tmp_path / "pipe")])
    assert stat.S_ISFIFO((tmp_path / "pipe").stat().st_mode)
    assert main(["--proxy", str(corpus), "--out", str(tmp_path / "ng" / "n.npz")]) == 0
    assert sorted(p.name for p in (tmp_path / "ng").iterdir()) == ["n.npz"]
    assert KneserNeyLM.load(tmp_path / "ng" / "n.npz").order == 3
    assert stat.S_IMODE((tmp_path / "ng" / "n.npz").stat().st_mode) == 0o644   # public, as the shipped one is


def test_the_temporary_file_is_never_the_input_nor_the_output(tmp_path):
    """It was --out with the suffix .tmp: an input named corpus.tmp with --out corpus.npz was
    overwritten and renamed away, and --out model.tmp was deleted once written."""
    corpus = tmp_path / "corpus.tmp"
    corpus.write_bytes(_corpus(tmp_path).read_bytes())
    before = corpus.read_bytes()
    assert main(["--proxy", str(corpus), "--out", str(tmp_path / "corpus.npz")]) == 0
    assert corpus.read_bytes() == before
    assert main(["--proxy", str(corpus), "--out", str(tmp_path / "model.tmp")]) == 0
    assert KneserNeyLM.load(tmp_path / "model.tmp").order == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.npz", "corpus.tmp", "model.tmp", "proxy.jsonl"]


def test_an_existing_model_is_replaced_only_with_force(tmp_path):
    """`--out models/ngram/proxy_trigram.npz` silently replaced the shipped base n-gram."""
    corpus = _corpus(tmp_path)
    out = tmp_path / "n.npz"
    out.write_bytes(b"the shipped one")
    with pytest.raises(FileExistsError, match="--force"):
        main(["--proxy", str(corpus), "--out", str(out)])
    assert out.read_bytes() == b"the shipped one"
    assert main(["--proxy", str(corpus), "--out", str(out), "--force"]) == 0
    assert KneserNeyLM.load(out).order == 3


def test_a_link_given_as_out_is_written_through(tmp_path):
    """models/ngram/proxy_trigram.npz is a link to the shipped n-gram: --out naming it replaced the
    link with a new file and left the shipped one as it was."""
    corpus = _corpus(tmp_path)
    shipped = tmp_path / "shipped.npz"
    shipped.write_bytes(b"the shipped one")
    (tmp_path / "link.npz").symlink_to(shipped)
    assert main(["--proxy", str(corpus), "--out", str(tmp_path / "link.npz"), "--force"]) == 0
    assert (tmp_path / "link.npz").is_symlink() and shipped.read_bytes() != b"the shipped one"
