"""Typing's tokenization: which tokens of a chunk being typed are final."""

from __future__ import annotations

import random

from protocol.text import complete_tokens, tokens, word_being_typed


def test_complete_tokens_are_those_no_later_character_can_change():
    assert complete_tokens("lord") == []
    assert complete_tokens("lord,") == ["lord", ","]
    assert complete_tokens("(well") == ["("]
    assert complete_tokens("o\u2019") == []  # a typographic apostrophe continues the word
    assert complete_tokens("\u201cNay") == ['"']
    assert complete_tokens("") == []
    rng = random.Random(0)
    alphabet = "ab'\u2019\u2018\u201c\u201d,.-()_1é\u0301\u00ad\u200b\u200d\u0915"
    for _ in range(3000):
        chunk = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8)))
        done = complete_tokens(chunk)
        assert tokens(chunk)[: len(done)] == done
        for _ in range(5):
            more = "".join(rng.choice(alphabet + " ") for _ in range(rng.randint(1, 5)))
            assert tokens(chunk + more)[: len(done)] == done, (chunk, more)


def test_the_word_being_typed_is_completed_after_what_opens_it():
    assert word_being_typed("hel") == ("", "hel")
    assert word_being_typed('"hel') == ('"', "hel")
    assert word_being_typed("(\u201cNa") == ("(\u201c", "Na")
    assert word_being_typed("don\u2019") == ("", "don\u2019")      # an apostrophe continues the word
    assert word_being_typed("hello,wor") == ("hello,", "wor")
    assert word_being_typed('"') == ('"', "")                      # the next word, right after the quote
    assert word_being_typed("lord,") is None                       # the next word comes after a space
    assert word_being_typed('said"') is None
    assert word_being_typed("yes.'") is None                       # a quotation closed, not a word opened
    assert word_being_typed("lord,’") is None
    # inside an e-mail or web address no word is completed ("bob@exa" offered "bob@exactly")
    assert word_being_typed("bob@exa") is None and word_being_typed("https://exa") is None
    assert word_being_typed("bob@") is None and word_being_typed("and/or") == ("and/", "or")
    assert word_being_typed("'") == ("", "'")                      # "'tis" or a quotation, being opened
    assert word_being_typed("\"'") == ("\"", "'")
    assert word_being_typed("yes.'T") == ("yes.", "'T")            # a letter after it: a word after all
    assert word_being_typed("") == ("", "")                        # after a space
    rng = random.Random(1)
    for _ in range(2000):
        chunk = "".join(rng.choice("ab'\u2019\u201c\u201d\",.(1_\u00ad\u2060\u200b\u200d")
                        for _ in range(rng.randint(1, 6)))
        split = word_being_typed(chunk)
        if split is not None:
            lead, prefix = split
            assert lead + prefix == chunk
            assert tokens(lead) == complete_tokens(chunk), chunk    # the lead is what can be fed


def test_the_word_at_a_chunks_end_is_the_same_as_the_plain_search_found():
    """Found on the chunk reversed (a forward search tried every start in a run of word
    characters: "x" * 16,000 + "." took 1.4 s a keystroke), it is the same split."""
    import re

    from protocol.text import _QUOTES, WORD_CLASS

    trailing = re.compile(rf"{WORD_CLASS}*\Z")
    rng = random.Random(2)
    alphabet = "ab'’“\",.(1_@é́‍漢。 "
    for _ in range(3000):
        chunk = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 10)))
        start = trailing.search(chunk.translate(_QUOTES)).start()
        split = word_being_typed(chunk)
        assert split is None or split == (chunk[:start], chunk[start:]), chunk
    assert word_being_typed("x" * 16_000 + ".") is None
    assert word_being_typed("漢字" * 3000 + "。漢") == ("漢字" * 3000 + "。", "漢")


def test_invisible_format_characters_a_paste_brings_do_not_make_words():
    """A soft hyphen split "Zimbabwe" into "Zimbab" and "we", and a zero-width joiner made a
    "world" that is not the word: the user's words learned and offered them."""
    assert tokens("Zimbab\u00adwe") == ["Zimbabwe"] and tokens("re\u2060port\ufeff") == ["report"]
    assert tokens("the wor\u200dld") == ["the", "world"] and tokens("wor\u200cld") == ["world"]
    assert tokens("ภาษา\u200bไทย") == ["ภาษา", "ไทย"]            # a zero-width space parts words
    assert tokens("می\u200cخواهم") == ["می\u200cخواهم"]          # Persian keeps its non-joiner
    assert tokens("क्\u200dष") == ["क्\u200dष"]                  # and Devanagari its joiner
    assert complete_tokens("wor\u200d") == [] and complete_tokens("head\u200b") == ["head"]
    # one word being typed, too: completed as "Zimbabwe" and replaced whole, not "we" after "Zimbab"
    assert word_being_typed("Zimbab\u00adwe") == ("", "Zimbab\u00adwe")
    assert word_being_typed("in\u2060for") == ("", "in\u2060for")
    from edge_runtime.ngram import words_of_chunk

    assert words_of_chunk("Zimbab\u00adwe,") == ["Zimbabwe", ","]   # the base n-gram reads it the same


def test_combining_marks_and_joiners_stay_in_their_word():
    """`\\w` alone split these words into fragments ("नमस", "्", "त", "े"), which the device learned
    and suggested; a mark or a zero-width (non-)joiner belongs to the word it marks."""
    cases = {"नमस्ते दुनिया": ["नमस्ते", "दुनिया"],            # Devanagari: virama and vowel signs
             "ที่นี่ ok": ["ที่นี่", "ok"],                      # Thai tone and vowel marks
             "the cafe\u0301, then": ["the", "caf\u00e9", ",", "then"],   # an accent on its own (NFD): NFC
             "q\u0301 ok": ["q\u0301", "ok"],                  # a mark with no composed form stays in its word
             "می\u200cخواهم": ["می\u200cخواهم"],               # Persian's zero-width non-joiner
             "don't stop.": ["don't", "stop", "."]}
    for text, want in cases.items():
        assert tokens(text) == want, text
    assert word_being_typed("नमस्") == ("", "नमस्")
    assert word_being_typed('"cafe\u0301') == ('"', "cafe\u0301")
    assert complete_tokens("नमस्ते दु") == ["नमस्ते"]
    # An emoji's variation selector and a keycap belong to the symbol, as before: no word there.
    assert tokens("\u2764\ufe0f 1\ufe0f\u20e3 ok") == ["\u2764", "\ufe0f", "1", "\ufe0f", "\u20e3", "ok"]
    assert word_being_typed("\u2764\ufe0f") is None
    # The word list keeps its own, older rule, so `make v0` rebuilds the shipped list exactly: the
    # frequency list's decomposed and emoji-marked entries stay out of it.
    from protocol.vocab import _one_word
    assert _one_word("istanbul") and not _one_word("i\u0307stanbul") and not _one_word("i\ufe0f")


def test_only_words_are_suggestable():
    from protocol.text import suggestable

    for word in ("don't", "'tis", "goin'", "O'Brien", "x2", "naïve", "नमस्ते", "foo_bar"):
        assert suggestable(word), word
    for token in ("____", "'", "''", "''Tis", "cooker''", "'Wuthering'", "...", "-"):
        assert not suggestable(token), token
    # A pasted blob without spaces is a token, never a word to tap (a probe: 16,000 "y" offered).
    assert suggestable("y" * 48) and not suggestable("y" * 49) and not suggestable("y" * 16000)
