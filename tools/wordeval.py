"""Word-level metrics a keyboard user feels, for any model with a typing session.

A *session* has ``feed(chunk) -> logprob`` and ``suggest(prefix, k) -> words`` (the LSTM's
`edge_runtime.predictor.Session` and the n-gram's `NgramSession` both do), so every model is
scored by the same loop:

- next-word top-1 / top-3: after each space, is the next word among the strip's 1 / 3 words;
- keystroke savings rate (KSR): type each word letter by letter and accept it (one tap, which
  also types the space) as soon as it is in the three suggestions. Saved = letters not typed;
  KSR = saved / (letters + spaces) over all target words;
- word perplexity: exp(-total log-probability / number of whitespace chunks).

Targets are chunks that start with a word character (their leading word, ``[\\w']+``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from itertools import zip_longest

from tqdm import tqdm

from model.ngram import leading_word


@dataclass
class WordMetrics:
    top1: float
    top3: float
    word_perplexity: float
    ksr: float
    words: int

    def to_dict(self) -> dict:
        return asdict(self)


def interleave_users(users: dict[str, list[str]]) -> list[str]:
    """Texts round-robin across users, so a word cap still samples every held-out user."""
    return [t for group in zip_longest(*users.values()) for t in group if t is not None]


def evaluate_words(new_session: Callable[[], object], texts: Iterable[str], *, max_words: int = 3000,
                   progress: bool = False, desc: str = "evaluating") -> WordMetrics:
    session = new_session()
    hit1 = hit3 = words = 0
    saved = typed = 0
    logprob, chunks = 0.0, 0
    bar = tqdm(total=max_words, desc=desc, unit="word", disable=not progress, leave=False)
    for text in texts:
        if words >= max_words:
            break
        session.reset()
        for chunk in text.split():
            target = leading_word(chunk)
            if target and words < max_words:
                words += 1
                bar.update(1)
                first = session.suggest("", 3)
                hit1 += int(first[:1] == [target])
                hit3 += int(target in first)
                typed += len(target) + 1
                for k in range(len(target)):
                    if target in (first if k == 0 else session.suggest(target[:k], 3)):
                        saved += len(target) - k
                        break
            logprob += session.feed(chunk)
            chunks += 1
    bar.close()
    if words == 0:
        raise ValueError("no words to evaluate in the chosen split")
    return WordMetrics(top1=hit1 / words, top3=hit3 / words, word_perplexity=math.exp(-logprob / max(chunks, 1)),
                       ksr=saved / typed, words=words)
