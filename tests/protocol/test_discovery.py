"""Word discovery's math (`protocol.discovery`): a device's vote, the noise bar, the words found,
and the whole path through distributed noise (`protocol.ddp`) as a secure round sums it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from coordinator.config import Config, ConfigError
from protocol import ddp, discovery
from protocol.fields import WireError
from protocol.plan import TrainPlan

WORDS = ["thee", "doth", "Linux", "server", "zorblax", "whilst", "hath", "Romeo"]


def test_a_vote_names_the_k_most_typed_dictionary_words_with_unit_norm():
    texts = ["the server is down, the server again", "Linux server and Linux", "doth he? whilst", "nothing"]
    v, n = discovery.vote(texts, WORDS, k=2)
    assert n == 2 and v.dtype == np.float32 and v.shape == (len(WORDS),)
    assert set(np.flatnonzero(v)) == {WORDS.index("server"), WORDS.index("Linux")}     # 3 and 2 uses
    assert math.isclose(float(np.linalg.norm(v)), 1.0, rel_tol=1e-6)
    tie, _ = discovery.vote(["whilst doth"], WORDS, k=1)                           # tie: word-list order
    assert np.flatnonzero(tie).tolist() == [WORDS.index("doth")]
    few, n = discovery.vote(["hath"], WORDS, k=4)             # fewer words than k: each still 1/sqrt(k)
    assert n == 1 and np.linalg.norm(few) < 1 and few[WORDS.index("hath")] == pytest.approx(0.5)
    none, n = discovery.vote(["the cat sat", "linux"], WORDS, k=3)     # not in it (case counts): no vote
    assert n == 0 and not none.any()
    with pytest.raises(ValueError):
        discovery.vote(texts, WORDS, k=0)


def test_the_bar_is_min_votes_without_noise_and_holds_false_positives_under_one():
    assert discovery.threshold(8, 0.0, 40_000) == discovery.MIN_VOTES
    assert discovery.threshold(8, 2.0, 40_000) > discovery.threshold(8, 2.0, 100) > discovery.MIN_VOTES
    rng = np.random.default_rng(0)
    size, std, trials = 40_000, 5.0, 20
    bar = discovery.threshold(8, std, size)
    false = [int((rng.normal(0, std, size) >= bar).sum()) for _ in range(trials)]
    assert np.mean(false) <= 1.5, false                        # about one per release at most, by design
    assert bar == pytest.approx(5.0 * 4.056, rel=0.01)            # the 1 - 1/40,000 quantile


def test_found_ranks_words_over_the_bar_and_caps_them():
    k = 4
    counts = np.array([10, 0, 2, 7, 3, 0, 12, 1], np.float64)
    words, bar = discovery.found(counts / math.sqrt(k), WORDS, k, 0.0, max_words=10)
    assert bar == discovery.MIN_VOTES and words == ["hath", "thee", "server", "zorblax"]
    assert discovery.found(counts / math.sqrt(k), WORDS, k, 0.0, max_words=2)[0] == ["hath", "thee"]
    words, bar = discovery.found(counts / math.sqrt(k), WORDS, k, 4.0, max_words=10)   # bar 4 x 1.15
    assert words == ["hath", "thee", "server"] and bar == pytest.approx(4.6, abs=0.01)
    with pytest.raises(ValueError, match="shape"):
        discovery.found(counts[:3], WORDS, k, 0.0, max_words=10)


def _noised_sum(votes: list[np.ndarray], z: float, seed: int) -> tuple[np.ndarray, float]:
    """What the coordinator decodes from a secure round of these votes (no masks: they cancel),
    and the count noise std it computes (`coordinator.discovery.close`)."""
    n, d = len(votes), votes[0].size
    scale = ddp.choose_scale(discovery.SENSITIVITY, n, z, d, n)
    mu = ddp.skellam_mu(z, scale, discovery.SENSITIVITY, d, n)
    total = np.zeros(d, np.uint32)
    for i, v in enumerate(votes):
        total += ddp.encode(v, scale, mu, seed=seed + i)
    return ddp.decode_sum(total, scale, 1), discovery.count_std(1, mu, n, scale)


@pytest.mark.parametrize("z", [0.0, 1.0])
def test_through_distributed_noise_a_popular_word_is_found_and_rare_ones_are_not(z):
    rng = np.random.default_rng(1)
    dictionary = [f"w{i}" for i in range(5000)]
    n, k = 300, 8
    texts = [["w42 w42 w7 w7"] + [f"w{j}" for j in rng.integers(100, 5000, 6)] for _ in range(n)]
    for t in texts[:6]:                          # typed by only 6 devices: under the bar at z = 1
        t.append("w99 w99 w99")
    votes = [discovery.vote(t, dictionary, k)[0] for t in texts]
    vote_sum, std = _noised_sum(votes, z, seed=5)
    found, bar = discovery.found(vote_sum, dictionary, k, math.sqrt(k) * std, max_words=100)
    assert set(found[:2]) == {"w42", "w7"}
    assert ("w99" in found) == (z == 0.0), (found, bar)
    # Each device's 6 random words get under a vote each on average; the bar lets about one entry
    # of the 5,000 through on noise alone, by design (MIN_VOTES alone would let ~700 through).
    assert len(found) <= (5 if z else 60), (found, bar)
    assert std == pytest.approx(z * ddp.sensitivity_l2(ddp.choose_scale(1.0, n, z, 5000, n), 1.0, 5000)
                                / ddp.choose_scale(1.0, n, z, 5000, n), rel=1e-6) if z else std == 0.0


def test_a_discovery_round_must_be_a_secure_one():
    common = dict(round_id=1, epochs=1, batch_size=4, learning_rate=0.1, clip_norm=1.0, noise_multiplier=1.0,
                  max_examples=10)
    with pytest.raises(WireError, match="secure_aggregation"):
        TrainPlan(**common, discover_words=8)
    assert TrainPlan(**common, discover_words=8, secure_aggregation=True).discover_words == 8
    assert "discover_words" not in TrainPlan(**common).to_dict()        # a training plan reads as before
    with pytest.raises(WireError, match="discover_words"):
        TrainPlan(**common, discover_words=65, secure_aggregation=True)
    with pytest.raises(ConfigError, match="secure_aggregation"):
        Config(discover_words=8)
