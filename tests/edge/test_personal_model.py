"""The on-device personal n-gram: probabilities, candidates, and that it only knows what was typed."""

from __future__ import annotations

import gc

import pytest

from edge_runtime.personal import BOS, PersonalModel
from protocol.text import tokens


@pytest.fixture
def pm() -> PersonalModel:
    m = PersonalModel()
    for text in ("see you at the station tomorrow", "see you at the gym", "meet me at the station"):
        m.add(tokens(text))
    return m


def test_counts_per_history_are_not_walked_by_the_garbage_collector(pm):
    """A full collection walks every tracked container that is alive: a Counter per history made
    it walk hundreds of thousands of them for a mailbox (tens of ms, in whatever keystroke it
    fell on). Plain dicts of strings to ints, and tuples of strings as keys, are untracked."""
    gc.collect()
    assert len(pm.follow) > 10
    assert not any(gc.is_tracked(f) or gc.is_tracked(h) for h, f in pm.follow.items())
    assert pm.follow[("at", "the")] == {"station": 2, "gym": 1}


def test_distribution_after_a_history_sums_to_one_over_the_users_words(pm):
    for hist in ((BOS, BOS), ("at", "the"), ("you", "at"), ("never", "typed")):
        total = sum(pm.prob(w, hist) for w in pm.uni)
        assert total == pytest.approx(1.0), hist


def test_history_sharpens_the_prediction(pm):
    assert pm.prob("station", ("at", "the")) > pm.prob("station", ())
    assert pm.prob("station", ("at", "the")) > pm.prob("gym", ("at", "the")) > 0
    assert pm.prob("unseen", ("at", "the")) == 0.0 and PersonalModel().prob("the", ()) == 0.0


def test_candidates_are_typed_words_with_the_prefix(pm):
    assert set(pm.candidates(("at", "the"), "", 8)) == {"station", "gym"} | set(pm.candidates((), "", 8))
    assert pm.candidates(("at", "the"), "st", 8)[0] == "station"
    assert all(w.startswith("g") for w in pm.candidates(("x", "y"), "g", 8))
    assert pm.candidates(("x", "y"), "zz", 8) == []
    pm.add(tokens("hello , world !"))
    assert "," not in pm.words and "!" not in pm.words and "hello" in pm.words


def reference_candidates(pm: PersonalModel, hist: tuple[str, ...], prefix: str, k: int) -> list[str]:
    """`candidates` as first written: every follower ranked on each call."""
    import heapq

    from protocol.text import suggestable as _suggestable

    out: list[str] = []
    for n in (2, 1):
        f = pm.follow.get(tuple(hist[-n:])) if len(hist) >= n else None
        if f:
            out.extend(heapq.nlargest(k, (w for w in f if w.startswith(prefix) and _suggestable(w)), key=f.get))
    span = [w for w in pm.words if w.startswith(prefix)]
    out.extend(heapq.nlargest(k, span, key=pm.uni.get) if len(span) > k else span)
    return out


def test_ranked_followers_and_batch_probabilities_equal_the_one_at_a_time_ones():
    """`candidates` reads followers ranked at `add` time (ties: first seen first, as heapq.nlargest
    keeps them) and `probs` scores many words with one history lookup: same lists, same floats."""
    import random

    rng = random.Random(0)
    vocab = ["a", "b", "c", "d", "be", "bee", "cat", "dog", ",", ".", "'", "the", "they"]
    pm = PersonalModel()
    for _ in range(60):
        pm.add([rng.choice(vocab) for _ in range(rng.randint(1, 12))])
        for hist in ((BOS, BOS), ("a", "b"), ("the", ","), ("never", "typed"), ("b",), ()):
            for prefix in ("", "b", "be", "t", "x", ","):
                for k in (1, 2, 8):
                    assert pm.candidates(hist, prefix, k) == reference_candidates(pm, hist, prefix, k), (hist, prefix)
            words = vocab + ["unseen", "Zanzibar"]
            assert pm.probs(words, hist) == [pm.prob(w, hist) for w in words]
    assert PersonalModel().probs(["a"], ("a", "b")) == [0.0]


def test_long_follower_lists_are_cut_by_word_with_the_same_result():
    """A history with hundreds of followers (a mailbox's "the") is cut by word, not scanned:
    the same candidates, in the same order, before and after `warm` and after more text."""
    import random

    import edge_runtime.personal as personal

    rng = random.Random(1)
    vocab = [a + b + c for a in "tsbp" for b in "aeiou" for c in "lnrst"] + [",", "the"]
    pm = PersonalModel()
    cut = 0
    for step in range(40):
        pm.add([w for _ in range(30) for w in ("the", rng.choice(vocab))])
        if step % 3 == 0:
            pm.warm(("a", "the"))
        for hist in (("a", "the"), ("the",), ("sal", "the")):
            for prefix in ("", "t", "ta", "tal", "x", "s", ","):
                for k in (1, 3, 8):
                    assert pm.candidates(hist, prefix, k) == reference_candidates(pm, hist, prefix, k), (hist, prefix)
        cut += len(pm.ranked(("the",))) > personal._SCAN
    assert cut > 30 and ("the",) in pm._by_word


