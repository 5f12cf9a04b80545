"""The on-device personal n-gram: probabilities, candidates, and that it only knows what was typed."""

from __future__ import annotations

import pytest

from edge_runtime.personal import BOS, PersonalModel
from protocol.text import tokens


@pytest.fixture
def pm() -> PersonalModel:
    m = PersonalModel()
    for text in ("see you at the station tomorrow", "see you at the gym", "meet me at the station"):
        m.add(tokens(text))
    return m


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
