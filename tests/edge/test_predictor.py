"""The keyboard's suggestion engine on a real exported model (slim interpreter, no TensorFlow)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from edge_runtime.ngram import leading_word
from edge_runtime.predictor import FOLDED_SHARE, FOLLOW_WEIGHT, SHORTER_FIRST, TEXT_WEIGHT, Predictor
from protocol.interpreter import Model
from protocol.text import BOS_ID, load_tokenizer, plain_quotes, quote_led, tokens, typed_chunks, word_being_typed

TEXT = "What say you to my lord, and shall we go to the king"


@pytest.fixture(scope="module")
def predictor(exported_version):
    return Predictor(Model.load(exported_version), load_tokenizer(exported_version / "tokenizer.model"))


def test_next_word_suggestions_are_three_distinct_words(predictor):
    s = predictor.session()
    words = s.update("I pray you, ")
    assert len(words) == 3 and len(set(words)) == 3
    assert all(w and all(ch.isalnum() or ch == "'" for ch in w) for w in words)


def test_completions_respect_the_typed_prefix(predictor):
    s = predictor.session()
    for prefix in ("th", "w", "ki", "the", "I", "a"):
        words = s.update(f"and then {prefix}")
        assert words, prefix
        assert all(w.startswith(prefix) for w in words), (prefix, words)
        assert prefix not in words, (prefix, words)   # saves nothing: the space types it too


def test_incremental_typing_equals_a_fresh_session(predictor):
    typed = predictor.session()
    for i in range(1, len(TEXT) + 1):
        got = typed.update(TEXT[:i])
        if i % 9 == 0 or i == len(TEXT):
            assert got == predictor.session().update(TEXT[:i]), TEXT[:i]


def test_a_keystroke_at_the_end_of_a_long_text_reads_only_its_last_chunk(predictor, monkeypatch):
    """Typing appends: the session splits only the chunk being typed plus the new characters, not
    the whole text before the cursor, and suggests what a fresh session over the whole text does."""
    import edge_runtime.session as pred

    long_text = " ".join([TEXT] * 40)
    s = predictor.session()
    s.update(long_text[:-8])
    split: list[str] = []
    real = pred.typed_chunks
    monkeypatch.setattr(pred, "typed_chunks", lambda t: split.append(t) or real(t))
    for i in range(7, -1, -1):
        got = s.update(long_text[:len(long_text) - i])
    assert max(map(len, split)) < 12 and len(split) == 8
    monkeypatch.setattr(pred, "typed_chunks", real)
    assert got == predictor.session().update(long_text)
    assert s.update(long_text[:100] + "X") == predictor.session().update(long_text[:100] + "X")   # an edit


def test_a_cursor_moved_back_and_to_the_end_again_takes_the_states_it_had(predictor, monkeypatch):
    """A click or an arrow key sends the text before the cursor: the session rewinds. Back at the
    end, it re-ran the whole text after the cursor (0.4 s for 8,000 characters); the chunks are
    the same, so now their states are too. An edit meanwhile still re-runs what follows it."""
    long_text = " ".join([TEXT] * 30) + " "
    s = predictor.session()
    s.update(long_text)
    steps: list[int] = []
    real = type(predictor).advance_ids
    monkeypatch.setattr(type(predictor), "advance_ids", lambda self, node, ids: steps.append(len(ids)) or
                        real(self, node, ids))
    s.update(long_text[:50])                  # the cursor near the start
    for n in range(len(long_text) // 2, len(long_text) // 2 - 40, -1):   # backspaces, each strip asked
        s.update(long_text[:n])
    assert len(s.undone) > 100 and not [n for _, n, _ in s.undone if n._lp is not None or n.head is not None]
    s.update(long_text[:len(long_text) // 2])  # halfway
    got = s.update(long_text)                  # at the end again
    assert sum(steps) <= 2, steps             # a word being typed may be fed ahead; no chunk re-run
    monkeypatch.setattr(type(predictor), "advance_ids", real)
    assert got == predictor.session().update(long_text)
    whole = predictor.advance_ids(predictor.root, predictor.vocab.ids(tokens(long_text)))
    np.testing.assert_array_equal(s.nodes[-1].logprobs, whole.logprobs)
    edited = "Shall" + long_text[4:]          # an edit at the start: every state after it changes
    assert s.update(edited[:20]) == predictor.session().update(edited[:20])
    assert s.update(edited) == predictor.session().update(edited)
    assert not s.undone


def test_a_long_chunk_without_spaces_is_fed_once_not_on_every_keystroke(predictor, monkeypatch):
    """Chinese has no spaces: after a pasted paragraph every keystroke fed all of its tokens again,
    twice (the word being typed's lead, then `prefetch`), and a new version's first keystroke too."""
    pasted = "我今天去了商店，" * 200
    s = predictor.session()
    s.update(pasted)
    while s.prefetch():
        pass
    # kept for their h and c only: 40 KB of log-probabilities each held a pasted line in memory
    assert len(s.ahead) > 100 and sum(n._lp is not None or n.head is not None for _, n, _ in s.ahead) <= 1
    steps: list[int] = []
    real = type(predictor).advance_ids
    monkeypatch.setattr(type(predictor), "advance_ids", lambda self, node, ids: steps.append(len(ids)) or
                        real(self, node, ids))
    text = pasted
    for ch in "我今天":
        text += ch
        steps.clear()
        got = s.update(text)
        while s.prefetch():
            pass
        assert sum(steps) <= 2, steps
    warmed = predictor.session()          # as `KeyboardApp._warm` readies a new version on its thread
    chunks, partial = typed_chunks(text)
    warmed.feed_chunks(chunks)
    warmed.feed_partial(partial)
    steps.clear()
    assert warmed.update(text) == got and sum(steps) <= 1, steps
    monkeypatch.setattr(type(predictor), "advance_ids", real)
    assert got == predictor.session().update(text)


@pytest.mark.parametrize("parts", ["lstm", "keyboard"])
def test_typing_backspaces_cursor_moves_and_edits_in_any_order_suggest_as_a_fresh_session(
        exported_version, base_ngram, parts):
    """What a session keeps between keystrokes (a state per chunk, the chunks a rewind took off,
    passed chunks' log-probabilities dropped and recomputed, a token fed ahead, `prefetch`'s work)
    must never change a strip: each one equals a fresh session's over the text before the cursor.
    Also with every part of the keyboard: a base n-gram and the user's own words."""
    import random

    predictor = Predictor(Model.load(exported_version), load_tokenizer(exported_version / "tokenizer.model"),
                          base=base_ngram if parts == "keyboard" else None)
    if parts == "keyboard":
        for text in (TEXT, PHRASE, "and what say you to that, my lord?"):
            predictor.learn(text)
    rng = random.Random(7)
    s = predictor.session()
    text, cursor, source = "", 0, TEXT + ", and what say you? "
    for step in range(500):
        op = rng.random()
        if op < 0.55:     # type: the next character of the source text, at the cursor
            ch = source[step % len(source)]
            text, cursor = text[:cursor] + ch + text[cursor:], cursor + 1
        elif op < 0.7 and cursor:   # backspace
            text, cursor = text[:cursor - 1] + text[cursor:], cursor - 1
        elif op < 0.82:   # a click anywhere
            cursor = rng.randint(0, len(text))
        elif op < 0.92:   # back to the end
            cursor = len(text)
        else:             # idle between keystrokes
            while s.prefetch():
                pass
        got = s.update(text[:cursor])
        if step % 2 == 0:
            assert got == predictor.session().update(text[:cursor]), (step, text[:cursor])
    assert len(text) > 100


def test_a_word_after_an_opening_quote_or_bracket_is_completed_after_it(predictor):
    """'He said "hel' once got no suggestions: the whole chunk '"hel' was taken as the prefix."""
    for lead in ('"', "(", "\u201c"):
        s = predictor.session()
        words = s.update(f"What say you to {lead}th")
        assert len(words) == 3 and all(w.startswith("th") for w in words), (lead, words)
        after = predictor.session()
        for chunk in ["What", "say", "you", "to", lead]:
            after.feed(chunk)
        assert words == after.suggest("th"), lead      # the prefix, in the context after the mark
    s = predictor.session()
    assert len(s.update('What say you to "')) == 3    # the next word, right after the quote
    assert s.update("What say you to my lord,") == []  # the next word comes after a space


def test_a_word_after_a_single_quote_is_completed_with_the_quote(predictor):
    """"He said 'hel" once offered only the word list's few quote-led words: the tokenizer keeps an
    apostrophe with its word ("'tis"), so the quote was part of the prefix. Now the word inside the
    quote is completed too, in the user's quote; a removed quoted word, and its sentence-start
    form, stay out, and the word without the quote is not hidden by it."""
    from edge_runtime.user_words import _hidden

    plain = predictor.session().update("What say you to th")
    for quote in ("'", "\u2018"):
        got = predictor.session().update(f"What say you to {quote}th")
        assert len(got) == 3 and all(w.startswith(quote + "th") for w in got), got
        assert quote + plain[0] in got, (got, plain)      # the likeliest completion, quoted
    # Smart punctuation types \u2019 for an apostrophe: ranked as "'", shown as typed.
    for typed in ("What say you, 'ti", "and so that'", "What say you to 'th"):
        smart = typed[:-3] + typed[-3:].replace("'", "\u2019")
        want = predictor.session().update(typed)
        got = predictor.session().update(smart)
        chunk = smart.split()[-1]
        assert want and got == [chunk + w[len(chunk):] for w in want], (typed, got, want)
    first = "'" + plain[0]
    predictor.personal.removed = _hidden(frozenset([first]))
    try:
        assert "'" + plain[0][0].upper() + plain[0][1:] in predictor.personal.removed
        assert first not in predictor.session().update("What say you to 'th")
        assert predictor.session().update("What say you to th") == plain
    finally:
        predictor.personal.removed = frozenset()


def test_the_users_own_completions_stay_when_the_prefix_is_a_word_they_typed(predictor):
    """Leaving out the typed prefix once also cut the user's candidates (their best m after this
    history, after its last word, and overall) to m in all: typed "the", the user's most typed
    completions dropped out whenever they had also typed "the" itself."""
    from edge_runtime.personal import PersonalModel

    after_saw = ["thee", "then", "them", "there", "these", "they", "their", "theft", "theme", "thence"]
    pm = PersonalModel()
    for w in after_saw:                      # each once after "saw"
        pm.add(["we", "saw", w])
    for _ in range(30):
        pm.add(["we", "saw", "the"])
        pm.add(["a", "thermal", "theorem"])  # the user's most typed completions, never after "saw"
    p = Predictor(predictor.model, predictor.sp)
    p.personal = pm
    hist = ("we", "saw")
    cands = p._candidates(p.root, hist, "the", 3, (0.5, 0.0, 0.5))
    assert "the" not in cands
    assert {"thermal", "theorem"} <= cands   # the user's overall best, beside the followers of "saw"
    assert set(pm.candidates(hist, "the", p.candidates + 1)) - {"the"} <= cands


def test_backspace_and_edits_rewind_to_the_cached_state(predictor):
    s = predictor.session()
    s.update("shall we go to the king ")
    fed = len(s.chunks)
    assert s.update("shall we go to the ki") == predictor.session().update("shall we go to the ki")
    assert s.chunks == ["shall", "we", "go", "to", "the"] and fed == 6
    assert s.update("shall we run to the ") == predictor.session().update("shall we run to the ")


def test_a_long_text_keeps_the_model_output_of_its_last_chunk_only(predictor):
    """A session keeps a state per chunk for rewinds; kept with each its 10,000 log-probabilities
    and their exponentials, a 16,000-character text held 400 MB. Chunks passed drop them and
    recompute the same values when a backspace makes them the tip again."""
    s = predictor.session()
    text = (TEXT + ". ") * 6
    s.update(text)
    before = predictor.session()
    before.update(text[:41])   # the strip after 9 words, from a session that never went past them
    kept = [n for n in s.nodes[1:-1] if n._lp is not None or n.head is not None]
    assert len(s.nodes) > 60 and kept == []
    assert s.nodes[-1]._lp is not None and s.nodes[0]._lp is not None   # the tip, and the shared root
    fresh = predictor.advance_ids(predictor.root, predictor.vocab.ids(tokens(TEXT[:41])))
    assert s.update(text[:41]) == before.update(text[:41])
    np.testing.assert_array_equal(s.nodes[-1].logprobs, fresh.logprobs)
    assert s.update(text) == predictor.session().update(text)


def test_chunkwise_state_equals_feeding_the_whole_text_at_once(predictor):
    s = predictor.session()
    for chunk in TEXT.split():
        s.feed(chunk)
    ids = predictor.vocab.ids(tokens(TEXT))
    node = predictor.advance_ids(predictor.root, ids)
    np.testing.assert_allclose(s.nodes[-1].logprobs, node.logprobs, atol=1e-5)
    assert predictor.root is not None and BOS_ID == 2


def test_suggestions_are_the_models_most_likely_words(predictor):
    """With no personal text, the strip is exactly the top of the model's word distribution."""
    s = predictor.session()
    s.update("my good lord ")
    probs = predictor.word_probs(s.nodes[-1])
    ids = predictor.sorted_ids
    best = [predictor.vocab.words[i] for i in ids[np.argsort(-probs[ids], kind="stable")[:3]]]
    assert s.suggest("", 3) == best
    th = [i for i in ids if predictor.vocab.words[i].startswith("th")]
    assert s.suggest("th", 1) == [predictor.vocab.words[max(th, key=lambda i: probs[i])]]


def test_rarer_list_words_share_the_lstms_unk_by_frequency(predictor):
    """Words past the softmax are suggestable: P(w) = P(<unk>) * TAIL_MASS * their frequency share."""
    from edge_runtime.predictor import TAIL_MASS
    from protocol.text import UNK_ID

    lim = predictor.vocab.limit
    assert lim < len(predictor.vocab)
    node = predictor.session().nodes[-1]
    p = predictor.word_probs(node)
    unk = float(np.exp(node.logprobs[UNK_ID]))
    assert p[lim:].sum() == pytest.approx(unk * TAIL_MASS, rel=1e-6)
    assert p[:lim].sum() == pytest.approx(1.0, rel=1e-4)  # the softmax itself, <unk> included
    rare = next(i for i in predictor.sorted_ids if i >= lim)
    word = predictor.vocab.words[rare]
    s = predictor.session()
    assert word in s.update(word[:-1]) or len([w for w in predictor.sorted_words if w.startswith(word[:-1])]) > 3
    assert predictor.vocab.ids([word]) == [UNK_ID]  # the LSTM reads it as <unk>


def test_a_word_list_no_longer_than_the_softmax_suggests_too(exported_version, monkeypatch):
    """A version whose word list ends with the softmax (`--word-list-size` equal to `--vocab-size`)
    has no rarer words to share <unk> among; loading it once failed with an IndexError."""
    import copy

    import edge_runtime.predictor as pred

    real = pred.vocab_of

    def no_tail(sp, limit=None):
        v = copy.copy(real(sp, limit))
        v.words, v.log_freq = v.words[:v.limit], v.log_freq[:v.limit]
        v.index = {w: i for i, w in enumerate(v.words) if w}
        v.__dict__.pop("suggestable", None)
        v.__dict__.pop("offered", None)
        return v

    monkeypatch.setattr(pred, "vocab_of", no_tail)
    p = Predictor(Model.load(exported_version), load_tokenizer(exported_version / "tokenizer.model"))
    assert len(p.vocab) == p.vocab.limit
    s = p.session()
    assert len(s.update("I pray you, ")) == 3
    words = s.update("I pray you, th")
    assert words and all(w.startswith("th") and p.vocab.index[w] < p.vocab.limit for w in words)
    assert p.lstm_prob(p.root, "zzzunknownzzz") > 0


def test_the_users_own_words_are_learned_on_the_device(exported_version):
    p = Predictor(Model.load(exported_version), load_tokenizer(exported_version / "tokenizer.model"))
    assert "Zanzibarians" not in p.vocab.index and p.weights()[2] == 0.0
    assert "Zanzibarians" not in p.session().update("the Zan")
    for _ in range(3):
        text = "Greet the Zanzibarians, my lord, greet the Zanzibarians"
        s = p.session()
        s.update(text + " ")
        p.learn(text)
    assert p.session().update("and now the Zan")[0] == "Zanzibarians"
    assert "Zanzibarians" in p.session().update("Greet the ")
    assert p.weights()[2] > 0.1  # the personal part predicted what the user typed: its weight grew


def test_one_committed_sentence_does_not_take_over_every_strip(predictor, monkeypatch):
    """After one "Hello there." the user's own words (two words, weight 0.2 from the first text)
    gave "Hello" half their unigram after any history they never saw: it topped every strip."""
    from edge_runtime import predictor as predictor_module

    def strip_after_one_sentence() -> list[str]:
        p = Predictor(predictor.model, predictor.sp)
        p.learn("Hello there.")
        return p.session().update("I pray you, tell me of the ")

    fresh = Predictor(predictor.model, predictor.sp).session().update("I pray you, tell me of the ")
    assert "Hello" not in fresh
    assert strip_after_one_sentence() == fresh
    monkeypatch.setattr(predictor_module, "PERSONAL_EVIDENCE", 0.0)   # as before: weighed in at once
    assert "Hello" in strip_after_one_sentence() or "there" in strip_after_one_sentence()


# What only the n-gram knows: list words ("horse", "lawful") where the LSTM has not seen them;
# "quick" and "brown" are outside the tiny word list, so the n-gram offers no "fox" after them.
PHRASE = "the quick brown horse jumps over the lawful dog"


@pytest.fixture(scope="module")
def base_ngram():
    from edge_runtime.ngram import KneserNeyLM
    from tests.tiny_version import tiny_texts

    texts = tiny_texts(1500) + [PHRASE] * 30
    return KneserNeyLM.fit(texts, order=3)


def test_tokens_that_are_not_words_are_never_offered(predictor):
    """The base n-gram's vocabulary and the text's own chunks hold "____", "cooker''" and "''Tis";
    they reached the strip ("_" gave three runs of underscores)."""
    from edge_runtime.ngram import KneserNeyLM
    from protocol.text import suggestable

    junk = KneserNeyLM.fit(["the cooker'' is hot ____ here ''Tis true 'Wuthering' heights"] * 20, order=3)
    p = Predictor(predictor.model, predictor.sp, base=junk)
    s = p.session()
    for typed in ("_", "the cooker", "the ", "''", "''T", "'Wu", "he said '' and then '", "is hot "):
        got = s.update(typed)
        assert all(suggestable(w) for w in got), (typed, got)
    assert "cooker''" in junk and "____" in junk      # the n-gram does hold them


def test_a_word_typed_decomposed_is_one_word_with_its_composed_spelling(predictor):
    """"café" can arrive as "cafe" and a combining accent (NFD: some keyboards, a paste): the user's
    words held both spellings, which the strip showed side by side, and a composed prefix never
    completed the decomposed word. Text is read in NFC, learned and typed alike."""
    import unicodedata

    p = Predictor(predictor.model, predictor.sp)
    for form in ("NFD", "NFC", "NFD"):
        p.learn(unicodedata.normalize(form, "the cafés opened and the cafés closed"))
    for typed in ("the caf", unicodedata.normalize("NFD", "the café")):
        got = p.session().update(typed)
        assert "cafés" in got and all(unicodedata.is_normalized("NFC", w) for w in got), (typed, got)
        assert len({unicodedata.normalize("NFC", w) for w in got}) == len(got), got


def test_a_word_with_combining_marks_is_learned_and_completed_whole(predictor):
    s = predictor.session()
    for _ in range(3):
        predictor.learn("नमस्ते दुनिया नमस्ते")
    got = s.update("नम")
    assert got and got[0] == "नमस्ते" and all("्" not in w or w == "नमस्ते" for w in got)
    assert "दुनिया" in s.update("नमस्ते दु")


def test_the_base_ngram_joins_the_mixture_and_the_weights_follow_the_user(predictor, base_ngram):
    p = Predictor(predictor.model, predictor.sp, base=base_ngram)
    wl, wn, wp = p.weights()
    assert wp == 0.0 and wl > 0 and wn > 0 and wl + wn == pytest.approx(1.0)
    # A phrase only the n-gram knows: it is suggested, completed, and its weight grows when typed.
    assert p.session().update("the quick brown ")[0] == "horse"
    assert "lawful" in p.session().update("jumps over the la")
    before = p.weights()
    p.session().update(PHRASE + " ")
    assert p.weights() == before  # typing alone teaches nothing: only committed text does
    for _ in range(5):
        p.learn(PHRASE)
    wl, wn, wp = p.weights()
    assert wn > wl and wp > 0   # the n-gram predicted the phrase better than the LSTM (both started at 0.4)
    assert sum(p.weights()) == pytest.approx(1.0)


def test_a_word_typed_earlier_in_the_text_completes_its_prefix_until_it_is_deleted(predictor, base_ngram):
    """A word the word list lacks, typed once in this text, completes its prefix later in it (not
    after a space, and not in another text before it is committed); a backspace over it takes it
    back, and a blocked word typed in the text is not offered until the user commits it."""
    p = Predictor(predictor.model, predictor.sp, base=base_ngram)
    assert "Zorblax" not in p.vocab.index and "Zorblax" not in p.personal.uni
    s = p.session()
    assert "Zorblax" not in s.update("Zo")
    assert s.update("Zorblax said the king and Zo")[0] == "Zorblax"
    assert "Zorblax" not in s.update("Zorblax said the king and ")
    assert "Zorblax" not in s.update("said the king and Zo")   # the chunk edited away
    assert "Zorblax" not in p.session().update("the king and Zo")
    assert s.update("the Zorblax, the Zorblax and Zo") == s.suggest("Zo") and s.words.counts["Zorblax"] == 2
    assert "fuckers" not in s.update("fuckers said the king and fu")
    p.learn("fuckers")
    assert "fuckers" in p.session().update("fuckers said the king and fu")


def test_the_word_that_followed_a_chunk_earlier_in_the_text_is_suggested_after_it(predictor, base_ngram):
    """After a chunk the text held before, the word that followed it there is suggested next (and
    readied by prefetch the same way); a backspace over the pair takes it back."""
    p = Predictor(predictor.model, predictor.sp, base=base_ngram)
    s, ref = p.session(), p.session()
    assert "Zorblax" not in s.update("the good ")
    text = "the good Zorblax said the good "
    for i in range(1, len(text) + 1):   # prefetch between keystrokes, as the keyboard runs it
        s.update(text[:i])
        while s.prefetch():
            pass
    assert s.update(text)[0] == "Zorblax" == ref.update(text)[0]
    assert s.words.after() == {"Zorblax": 1}
    assert "Zorblax" not in s.update("the good ")   # the pair edited away
    assert s.words.after() == {} and s.words.n == 2
    very = "so very very "
    for i in range(1, len(very) + 1):   # the readied strip counts the pair its own chunk completes
        s.update(very[:i])
        while s.prefetch():
            pass
        assert s.update(very[:i]) == ref.update(very[:i]), very[:i]
    assert s.words.after() == {"very": 1}


def test_no_suggestion_is_a_non_word_over_10000_keystrokes(predictor, base_ngram):
    """Every word in the strip is a word of the word list or a word the user typed before:
    committed, or earlier in the text being typed; after a typed single quote ("'hel"), such a word
    with the user's quote before it; a list word in another case ("Hindi" or "USB" for the list's
    "hindi", "usb"; "london" for "London"). The base n-gram's own vocabulary does not count: its
    proxy text holds typos and glued words ("dont't", "areyou") that the word list does not."""
    from tests.tiny_version import tiny_texts

    p = Predictor(predictor.model, predictor.sp, base=base_ngram)
    allowed = set(p.vocab.index)
    keys = non_words = quoted = cased = 0

    def in_case(w: str) -> bool:   # a list word in another case: all capitals, a capital first, lower case
        low = w.lower()
        return (w.isupper() and (low in allowed or low.capitalize() in allowed)) or \
            (w[:1].isupper() and w[0].lower() + w[1:] in allowed) or (w == low and w[:1].upper() + w[1:] in allowed)

    for text in QUOTED_TEXTS + tiny_texts(3000)[1500:]:
        s = p.session()
        for i in range(1, len(text) + 1):
            done = text[:i].split() if text[i - 1].isspace() else text[:i].split()[:-1]   # completed chunks
            typed_here = {leading_word(plain_quotes(c)) for c in done}
            split = word_being_typed("" if text[i - 1].isspace() else text[:i].split()[-1])
            quote = split is not None and quote_led(split[1])
            for w in map(plain_quotes, s.update(text[:i])):
                known = w in allowed or w in typed_here
                inner = quote and w[0] == "'" and (w[1:] in allowed or w[1:] in typed_here or in_case(w[1:]))
                shown = not known and in_case(w)
                non_words += not (known or inner or shown) or not any(ch.isalnum() for ch in w)
                quoted += inner and not known
                cased += shown
            keys += 1
            if keys >= 10_000:
                break
        p.learn(text)
        allowed.update(tokens(text))
        if keys >= 10_000:
            break
    assert keys == 10_000 and non_words == 0 and quoted > 0 and cased > 0


# Typed with quotes a phone's smart punctuation makes, and with single quotes around speech.
QUOTED_TEXTS = ["I don\u2019t know what thou hast \u2018heard\u2019 of me, but \u2019tis true",
                "He said 'thou art the man' and she said 'the king is dead, long live the king'",
                "\u2018What say you, my lord?\u2019 \u2018Nothing.\u2019 'Tis so, I know't not"]


def reference_suggest(p: Predictor, node, hist: tuple[str, ...], prefix: str, k: int = 3,
                      before: Sequence[str] = (), follows: bool = True) -> list[str]:
    """The strip as first written: argpartition over the prefix range's P_lstm, every candidate
    scored one at a time with the scalar probabilities; a prefix also completed from the words of
    the completed chunks `before` it, each scored by its share of them; the next word right after
    a space (`follows`) also from the words that followed the last chunk in them. A prefix led by
    a single quote ("'hel") is also completed as the quote and a completion of the rest, the
    text's words weighing in on both alike; a typographic quote is ranked as a typed one and
    shown as typed."""
    plain = plain_quotes(prefix)
    if plain != prefix:
        return [prefix + w[len(prefix):] for w in reference_suggest(p, node, hist, plain, k, before, follows)]
    scored, texted = reference_scores(p, node, hist, prefix, k, before, follows)
    if quote_led(prefix):
        inner, inner_texted = reference_scores(p, node, hist, prefix[1:], k, before, follows)
        if texted != inner_texted:   # the text's words in one list: in both
            scored, _ = reference_scores(p, node, hist, prefix, k, before, follows, texted=True)
            inner, _ = reference_scores(p, node, hist, prefix[1:], k, before, follows, texted=True)
        for w, sc in inner.items():
            if sc > scored.get(prefix[0] + w, -1.0):
                scored[prefix[0] + w] = sc
    return sorted(scored, key=lambda w: (-scored[w], w))[:k]


def reference_folded(p: Predictor, node, hist: tuple[str, ...], prefix: str, m: int) -> dict[str, str]:
    """After a prefix typed with a capital, the m list words that P_lstm ranks highest among those
    completing it in lower case, and the user's own words that do (when the user's part is mixed
    in), in the typed case: {"Hindi": "hindi"} (all capitals: "USB")."""
    if not prefix[:1].isupper() or quote_led(prefix):
        return {}
    if prefix[1:].isupper():
        lower, shown = prefix.lower(), str.upper
    elif prefix[1:] == prefix[1:].lower():
        lower, shown = prefix[0].lower() + prefix[1:], lambda w: w[0].upper() + w[1:]
    else:
        return {}
    lo, hi = p.prefix_range(lower)
    ids = np.array([i for i in p.sorted_ids[lo:hi] if p.vocab.words[i] != lower], dtype=p.sorted_ids.dtype)
    words = []
    if len(ids):
        probs = p.probs_of(node, ids)
        top = np.argpartition(-probs, min(m, len(ids)) - 1)[:m] if len(ids) > m else np.arange(len(ids))
        words = [p.vocab.words[ids[j]] for j in top]
    if p.weights(hist=hist)[2]:
        words += p.personal.candidates(hist, lower, m)
    out = {}
    for w in words:
        d = shown(w)
        if d not in (prefix, w) and d.startswith(prefix) and p.offered(d):
            out[d] = w
    return out


def reference_scores(p: Predictor, node, hist: tuple[str, ...], prefix: str, k: int,
                     before: Sequence[str], follows: bool, texted: bool = False) -> tuple[dict[str, float], bool]:
    """`reference_suggest`'s candidates for `prefix` and their scores (the text's share mixed in
    when a candidate is in the text, or `texted`), and whether a candidate was in the text."""
    wl, wn, wp = p.weights(hist=hist)
    m = p.candidates if (wn or wp) else k
    cands: set[str] = set()
    lo, hi = p.prefix_range(prefix)
    ids = p.sorted_ids[lo:hi] if prefix else p.head_ids
    if prefix:   # a completion is longer than what is typed: the prefix itself saves no keystroke
        ids = np.array([i for i in ids if p.vocab.words[i] != prefix], dtype=ids.dtype)
    if len(ids):
        probs = p.probs_of(node, ids)
        top = np.argpartition(-probs, min(m, len(ids)) - 1)[:m] if len(ids) > m else np.arange(len(ids))
        cands.update(p.vocab.words[ids[j]] for j in top)
    if wn:
        cands.update(p.base_top(hist, prefix, m))
    if wp:
        own = p.personal.candidates(hist, prefix, m)
        if prefix and prefix in own:   # the user's words other than the prefix: m + 1 of each kind
            own = [w for w in p.personal.candidates(hist, prefix, m + 1) if w != prefix]
        cands.update(own)
    typed = [w for w in (leading_word(plain_quotes(b)) for b in before) if w] if prefix else []   # not after a space
    cands.update(w for w in typed if w.startswith(prefix) and w != prefix and p.offered(w))
    folded = reference_folded(p, node, hist, prefix, m)
    cands.update(folded)
    share = {w: typed.count(w) / len(typed) for w in cands if w in typed}
    # after a space: the words that followed the last chunk earlier in the text
    after = [leading_word(plain_quotes(b)) for a, b in zip(before, before[1:]) if a == before[-1]] \
        if before and not prefix and follows else []
    after = [w for w in after if w]
    cands.update(w for w in after if p.offered(w))

    def mixed(w: str) -> float:
        sc = wl * p.lstm_prob(node, w) if w in p.vocab.index else 0.0
        if wn:
            sc += wn * p.ngram_prob(w, hist)
        if wp:
            sc += wp * p.personal.prob(w, hist)
        return sc

    def score(w: str) -> float:
        sc = max(mixed(w), FOLDED_SHARE * mixed(folded[w])) if w in folded else mixed(w)
        if share or (texted and typed):
            sc = (1 - TEXT_WEIGHT) * sc + TEXT_WEIGHT * share.get(w, 0.0)
        if after:
            sc = (1 - FOLLOW_WEIGHT) * sc + FOLLOW_WEIGHT * after.count(w) / len(after)
        if prefix:   # of two completions about as likely, the shorter first
            sc = sc / (len(w) - len(prefix)) ** SHORTER_FIRST
        return sc

    return {w: score(w) for w in cands}, bool(share)


def test_fast_suggestions_equal_scoring_one_candidate_at_a_time(predictor, base_ngram):
    """The keystroke path (top few of large ranges, the n-gram's follower tables, batch scoring)
    gives exactly the strip of the straightforward ranking, with and without the n-gram and the
    user's words, on every keystroke of typed text."""
    from tests.tiny_version import tiny_texts

    texts = QUOTED_TEXTS + tiny_texts(2200)[2000:]
    for base in (None, base_ngram):
        p = Predictor(predictor.model, predictor.sp, base=base)
        keys = 0
        for n, text in enumerate(texts[:43]):
            s = p.session()
            for i in range(1, len(text) + 1):
                got = s.update(text[:i])
                split = word_being_typed("" if text[i - 1].isspace() else text[:i].split()[-1])
                if split is None:   # the chunk ends in a closing mark: the next word comes after a space
                    assert got == [], text[:i]
                    continue
                lead, prefix = split   # a word after an opening mark is completed after it ('"hel')
                node, hist = s._fed(tokens(lead)) if lead else (s.nodes[-1], s.hists[-1])
                assert got == reference_suggest(p, node, hist, prefix, before=s.chunks, follows=not lead), text[:i]
                keys += 1
            if n % 4 == 0:
                p.learn(text)
        assert keys > 1500 and len(p.personal) > 0


def test_complete_tokens_are_fed_ahead_one_per_keystroke(predictor):
    """Typing "lord," feeds "lord" at the comma and "," at the space, never twice; the states
    equal feeding whole chunks, also after a backspace into the fed-ahead tokens."""
    calls: list[list[int]] = []
    real = predictor.advance_ids

    def counting(node, ids):
        calls.append(list(ids))
        return real(node, ids)

    predictor.advance_ids = counting
    try:
        s = predictor.session()
        for text in ("my good", "my good lord", "my good lord,"):
            s.update(text)
        assert [t for t, _, _ in s.ahead] == ["lord"] and len(calls) == 3  # my, good, lord
        s.update("my good lord, ")
        assert len(calls) == 4 and s.chunks == ["my", "good", "lord,"] and s.ahead == []
        for text in ("my good lord, (sir", "my good lord, (sir.", "my good lord, (sir", "my good lord, (si"):
            s.update(text)
        assert [t for t, _, _ in s.ahead] == ["("]
        s.update("my good lord, (sir), ")
    finally:
        del predictor.advance_ids
    fresh = predictor.session()
    for chunk in s.chunks:
        fresh.feed(chunk)
    assert fresh.hists == s.hists
    for a, b in zip(fresh.nodes, s.nodes):
        np.testing.assert_array_equal(a.logprobs, b.logprobs)
        np.testing.assert_array_equal(a.h, b.h)


def test_prefetch_between_keystrokes_changes_no_strip_and_spares_the_space(predictor, base_ngram):
    """With `prefetch` after every keystroke (as the keyboard runs it), each strip equals a session
    without it, through punctuation, backspaces, edits and the user committing text; and the
    space after a prefetched word runs no model step and ranks nothing."""
    from tests.tiny_version import tiny_texts

    p = Predictor(predictor.model, predictor.sp, base=base_ngram)
    texts = tiny_texts(2100)[2000:2030]
    keys, spared = 0, False
    for n, text in enumerate(texts):
        plain, ready = p.session(), p.session()
        typed = [text[:i] for i in range(1, len(text) + 1)]
        typed += [text[:-3], text[:-3] + "x, ", "my lord, (sir", "my lord, (si", "my lord, (sir) "]
        for t in typed:
            assert ready.update(t) == plain.update(t), t
            keys += 1
            while ready.prefetch():   # as the keyboard runs it: until there is nothing more to do
                pass
        if n % 3 == 0:
            p.learn(text)
    assert keys > 1000

    s = p.session()
    steps: list[list[int]] = []
    ranked: list[str] = []
    real_advance, real_suggest = p.advance_ids, p.suggest
    p.advance_ids = lambda node, ids: steps.append(list(ids)) or real_advance(node, ids)
    p.suggest = lambda node, hist, prefix="", k=3, text=None, follows=None: (
        ranked.append(prefix) or real_suggest(node, hist, prefix, k, text, follows))
    try:
        for t in ("shall we go", "shall we go "):
            steps.clear(), ranked.clear()
            got = s.update(t)
            if t.endswith(" "):
                spared = not steps and not ranked
            while s.prefetch():
                pass
        assert not s.prefetch()   # already done for this state: not repeated
        assert len(steps) == 0 and ranked == []
        first = next(iter(s.firsts.strips))   # the likeliest first letter: readied, not ranked
        letter = s.update("shall we go " + first)
        assert not steps and ranked == []
    finally:
        del p.advance_ids, p.suggest
    assert spared and got == p.session().update("shall we go ")
    assert letter == p.session().update("shall we go " + first)


def test_a_readied_space_is_not_reused_after_a_commit_a_new_k_or_a_new_users_model(predictor, base_ngram):
    """What prefetch readied depends on the user's words and the mixture: a commit, a wipe (a new,
    empty personal model) or another strip length between the prefetch and the space redo it."""
    from edge_runtime.personal import PersonalModel

    p = Predictor(predictor.model, predictor.sp, base=base_ngram)
    p.learn("I pray you, sirrah, go to the king")
    for change in ("learn", "k", "wipe"):
        s = p.session()
        s.update("I pray you")
        while s.prefetch():
            pass
        assert s.readied.ranked(3, p.strip_key())
        k = 3
        if change == "learn":
            p.learn("I pray you sirrah sirrah sirrah go")
        elif change == "k":
            k = 5
        else:
            p.personal = PersonalModel()
        assert s.update("I pray you ", k=k) == p.session().update("I pray you ", k=k), change


def test_first_letter_strips_are_what_suggest_gives(predictor, base_ngram):
    """After a space, prefetch ranks the likeliest first letters' strips with every candidate
    scored in one pass: each strip is `suggest`'s for that prefix, for any k, with the user's words
    and without, and the letters come likeliest first by the LSTM's mass over the words they begin."""
    from edge_runtime.session import FIRST_LETTERS

    p = Predictor(predictor.model, predictor.sp, base=base_ngram)
    for learned in (False, True):
        if learned:
            p.learn("I pray you, sirrah, go to the king. Zounds, Zed, zany Xerxes.")
        for context in ("", "I pray you, ", "What say you to my lord, and "):
            s = p.session()
            s.update(context)
            node, hist = s.nodes[-1], s.hists[-1]
            assert p.likely_firsts(node, 4, hist) == []   # not warmed for this state: nothing to order by
            p.warm(node, hist)
            firsts = p.likely_firsts(node, len(p._firsts), hist)
            assert sorted(firsts) == p._firsts and len(p.likely_firsts(node, FIRST_LETTERS, hist)) == FIRST_LETTERS
            # the LSTM's mass over the words each begins, and (with the user's words) their share,
            # under the weights of this kind of history (the ones its strips use)
            wl, _, wp = p.weights(hist=hist)
            typed, probs = sum(p.personal.firsts.values()), p.word_probs(node)
            score = {c: wl * probs[[p.vocab.index[w] for w in p.sorted_words if w[0] == c]].sum()
                     + (wp * p.personal.firsts[c] / typed if typed else 0.0) for c in firsts}
            assert all(score[a] >= score[b] - 1e-12 for a, b in zip(firsts, firsts[1:])), score
            for k in (1, 3, 5):
                got = p.first_strips(node, hist, firsts, k)
                assert got == {c: p.suggest(node, hist, c, k) for c in firsts}, (context, k)
            p.forget_warm()   # another session warmed meanwhile: the same strips, computed cold
            assert p.first_strips(node, hist, firsts, 3) == {c: p.suggest(node, hist, c) for c in firsts}


def test_the_users_own_first_letters_are_readied_too(predictor, base_ngram):
    """The first letters readied follow the mixture: a user who writes in lower case (or starts
    many words with one letter) gets those letters readied, which the LSTM alone would not rank."""
    from edge_runtime.session import FIRST_LETTERS

    p = Predictor(predictor.model, predictor.sp, base=base_ngram)
    s = p.session()
    s.update("I pray you ")
    p.warm(s.nodes[-1], s.hists[-1])
    lstm_only = p.likely_firsts(s.nodes[-1], FIRST_LETTERS, s.hists[-1])
    letter = next(c for c in reversed(p._firsts) if c.islower() and c not in lstm_only)
    words = [w for w in p.sorted_words if w[0] == letter][:5]
    for _ in range(20):
        p.learn("I pray you " + " ".join(words) + ".")
    assert p.personal.firsts.most_common(1)[0][0] == letter and p.weights()[2] > 0.1
    s = p.session()
    s.update("I pray you ")
    while s.prefetch():
        pass
    assert letter in s.firsts.strips
    assert s.update("I pray you " + letter) == p.session().update("I pray you " + letter)


def test_readied_first_letters_are_for_their_state_only(predictor, base_ngram):
    """A first letter typed on another state than the one readied (a word typed or pasted with no
    prefetch between) is ranked for its own context; back on the readied state, the strips serve."""
    p = Predictor(predictor.model, predictor.sp, base=base_ngram)
    s = p.session()
    s.update("I pray you ")
    while s.prefetch():
        pass
    readied = dict(s.firsts.strips)
    differ = 0
    for c in list(readied)[:8]:
        for text in ("I pray you go " + c, "What say you to my lord, and " + c):
            got = s.update(text)
            assert got == p.session().update(text), text
            differ += got != readied[c]
        s.update("I pray you ")
        assert s.update("I pray you " + c) == readied[c] == p.session().update("I pray you " + c)
    assert differ   # the readied strips would have been wrong there


@pytest.mark.parametrize("change", ["learn", "k", "wipe"])
def test_readied_first_letters_are_not_reused_after_a_commit_a_new_k_or_a_new_users_model(predictor, base_ngram,
                                                                                          change):
    """The first letters' strips depend on the user's words and the mixture, like a readied space:
    a word the user commits (or a wipe of one) shows on the next first letter."""
    from edge_runtime.personal import PersonalModel

    p = Predictor(predictor.model, predictor.sp, base=base_ngram)
    p.learn("I pray you, sirrah, go to the king")

    def readied():
        s = p.session()
        s.update("I pray you ")
        while s.prefetch():
            pass
        return s

    c = next(iter(readied().firsts.strips))   # the likeliest first letter for this user
    word = c + "qqx"
    if change == "wipe":
        p.learn(f"I pray you {word}. " * 20)
    s = readied()
    before = s.firsts.strips[c]
    k = 3
    if change == "learn":
        p.learn(f"I pray you {word}. " * 20)
    elif change == "k":
        k = 5
    else:
        p.personal = PersonalModel()
    s.update("I pray you ", k=k)
    after = s.update("I pray you " + c, k=k)
    assert after == p.session().update("I pray you " + c, k=k)
    assert after != before and (word in before) == (change == "wipe") and (word in after) == (change == "learn")


def test_a_prefetch_after_a_commit_ranks_again_without_a_model_step(predictor, base_ngram, monkeypatch):
    """The keyboard prefetches again after a commit's learn: the state readied for the space is
    still right (it depends on the model only), so only the strip is ranked again, for the user's
    words as they are now."""
    p = Predictor(predictor.model, predictor.sp, base=base_ngram)
    p.learn("I pray you, sirrah, go to the king")
    s = p.session()
    s.update("I pray you")
    assert s.prefetch() and s.readied.strip is None   # the model step in one call,
    assert not s.prefetch() and s.readied.ranked(3, p.strip_key())   # the ranking in the next
    node = s.readied.node
    p.learn("I pray you sirrah sirrah sirrah go")
    steps = []
    real = p.advance_ids
    monkeypatch.setattr(p, "advance_ids", lambda n, ids: steps.append(ids) or real(n, ids))
    s.prefetch()
    assert steps == [] and s.readied.node is node and s.readied.ranked(3, p.strip_key())
    assert s.update("I pray you ") == s.readied.strip == p.session().update("I pray you ")


def test_learning_step_by_step_is_learn(predictor, base_ngram):
    """`learning` yields once per token's model step and changes nothing the strip reads until
    its last step; then the mixture and the user's words are what `learn` leaves, to the float."""
    from protocol.text import tokens

    a = Predictor(predictor.model, predictor.sp, base=base_ngram)
    b = Predictor(predictor.model, predictor.sp, base=base_ngram)
    for text in ("I pray you, sirrah, go to the king", "Good morrow, good my lord. I pray you go"):
        a.learn(text)
        steps = b.learning(text)
        key = b.strip_key()
        n = 0
        for _ in steps:
            n += 1
            assert b.strip_key() == key and b.personal.total == a.personal.total - len(tokens(text))
        assert n == len(tokens(text))
        assert b.personal.mix == a.personal.mix and b.personal.uni == a.personal.uni
        assert b.personal.mix_by_seen == a.personal.mix_by_seen and b.personal.firsts == a.personal.firsts
    assert b.session().update("I pray you ") == a.session().update("I pray you ")
    # The arithmetic `learn` had before it was split into steps: observe token by token, in place.
    c = Predictor(predictor.model, predictor.sp, base=base_ngram)
    for text in ("I pray you, sirrah, go to the king", "Good morrow, good my lord. I pray you go"):
        node, hist = c.root, ("<s>", "<s>")
        for tok in tokens(text) if len(c.personal) else ():   # the first text weighs nothing
            c.observe(c.component_probs(node, tok, hist), hist=hist)
            node = c.advance_ids(node, c.vocab.ids([tok]))
            hist = (hist[-1], tok)
        c.personal.add(tokens(text))
    assert c.personal.mix == a.personal.mix and c.personal.mix_by_seen == a.personal.mix_by_seen
    assert any(map(any, a.personal.mix_by_seen))   # the second text did count, per kind of history


def test_the_mixture_learns_nothing_while_the_user_has_no_words(predictor, base_ngram):
    """With no personal part its weight is 0, so every token of a first text would count against
    it: one long first text kept the user's own words near weight 0 for good. The first text
    leaves the mixture at its prior; from the second on, a user who repeats themselves raises it."""
    from edge_runtime.personal import MIX_PRIOR

    p = Predictor(predictor.model, predictor.sp, base=base_ngram)
    text = " ".join(["Sent each Saturday to the subscribers of the weekly words letter."] * 20)
    p.learn(text)
    assert p.personal.mix == list(MIX_PRIOR) and len(p.personal) > 200
    assert p.personal.mix_by_seen == [[0.0] * 3, [0.0] * 3]
    p.learn(text)
    assert p.weights()[2] > 0.5   # the user's own words predicted the whole repeated letter


def test_the_users_words_weigh_more_after_a_word_the_user_typed_before(predictor, base_ngram):
    """After a word the user typed before, their own words know what follows it; after one they
    never typed, only that the word comes up. The weights are learned apart for the two and the
    strip uses the one of its history."""
    p = Predictor(predictor.model, predictor.sp, base=base_ngram)
    fresh = iter(f"zq{i}x" for i in range(10_000))   # a word never typed before, each time
    for _ in range(12):   # the same phrase, each word after one typed before; then new words after new words
        news = " ".join(next(fresh) for _ in range(8))
        p.learn(f"Kind regards from Yolanda Quibbleworth {news}")
    seen, unseen = ("from", "Yolanda"), ("zq1x", "zq99999x")
    assert p.personal.seen(seen) == 1 and p.personal.seen(unseen) == 0
    overall, after_seen, after_unseen = p.weights(), p.weights(hist=seen), p.weights(hist=unseen)
    assert after_seen[2] > overall[2] > after_unseen[2]
    assert sum(after_seen) == pytest.approx(1.0) and sum(after_unseen) == pytest.approx(1.0)
    s = p.session()
    s.update("and so, kind regards from Yolanda ")
    node, hist = s.nodes[-1], s.hists[-1]
    assert hist == seen and s.update("and so, kind regards from Yolanda ")[0] == "Quibbleworth"
    assert p.suggest(node, hist) == reference_suggest(p, node, hist, "")


def test_a_long_text_is_counted_in_parts_with_the_same_result(predictor, base_ngram, monkeypatch):
    """The user's words count a long text a part per step (`LEARN_PART` tokens), each part after
    the last two tokens of the one before: the same counts, followers and mixture as one part."""
    import edge_runtime.predictor as pred_mod
    from protocol.text import tokens

    text = "I pray you, sirrah, go to the king. Good morrow, good my lord; I pray you go to him"
    whole = Predictor(predictor.model, predictor.sp, base=base_ngram)
    whole.learn(text)
    monkeypatch.setattr(pred_mod, "LEARN_PART", 4)
    parts = Predictor(predictor.model, predictor.sp, base=base_ngram)
    n_tok = len(tokens(text))
    assert n_tok > 12
    yields = list(parts.learning(text))
    assert len(yields) == n_tok + (n_tok - 1) // 4
    assert yields == [0] * n_tok + list(range(4, n_tok, 4))[:(n_tok - 1) // 4]   # tokens counted so far
    a, b = whole.personal, parts.personal
    assert (a.uni, a.total, a.words, a.mix, a.mix_by_seen) == (b.uni, b.total, b.words, b.mix, b.mix_by_seen)
    assert {h: dict(f) for h, f in a.follow.items()} == {h: dict(f) for h, f in b.follow.items()}
    assert a.follow_total == b.follow_total and a.firsts == b.firsts
    assert parts.session().update("I pray you ") == whole.session().update("I pray you ")


def test_a_failed_keystroke_leaves_the_session_right_for_the_next(predictor):
    """A step that fails part-way through a keystroke (an interpreter error) must not make the
    next keystroke feed the same chunks twice."""
    s = predictor.session()
    real, calls = predictor.advance_ids, [0]

    def failing(node, ids):
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("interpreter failed")
        return real(node, ids)

    predictor.advance_ids = failing
    try:
        with pytest.raises(RuntimeError):
            s.update("to be or not")
    finally:
        del predictor.advance_ids
    text = "to be or not to be that is"
    assert s.update(text) == predictor.session().update(text)
    assert s.chunks == text.split()[:-1]


def test_feed_still_returns_the_mixtures_log_probability(predictor, base_ngram):
    import math

    p = Predictor(predictor.model, predictor.sp, base=base_ngram)
    s = p.session()
    node, hist, want = p.root, ("<s>", "<s>"), 0.0
    for tok in tokens("my lord,"):
        want += math.log(p.mixture(p.component_probs(node, tok, hist), hist))
        node, hist = p.advance_ids(node, p.vocab.ids([tok])), (hist[-1], tok)
    assert s.feed("my") + s.feed("lord,") == pytest.approx(want, rel=1e-12)


def test_the_direct_stepper_equals_the_signature_runner(exported_version):
    """`Model.stepper` sets the tensors itself; it must give what the runner gives, also after
    someone resized the signature's inputs (it then goes through the runner again)."""
    model = Model.load(exported_version)
    step = model.stepper("infer", ("tokens", "h", "c"), ("logprobs", "h", "c"))
    runner = model.runner("infer")
    rng = np.random.default_rng(0)
    h = rng.normal(size=(1, model.manifest.architecture().model.hidden_dim)).astype(np.float32)
    c = h[:, ::-1].copy()
    for t in (2, 5, 7, 5):
        tok = np.array([t], np.int32)
        want = runner(tokens=tok, h=h, c=c)
        got = step(tok, h, c)
        for name, arr in zip(("logprobs", "h", "c"), got):
            np.testing.assert_array_equal(arr, want[name])
        h, c = got[1], got[2]
    runner(tokens=np.array([3, 4], np.int32), h=np.repeat(h, 2, 0), c=np.repeat(c, 2, 0))  # batch of two
    tok = np.array([6], np.int32)
    want = runner(tokens=tok, h=h, c=c)
    runner(tokens=np.array([3, 4], np.int32), h=np.repeat(h, 2, 0), c=np.repeat(c, 2, 0))
    for name, arr in zip(("logprobs", "h", "c"), step(tok, h, c)):
        np.testing.assert_array_equal(arr, want[name])


def test_prefetch_after_a_space_splits_warm_and_two_sessions_still_finish(predictor, base_ngram, monkeypatch):
    """P_lstm over the word list (`warm_lstm`) runs in a prefetch call of its own, the n-gram's
    warm in the next, so no call holds the keyboard for both. Two sessions prefetching in turn on
    one predictor (two clients) each replace its warm node; both still finish, with the strips
    `suggest` gives."""
    p = Predictor(predictor.model, predictor.sp, base=base_ngram)
    s = p.session()
    s.update("I pray you ")
    calls = []
    real = p.base.warm
    monkeypatch.setattr(p.base, "warm", lambda hist: calls.append(hist) or real(hist))
    assert s.prefetch() and calls == [] and p._warm[0] is s.nodes[-1]
    assert s.prefetch() and len(calls) == 1 and s.firsts is not None and s.firsts.strips == {}
    a, b = p.session(), p.session()
    a.update("What say you to my lord, and ")
    b.update("Good morrow, ")
    more, n = {a: True, b: True}, 0
    while any(more.values()):
        for t in (a, b):
            if more[t]:
                more[t] = t.prefetch()
        n += 1
        assert n < 50, "the two sessions' prefetches do not finish"
    for t, text in ((a, "What say you to my lord, and "), (b, "Good morrow, ")):
        for c, strip in t.firsts.strips.items():
            assert strip == p.session().update(text + c), (text, c)


def test_span_probs_are_probs_of_bit_for_bit(predictor):
    # The prefix ranges' P_lstm (a gather and a multiply per sorted word) equals `probs_of`, the
    # per-word definition, exactly: strips built from either rank the same.
    p = predictor
    s = p.session()
    for text in ("", "I pray you ", "What say you to my lord, and "):
        s.update(text)
        node = s.nodes[-1]
        n = len(p.sorted_ids)
        for lo, hi in ((0, n), (0, 1), (n // 3, n // 3 + 500), (n - 7, n)):
            np.testing.assert_array_equal(p.span_probs(node, lo, hi), p.probs_of(node, p.sorted_ids[lo:hi]))


def test_a_completion_a_little_less_likely_but_shorter_comes_first(predictor):
    """Of two completions, the shorter is offered first unless the longer is likelier by more
    than (its extra letters) ** SHORTER_FIRST: a short word left out is typed in full, a long
    one is offered again as its next letters narrow the range."""
    from edge_runtime import predictor as mod

    words = ["thee", "thereafter"]   # 2 and 8 letters after "th": the longer needs twice the score
    assert mod._best(words, mod._shorter_first([1.0, 1.9], words, 2), 1) == ["thee"]
    assert mod._best(words, mod._shorter_first([1.0, 2.1], words, 2), 1) == ["thereafter"]
    assert SHORTER_FIRST == 0.5


def test_the_base_ngrams_typos_and_glued_words_are_not_offered(predictor):
    """The base n-gram's proxy chat holds words seen once that are no words ("It's'" after "It's",
    "dont't", "areyou"): only its words the word list holds, in some case, reach the strip, or
    ones the user typed."""
    from edge_runtime.ngram import KneserNeyLM

    assert "horse" in predictor.vocab.index and "horsey" not in predictor.vocab.index
    junk = KneserNeyLM.fit(["the horsey jumps over the horsee and the Horse", "the HORSE and the horse"] * 20,
                           order=3)
    p = Predictor(predictor.model, predictor.sp, base=junk)
    strips = [p.session().update(t) for t in ("the hors", "over the hor", "the Hor", "the HOR")]
    seen = {w for strip in strips for w in strip}
    assert not seen & {"horsey", "horsee"}, strips
    assert {"horse", "HORSE"} <= seen, strips           # the list's word, and it in capitals
    p.learn("my horsey")
    assert "horsey" in p.session().update("the hors")    # typed by this user: their word


def test_a_removed_word_stays_removed_in_the_case_a_capital_shows_it_in(predictor):
    """A word removed from the strip ("kitchen", and its sentence-start form) came back in capitals
    through a capital's lower-case completions: "KIT" offered "KITCHEN"."""
    from edge_runtime.user_words import _hidden

    found = None
    for w in predictor.vocab.index:
        if len(w) >= 5 and w.isalpha() and w.islower():
            if w.upper() in predictor.session().update("And so " + w[:2].upper()):
                found = w
                break
    assert found is not None     # some list word is completed in capitals
    predictor.personal.removed = _hidden(frozenset([found]))
    try:
        assert found.upper() not in predictor.session().update("And so " + found[:2].upper())
        assert found.capitalize() not in predictor.session().update("And so " + found[:2].capitalize())
    finally:
        predictor.personal.removed = frozenset()


def test_the_users_own_words_are_completed_from_a_capital(predictor):
    """A word the user typed in lower case ("quixotrandel", in no word list) is completed when a
    sentence starts with it ("Quixotr" -> "Quixotrandel", "QUIXOTR" -> "QUIXOTRANDEL"), as the
    word list's lower-case words are; it gave nothing before. Removed, it stays removed."""
    from edge_runtime.user_words import _hidden

    p = Predictor(predictor.model, predictor.sp)
    word = "quixotrandel"
    assert word not in p.vocab.index
    for _ in range(3):
        p.learn(f"we met {word} at the fair and {word} said hello")
    assert word in p.session().update("then quixotr")
    assert "Quixotrandel" in p.session().update("Hello. Quixotr")
    assert "QUIXOTRANDEL" in p.session().update("Hello. QUIXOTR")
    p.personal.removed = _hidden(frozenset([word]))
    shown = p.session().update("Hello. Quixotr") + p.session().update("Hello. QUIXOTR")
    assert not {"Quixotrandel", "QUIXOTRANDEL"} & set(shown), shown


def test_a_dropped_predictor_frees_its_interpreter_without_a_full_collection(exported_version):
    """A node recomputes its log-probabilities with the model's step: holding the predictor's own
    method instead made predictor -> root node -> predictor a cycle, freed only by Python's rare
    full collection (frozen away by `collector.settle`). A device building predictors for each
    canary evaluation and model swap grew to 2.2 GB over 200 rounds."""
    import gc
    import weakref

    p = Predictor(Model.load(exported_version), load_tokenizer(exported_version / "tokenizer.model"))
    s = p.session()
    s.update(TEXT[:20] + " ")
    s.prefetch(k=3)
    s.update(TEXT)
    alive = weakref.ref(p), weakref.ref(p.model)
    was = gc.isenabled()
    gc.disable()
    try:
        del s, p
        assert [ref() for ref in alive] == [None, None]
    finally:
        if was:
            gc.enable()


def test_memory_a_dropped_model_freed_goes_back_to_the_system():
    """glibc keeps the pages of freed memory: long-running devices held 200-300 MB they no longer
    used after version swaps and canary evaluations. `release_freed` (after a swap, a training or
    an evaluation) hands them back. Measured in a child process, where nothing else allocates."""
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import re\n"
        "from edge_runtime.collector import release_freed\n"
        "def rss(): return int(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) // 1024\n"
        "held = [bytes(1000) + bytes([i % 256]) for i in range(200_000)]\n"
        "keep = held[::1000]\n"
        "del held\n"
        "before = rss()\n"
        "release_freed()\n"
        "print(before, rss())\n")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True,
                         env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, cwd=root).stdout.split()
    before, after = map(int, out)
    assert before - after > 100, (before, after)   # about 200 MB of small objects, freed and trimmed


def test_a_soft_hyphen_inside_the_word_being_typed_completes_the_whole_word(predictor):
    """Pasted "Zimbab\u00adwe" was completed as "we" after a fed "Zimbab": it is one word
    being typed, suggested as if typed without the invisible character."""
    for text, plain in (("I live in Zimbab\u00adwe", "I live in Zimbabwe"), ("the in\u2060for", "the infor"),
                        ("the wor\u200dl", "the worl")):
        assert predictor.session().update(text) == predictor.session().update(plain), text
