"""The evaluation protocol every quality figure uses (tools.wordeval): per held-out user, the first
half is typed (learned) before scoring, then one idle moment (personalize), then the second half
is scored text by text and committed after it is scored."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.wordeval import (
    MAX_SCORED_USERS,
    evaluate_words,
    halves,
    paired_interval,
    scored_words,
    user_mean_difference,
)


class Recorder:
    """A keyboard that always suggests the same words and records what the protocol does to it."""

    def __init__(self, log: list, suggestions: list[str]):
        self.log, self.suggestions = log, suggestions

    def learn(self, text: str) -> None:
        self.log.append(("learn", text))

    def personalize(self) -> None:
        self.log.append(("personalize",))

    def reset(self) -> None:
        self.log.append(("reset",))

    def suggest(self, prefix: str, k: int) -> list[str]:
        return [w for w in self.suggestions if w.startswith(prefix)][:k]

    def feed(self, chunk: str) -> float:
        self.log.append(("feed", chunk))
        return -1.0


def test_first_half_is_learned_then_personalized_then_the_second_half_scored_and_committed():
    logs: dict[str, list] = {}
    users = {"ann": ["a one", "a two", "the cat sat", "cat the"], "bob": ["b one", "b two"]}

    def new_session():
        log: list = []
        logs[f"s{len(logs)}"] = log
        return Recorder(log, ["the", "cat", "sat"])

    m = evaluate_words(new_session, users, max_words=100)
    ann, bob = logs["s0"], logs["s1"]
    assert ann[:3] == [("learn", "a one"), ("learn", "a two"), ("personalize",)]
    assert bob[:2] == [("learn", "b one"), ("personalize",)]
    assert ann.count(("personalize",)) == 1
    # each scored text: fed chunk by chunk, then committed (learned) after it was scored
    assert ann[3:] == [("reset",), ("feed", "the"), ("feed", "cat"), ("feed", "sat"), ("learn", "the cat sat"),
                       ("reset",), ("feed", "cat"), ("feed", "the"), ("learn", "cat the")]
    assert bob[2:] == [("reset",), ("feed", "b"), ("feed", "two"), ("learn", "b two")]
    assert m.words == 7                             # the cat sat, cat the; b two
    assert m.top3 == pytest.approx(5 / 7)           # "b" and "two" are never suggested
    assert m.top1 == pytest.approx(2 / 7)           # "the" first, twice
    # letters saved: each hit is in the strip before its first letter, so it saves the whole word;
    # letters typed count each word plus its space
    assert m.ksr == pytest.approx(5 * 3 / (5 * 4 + 2 + 4))


def test_halves_and_a_word_budget_that_still_samples_every_user():
    assert halves(["1", "2", "3"]) == (["1"], ["2", "3"])
    seen: list[str] = []

    def new_session():
        log: list = []
        seen.append(log)
        return Recorder(log, [])

    users = {u: ["x", "y", "one", "two"] for u in ("a", "b", "c")}
    assert evaluate_words(new_session, users, max_words=3).words == 3
    assert len(seen) == 3                            # an even share: one word of each user
    # each device stops where its share ends: "one" scored and fed, "two" never reached
    assert [e for e in seen[0] if e[0] == "feed"] == [("feed", "one")]


def test_a_budget_reaches_every_user_however_long_their_texts_and_is_shared_evenly():
    """E-mail-length texts used to spend a budget, one text per user in turn, before every user was
    reached; an even share (water-filling) reaches all of them, and a light user's few words all count."""
    users = {u: ["past", " ".join(["word"] * 40), "x y"] for u in "abcdef"}
    assert scored_words(users) == {u: 42 for u in "abcdef"}
    assert scored_words(users, 252) == scored_words(users, 10**6) == scored_words(users)
    assert scored_words(users, 100) == {"a": 17, "b": 17, "c": 17, "d": 17, "e": 16, "f": 16}
    assert scored_words({"a": ["only one text"], "b": ["past", "!! ok"]}) == {"a": 3, "b": 1}
    light = {"a": ["p", "one two"], "b": ["p", " ".join(["w"] * 50)], "c": ["p", " ".join(["w"] * 9)],
             "d": ["p", "!!"]}
    assert scored_words(light, 30) == {"a": 2, "b": 19, "c": 9, "d": 0}
    assert sum(scored_words(light, 30).values()) == 30
    per_user: dict[str, list[int]] = {}
    evaluate_words(lambda: Recorder([], []), users, max_words=100, per_user=per_user)
    assert [c[0] for c in per_user.values()] == [17, 17, 17, 17, 16, 16]
    assert list(scored_words(users, 100).values()) == [c[0] for c in per_user.values()]
    per_user = {}
    assert evaluate_words(lambda: Recorder([], []), light, max_words=30, per_user=per_user).words == 30
    assert per_user["d"] == [0, 0, 0, 0]             # no target word: listed, never scored
    with pytest.raises(ValueError, match="budget"):
        evaluate_words(lambda: Recorder([], []), light, max_words=0)


