"""The Kneser-Ney baseline: tokenization, a proper distribution, KN behaviour, fast suggest."""

from __future__ import annotations

import math
import random
import re
import stat

import numpy as np
import pytest

import edge_runtime.ngram as ngram
from edge_runtime.ngram import KneserNeyLM, chunks, leading_word, words_of_chunk

WORD = re.compile(r"[\w']+")


def synthetic_corpus(seed: int = 0, n_records: int = 300) -> list[str]:
    """Random text with structure: each word has a few likely followers, some punctuation and case."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = sorted({"".join(rng.choice(letters) for _ in range(rng.randint(2, 6))) for _ in range(500)})
    words += [w.capitalize() for w in words[:60]] + ["don't", "o'er", "'tis"]
    followers = {w: rng.sample(words, 4) for w in words}
    texts = []
    for _ in range(n_records):
        w = rng.choice(words[: len(words) // 3])
        out = [w]
        for _ in range(rng.randint(2, 14)):
            w = rng.choice(followers[w]) if rng.random() < 0.7 else rng.choice(words)
            out.append(w + rng.choice(["", "", "", "", ",", "."]))
        texts.append(" ".join(out))
    return texts


def dense_corpus(seed: int = 0, n_records: int = 400) -> list[str]:
    """Random text over few words: most two-word contexts have many followers (the keyboard's
    "of the" or ", and"), with some punctuation."""
    rng = random.Random(seed)
    words = [w + s for w in ("the", "a", "of", "and", "to", "my", "lord", "sir", "good", "I", "you", "it")
             for s in ("", "s", "ly")][:30]
    return [" ".join(rng.choice(words) + rng.choice(["", "", "", ","]) for _ in range(rng.randint(3, 20)))
            for _ in range(n_records)]


def brute_force_top(lm: KneserNeyLM, context: list[str], prefix: str, k: int) -> np.ndarray:
    """Probabilities of the k best suggestable words, ranked from the full distribution; a prefix's
    completions are longer than it."""
    p = lm.distribution(context)
    ok = [i for i, w in enumerate(lm.vocab[: len(p)]) if w.startswith(prefix) and re.search(r"\w", w)
          and WORD.fullmatch(w) and (w != prefix or not prefix)]
    return np.sort(p[ok])[::-1][:k]


@pytest.fixture(scope="module")
def synth() -> KneserNeyLM:
    return KneserNeyLM.fit(synthetic_corpus())


# ---------------------------------------------------------------- tokenization


def test_chunks_split_on_any_whitespace():
    assert chunks("  Hello,\tworld!\n  don't  ") == ["Hello,", "world!", "don't"]
    assert chunks("") == []


def test_words_of_chunk_keeps_apostrophes_and_splits_punctuation():
    assert words_of_chunk("know't,") == ["know't", ","]
    assert words_of_chunk("'Tis") == ["'Tis"]
    assert words_of_chunk("(well...)") == ["(", "well", ".", ".", ".", ")"]
    assert words_of_chunk("o'er-hasty;") == ["o'er", "-", "hasty", ";"]
    assert words_of_chunk("café!") == ["café", "!"]


def test_leading_word_is_the_prediction_target():
    assert leading_word("don't,") == "don't"
    assert leading_word("o'er-hasty") == "o'er"
    assert leading_word("'Tis") == "'Tis"
    assert leading_word("Hello!") == "Hello"
    assert leading_word("(well") is None
    assert leading_word("--") is None
    assert leading_word("") is None


# ---------------------------------------------------------------- a distribution


@pytest.mark.parametrize("kwargs", [{}, {"discount": 0.7}, {"min_count": 2}, {"order": 1}, {"order": 2}, {"order": 4}])
def test_probabilities_sum_to_one(kwargs):
    texts = synthetic_corpus(seed=1, n_records=150)
    lm = KneserNeyLM.fit(texts, **kwargs)
    first = words_of_chunk(texts[0])
    contexts = [[], ["<s>"], ["<s>", first[0]], ["<s>", *first[:3]], first[:2], ["never-seen", "zzzz"], ["<unk>"]]
    for ctx in contexts:
        p = lm.distribution(ctx)
        assert len(p) == len(lm.vocab) - 1  # every token but <s>
        assert p.min() > 0
        assert p.sum() == pytest.approx(1.0, abs=1e-9)
        for tok in (first[1], ",", "</s>", "<unk>"):
            assert lm.prob(tok, ctx) == pytest.approx(p[lm.vocab.index(tok)], rel=1e-12)


def test_discounts_are_estimated_per_order_and_valid(synth):
    assert set(synth.discounts) == {1, 2, 3}
    for d1, d2, d3 in synth.discounts.values():
        assert 0 < d1 < 1 and 0 < d2 < 2 and 0 < d3 < 3
    fixed = KneserNeyLM.fit(synthetic_corpus(n_records=50), discount=0.6)
    assert all(d == (0.6, 0.6, 0.6) for d in fixed.discounts.values())


# ---------------------------------------------------------------- Kneser-Ney behaviour


def francisco_corpus() -> list[str]:
    texts = ["we flew to San Francisco ."] * 8  # frequent, but after one word only
    texts += [f"{owner} glasses broke" for owner in ("my", "your", "his", "her", "new")]  # 5 contexts
    texts += ["we love it", "to be or not to be"]
    return texts


def test_continuation_counts_beat_raw_frequency():
    lm = KneserNeyLM.fit(francisco_corpus())
    text = " ".join(francisco_corpus())
    assert text.split().count("Francisco") > text.split().count("glasses")
    # Unigram level alone: glasses (seen after 5 words) over Francisco (after 1).
    assert lm.prob("glasses", []) > lm.prob("Francisco", [])
    s = lm.session()
    s.feed("unheard-of")  # unseen context: the ranking is the unigram (continuation) one
    ranked = s.suggest("", k=50)
    assert ranked.index("glasses") < ranked.index("Francisco")
    # In its own context Francisco still wins (the trigram keeps raw counts).
    s.reset()
    s.feed("to")
    s.feed("San")
    assert s.suggest("", 1) == ["Francisco"]


def cat_corpus() -> list[str]:
    return ["the cat sat down", "the cat sat still"] + ["a cat ran away"] * 6 + ["the dog barked"] * 10


def test_seen_trigram_is_top1():
    lm = KneserNeyLM.fit(cat_corpus())
    s = lm.session()
    for chunk in "the cat".split():
        s.feed(chunk)
    assert s.suggest("", 1) == ["sat"]
    assert s.suggest("s", 1) == ["sat"]
    assert s.suggest("r", 1) == ["ran"]
    # The bigram alone prefers "ran": the trigram is what makes "sat" win.
    bigram = KneserNeyLM.fit(cat_corpus(), order=2).session()
    bigram.feed("the")
    bigram.feed("cat")
    assert bigram.suggest("", 1) == ["ran"]


# ---------------------------------------------------------------- suggest


@pytest.mark.parametrize("prefix", ["", "a", "b", "ba", "T", "Th", "d", "don", "'", "zzzzzz", ",", "."])
@pytest.mark.parametrize("k", [1, 3, 10, 1000])
def test_suggest_respects_prefix_k_and_gives_distinct_words(synth, prefix, k):
    words = synth.vocab[: synth.n_words]
    n_matching = sum(w.startswith(prefix) for w in words)
    s = synth.session()
    for chunk in ["<start>", *chunks(synthetic_corpus()[3])[:4]]:
        got = s.suggest(prefix, k)
        assert len(got) == min(k, n_matching)
        assert len(set(got)) == len(got)
        for w in got:
            assert w.startswith(prefix)
            assert WORD.fullmatch(w) and re.search(r"\w", w), w
        s.feed(chunk)


def test_suggest_never_offers_punctuation_or_specials():
    lm = KneserNeyLM.fit(["yes , sir", "yes , madam", "yes , sir !", "' quoth he '", "no"] * 3)
    p = lm.distribution(["<s>", "yes"])
    assert lm.vocab[int(np.argmax(p))] == ","  # punctuation is the likeliest next token...
    s = lm.session()
    s.feed("yes")
    got = s.suggest("", 100)
    assert got and set(got) <= {"yes", "sir", "madam", "quoth", "he", "no"}  # ...but never suggested
    assert s.suggest("'", 5) == []  # a lone quote mark is not a word
    assert s.suggest(",", 5) == []


def test_suggest_matches_brute_force_ranking(monkeypatch):
    # Small prefix and follower tables so both the precomputed lists and the on-the-fly ranking are used.
    monkeypatch.setattr(ngram, "_PREFIX_TABLE_MIN", 8)
    monkeypatch.setattr(ngram, "_PREFIX_TABLE_K", 4)
    monkeypatch.setattr(ngram, "_FOLLOW_TABLE_MIN", 4)
    monkeypatch.setattr(ngram, "_FOLLOW_TABLE_K", 3)
    texts = synthetic_corpus(seed=2)
    lm = KneserNeyLM.fit(texts)
    assert len(lm._prefix_top) > 5 and len(lm._follow_top[2]) > 5 and len(lm._follow_top[3]) > 1
    for text in texts[:25]:
        s = lm.session()
        context = ["<s>"]
        for chunk in chunks(text):
            for prefix, k in (("", 3), ("", 8), (chunk[:1], 3), (chunk[:1], 6), (chunk[:2], 3)):
                got = s.suggest(prefix, k)
                want = brute_force_top(lm, context, prefix, k)
                got_p = np.array([lm.prob(w, context) for w in got])
                np.testing.assert_allclose(got_p, want, rtol=1e-9)
            s.feed(chunk)
            context += words_of_chunk(chunk)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_follower_tables_give_the_full_rankings_ids_and_probabilities(monkeypatch, order):
    """After a space the n-gram ranks from a few precomputed followers per context (`_next_top`):
    the same ids as ranking every follower, and `_prob_id`'s values bit for bit."""
    monkeypatch.setattr(ngram, "_FOLLOW_TABLE_MIN", 6)
    monkeypatch.setattr(ngram, "_FOLLOW_TABLE_K", 5)
    texts = dense_corpus(seed=3) + synthetic_corpus(seed=3)
    lm = KneserNeyLM.fit(texts, order=order)
    assert all(lm._follow_top[n] for n in range(2, order + 1))
    extra = np.array(lm._ids(["the", ",", "zzz-unknown", *words_of_chunk(texts[7])]), dtype=lm._id_dtype)
    used = tabled = 0
    for text in texts[:60]:
        hist = [lm._bos]
        for tok in words_of_chunk(text):
            for k in (1, 3, 5):
                fast = lm._next_top(hist[-(order - 1):], k, extra)
                if fast is None:
                    continue
                used += 1
                tabled += any(s in lm._follow_top[n] for n, s, _, _ in lm._levels_for(hist[-(order - 1):]))
                top, probs = fast
                assert top == lm._rank_ids(hist[-(order - 1):], "", k)  # every follower ranked
                assert probs == [lm._prob_id(int(i), hist) for i in [*extra.tolist(), *top]]
            hist.append(lm._index.get(tok, lm._unk))
    assert used > 500 and tabled > 200


