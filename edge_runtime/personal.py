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

from protocol.text import learnable

BOS = "<s>"
MIX_PRIOR = (40.0, 40.0, 20.0)  # pseudo-tokens: start at 0.4 / 0.4 / 0.2, then follow the user
# Pseudo-tokens of the user's overall weights that each history kind (`seen`) starts from: its
# own evidence takes over once the user has typed about this many tokens after such histories.
HISTORY_PRIOR = 100.0
_MAX_CHAR = chr(0x10FFFF)
_SCAN = 64  # a history's followers up to this many are scanned for a prefix, more are cut by word
_CACHED = 4096  # candidates() answers kept; past this they start again


class PersonalModel:
    """Counts of the user's tokens and their one- and two-token histories."""

    def __init__(self) -> None:
        self.uni: Counter[str] = Counter()
        self.total = 0
        # history -> next-token counts. Plain dicts of str -> int, not Counters: the cyclic garbage
        # collector does not track such a dict, and a Counter per history (hundreds of thousands for
        # a mailbox) would make every full collection walk them all, ~30 ms for 1,000 e-mails, in the
        # middle of whatever keystroke it fell on.
        self.follow: dict[tuple[str, ...], dict[str, int]] = {}
        self.follow_total: Counter[tuple[str, ...]] = Counter()  # history -> tokens seen after it
        # history -> its learnable followers, most frequent first (first seen first among equals):
        # ranked once after the texts that counted them (`ranked`), so `candidates` reads the top
        # instead of ranking every follower of "the" or "," on the keystroke after a space.
        self._ranked: dict[tuple[str, ...], list[str]] = {}
        self._unranked: set[tuple[str, ...]] = set()  # histories `add` counted since they were ranked
        self.words: list[str] = []  # learnable tokens the user typed, sorted (for prefix ranges)
        self.firsts: Counter[str] = Counter()  # first character of each learnable token typed (per use)
        # Evidence for the keyboard's mixture weights (lstm, ngram, personal; edge_runtime.predictor):
        # a Dirichlet prior, then one posterior responsibility per typed token. It belongs to the
        # user, not to a model version.
        self.mix = list(MIX_PRIOR)
        # The same evidence kept apart for the two kinds of history (`seen`): after a word the user
        # typed before, their own words know what follows it; after one they never typed, only that
        # the word comes up. Starts empty; the keyboard adds the overall weights as its prior.
        self.mix_by_seen = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
        # Words the user removed from the suggestions (the keyboard's `remove_word`): never offered,
        # whichever part proposes them. Replaced, not mutated, so a strip readied before a removal
        # no longer matches (`Predictor.strip_key`).
        self.removed: frozenset[str] = frozenset()
        # candidates() answers by prefix: prefix -> (last two tokens, k) -> words, and the user's
        # top words: prefix -> k -> words. `add` drops only the prefixes of the words it counted,
        # so a commit does not cost every later keystroke its lookup (the keyboard learns a
        # finished sentence while the user types on).
        self._cache: dict[str, dict[tuple[tuple[str, ...], int], list[str]]] = {}
        self._top: dict[str, dict[int, list[str]]] = {}
        self._cached = 0   # answers in `_cache`
        # history -> (its long ranked list, that list's words sorted by word, each one's place in it)
        # (`_first_with_prefix`); built on first use, dropped when the history is ranked again.
        self._by_word: dict[tuple[str, ...], tuple[list[str], list[str], np.ndarray]] = {}

    def __len__(self) -> int:
        return self.total

    def add(self, toks: Iterable[str], after: tuple[str, str] = (BOS, BOS)) -> tuple[str, str]:
        """Learn one text (its tokens in order), or a part of one that follows the two tokens
        `after`; returns the last two tokens, to learn the next part after them."""
        a, b = after
        touched: set[tuple[str, ...]] = set()
        counted: set[str] = set()
        for t in toks:
            if learnable(t):
                if t not in self.uni:
                    insort(self.words, t)
                self.firsts[t[0]] += 1
            self.uni[t] += 1
            self.total += 1
            counted.add(t)
            for h in ((b,), (a, b)):
                f = self.follow.get(h)
                if f is None:
                    f = self.follow[h] = {}
                f[t] = f.get(t, 0) + 1
                self.follow_total[h] += 1
                touched.add(h)
            a, b = b, t
        self._unranked |= touched   # ranked again when next read (`ranked`), not while the keyboard waits
        # Only the counted words moved, and only up: every ranking is by a word's own count (ties
        # in a fixed order), so the first k words with a prefix change only if a counted word has
        # that prefix, after any history and overall; and a word that was not among the user's top
        # k for a prefix and was not counted cannot have joined them.
        by_prefix: dict[str, list[str]] = defaultdict(list)
        for w in counted:
            if learnable(w):
                for i in range(len(w) + 1):
                    by_prefix[w[:i]].append(w)
        for prefix, ws in by_prefix.items():
            self._cached -= len(self._cache.pop(prefix, ()))
            tops = self._top.get(prefix)
            if tops:
                lo, hi = self._span(prefix)
                for k, top in tops.items():
                    tops[k] = self.words[lo:hi] if hi - lo <= k else self._best(k, {*top, *ws})
        return a, b

    def seen(self, hist: tuple[str, ...]) -> int:
        """1 if the user typed something after the last token of `hist` before, else 0: which of
        `mix_by_seen` weighs the next word."""
        return 1 if hist and self.follow_total.get((hist[-1],), 0) > 0 else 0

    def ranked(self, h: tuple[str, ...]) -> list[str] | None:
        """History `h`'s learnable followers (`protocol.text.learnable`), most frequent first
        (first seen first among equals);
        None if the user never typed it. A history the last texts counted is ranked again here,
        once: a commit's `add` touches dozens ("the", "," and the like have thousands of
        followers), most of which the user does not type after before the next commit."""
        if h in self._unranked:
            self._unranked.discard(h)
            f = self.follow[h]
            self._ranked[h] = [w for w in sorted(f, key=f.__getitem__, reverse=True) if learnable(w)]
            self._by_word.pop(h, None)
        return self._ranked.get(h)

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
        two tokens back), plus the user's k most frequent. Cached until a text changes them,
        since the keyboard asks on every keystroke and learns only on commit."""
        key = (tuple(hist[-2:]), k)
        answers = self._cache.get(prefix)
        hit = answers.get(key) if answers is not None else None
        if hit is not None:
            return hit
        out: list[str] = []
        for n in (2, 1):
            ranked = self.ranked(tuple(hist[-n:])) if len(hist) >= n else None
            if ranked:  # the k first with the prefix: heapq.nlargest over the followers, ties in the same order
                out.extend(self._first_with_prefix(tuple(hist[-n:]), ranked, prefix, k))
        tops = self._top.setdefault(prefix, {})
        top = tops.get(k)
        if top is None:  # the user's most frequent words with this prefix, whatever the history
            lo, hi = self._span(prefix)
            span = self.words[lo:hi]
            top = tops[k] = heapq.nlargest(k, span, key=self.uni.get) if len(span) > k else span
        out.extend(top)
        if self._cached >= _CACHED or len(self._top) > _CACHED:   # both start again
            self._cache.clear()
            self._top = {prefix: tops}
            self._cached = 0
        self._cache.setdefault(prefix, {})[key] = out
        self._cached += 1
        return out

    def _span(self, prefix: str) -> tuple[int, int]:
        """The range of the user's sorted words that start with `prefix`."""
        return bisect_left(self.words, prefix), bisect_left(self.words, prefix + _MAX_CHAR)

    def _best(self, k: int, words: Iterable[str]) -> list[str]:
        """The k most frequent of `words`, ties in word order: what heapq.nlargest gives over the
        sorted words with a prefix (it keeps equals in input order)."""
        uni = self.uni
        return sorted(words, key=lambda w: (-uni[w], w))[:k]

    def warm(self, hist: tuple[str, ...]) -> None:
        """Index the followers of this history (one and two tokens back) by word now, between
        keystrokes, rather than on the next word's first letter."""
        for n in (2, 1):
            h = tuple(hist[-n:])
            ranked = self.ranked(h) if len(hist) >= n else None
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