def test_past_the_budget_a_crowd_of_users_is_sampled_so_devices_stay_bounded():
    """Each scored user costs a device (its first half learned, its own LSTM copy fine-tuned), so
    past the budget at most MAX_SCORED_USERS users are scored, chosen by a hash of the name (not the
    corpus's order); within the budget every user still counts."""
    crowd = {f"user{i:03d}": ["past", " ".join(["w"] * 40)] for i in range(300)}
    got = scored_words(crowd, 5000)
    scored = {u for u, n in got.items() if n}
    assert len(scored) == MAX_SCORED_USERS == 100 and sum(got.values()) == 4000    # all 40 words of each
    assert list(got) == list(crowd)                  # every user listed, in user order
    flipped = dict(reversed(list(crowd.items())))
    assert {u for u, n in scored_words(flipped, 5000).items() if n} == scored
    assert sorted(scored_words(crowd, 2000).values())[-100:] == [20] * 100       # 100 users, an even 20
    assert scored_words(crowd, 12000) == scored_words(crowd)                      # 12,000 words: all of them
    few = {u: crowd[u] for u in list(crowd)[:60]}                                 # 60 users: all of them
    assert len([n for n in scored_words(few, 2000).values() if n]) == 60


def test_paired_interval_brackets_the_difference_and_widens_with_user_disagreement():
    words = [[40, 0, 0, 200]] * 30
    same = [[w, 10, 50, t] for w, _, _, t in words]
    assert paired_interval(same, same, "top3") == (0.0, 0.0)
    # every user gains 4 of 40 words: the difference is exactly +10 points whatever users are drawn
    better = [[w, 14, 50, t] for w, _, _, t in words]
    assert paired_interval(better, same, "top3") == pytest.approx((10.0, 10.0))
    # the same +10 points on average, but half the users gain 8 words and half none: a wide interval
    mixed = [[w, 18 if i % 2 else 10, 50, t] for i, (w, _, _, t) in enumerate(words)]
    lo, hi = paired_interval(mixed, same, "top3")
    assert lo < 10.0 < hi and hi - lo > 5.0
    assert paired_interval(mixed, same, "ksr") == (0.0, 0.0)          # saved letters are equal
    with pytest.raises(ValueError, match="same words"):
        paired_interval([[41, 1, 0, 200]] + same[1:], same, "top3")
    with pytest.raises(ValueError, match="metric"):
        paired_interval(same, same, "top1")


def test_every_user_the_same_weighs_a_light_user_as_much_as_a_heavy_one():
    # [words, top-3 hits, letters saved, letters typed]; the heavy user decides the word-weighted
    # difference, the light one pulls the per-user mean the other way.
    a = [[1000, 500, 0, 1], [10, 0, 0, 1], [0, 0, 0, 0]]
    b = [[1000, 400, 0, 1], [10, 10, 0, 1], [0, 0, 0, 0]]
    lo, hi = paired_interval(a, b, "top3")
    assert 0 < (500 - 410) / 1010 * 100 and lo <= (500 - 410) / 1010 * 100 <= hi
    d, lo, hi = user_mean_difference(a, b, "top3")          # the user with no word is left out
    assert d == pytest.approx((10 - 100) / 2) and lo <= d <= hi
    with pytest.raises(ValueError, match="same words"):
        user_mean_difference(a, [[999, 0, 0, 1], [10, 0, 0, 1], [0, 0, 0, 0]], "top3")