def test_probs_and_suggest_scored_equal_prob_and_suggest_exactly(monkeypatch):
    monkeypatch.setattr(ngram, "_FOLLOW_TABLE_MIN", 6)
    monkeypatch.setattr(ngram, "_FOLLOW_TABLE_K", 8)
    texts = dense_corpus(seed=4) + synthetic_corpus(seed=4)
    for order in (1, 2, 3):
        lm = KneserNeyLM.fit(texts, order=order)
        tokens = ["never-seen", ",", "</s>", "<unk>", *words_of_chunk(texts[5]), *words_of_chunk(texts[9])]
        for text in texts[:30]:
            context = ["<s>"]
            for tok in words_of_chunk(text):
                want = [lm.prob(t, context) for t in tokens]
                assert lm.probs(tokens, context) == want  # the same floats, not approximately
                assert lm.probs(tokens, context, oov=0.0) == [0.0 if t not in lm else p for t, p in zip(tokens, want)]
                for k in (1, 3, 8):
                    top, probs = lm.suggest_scored(context, k, tokens, oov=-1.0)
                    assert top == lm.suggest(context, "", k)
                    assert probs == [-1.0 if t not in lm else lm.prob(t, context) for t in tokens + top]
                context.append(tok)


def test_suggest_is_case_sensitive(synth):
    s = synth.session()
    assert all(w[0] == "T" for w in s.suggest("T", 20))
    assert all(w[0] == "t" for w in s.suggest("t", 20))


