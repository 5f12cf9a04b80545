"""Word-level counts a keyboard user feels, measured on the device for a canary evaluation.

The central evaluation (`tools/wordeval.py`) scores each word with the same `score_word`; here
the counts are integers, so the coordinator can pool them per device:

- next-word top-1 / top-3: after each space, is the next word among the strip's 1 / 3 words;
- keystroke savings: type each word letter by letter and accept it as soon as it is among
  the three suggestions; `saved` letters not typed out of `typed` = letters + spaces.

Works with any session that has ``feed(chunk) -> logprob``, ``suggest(prefix, k) -> words``
and ``reset()`` (the keyboard's `edge_runtime.session.Session` in production). Only the
counts leave this module; the text stays where it came from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from edge_runtime.ngram import leading_word  # a target word: what a chunk starts with
from protocol.text import nfc


class TypingSession(Protocol):
    def feed(self, chunk: str) -> float: ...
    def suggest(self, prefix: str = "", k: int = 3) -> list[str]: ...
    def reset(self) -> None: ...


@dataclass(frozen=True)
class WordCounts:
    words: int
    top1: int
    top3: int
    saved: int
    typed: int


def word_counts(session: TypingSession, texts: Iterable[str], *, max_words: int,
                before_text: Callable[[], None] | None = None) -> WordCounts:
    """Score at most `max_words` target words of `texts` with `session`. `before_text` runs before
    each text (a device's eligibility check, which raises to stop)."""
    hit1 = hit3 = words = saved = typed = 0
    for text in texts:
        if words >= max_words:
            break
        if before_text is not None:
            before_text()
        session.reset()
        for chunk in text.split():
            if words >= max_words:
                break
            target = leading_word(nfc(chunk))   # as the strip spells it (`protocol.text.nfc`)
            if target:
                words += 1
                one = score_word(session, target)
                hit1, hit3, saved, typed = hit1 + one.top1, hit3 + one.top3, saved + one.saved, typed + one.typed
            session.feed(chunk)
    return WordCounts(words=words, top1=hit1, top3=hit3, saved=saved, typed=typed)


def score_word(session: TypingSession, target: str) -> WordCounts:
    """One target word typed where `session` stands: in the strip's first word / three words
    after the space, and the letters saved by accepting it as soon as the strip offers it. The
    one definition the device's canary counts and the central evaluation (`tools.wordeval`) use."""
    first = session.suggest("", 3)
    saved = 0
    for k in range(len(target)):
        if target in (first if k == 0 else session.suggest(target[:k], 3)):
            saved = len(target) - k
            break
    return WordCounts(words=1, top1=int(first[:1] == [target]), top3=int(target in first), saved=saved,
                      typed=len(target) + 1)
