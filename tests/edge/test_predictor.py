"""The keyboard's suggestion engine on a real exported model (slim interpreter, no TensorFlow)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.interpreter import Model
from edge_runtime.predictor import Predictor
from model.config import BOS_ID
from model.tokenizer import load_tokenizer

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
    for prefix in ("th", "w", "ki"):
        words = s.update(f"and then {prefix}")
        assert words, prefix
        assert all(w.startswith(prefix) for w in words), (prefix, words)


def test_incremental_typing_equals_a_fresh_session(predictor):
    typed = predictor.session()
    for i in range(1, len(TEXT) + 1):
        got = typed.update(TEXT[:i])
        if i % 9 == 0 or i == len(TEXT):
            assert got == predictor.session().update(TEXT[:i]), TEXT[:i]


def test_backspace_and_edits_rewind_to_the_cached_state(predictor):
    s = predictor.session()
    s.update("shall we go to the king ")
    fed = len(s.chunks)
    assert s.update("shall we go to the ki") == predictor.session().update("shall we go to the ki")
    assert s.chunks == ["shall", "we", "go", "to", "the"] and fed == 6
    assert s.update("shall we run to the ") == predictor.session().update("shall we run to the ")


def test_chunkwise_state_equals_feeding_the_whole_text_at_once(predictor):
    s = predictor.session()
    for chunk in TEXT.split():
        s.feed(chunk)
    ids = predictor.sp.encode(TEXT)
    node, logprob = predictor.advance(predictor.root, ids)
    np.testing.assert_allclose(s.nodes[-1].logprobs, node.logprobs, atol=1e-5)
    assert sum(predictor.sp.encode(c) == [] for c in TEXT.split()) == 0
    assert np.isfinite(logprob) and logprob < 0
    assert predictor.root is not None and BOS_ID == 2


def test_suggestions_follow_the_model(predictor):
    """The top next word is the word the beam scores highest: check it against a brute-force
    score of the same candidates (their piece sequences plus a word boundary)."""
    s = predictor.session()
    s.update("my good lord ")
    words = s.suggest("", 3)
    node = s.nodes[-1]
    tbl = predictor.table

    def score(word: str) -> float:
        ids = predictor.sp.encode(" " + word if not word.startswith(" ") else word)
        nd, lp = predictor.advance(node, ids)
        return lp + float(np.log(np.exp(nd.logprobs[tbl.boundary_ids]).sum()))

    scores = [score(w) for w in words]
    assert scores == sorted(scores, reverse=True) or max(scores) - min(scores) < 1.0