# ---------------------------------------------------------------- feed / session


def test_feed_returns_the_log_probability_of_the_chunk_tokens():
    lm = KneserNeyLM.fit(cat_corpus() + ["hello , world"])
    s = lm.session()
    lp = s.feed("the")
    assert math.isfinite(lp) and lp < 0
    assert lp == pytest.approx(math.log(lm.prob("the", ["<s>"])))
    lp = s.feed("cat,")  # two tokens: "cat" then ","
    assert lp == pytest.approx(math.log(lm.prob("cat", ["<s>", "the"])) + math.log(lm.prob(",", ["the", "cat"])))
    assert s.context == ["cat", ","]  # only order-1 tokens are kept
    assert s.feed("") == 0.0
    assert s.context == ["cat", ","]


def test_feed_scores_unknown_words_as_unk():
    lm = KneserNeyLM.fit(cat_corpus())
    s = lm.session()
    lp = s.feed("Zyzzyva")
    assert math.isfinite(lp) and lp < 0
    assert lp == pytest.approx(math.log(lm.prob("<unk>", ["<s>"])))
    assert s.context == ["<s>", "<unk>"]
    assert len(s.suggest("", 3)) == 3


def test_reset_starts_a_new_text(synth):
    s = synth.session()
    first = s.suggest("", 5)
    for chunk in chunks(synthetic_corpus()[7]):
        s.feed(chunk)
    assert s.suggest("", 5) != first or s.context != ["<s>"]
    s.reset()
    assert s.context == ["<s>"]
    assert s.suggest("", 5) == first


