"""Word discovery: which dictionary words many devices type, without any device saying which it typed.

Why: words that devices type but the softmax lacks can only be completed from the word list's
tail, never predicted; given their own rows they raise keystroke savings by 1.0 to 1.6 points
(docs/quality.md, "Device words as softmax rows"). Finding them must not collect text, so a
discovery round counts votes over a *public* dictionary (Chen et al. 2019 find new words with
federated learning; this is the simpler histogram form, measured to keep most of the gain):

* the dictionary is the version's own word-list tail (`protocol.vocab.dictionary`): public,
  already on every device, no string leaves a device;
* a device votes for its `k` most typed dictionary words (the plan's `discover_words`) with
  1/sqrt(k) at each, so its vote has L2 norm <= 1 whatever it typed: sensitivity 1, the
  `clip_norm` of the round's distributed noise (`protocol.ddp`);
* the round is a secure-aggregation round: the coordinator sees only the noised sum, turns it
  into vote counts (sum * sqrt(k)) and keeps the words whose count clears `threshold`: the bar
  that noise alone crosses on fewer than one of the dictionary's entries in expectation, and
  never fewer than MIN_VOTES devices' worth; `protocol.vocab.swap_rows` then makes a candidate
  version the canary decides.

Privacy: one release of a sum with sensitivity 1 and noise multiplier z: the same event as a
training round at z, charged the same way by the coordinator's accountant and by the device's
own ledger. With tens of devices a word needs more votes than devices at any z that means
something (docs/quality.md has the table); it is built for populations of hundreds and more.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from statistics import NormalDist

import numpy as np

from protocol.text import tokens

MIN_VOTES = 3          # a word is never released on fewer devices' votes than this, noise or not
SENSITIVITY = 1.0      # L2 norm bound of one device's vote (the secure round's clip_norm)


def vote(texts: Iterable[str], dictionary: Sequence[str], k: int) -> tuple[np.ndarray, int]:
    """(this device's vote vector over `dictionary`, words voted for): 1/sqrt(k) at its `k` most
    typed dictionary words (ties: word-list order), 0 elsewhere. All zeros if it typed none."""
    if k < 1:
        raise ValueError("k must be >= 1")
    index = {w: i for i, w in enumerate(dictionary)}
    counts = Counter(index[t] for text in texts for t in tokens(text) if t in index)
    chosen = sorted(counts, key=lambda i: (-counts[i], i))[:k]
    v = np.zeros(len(dictionary), np.float32)
    v[chosen] = 1.0 / math.sqrt(k)
    return v, len(chosen)


def count_std(k: int, mu: float, devices: int, scale: float) -> float:
    """Std of the noise on each decoded vote count: each of `devices` survivors added Skellam(mu)
    (variance 2 mu) in units of 1/scale of a vote entry, and a count is an entry times sqrt(k)."""
    return math.sqrt(k) * math.sqrt(2.0 * mu * devices) / scale


def threshold(k: int, count_std: float, size: int) -> float:
    """Vote count a word must reach: noise with std `count_std` per entry exceeds it on fewer
    than one of `size` entries in expectation (one-sided Gaussian tail), and at least MIN_VOTES."""
    if count_std <= 0 or size <= 1:
        return float(MIN_VOTES)
    return max(float(MIN_VOTES), count_std * NormalDist().inv_cdf(1.0 - 1.0 / size))


def found(vote_sum: np.ndarray, dictionary: Sequence[str], k: int, count_std: float,
          max_words: int) -> tuple[list[str], float]:
    """(words over the threshold, most votes first, at most `max_words`; the threshold) from the
    decoded sum of the votes (`vote_sum`, one entry per dictionary word)."""
    if vote_sum.shape != (len(dictionary),):
        raise ValueError(f"vote sum has shape {vote_sum.shape}, the dictionary {len(dictionary)} words")
    counts = np.asarray(vote_sum, np.float64) * math.sqrt(k)
    bar = threshold(k, count_std, len(dictionary))
    over = np.flatnonzero(counts >= bar)
    order = over[np.lexsort((over, -counts[over]))][:max(0, max_words)]
    return [dictionary[i] for i in order], bar
