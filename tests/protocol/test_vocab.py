"""New softmax rows for given words (`protocol.vocab`, `tools.add_words`) on a real exported version."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.predictor import Predictor
from protocol.artifact import load_version, read_manifest
from protocol.interpreter import Model
from protocol.text import UNK_ID, load_tokenizer, vocab_of
from protocol.vocab import (
    MAX_NOTICE_BYTES,
    MAX_SHARE,
    VocabError,
    add_tail_words,
    add_words,
    dictionary,
    read_frequencies,
    read_words,
)

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


# --- the word list's tail from a public frequency list (`extend_tail`, `tools.add_words --tail`) ---

def _freqs(old, V):
    """A frequency list as `corpora/wordfreq_en.tsv` holds one: list words (to set the scale) and new ones."""
    shared = [(w, math.exp(float(old.log_freq[old.index[w]]) - 0.5)) for w in old.words[5:V] if w.isalpha()][:50]
    return shared + [("zorblax", 1e-5), ("two words", 1e-5), ("lord,", 1e-5), ("quuxly", 1e-7), ("flimbo", 1e-8)]


def test_tail_words_are_appended_and_nothing_else_moves(base, tmp_path):
    src, manifest, weights, V, old, _ = base
    freqs = _freqs(old, V)
    vid, added, skipped = add_tail_words(src, freqs, tmp_path / "v", limit=2)
    m2, w2 = load_version(tmp_path / "v")                    # hashes verified
    assert vid == m2.version_id
    new = vocab_of(load_tokenizer(tmp_path / "v" / "tokenizer.model"), V)

    assert added == ["zorblax", "quuxly"]                    # not-one-token entries skipped, the limit kept
    assert skipped["past_the_limit"] == 1 and sum(skipped.values()) + len(added) == len(freqs)
    assert new.words[:len(old)] == old.words and new.words[len(old):] == added
    np.testing.assert_array_equal(new.log_freq[:len(old)], old.log_freq)
    # On the list's own scale: the shared words sit 0.5 under their list score, so the new ones are moved up by it.
    assert new.log_freq[new.index["zorblax"]] == pytest.approx(math.log(1e-5) + 0.5, abs=1e-4)
    for name, w in weights.items():
        np.testing.assert_array_equal(w2[name], w)
    assert m2.parent == manifest.version_id and m2.version_id.startswith(f"{manifest.version_id}-t2-")
    assert m2.metrics == {"tail_words": {"added": 2, "pieces": len(old) + 2}}

    # The keyboard completes the new word; the LSTM still reads it as <unk>.
    kb = Predictor(Model.load(tmp_path / "v"), load_tokenizer(tmp_path / "v" / "tokenizer.model"))
    assert "zorblax" in kb.session().update("and then zorb") and kb.vocab.ids(["zorblax"]) == [UNK_ID]


def test_tail_words_under_the_same_id_build_the_same_version_further(base, tmp_path):
    src, manifest, _, V, old, _ = base
    add_tail_words(src, _freqs(old, V), tmp_path / "v", limit=10, version_id=manifest.version_id)
    m2, _ = load_version(tmp_path / "v")
    assert m2.version_id == manifest.version_id and m2.parent == manifest.parent
    assert m2.metrics == {**manifest.metrics, "tail_words": {"added": 3, "pieces": len(old) + 3}}
    # New softmax rows change the weights: never under the base's own id.
    with pytest.raises(VocabError, match="own id"):
        add_words(src, [NEW], tmp_path / "w", version_id=manifest.version_id)
    assert not (tmp_path / "w").exists()


def test_bad_frequency_lists_are_refused(base, tmp_path):
    src, _, _, V, old, _ = base
    with pytest.raises(VocabError, match="shares no word"):
        add_tail_words(src, [("zorblax", 1e-5)], tmp_path / "v", limit=10)
    with pytest.raises(VocabError, match="nothing to add"):
        add_tail_words(src, _freqs(old, V)[:50], tmp_path / "v", limit=10)
    assert not (tmp_path / "v").exists()
    f = tmp_path / "f.tsv"
    f.write_text("# word<TAB>frequency\nthe\t0.05\n\nzorblax\tmany\n", encoding="utf-8")
    with pytest.raises(VocabError, match="line 4 is not"):      # the file's own line numbers
        read_frequencies(f)
    f.write_text("the\t0.05\nzorblax\t-1\n", encoding="utf-8")
    with pytest.raises(VocabError, match="frequency > 0"):
        read_frequencies(f)
    f.write_text("# nothing yet\n\n", encoding="utf-8")
    with pytest.raises(VocabError, match="no 'word<TAB>frequency' lines"):
        read_frequencies(f)
    with pytest.raises(VocabError, match="is a directory"):
        read_frequencies(tmp_path)
    with pytest.raises(VocabError, match="at least 1"):
        add_tail_words(src, _freqs(old, V), tmp_path / "v", limit=0)
    assert not (tmp_path / "v").exists()


def test_frequency_lists_are_read_most_frequent_first_and_each_word_once(tmp_path):
    f = tmp_path / "f.tsv"
    f.write_text("rare\t1e-7\nthe\t0.05\nrare\t0.5\nmid\t1e-4\nalso\t1e-4\n", encoding="utf-8")
    assert read_frequencies(f) == [("the", 0.05), ("mid", 1e-4), ("also", 1e-4), ("rare", 1e-7)]


def test_a_word_the_list_holds_in_another_casing_is_not_added_again(base, tmp_path):
    # wordfreq lower-cases everything; `london` beside `London` would be a copy scored above it.
    src, _, _, V, old, _ = base
    cased = next(w for w in old.words[5:V] if w.isalpha() and w.lower() not in old.index)
    _, added, skipped = add_tail_words(src, _freqs(old, V)[:50] + [(cased.lower(), 1e-3), ("Zorblax", 1e-4),
                                                                   ("zorblax", 1e-5), ("two words", 1e-5)],
                                       tmp_path / "v", limit=10)
    assert added == ["Zorblax"]
    # every entry but the one added is accounted for, once: the list's 50 words and the word it holds
    # in another casing, the second casing of the word added, the phrase
    assert skipped == {"in_the_list": 51, "another_casing_added": 1, "not_one_word": 1, "past_the_limit": 0}


def test_tail_command_line(base, tmp_path, capsys):
    from tools.add_words import main

    src, _, _, V, old, _ = base
    f = tmp_path / "f.tsv"
    f.write_text("".join(f"{w}\t{p:g}\n" for w, p in _freqs(old, V)), encoding="utf-8")
    assert main(["--base", str(src), "--tail", str(f), "--max-tail", "1", "--out", str(tmp_path / "v")]) == 0
    out = capsys.readouterr().out
    assert '"tail_words_added": 1' in out and '"notice": null' in out and '"skipped": {' in out
    assert read_manifest(tmp_path / "v").notices == {}     # no notice beside the list, none given
    with pytest.raises(VocabError, match="--max-tail"):
        main(["--base", str(src), "--tail", str(f), "--max-tail", "0", "--out", str(tmp_path / "w")])
    with pytest.raises(VocabError, match="--notice go with --tail"):
        main(["--base", str(src), "--words", str(f), "--notice", str(f), "--out", str(tmp_path / "w")])


def test_the_lists_licence_notice_travels_in_the_signed_manifest(base, tmp_path, capsys):
    """`tools.add_words --tail f.tsv` takes `f.LICENSE` beside it (or --notice) into the manifest's
    `notices` for the tokenizer; a child version keeps it, a manifest without one serialises as
    before, and the device prints it (`python -m edge_runtime notices`)."""
    from edge_runtime.__main__ import main as device
    from protocol.artifact import Manifest
    from tools.add_words import main

    src, manifest, _, V, old, _ = base
    assert "notices" not in manifest.to_dict() and Manifest.from_dict(manifest.to_dict()).notices == {}
    f = tmp_path / "f.tsv"
    f.write_text("".join(f"{w}\t{p:g}\n" for w, p in _freqs(old, V)), encoding="utf-8")
    (tmp_path / "f.LICENSE").write_text("## f.tsv\nCC BY-SA 4.0, from Someone (2022).\n", encoding="utf-8")
    assert main(["--base", str(src), "--tail", str(f), "--max-tail", "1", "--out", str(tmp_path / "v")]) == 0
    assert '"notice": "' in capsys.readouterr().out
    m = read_manifest(tmp_path / "v")
    assert m.notices == {"tokenizer.model": "## f.tsv\nCC BY-SA 4.0, from Someone (2022)."}
    assert b"Someone" in m.signing_bytes()                   # what a signature covers
    add_words(tmp_path / "v", [NEW], tmp_path / "child")
    assert read_manifest(tmp_path / "child").notices == m.notices
    # A second list's words join the first's in the word list, and its notice joins the first's.
    (tmp_path / "g.txt").write_text("Another list, CC BY 4.0.\n", encoding="utf-8")
    assert main(["--base", str(tmp_path / "v"), "--tail", str(f), "--notice", str(tmp_path / "g.txt"),
                 "--out", str(tmp_path / "v2")]) == 0
    capsys.readouterr()
    assert read_manifest(tmp_path / "v2").notices == {
        "tokenizer.model": "## f.tsv\nCC BY-SA 4.0, from Someone (2022).\n\nAnother list, CC BY 4.0."}
    assert device(["notices", "--model", str(tmp_path / "child")]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("== tokenizer.model (version ") and "CC BY-SA 4.0, from Someone" in printed
    assert device(["notices", "--model", str(src)]) == 0 and "no licence notices" in capsys.readouterr().out
    (tmp_path / "g.txt").write_text(" \n", encoding="utf-8")
    with pytest.raises(VocabError, match="notice is empty"):
        main(["--base", str(src), "--tail", str(f), "--notice", str(tmp_path / "g.txt"), "--out", str(tmp_path / "w")])
    (tmp_path / "g.txt").write_text("x" * (MAX_NOTICE_BYTES + 1), encoding="utf-8")
    with pytest.raises(VocabError, match="too large"):
        main(["--base", str(src), "--tail", str(f), "--notice", str(tmp_path / "g.txt"), "--out", str(tmp_path / "w")])
    assert not (tmp_path / "w").exists()


def test_the_shipped_version_0_carries_its_word_lists_notice():
    from tools._cli import REPO

    notice = read_manifest(f"{REPO}/models/v0").notices["tokenizer.model"]
    assert notice == (Path(REPO) / "corpora" / "wordfreq_en.LICENSE").read_text(encoding="utf-8").strip()


def test_word_lists_are_told_apart_by_content_not_by_object(base, tmp_path):
    # A discovery candidate can hold as many words as its parent (every new row came from the
    # tail): the cache must not hand one list's words to the other, whatever object loaded it.
    src, _, _, V, old, tail_word = base
    add_words(src, [tail_word], tmp_path / "v")
    a = load_tokenizer(src / "tokenizer.model")
    b = load_tokenizer(tmp_path / "v" / "tokenizer.model")
    assert a.get_piece_size() == b.get_piece_size()
    va, vb = vocab_of(a, V), vocab_of(b, V)
    assert va.index[tail_word] >= V and vb.index[tail_word] == V - 1
    assert vocab_of(load_tokenizer(src / "tokenizer.model"), V) is va    # the same list: built once
    assert vocab_of(a, V + 1) is not va and vocab_of(a, V + 1).limit == V + 1

    class Reloaded:   # one object whose word list changes (as a reused id() would look to a cache by object)
        def __init__(self, sp):
            self.sp = sp

        def __getattr__(self, name):
            return getattr(self.sp, name)

    r = Reloaded(a)
    assert vocab_of(r, V).index[tail_word] >= V
    r.sp = b
    assert vocab_of(r, V).index[tail_word] == V - 1


def test_the_word_list_cache_is_bounded_and_safe_across_threads(base):
    from concurrent.futures import ThreadPoolExecutor

    import protocol.text as text

    src, _, _, V, _, _ = base
    sp = load_tokenizer(src / "tokenizer.model")
    with ThreadPoolExecutor(8) as pool:   # more lists than kept, from several threads at once
        got = list(pool.map(lambda i: vocab_of(sp, V - i % 7).limit, range(56)))
    assert got == [V - i % 7 for i in range(56)]
    assert len(text._VOCABS) == text._VOCABS_KEPT


# --- blocked words in versions whose word list holds them (the strip, `Predictor.block_offensive`) ---

def test_slurs_and_swear_words_are_offered_only_to_people_who_typed_them(exported_version, tmp_path):
    """A blocked word (`protocol.text.is_blocked`: listed, in any casing, with an ending after an
    apostrophe, or holding a listed stem) in the word list's tail or the base n-gram is not offered
    until this user types it; the same word list and n-gram without the block do offer it, so the
    test sees the block and not a missing word. (Here, not in tests/edge: building the version
    needs protobuf, which the boards' slim tflite-runtime environment lacks.)"""
    from edge_runtime.ngram import KneserNeyLM
    from protocol.text import blocked_words, is_blocked
    from protocol.vocab import add_tail_words
    from tests.tiny_version import tiny_texts

    assert {"fuck", "fucking", "shit"} <= blocked_words() and "god" not in blocked_words()
    assert is_blocked("Bitch\u2019s") and is_blocked("clusterfuck") and not is_blocked("snigger")
    # a probe's catches: compounds of a stem, plurals, stretched letters, short forms
    assert all(map(is_blocked, ("dogshit", "shitshow", "sonofabitch", "cumshots", "dickwads", "whorehouse",
                                "fuuuuck", "Shiiit", "wtf", "fcking", "boobs")))
    assert not any(map(is_blocked, ("dickens", "cocktail", "scunthorpe", "shiitake", "Sooo", "brrr", "book",
                                    "Matsushita", "Yamashita", "Lifshitz")))   # names that hold "shit"
    sp = load_tokenizer(exported_version / "tokenizer.model")
    shared = [(sp.id_to_piece(i).lstrip("\u2581"), 1e-3) for i in range(10, 60)]
    add_tail_words(exported_version, shared + [("fucking", 1e-3), ("Fuck", 1e-3), ("shit's", 1e-3),
                                               ("fuckery", 1e-3), ("fuchsia", 1e-5)], tmp_path / "v", limit=10)
    model, sp = Model.load(tmp_path / "v"), load_tokenizer(tmp_path / "v" / "tokenizer.model")
    ngram = KneserNeyLM.fit(tiny_texts(300) + ["you are a fucking legend"] * 30, order=3)
    open_ = Predictor(model, sp, base=ngram, block_offensive=False)
    assert "fucking" in open_.session().update("you are a ")
    offered = set(open_.session().update("you are a fu", k=8) + open_.session().update("you are a Fu", k=8) +
                  open_.session().update("it is sh", k=8))
    assert {"fucking", "Fuck", "fuckery", "shit's"} <= offered, offered
    p = Predictor(model, sp, base=ngram)
    seen = [p.session().update(t, k=8) for t in ("you are a ", "you are a fu", "you are a Fu", "it is sh")]
    assert not [w for strip in seen for w in strip if is_blocked(w)], seen
    assert "fuchsia" in seen[1]                     # the rest of the prefix range is still completed
    s = p.session()                                 # nor in the strips readied between keystrokes
    s.update("you are a ")
    while s.prefetch():
        pass
    assert not [w for c in "fFs" for w in s.update("you are a " + c, k=8) if is_blocked(w)]
    p.learn("you are a fucking legend")             # the user's own word comes back to them
    assert "fucking" in p.session().update("you are a fu")
    assert "Fuck" not in p.session().update("you are a Fu", k=8)   # only the word they typed


def test_a_blocked_word_with_its_own_softmax_row_is_not_offered_after_a_space(exported_version, tmp_path):
    # A new row starts as <unk>'s row, which the LSTM ranks high: the open strip offers the word
    # next, the blocked one never does (the softmax's top words skip it, `Vocab.offered`).
    from protocol.text import is_blocked
    from protocol.vocab import add_words

    add_words(exported_version, ["fucking"], tmp_path / "v")
    model, sp = Model.load(tmp_path / "v"), load_tokenizer(tmp_path / "v" / "tokenizer.model")
    texts = ["and then the ", "my lord, ", "What say you "]
    open_ = Predictor(model, sp, block_offensive=False)
    assert any("fucking" in open_.session().update(t, k=8) for t in texts)
    p = Predictor(model, sp)
    assert not [w for t in texts for w in p.session().update(t, k=8) if is_blocked(w)]


def test_a_blocked_word_among_the_base_ngrams_best_leaves_it_as_many_candidates(exported_version, tmp_path):
    # With one candidate per part, the n-gram's best after "you are a" is a blocked word: the
    # blocked strip gets the n-gram's next word in its place, which the open strip never proposes.
    from edge_runtime.ngram import KneserNeyLM
    from protocol.vocab import add_tail_words
    from tests.tiny_version import tiny_texts

    sp = load_tokenizer(exported_version / "tokenizer.model")
    shared = [(sp.id_to_piece(i).lstrip("\u2581"), 1e-3) for i in range(10, 60)]
    add_tail_words(exported_version, shared + [("fucking", 1e-3), ("splendid", 1e-3)], tmp_path / "v", limit=10)
    model, sp = Model.load(tmp_path / "v"), load_tokenizer(tmp_path / "v" / "tokenizer.model")
    ngram = KneserNeyLM.fit(tiny_texts(300) + ["you are a fucking legend"] * 30 + ["you are a splendid one"] * 20,
                            order=3)
    open_ = Predictor(model, sp, base=ngram, candidates=1, block_offensive=False)
    strip = open_.session().update("you are a ", k=8)
    assert "fucking" in strip and "splendid" not in strip, strip
    p = Predictor(model, sp, base=ngram, candidates=1)
    assert "splendid" in p.session().update("you are a ", k=8)
    assert p.session().update("you are a sp", k=8)[:1] == ["splendid"]