def test_one_user_with_scored_words_gets_no_interval_rather_than_one_of_width_zero():
    a, b = [[40, 12, 0, 200], [0, 0, 0, 0]], [[40, 8, 0, 200], [0, 0, 0, 0]]   # [words, top-3, saved, typed]
    assert paired_interval(a, b, "top3") == (None, None)
    assert user_mean_difference(a, b, "top3") == (pytest.approx(10.0), None, None)


def test_the_canary_counts_on_a_device_and_the_central_evaluation_agree_word_for_word():
    """Both score a word with `edge_runtime.word_metrics.score_word`: the canary's promote rule and
    every table of docs/quality.md measure the same thing. Hand-counted for these words: `the`
    first in the strip, `cat` in it, `dog` completed after one letter, `zebra` never offered."""
    from edge_runtime.word_metrics import word_counts
    from tools.wordeval import score_users

    text = "the cat dog zebra"
    session = Recorder([], ["the", "cat", "sat", "dog"])
    device = word_counts(session, [text], max_words=100)
    central = score_users(lambda: Recorder([], ["the", "cat", "sat", "dog"]), {"u": ["", text]}, {"u": 100})
    assert (device.words, device.top1, device.top3, device.saved, device.typed) == (4, 1, 2, 3 + 3 + 2, 4 + 4 + 4 + 6)
    assert (central.words, central.hit1, central.hit3, central.saved, central.typed) == (
        device.words, device.top1, device.top3, device.saved, device.typed)


def test_held_out_users_of_one_document_are_typed_in_pieces_when_most_are():
    """A user's first half is typed before the second is scored: of one text, nothing was typed, and
    on a corpus of one document per user the keyboard's claims flipped sign."""
    from model.corpus import read_corpus
    from tools.wordeval import one_document_corpus, typed_in_pieces

    essay = "\n\n".join(f"Paragraph {i} says a thing. And another one." for i in range(6))
    users, split = typed_in_pieces({"a": [essay], "b": [essay], "c": ["one", "two"]}, one_document=True)
    assert split == 2 and len(users["a"]) == 6 and users["c"] == ["one", "two"]
    assert halves(users["a"])[0]                              # something typed before scoring
    same, split = typed_in_pieces({"a": [essay], "b": ["x", "y"]}, one_document=False)
    assert split == 0 and same["a"] == [essay]
    # decided over the whole corpus, the same for every split and seed: the shipped ones are not
    for corpus in ("shakespeare", "spamassassin_ham"):
        assert not one_document_corpus(read_corpus(Path(__file__).resolve().parents[2] / "corpora" / f"{corpus}.jsonl"))


def test_held_out_text_that_train_users_also_have_is_warned_about_past_two_percent():
    """Quoted replies and forwarded mail put held-out text word for word in train users' text, where
    the central references learn it; only tools.prepare said so, not the tools a checker runs."""
    from model.corpus import Record, read_corpus, split_users
    from tools.wordeval import leak_note

    users = [f"person {i}" for i in range(60)]
    held = [u for u in users if split_users([Record(u, "x") for u in users]).part("test").get(u)]
    quoted = "Thanks for the patch, I will look at it on Monday and tell you what broke."
    records = [Record(u, f"{u} writes text number {k} of their own today.") for u in users for k in range(6)]
    clean = split_users(records)
    assert clean.leaked() == (0, 0) and leak_note(clean) == ""
    forwarded = records + [Record(u, quoted) for u in users]      # every user, held-out ones too, has it
    split = split_users(forwarded)
    assert split.leaked() == (len(held), len(held) * len(quoted.split()))
    note = leak_note(split)
    assert note.startswith("warning: ") and "%" in note and f"{len(held)} texts" in note and "--dedupe" in note
    # a conversation's backchannels, said by every speaker, are not copied text: no warning
    talk = records + [Record(u, line) for u in users for line in ("Uh-huh.", "Yeah.", "Oh, I see.") * 20]
    assert split_users(talk).leaked()[1] > 0.02 * sum(len(t.split()) for t in split_users(talk).texts("test"))
    assert leak_note(split_users(talk)) == ""
    # the shipped corpora repeat a few short lines ("Amen.", "Do you like sports?"): no warning
    for corpus in ("shakespeare", "spamassassin_ham", "topical_chat"):
        s = split_users(read_corpus(Path(__file__).resolve().parents[2] / "corpora" / f"{corpus}.jsonl"))
        assert leak_note(s) == "", corpus