def test_update_types_like_a_keyboard_and_suggests_what_feed_and_suggest_give(synth):
    """`update(text before the cursor)` on every keystroke, with a backspace into an earlier
    word, gives what a fresh session fed the same completed chunks suggests for the partial."""
    text = " ".join(synthetic_corpus()[3:6])
    keys = [text[:i] for i in range(1, len(text) + 1)]
    cut = keys[len(keys) // 2]
    back = cut[:cut.rstrip().rfind(" ") - 1]         # back into the previous word
    keys += [back, back + "x ", back + "x y"]
    s = synth.session()
    for typed in keys:
        parts = typed.split()
        partial = "" if typed[-1].isspace() else parts.pop()
        ref = synth.session()
        for chunk in parts:
            ref.feed(chunk)
        assert s.update(typed) == ref.suggest(partial, 3), typed
    assert s.update("") == synth.session().suggest("", 3)
    # a word after an opening quote is completed after it, as the keyboard's sessions do
    ref = synth.session()
    for chunk in ("the", '"'):
        ref.feed(chunk)
    assert s.update('the "t') == ref.suggest("t", 3) and s.update('the "t')
    assert s.update("the t,") == []


def test_size_counts_every_stored_probability():
    tri = KneserNeyLM.fit(["a b c a b d"], order=3)
    bi = KneserNeyLM.fit(["a b c a b d"], order=2)
    uni = len(tri.distribution())                        # one per word of the vocabulary
    # distinct bigrams (<s> a, a b, b c, c a, b d, d </s>) and trigrams (<s> a b, a b c, b c a,
    # c a b, a b d, b d </s>)
    assert bi.size == uni + 6
    assert tri.size == uni + 6 + 6


def test_min_count_maps_rare_words_to_unk():
    texts = ["the cat sat", "the cat sat", "the dog sat", "a zebra"]
    lm = KneserNeyLM.fit(texts, min_count=2)
    assert "zebra" not in lm.vocab and "dog" not in lm.vocab and "cat" in lm.vocab
    assert lm.prob("zebra", ["<s>", "the"]) == lm.prob("<unk>", ["<s>", "the"])
    assert lm.prob("sat", ["the", "dog"]) == lm.prob("sat", ["the", "<unk>"])
    assert lm.prob("sat", ["the", "dog"]) > 0.5  # "the dog sat" was counted as "the <unk> sat"
    assert lm.prob("<unk>", ["<s>", "the"]) > lm.prob("<unk>", ["the", "cat"])  # "the dog" became "the <unk>"
    s = lm.session()
    s.feed("the")
    assert "<unk>" not in s.suggest("", 10)


def test_min_users_keeps_only_what_several_users_typed():
    """The reference for "what a release protecting each user could hold": a word or n-gram one
    user typed, however often, is not kept; an empty text does not shift the users."""
    texts = ["red hat linux", "red hat linux", "red hat box", "", "my red car"]
    users = ["a", "a", "b", "c", "c"]
    lm = KneserNeyLM.fit(texts, users=users, min_users=2)
    assert [w for w in lm.vocab if w[0] != "<"] == ["hat", "red"]   # linux (a twice), box, my, car: <unk>
    assert lm.prob("linux", ["red", "hat"]) == lm.prob("<unk>", ["red", "hat"])
    # With <unk> in place: kept bigrams <s> red, red hat, hat <unk>, <unk> </s> (a and b; </s> also c);
    # trigrams <s> red hat, red hat <unk>, hat <unk> </s>. c's "<s> <unk> red <unk> </s>" is c's alone.
    assert lm.size == len(lm.distribution()) + 4 + 3
    by_user = KneserNeyLM.fit_users([("a", texts[:2]), ("b", texts[2:3]), ("c", texts[3:])], min_users=2)
    assert by_user.vocab == lm.vocab and by_user.size == lm.size
    np.testing.assert_array_equal(by_user.distribution(["red", "hat"]), lm.distribution(["red", "hat"]))
    assert KneserNeyLM.fit(texts).prob("red", ["<s>", "my"]) > 0.5 > lm.prob("red", ["<s>", "my"])   # c's alone
    # min_users=1 is the plain fit
    plain, one = KneserNeyLM.fit(texts), KneserNeyLM.fit(texts, users=users, min_users=1)
    assert one.vocab == plain.vocab
    np.testing.assert_array_equal(one.distribution(["red", "hat"]), plain.distribution(["red", "hat"]))
    for bad in ({"min_users": 0, "users": users}, {"min_users": 2}, {"min_users": 2, "users": users[:3]}):
        with pytest.raises(ValueError):
            KneserNeyLM.fit(texts, **bad)
    # "b c" is shared though each user reached it from their own word: it keeps its own order
    two = KneserNeyLM.fit(["x b c", "y z", "y b c", "x z"], users=["a", "a", "b", "b"], min_users=2)
    assert {"x", "y"} <= set(two.vocab) and two.prob("c", ["z", "b"]) > 0.5
    with pytest.raises(ValueError, match="2 or more users"):   # one user: nothing is shared, no empty model
        KneserNeyLM.fit(texts, users=["a"] * len(texts), min_users=2)


# ---------------------------------------------------------------- persistence / validation


def test_save_load_round_trip(tmp_path, synth):
    path = tmp_path / "kn.npz"
    synth.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600   # counted from users' text: private unless asked
    assert [p.name for p in tmp_path.iterdir()] == ["kn.npz"]   # written beside it and renamed
    loaded = KneserNeyLM.load(path)
    assert loaded.vocab == synth.vocab and loaded.order == synth.order and loaded.discounts == synth.discounts
    a, b = synth.session(), loaded.session()
    for chunk in chunks(synthetic_corpus()[5]):
        assert a.suggest("", 5) == b.suggest("", 5)
        assert a.suggest(chunk[:1], 3) == b.suggest(chunk[:1], 3)
        assert a.feed(chunk) == b.feed(chunk)
    np.testing.assert_array_equal(synth.distribution(["<s>"]), loaded.distribution(["<s>"]))


@pytest.mark.parametrize("kwargs", [{"order": 0}, {"discount": 0.0}, {"discount": 1.5}, {"min_count": 0}])
def test_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        KneserNeyLM(**kwargs)


def test_rejects_empty_corpus_and_unfitted_use():
    with pytest.raises(ValueError):
        KneserNeyLM.fit(["", "   \n"])
    with pytest.raises(RuntimeError):
        KneserNeyLM().session()


def test_a_warmed_context_gives_the_same_floats_and_suggestions():
    """`warm` (the keyboard calls it between keystrokes) changes no probability and no suggestion
    in the warmed context or any other, for every prefix of the next word."""
    texts = dense_corpus(seed=5) + synthetic_corpus(seed=5)
    for order in (2, 3):
        lm = KneserNeyLM.fit(texts, order=order)
        tokens = ["never-seen", ",", "</s>", "<unk>", *words_of_chunk(texts[7]), *words_of_chunk(texts[11])]
        looked_up = 0
        for text in texts[:25]:
            context, previous = ["<s>"], None
            for tok in words_of_chunk(text):
                prefixes = ["", tok[:1], tok[:2], tok, "zq"]
                for ctx in (context, previous) if previous else (context,):
                    lm._warm = None
                    # the keyboard's candidates: suggestable words, or words the n-gram does not know
                    words = ["never-seen", *(t for t in tokens if lm._index.get(t, lm.n_words) < lm.n_words)]
                    want = ([lm.suggest(ctx, p, k) for p in prefixes for k in (1, 3, 8)],
                            lm.probs(tokens, ctx), lm.probs(tokens, ctx, oov=0.0), lm.probs(words, ctx, oov=0.0))
                    lm.warm(context)
                    got = ([lm.suggest(ctx, p, k) for p in prefixes for k in (1, 3, 8)],
                           lm.probs(tokens, ctx), lm.probs(tokens, ctx, oov=0.0), lm.probs(words, ctx, oov=0.0))
                    assert got == want, (ctx, tok)
                ids = np.array([i for i in map(lm._index.get, tokens[4:]) if i < lm.n_words], dtype=lm._id_dtype)
                looked_up += lm._warm_probs(ids, lm._ids(context)) is not None
                previous, context = context, [*context, tok]
        assert looked_up > 100


def test_kth_largest_from_a_sample_equals_a_full_partition():
    rng = np.random.default_rng(0)
    for n in (1, 7, 300, 1024, 5000):
        for v in (rng.random(n), rng.integers(0, 5, n).astype(float), np.sort(rng.random(n))):
            for k in sorted({1, 3, 8, n}):
                if k <= n:
                    assert ngram._kth_largest(v, k) == np.sort(v)[::-1][k - 1], (n, k)


def test_a_file_that_is_not_an_ngram_is_a_value_error_naming_it(tmp_path):
    """The keyboard warns and types on without a base n-gram it cannot read; a .npy file (one
    array, not an archive) raised TypeError instead, past that warning."""
    np.save(tmp_path / "one.npy", np.zeros(3))
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    (tmp_path / "text.npz").write_text("not a zip")
    for name in ("one.npy", "other.npz", "text.npz"):
        with pytest.raises(ValueError, match=f"{name} is not an n-gram model"):
            KneserNeyLM.load(tmp_path / name)
