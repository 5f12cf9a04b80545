"""The user's own words: a small n-gram over what this device's user typed, never uploaded.

Why: a global model cannot know the names, jargon and habits of one person, and its vocabulary
comes from proxy text; the words a user typed before are the likeliest to come again. This is
the keyboard's private, personal part (Wang et al. 2019 personalise Gboard on the device the
same way): it is built from the device's text cache only and lives in memory.

Witten-Bell interpolation (trigram -> bigram -> unigram) because it is incremental (counts
only, no re-estimation of discounts) and behaves well on the little text one user has:

    P(w | h) = (c(h, w) + T(h) * P(w | h')) / (c(h) + T(h))

with T(h) the number of distinct words seen after h and h' the shorter history. The unigram
level is P(w) = c(w) / N over the user's words.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections import Counter, defaultdict
from collections.abc import Iterable
from itertools import islice

import numpy as np

BOS = "<s>"
MIX_PRIOR = (45.0, 45.0, 10.0)  # pseudo-tokens: start at 0.45 / 0.45 / 0.1, then follow the user
_MAX_CHAR = chr(0x10FFFF)
_SCAN = 64  # a history's followers up to this many are scanned for a prefix, more are cut by word


class PersonalModel:
    """Counts of the user's tokens and their one- and two-token histories."""

    def __init__(self) -> None:
        self.uni: Counter[str] = Counter()
        self.total = 0
        self.follow: dict[tuple[str, ...], Counter[str]] = defaultdict(Counter)  # history -> next-token counts
        self.follow_total: Counter[tuple[str, ...]] = Counter()  # history -> tokens seen after it
        # history -> its suggestable followers, most frequent first (first seen first among equals):
        # re-ranked by `add` for the histories it touched, so `candidates` reads the top instead
        # of ranking every follower of "the" or "," on the keystroke after a space.
        self.ranked: dict[tuple[str, ...], list[str]] = {}
        self.words: list[str] = []  # suggestable tokens the user typed, sorted (for prefix ranges)
        # Evidence for the keyboard's mixture weights (lstm, ngram, personal; edge_runtime.predictor):
        # a Dirichlet prior, then one posterior responsibility per typed token. It belongs to the
        # user, not to a model version.
        self.mix = list(MIX_PRIOR)
        self._cache: dict[tuple, list[str]] = {}  # candidates(), valid until the next add()
        # history -> (its long ranked list, that list's words sorted by word, each one's place in it)
        # (`_first_with_prefix`); built on first use, dropped when `add` re-ranks the history.
        self._by_word: dict[tuple[str, ...], tuple[list[str], list[str], np.ndarray]] = {}

    def __len__(self) -> int:
        return self.total

    def add(self, toks: Iterable[str]) -> None:
        """Learn one text (its tokens in order)."""
        self._cache.clear()
        a, b = BOS, BOS
        touched: set[tuple[str, ...]] = set()
        for t in toks:
            if t not in self.uni and _suggestable(t):
                insort(self.words, t)
            self.uni[t] += 1
            self.total += 1
            for h in ((b,), (a, b)):
                self.follow[h][t] += 1
                self.follow_total[h] += 1
                touched.add(h)
            a, b = b, t
        for h in touched:
            f = self.follow[h]
            self.ranked[h] = [w for w in sorted(f, key=f.__getitem__, reverse=True) if _suggestable(w)]
            self._by_word.pop(h, None)

    def prob(self, w: str, hist: tuple[str, ...]) -> float:
        """P(w | the last two tokens of `hist`); 0 for a word the user never typed."""
        return self.probs([w], hist)[0]

    def probs(self, words: list[str], hist: tuple[str, ...]) -> list[float]:
        """`prob` of each of `words` after one history (the same arithmetic, the history's counts
        looked up once: the keyboard scores a few dozen candidates per keystroke)."""
        if not self.total:
            return [0.0] * len(words)
        levels = []  # (count of w after h, T(h), c(h) + T(h)) per order
        for n in (1, 2):
            if len(hist) < n:
                break
            h = tuple(hist[-n:])
            f = self.follow.get(h)
            if f:
                levels.append((f.get, len(f), self.follow_total[h] + len(f)))
        out = []
        uni, total = self.uni.get, self.total
        for w in words:
            u = uni(w)
            if u is None:  # never typed: 0 at every order (followers are typed words)
                out.append(0.0)
                continue
            p = u / total
            for count, types, denom in levels:
                p = (count(w, 0) + types * p) / denom
            out.append(p)
        return out

    def candidates(self, hist: tuple[str, ...], prefix: str, k: int) -> list[str]:
        """Words worth scoring for `prefix`: the k most frequent seen after this history (one and
        two tokens back), plus the user's k most frequent. Cached until the user's next text,
        since the keyboard asks on every keystroke and learns only on commit."""
        key = (tuple(hist[-2:]), prefix, k)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        out: list[str] = []
        for n in (2, 1):
            ranked = self.ranked.get(tuple(hist[-n:])) if len(hist) >= n else None
            if ranked:  # the k first with the prefix: heapq.nlargest over the followers, ties in the same order
                out.extend(self._first_with_prefix(tuple(hist[-n:]), ranked, prefix, k))
        top = self._cache.get((prefix, k))
        if top is None:  # the user's most frequent words with this prefix, whatever the history
            lo = bisect_left(self.words, prefix)
            hi = bisect_left(self.words, prefix + _MAX_CHAR)
            span = self.words[lo:hi]
            top = self._cache[(prefix, k)] = heapq.nlargest(k, span, key=self.uni.get) if len(span) > k else span
        out.extend(top)
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[key] = out
        return out

    def warm(self, hist: tuple[str, ...]) -> None:
        """Index the followers of this history (one and two tokens back) by word now, between
        keystrokes, rather than on the next word's first letter."""
        for n in (2, 1):
            h = tuple(hist[-n:])
            ranked = self.ranked.get(h) if len(hist) >= n else None
            if ranked and len(ranked) > _SCAN:
                self._word_index(h, ranked)

    def _first_with_prefix(self, h: tuple[str, ...], ranked: list[str], prefix: str, k: int) -> list[str]:
        """The first k words of `ranked` (history `h`'s followers) that start with `prefix`. A long
        list (",", "the" in a mailbox: thousands) is cut by word instead of scanned: its words with
        the prefix are a range of it sorted by word, and the k with the smallest places are they."""
        if not prefix:
            return ranked[:k]
        if len(ranked) <= _SCAN:
            return list(islice((w for w in ranked if w.startswith(prefix)), k))
        words, places = self._word_index(h, ranked)
        found = places[bisect_left(words, prefix):bisect_left(words, prefix + _MAX_CHAR)]
        if len(found) > k:
            found = np.partition(found, k - 1)[:k]
        return [ranked[i] for i in np.sort(found).tolist()]

    def _word_index(self, h: tuple[str, ...], ranked: list[str]) -> tuple[list[str], np.ndarray]:
        """History `h`'s followers sorted by word, and each one's place in `ranked`; built once per
        ranked list (kept until `add` re-ranks the history)."""
        index = self._by_word.get(h)
        if index is None or index[0] is not ranked:   # built from this very list, or built again
            order = sorted(range(len(ranked)), key=ranked.__getitem__)
            index = self._by_word[h] = (ranked, [ranked[i] for i in order], np.array(order))
        return index[1], index[2]


def _suggestable(tok: str) -> bool:
    return any(ch.isalnum() for ch in tok)
