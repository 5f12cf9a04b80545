"""New softmax rows for given words (`protocol.vocab`, `tools.add_words`) on a real exported version."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_runtime.predictor import Predictor
from protocol.artifact import load_version
from protocol.interpreter import Model
from protocol.text import UNK_ID, load_tokenizer, vocab_of
from protocol.vocab import MAX_SHARE, VocabError, add_words, dictionary, read_words

NEW = "zorblax"   # in no word list


@pytest.fixture(scope="module")
def base(exported_version):
    manifest, weights = load_version(exported_version)
    V = manifest.architecture().model.vocab_size
    old = vocab_of(load_tokenizer(exported_version / "tokenizer.model"), V)
    tail_word = next(w for w in old.words[V:] if w.isalpha())
    return exported_version, manifest, weights, V, old, tail_word


def test_words_get_rows_and_everything_else_keeps_its_own(base, tmp_path):
    src, manifest, weights, V, old, tail_word = base
    common = old.words[10]
    res = add_words(src, [tail_word, NEW, common, NEW], tmp_path / "v")
    m2, w2 = load_version(tmp_path / "v")                    # hashes verified
    new = vocab_of(load_tokenizer(tmp_path / "v" / "tokenizer.model"), V)

    assert res.added == [tail_word, NEW] and res.already == [common]
    assert [new.index[tail_word], new.index[NEW]] == [V - 2, V - 1]
    assert res.displaced == old.words[V - 2:V]
    assert all(new.index[w] >= V for w in res.displaced)     # still in the word list: completed, not lost
    assert len(new) == len(old) + 1                          # only the brand-new word is added to the list
    assert new.words[:V - 2] == old.words[:V - 2]
    assert m2.parent == manifest.version_id and m2.arch_hash == manifest.arch_hash
    assert m2.graph_sha256 == manifest.graph_sha256 and m2.tokenizer_sha256 != manifest.tokenizer_sha256
    for name, w in weights.items():
        if w.shape[:1] == (V,):
            np.testing.assert_array_equal(w2[name][:V - 2], w[:V - 2])
            expect = w[UNK_ID] - (math.log(2) if w.ndim == 1 else 0.0)
            np.testing.assert_allclose(w2[name][V - 2:], np.broadcast_to(expect, w2[name][V - 2:].shape), rtol=1e-6)
        else:
            np.testing.assert_array_equal(w2[name], w)


def test_the_keyboard_completes_and_predicts_a_new_word(base, tmp_path):
    src, *_ = base
    before = Predictor(Model.load(src), load_tokenizer(src / "tokenizer.model"))
    assert NEW not in before.session().update("and then zorb")
    add_words(src, [NEW], tmp_path / "v")
    after = Predictor(Model.load(tmp_path / "v"), load_tokenizer(tmp_path / "v" / "tokenizer.model"))
    assert after.session().update("and then zorb")[0] == NEW
    ids = after.vocab.ids(["the", NEW])
    assert ids[1] != UNK_ID and ids[1] < after.model.manifest.architecture().model.vocab_size


@pytest.mark.parametrize("words, why", [
    (["two words"], "not one word"),
    (["lord,"], "not one word"),
    (["..."], "not one word"),
    ([], "empty"),
    (None, "nothing to add"),   # a word that already has a row
])
def test_bad_word_lists_are_refused(base, tmp_path, words, why):
    src, *_, old, _ = base
    with pytest.raises(VocabError, match=why):
        add_words(src, [next(w for w in old.words if w.isalpha())] if words is None else words, tmp_path / "v")
    assert not (tmp_path / "v").exists()


def test_too_many_words_and_a_used_directory_are_refused(base, tmp_path):
    src, _, _, V, *_ = base
    with pytest.raises(VocabError, match="at most"):
        add_words(src, [f"neuword{i}" for i in range(int(MAX_SHARE * V) + 1)], tmp_path / "v")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("mine")
    with pytest.raises(VocabError, match="not an empty directory"):
        add_words(src, [NEW], tmp_path / "used")
    assert (tmp_path / "used" / "keep.txt").read_text() == "mine"
    with pytest.raises(VocabError, match="version id"):
        add_words(src, [NEW], tmp_path / "v", version_id="bad id/..")


def test_word_file_and_command_line(base, tmp_path, capsys):
    from tools.add_words import main

    src, *_ = base
    f = tmp_path / "words.txt"
    f.write_text("\ufeff# product names\nzorblax\n\n  Quuxly  \n", encoding="utf-8")
    assert read_words(f) == ["zorblax", "Quuxly"]
    assert main(["--base", str(src), "--words", str(f), "--out", str(tmp_path / "v"), "--version-id", "v0-names"]) == 0
    assert '"version_id": "v0-names"' in capsys.readouterr().out
    with pytest.raises(VocabError, match="no such file"):
        read_words(tmp_path / "missing.txt")


def test_command_line_user_errors_are_one_line(base, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    src, *_ = base
    repo = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-m", "tools.add_words", "--base", str(src), "--words",
                        str(tmp_path / "missing.txt"), "--out", str(tmp_path / "v")], cwd=repo,
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "v").exists()


def test_the_discovery_dictionary_is_the_word_lists_tail(base):
    src, manifest, weights, V, old, tail_word = base
    tok = (src / "tokenizer.model").read_bytes()
    words = dictionary(tok, V)
    assert words == old.words[V:] and tail_word in words and old.words[V - 1] not in words
    assert dictionary(tok, len(old)) == []
    with pytest.raises(VocabError, match="not a SentencePiece model"):
        dictionary(b"not really a sentencepiece model", V)
