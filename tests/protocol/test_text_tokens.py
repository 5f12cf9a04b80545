"""Typing's tokenization: which tokens of a chunk being typed are final."""

from __future__ import annotations

import random

from protocol.text import complete_tokens, tokens


def test_complete_tokens_are_those_no_later_character_can_change():
    assert complete_tokens("lord") == []
    assert complete_tokens("lord,") == ["lord", ","]
    assert complete_tokens("(well") == ["("]
    assert complete_tokens("o\u2019") == []  # a typographic apostrophe continues the word
    assert complete_tokens("\u201cNay") == ['"']
    assert complete_tokens("") == []
    rng = random.Random(0)
    alphabet = "ab'\u2019\u2018\u201c\u201d,.-()_1é\u0301"
    for _ in range(3000):
        chunk = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8)))
        done = complete_tokens(chunk)
        assert tokens(chunk)[: len(done)] == done
        for _ in range(5):
            more = "".join(rng.choice(alphabet + " ") for _ in range(rng.randint(1, 5)))
            assert tokens(chunk + more)[: len(done)] == done, (chunk, more)