def test_a_text_drops_only_the_cached_answers_it_changed():
    """The keyboard learns a sentence while the user types on. A text raises only its own words'
    counts, so only the answers for a prefix of one of its words can change: those are answered
    anew, every other answer stays cached (the very list), and all equal the reference, over
    many texts, histories (touched by the text or not) and prefixes."""
    import random

    rng = random.Random(2)
    vocab = ["sea", "seal", "sell", "tea", "team", "ten", "the", "they", "a", "an", ",", "."]
    pm = PersonalModel()
    pm.add(tokens("the sea and the seal"))
    asks = [(h, p, k) for h in ((BOS, BOS), ("the",), ("a", "the"), ("an", "ten"), ("never", "typed"))
            for p in ("", "s", "se", "sea", "t", "te", "th", "x", ",") for k in (1, 3)]
    kept = dropped = 0
    for _ in range(80):
        before = {a: pm.candidates(*a) for a in asks}
        text = [rng.choice(vocab) for _ in range(rng.randint(1, 4))]
        pm.add(text)
        for (hist, prefix, k), old in before.items():
            now = pm.candidates(hist, prefix, k)
            assert now == reference_candidates(pm, hist, prefix, k), (text, hist, prefix)
            if any(w.startswith(prefix) and w not in ",." for w in text):
                assert now is not old, (text, hist, prefix)
                dropped += 1
            else:   # not recomputed: the very list cached before the text
                assert now is old, (text, hist, prefix)
                kept += 1
    assert kept > 1000 and dropped > 1000


def test_cached_answers_are_bounded():
    import edge_runtime.personal as personal

    pm = PersonalModel()
    pm.add(tokens("the sea and the seal"))
    for i in range(personal._CACHED + 10):
        pm.candidates(("w", str(i)), "s", 3)
    assert 0 < pm._cached <= personal._CACHED
    assert sum(len(v) for v in pm._cache.values()) == pm._cached
    for i in range(personal._CACHED + 10):   # each prefix asked once, each answer dropped by a text
        pm.candidates(("w",), f"s{i}", 3)
        pm.add([f"s{i}"])
    assert len(pm._top) <= personal._CACHED + 1 and pm._cached <= personal._CACHED
    assert pm.candidates(("x", "y"), "s", 3) == reference_candidates(pm, ("x", "y"), "s", 3)


def test_first_letters_count_each_typed_word_by_its_first_character():
    """`firsts` (what orders the first letters the keyboard readies) counts the first character
    of every suggestable token typed, once per use: the same as the unigram counts imply, whether
    texts are added whole or in parts, and punctuation never counts."""
    from collections import Counter

    texts = ["I pray you, 'tis the e-mail: i do -- +1 {x} über alles.", "Tis i, tis I! - + { } über",
             "the the The thee, 'tis"] * 3
    whole, parts = PersonalModel(), PersonalModel()
    for text in texts:
        toks = tokens(text)
        whole.add(toks)
        after = (BOS, BOS)
        for i in range(0, len(toks), 3):
            after = parts.add(toks[i:i + 3], after)
        implied = Counter()
        for w, n in whole.uni.items():
            if any(ch.isalnum() for ch in w):
                implied[w[0]] += n
        assert whole.firsts == implied == parts.firsts
    assert whole.firsts["t"] == 3 * 5 and whole.firsts["'"] == 3 * 2
    assert "-" not in whole.firsts and "," not in whole.firsts


def test_a_pasted_blob_is_counted_but_never_offered(pm):
    """A 16,000-letter "word" (a paste without spaces) topped the strip for its prefix, a tap
    inserting all of it, and learning it indexed each of its 16,001 prefixes."""
    blob = "y" * 16000
    pm.add(tokens(f"{blob} yes yes"))
    assert pm.uni[blob] == 1 and blob not in pm.words
    assert pm.candidates((BOS, BOS), "yyy", 3) == [] and pm.candidates((BOS, BOS), "ye", 3) == ["yes"]


def test_codes_card_numbers_and_passwords_typed_in_a_message_are_never_offered_back(pm):
    """A door code, a card number and a password typed in a message field (then deleted, the
    message never sent) were offered back to whoever used the device next: `my card is 45`
    completed to the whole number on the keyboard page. A field's kind cannot tell
    them; no token with four digits, or with two and a letter, is learned as a word."""
    text = "my door code is 80417 and my card is 4556737586899855 and the wifi password is 77qz3x9w ."
    for _ in range(3):
        pm.add(tokens(text))
    for secret in ("80417", "4556737586899855", "77qz3x9w"):
        assert secret not in pm.words and pm.uni[secret] == 3   # counted (probabilities), never offered
        for prefix in ("", secret[:1], secret[:2], secret[:-1]):
            for hist in (("card", "is"), ("code", "is"), ("password", "is"), (BOS, BOS)):
                assert secret not in pm.candidates(hist, prefix, 10), (secret, prefix, hist)
    assert set(pm.candidates(("the", "wifi"), "pa", 3)) == {"password"}   # the words around them are learned
    pm.add(tokens("call me at 5 on the 2nd , 10 mins"))   # short numbers and ordinals still are
    assert {"5", "2nd", "10"} <= set(pm.words)
