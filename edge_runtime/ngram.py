"""Interpolated modified Kneser-Ney word n-gram language model: the next-word baseline.

It lives on the device's side: the device queries the shipped base n-gram on every keystroke
(`edge_runtime.base_ngram`) and the coordinator never uses it; the tools fit it on proxy text
and evaluate it from here (`tools.proxy_ngram`, `tools.evaluate`). Pure numpy, no TensorFlow.

The evaluator drives this model and the LSTM through one interface: `lm.session()` gives an
`NgramSession` that is fed each completed whitespace chunk of a text and asked for top-k
next words (or completions of a typed prefix) before each one.

Why written by hand: NLTK's `KneserNeyInterpolated` computes every probability by pure-Python
recursion over the counts, so ranking a 20k-word vocabulary per keystroke takes seconds, and
kenlm only scores given words (no top-k or prefix API). Here `suggest` takes well under 2 ms:

* P(w | h) = sum_n beta_n * alpha_n(w | h_n) + beta_1 * P_1(w), where h_n is the last n-1
  tokens, alpha_n the discounted mass of order n and beta_n the product of the back-off
  weights above it. Only words seen after a context at order >= 2 get anything beyond
  beta_1 * P_1(w), so the top-k is among those words plus the top-k of P_1 alone.
* Suggestable words get the lowest ids in sorted order, so a prefix is an id range found by
  bisecting the sorted vocabulary, and a context's followers (stored sorted by id) are cut to
  it by `searchsorted`. The top of P_1 for short, frequent prefixes is precomputed.

Modelling choices (as in KenLM): modified KN with three discounts D1, D2, D3+ per order
estimated from counts-of-counts (Chen & Goodman), or one fixed `discount`; the highest order
uses raw counts, lower orders continuation counts, except n-grams starting with <s> (nothing
precedes them), which keep raw counts; unigrams are interpolated with the uniform distribution
over the vocabulary (every token but <s>, including </s> and <unk>), so no token gets zero
probability. Each record is one sentence: <s> tokens </s>. Case-sensitive.
"""

from __future__ import annotations

import io
import math
import os
import re
import zipfile
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Iterable, Sequence

import numpy as np

from protocol.artifact import atomic_write
from protocol.text import TOKEN_RE, WORD_CLASS, nfc, typed_chunks, unformatted, word_being_typed

BOS, EOS, UNK = "<s>", "</s>", "<unk>"

_LEADING_RE = re.compile(rf"{WORD_CLASS}+")
# Suggestable word: word characters and apostrophes, with at least one word character (a
# lone "'" or "''" is a quote mark, not a word).
_WORD_RE = re.compile(rf"{WORD_CLASS}*\w{WORD_CLASS}*")

# Prefixes matching more than this many words get a precomputed top list of P_1 (the empty
# prefix and the first letter or two); smaller ranges are ranked on the fly.
_PREFIX_TABLE_MIN = 256
_PREFIX_TABLE_K = 32
# Contexts with more than this many suggestable followers keep their best followers (and a bound
# on the rest), so the next word with no prefix (the keystroke after a space) is ranked from a few
# dozen words instead of thousands (a comma or "the" has ~20k followers).
_FOLLOW_TABLE_MIN = 128
_FOLLOW_TABLE_K = 32
_MAX_CHAR = chr(0x10FFFF)


def chunks(text: str) -> list[str]:
    """Whitespace-delimited chunks: the units a keyboard user completes by typing a space."""
    return text.split()


def words_of_chunk(chunk: str) -> list[str]:
    """Model tokens of a chunk: words (with apostrophes, e.g. "know't") and single punctuation marks.

    Unlike `protocol.text.tokens` it keeps typographic quotes as they are (``don’t`` is three
    tokens): the shipped base n-gram was fitted this way and holds them in its vocabulary. Read
    in NFC and without invisible format characters, as `tokens` reads it (`protocol.text.nfc`,
    `unformatted`)."""
    return TOKEN_RE.findall(unformatted(nfc(chunk)))


def leading_word(chunk: str) -> str | None:
    """The word a chunk starts with (the next-word prediction target), or None if it starts with punctuation."""
    m = _LEADING_RE.match(chunk)
    return m.group(0) if m else None


def _is_word(token: str) -> bool:
    return _WORD_RE.fullmatch(token) is not None


def _kth_largest(v: np.ndarray, k: int, step: int = 16) -> float:
    """The k-th largest value of `v` (1 <= k <= len(v)). The k-th largest of every `step`-th value
    is at most that, so only the values above it (about k * step) are partitioned: a first letter's
    thousands of followers cost a sample's partition, not theirs."""
    if len(v) >= 8 * k * step:
        sample = v[::step]
        v = v[v >= np.partition(sample, len(sample) - k)[len(sample) - k]]
    return np.partition(v, len(v) - k)[len(v) - k]


def _estimate_discounts(counts: np.ndarray) -> tuple[float, float, float]:
    """Chen & Goodman's D1, D2, D3+ from counts-of-counts; one D (or 0.5) when the data is too thin."""
    n1, n2, n3, n4 = (int(np.count_nonzero(counts == c)) for c in (1, 2, 3, 4))
    if n1 == 0 or n2 == 0:
        return (0.5, 0.5, 0.5)
    y = n1 / (n1 + 2 * n2)
    if n3 and n4:
        d = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
        if all(x > 0 for x in d):
            return d
    return (y, y, y)


def _by_owner(records: list[list[str]], owner: np.ndarray) -> list[set[str]]:
    """The set of tokens each user typed (a token counts once per user, however often typed)."""
    out: list[set[str]] = [set() for _ in range(int(owner.max()) + 1)]
    for r, u in zip(records, owner.tolist()):
        out[u].update(r)
    return out


def _typed_by_enough(keys: np.ndarray, owner: np.ndarray, min_users: int) -> np.ndarray:
    """Mask of the n-gram occurrences `keys` (each typed by `owner`) whose n-gram at least
    `min_users` different users typed: counted by distinct (n-gram, user) pairs, so one user
    typing an n-gram many times does not make it shared."""
    order = np.lexsort((owner, keys))
    k, o = keys[order], owner[order]
    new_pair = np.ones(len(k), dtype=bool)
    new_pair[1:] = (k[1:] != k[:-1]) | (o[1:] != o[:-1])
    new_key = np.ones(len(k), dtype=bool)
    new_key[1:] = k[1:] != k[:-1]
    starts = np.flatnonzero(new_key)
    n_users = np.add.reduceat(new_pair.astype(np.int64), starts) if len(k) else np.zeros(0, np.int64)
    ok_sorted = np.repeat(n_users >= min_users, np.diff(np.append(starts, len(k))))
    mask = np.empty(len(k), dtype=bool)
    mask[order] = ok_sorted
    return mask


def _discount_each(counts: np.ndarray, d: tuple[float, float, float]) -> np.ndarray:
    """The discount applied to each count (0 for a zero count); D_c <= c keeps every alpha >= 0."""
    out = np.where(counts >= 3, d[2], np.where(counts == 2, d[1], d[0]))
    return np.where(counts > 0, out, 0.0)


class KneserNeyLM:
    """Interpolated modified Kneser-Ney word n-gram model with fast top-k / prefix suggestions."""

    def __init__(self, order: int = 3, discount: float | None = None, min_count: int = 1) -> None:
        """An unfitted model; use `KneserNeyLM.fit` or `KneserNeyLM.load` to get a usable one."""
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        if discount is not None and not 0 < discount <= 1:
            raise ValueError(f"discount must be in (0, 1], got {discount}")
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        self.order = order
        self.discount = discount
        self.min_count = min_count
        self.vocab: list[str] = []  # token of each id: words (sorted), other tokens, </s>, <unk>, <s>
        self.n_words = 0  # ids [0, n_words) are the suggestable words
        self.discounts: dict[int, tuple[float, float, float]] = {}
        self._fitted = False

    # ----------------------------------------------------------------- fitting
    @classmethod
    def fit(
        cls,
        texts: Iterable[str],
        order: int = 3,
        discount: float | None = None,
        min_count: int = 1,
        *,
        users: Sequence[object] | None = None,
        min_users: int = 1,
    ) -> KneserNeyLM:
        """Count n-grams of `texts` (one record = one <s> ... </s> sentence) and build the model.

        With `users` (the user of each text) and `min_users` > 1, only tokens and n-grams that
        at least `min_users` different users typed are kept (other tokens count as <unk>): the
        most a release that protects each user could hold, so docs/quality.md can measure how
        much of a central n-gram's lead rests on what a single user typed."""
        texts = list(texts)
        if min_users < 1:
            raise ValueError(f"min_users must be >= 1, got {min_users}")
        if users is not None and len(users) != len(texts):
            raise ValueError(f"{len(users)} users for {len(texts)} texts")
        if min_users > 1 and users is None:
            raise ValueError("min_users needs the user of each text (users=...)")
        lm = cls(order, discount, min_count)
        lm._fit(texts, users if min_users > 1 else None, min_users)
        return lm

    @classmethod
    def fit_users(cls, users: Iterable[tuple[object, Sequence[str]]], order: int = 3, *,
                  min_users: int = 1) -> KneserNeyLM:
        """`fit` on every user's texts, each text with its user: (user, texts) pairs such as a
        corpus split's `train.items()`."""
        pairs = [(u, t) for u, texts in users for t in texts]
        return cls.fit([t for _, t in pairs], order, users=[u for u, _ in pairs], min_users=min_users)

    def _fit(self, texts: Iterable[str], users: Sequence[object] | None = None, min_users: int = 1) -> None:
        # findall on the whole text gives exactly the words_of_chunk tokens of its chunks.
        found = [(TOKEN_RE.findall(t), i) for i, t in enumerate(texts)]
        records = [r for r, _ in found if r]
        if not records:
            raise ValueError("no tokens to fit on")
        owner = None
        if users is not None:   # each record's user as a small int
            ids: dict[object, int] = {}
            owner = np.array([ids.setdefault(users[i], len(ids)) for r, i in found if r], dtype=np.int64)
        freq = Counter(tok for r in records for tok in r)
        if owner is not None:
            typed_by = Counter(tok for u in _by_owner(records, owner) for tok in u)
            freq = Counter({w: c for w, c in freq.items() if typed_by[w] >= min_users})
        kept = [w for w, c in freq.items() if c >= self.min_count]
        vocab = sorted(w for w in kept if _is_word(w))
        n_words = len(vocab)
        if owner is not None and not n_words:
            raise ValueError(f"no word that {min_users} or more users typed")
        vocab += sorted(w for w in kept if not _is_word(w))
        vocab += [EOS, UNK, BOS]
        index = {w: i for i, w in enumerate(vocab)}
        unk, bos, eos = index[UNK], index[BOS], index[EOS]
        base, order = len(vocab), self.order
        if order >= 63 or base**order >= 2**63:   # base >= 3 (the specials): no huge power computed
            raise ValueError(f"order {order} is too high for {base} token types (n-gram keys overflow int64)")

        # N-grams are counted as int64 keys sum(id_j * base**(n-1-j)): sorting keys sorts by
        # context then next token, and key % base**(n-1) drops the first token.
        flat: list[int] = []
        lengths = np.empty(len(records), dtype=np.int64)
        for i, r in enumerate(records):
            flat.append(bos)
            flat.extend(index.get(t, unk) for t in r)
            flat.append(eos)
            lengths[i] = len(r) + 2
        seq = np.array(flat, dtype=np.int64)
        rec = np.repeat(np.arange(len(records)), lengths)
        raw_freq = np.bincount(seq, minlength=base)[:bos]
        grams: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        every: dict[int, np.ndarray] = {}   # each order's distinct n-grams before `min_users`
        for n in range(1, order + 1):
            m = len(seq) - n + 1
            key = seq[:m].copy()
            for j in range(1, n):
                key = key * base + seq[j : j + m]
            same = rec[:m] == rec[n - 1 : n - 1 + m]   # n-grams within one record
            key = key[same]
            if owner is not None and n > 1:
                every[n] = np.unique(key)
                key = key[_typed_by_enough(key, owner[rec[:m][same]], min_users)]
            grams[n] = np.unique(key, return_counts=True)

        # Adjusted counts: raw at the top order; below it, the number of distinct left
        # extensions (continuation count), except n-grams starting with <s>, which have none.
        # With `min_users` an n-gram is kept by its own users, and its continuation count (a
        # number of left-extension types, no one user's n-gram) counts every extension.
        adj: dict[int, tuple[np.ndarray, np.ndarray]] = {order: grams[order]}
        for n in range(order - 1, 0, -1):
            keys, cnts = np.unique(every.get(n + 1, grams[n + 1][0]) % base**n, return_counts=True)
            if owner is not None and n > 1:
                kept = np.isin(keys, grams[n][0])
                keys, cnts = keys[kept], cnts[kept]
            if n > 1:
                raw_keys, raw_cnts = grams[n]
                at_bos = raw_keys // base ** (n - 1) == bos
                keys = np.concatenate([keys, raw_keys[at_bos]])
                cnts = np.concatenate([cnts, raw_cnts[at_bos]])
                perm = np.argsort(keys, kind="stable")
                keys, cnts = keys[perm], cnts[perm]
            adj[n] = (keys, cnts)

        def discounts_for(counts: np.ndarray) -> tuple[float, float, float]:
            if self.discount is not None:
                return (self.discount,) * 3
            return _estimate_discounts(counts)

        keys, cnts = adj[1]
        a1 = np.zeros(bos)  # predictable tokens: every id but <s>
        not_bos = keys != bos
        a1[keys[not_bos]] = cnts[not_bos]
        discounts = {1: discounts_for(a1[a1 > 0])}
        d1 = _discount_each(a1, discounts[1])
        total = a1.sum()
        uni = (a1 - d1) / total + d1.sum() / total / bos

        levels: dict[int, tuple[np.ndarray, ...]] = {}
        for n in range(2, order + 1):
            keys, cnt_int = adj[n]
            cnt = cnt_int.astype(np.float64)
            ctx = keys // base
            new = np.ones(len(keys), dtype=bool)
            new[1:] = ctx[1:] != ctx[:-1]
            starts = np.flatnonzero(new)
            bounds = np.append(starts, len(keys)).astype(np.int64)
            discounts[n] = discounts_for(cnt)
            d = _discount_each(cnt, discounts[n])
            tot = np.add.reduceat(cnt, starts)
            gammas = np.add.reduceat(d, starts) / tot
            alpha = (cnt - d) / np.repeat(tot, np.diff(bounds))
            levels[n] = (ctx[starts], bounds, gammas, (keys % base).astype(np.int32), alpha)

        self._install(vocab, n_words, raw_freq, uni, discounts, levels)

    def _install(
        self,
        vocab: list[str],
        n_words: int,
        raw_freq: np.ndarray,
        uni: np.ndarray,
        discounts: dict[int, tuple[float, float, float]],
        levels: dict[int, tuple[np.ndarray, ...]],
    ) -> None:
        """Set the model's arrays and build the lookup structures derived from them (fit and load)."""
        self.vocab = vocab
        self.n_words = n_words
        self.discounts = discounts
        self._index = {w: i for i, w in enumerate(vocab)}
        self._unk, self._bos = self._index[UNK], self._index[BOS]
        self._base = len(vocab)
        self._freq = raw_freq
        self._uni = uni  # P_1 over every id but <s>
        self._levels = levels  # n -> (context keys, bounds, gammas, next ids, alphas)
        # Each order's contexts stay in `levels`' numpy arrays, looked up by bisection (`_context`):
        # as a dict of Python ints and tuples the shipped base n-gram's 1.5M contexts would take 350 MB.
        self._next: dict[int, np.ndarray] = {}
        self._alpha: dict[int, np.ndarray] = {}
        for n, (_, _, _, nxt, alpha) in levels.items():
            self._next[n] = nxt
            self._alpha[n] = alpha

        # Ids as the follower arrays hold them: searchsorted converts the array to the key's dtype.
        self._id_dtype = self._next[2].dtype if 2 in self._next else np.dtype(np.int64)
        self._n_words_key = self._id_dtype.type(n_words)
        self._follow_top = {n: self._follow_table(n) for n in levels}
        # `warm`'s context and its suggestable followers: (ids, ranking scores, back-off weight, probabilities)
        self._warm: tuple[tuple[int, ...], tuple[np.ndarray, np.ndarray, float, np.ndarray] | None] | None = None

        # Unigram ranking of the suggestable words: P_1, then raw frequency, then id.
        ids = np.arange(n_words)
        self._uni_order = np.lexsort((ids, -raw_freq[:n_words], -uni[:n_words])).astype(self._id_dtype)
        self._uni_rank = np.empty(n_words, dtype=np.int64)
        self._uni_rank[self._uni_order] = ids
        self._sorted_words = vocab[:n_words]
        self._prefix_top: dict[str, np.ndarray] = {}
        queue = deque([""])
        while queue:
            p = queue.popleft()
            lo, hi = self._prefix_range(p)
            if hi - lo <= _PREFIX_TABLE_MIN:
                continue
            self._prefix_top[p] = self._rank_range(lo, hi, _PREFIX_TABLE_K)
            queue.extend(sorted({w[: len(p) + 1] for w in self._sorted_words[lo:hi] if len(w) > len(p)}))
        self._fitted = True

    def _follow_table(self, n: int) -> dict[int, tuple[np.ndarray, float, int]]:
        """For each context of order `n` with more than _FOLLOW_TABLE_MIN suggestable followers,
        keyed by the start of its follower segment: its _FOLLOW_TABLE_K best followers by how much
        they can score there, the most any other follower can score there, and the number of
        suggestable followers (`_next_top`).

        At order 2 (the lowest) that is alpha_2(w) + gamma * P_1(w), w's whole score up to the
        higher orders' back-off weight; above it, alpha_n(w). A context of order > 2 whose followers
        are not all followers of its last token (never, for fitted counts) gets no entry: its
        suggestions are ranked in full, as without this table."""
        keys, bounds, gammas, nxt, alpha = self._levels[n]
        count = np.concatenate([[0], np.cumsum(nxt < self.n_words)])
        n_sugg = count[bounds[1:]] - count[bounds[:-1]]  # followers are sorted by id: words first
        kk, out = _FOLLOW_TABLE_K, {}
        for c in np.flatnonzero(n_sugg > max(_FOLLOW_TABLE_MIN, kk)).tolist():
            s = int(bounds[c])
            ids = nxt[s : s + int(n_sugg[c])]
            val = alpha[s : s + len(ids)]
            if n == 2:
                val = val + float(gammas[c]) * self._uni[ids]
            else:
                low = self._context(2, int(keys[c]) % self._base)
                seg = self._next[2][low[0] : low[1]] if low is not None else nxt[:0]
                pos = seg.searchsorted(ids)
                if len(seg) == 0 or pos[-1] >= len(seg) or not np.array_equal(seg[pos], ids):
                    continue
            order = np.argpartition(-val, kk)
            out[s] = (ids[order[:kk]], float(val[order[kk]]), len(ids))
        return out

    # ----------------------------------------------------------------- scoring
    def _check(self) -> None:
        if not self._fitted:
            raise RuntimeError("model is not fitted: use KneserNeyLM.fit or KneserNeyLM.load")

    def _ids(self, tokens: Sequence[str]) -> list[int]:
        return [self._index.get(t, self._unk) for t in tokens]

    def _context(self, n: int, key: int) -> tuple[int, int, float] | None:
        """(start, end, gamma) of the order-`n` context with this key (its n-1 tokens), or None
        when the counts never saw it."""
        keys, bounds, gammas, _, _ = self._levels[n]
        i = int(keys.searchsorted(key))
        if i == len(keys) or int(keys[i]) != key:
            return None
        return int(bounds[i]), int(bounds[i + 1]), float(gammas[i])

    def _levels_for(self, hist: Sequence[int]) -> list[tuple[int, int, int, float]]:
        """(order, start, end, gamma) of each seen context of `hist`, highest order first."""
        out = []
        m = min(self.order - 1, len(hist))
        key = 0
        for t in hist[len(hist) - m :]:
            key = key * self._base + t
        for n in range(m + 1, 1, -1):  # key holds the last n-1 tokens
            e = self._context(n, key)
            if e is not None:
                out.append((n, *e))
            key %= self._base ** (n - 2)
        return out

    def _prob_id(self, w: int, hist: Sequence[int]) -> float:
        p, beta = 0.0, 1.0
        for n, s, e, g in self._levels_for(hist):
            nxt = self._next[n]
            i = s + int(nxt[s:e].searchsorted(w))
            if i < e and nxt[i] == w:
                p += beta * float(self._alpha[n][i])
            beta *= g
        return p + beta * float(self._uni[w])

    def _prob_ids(self, ws: np.ndarray, hist: Sequence[int]) -> np.ndarray:
        """`_prob_id` of each id in `ws` under one history: the same float operations, so the same
        values, with one context lookup and one `searchsorted` per order for all of them."""
        p = np.zeros(len(ws))
        beta = 1.0
        ws = ws.astype(self._id_dtype, copy=False)
        for n, s, e, g in self._levels_for(hist):
            nxt = self._next[n][s:e]
            i = np.minimum(nxt.searchsorted(ws), len(nxt) - 1)
            hit = nxt[i] == ws
            p[hit] += beta * self._alpha[n][s + i[hit]]
            beta *= g
        return p + beta * self._uni[ws]

    def _dist_ids(self, hist: Sequence[int]) -> np.ndarray:
        p = np.zeros(len(self._uni))
        beta = 1.0
        for n, s, e, g in self._levels_for(hist):
            p[self._next[n][s:e]] += beta * self._alpha[n][s:e]
            beta *= g
        return p + beta * self._uni

    def __contains__(self, token: object) -> bool:
        """Whether `token` is in the vocabulary (anything else is scored as <unk>)."""
        return token in self._index

    def prob(self, token: str, context: Sequence[str] = ()) -> float:
        """P(token | context), unknown tokens (in either) as <unk>: for the evaluator and tests, not per keystroke."""
        self._check()
        return self._prob_id(self._index.get(token, self._unk), self._ids(context))

    def probs(self, tokens: Sequence[str], context: Sequence[str] = (), oov: float | None = None) -> list[float]:
        """`prob` of each of `tokens` after one `context` (a token outside the vocabulary as <unk>,
        or `oov` when given): the keyboard scores a few dozen candidate words per keystroke, with
        one context lookup for all of them."""
        self._check()
        known, ids = self._token_ids(tokens)
        hist = self._ids(context)
        if oov is not None and -1 in known:   # an unknown token's value is replaced: look up any word instead
            ids = np.where(np.asarray(known) < 0, 0, ids).astype(self._id_dtype, copy=False)
        p = self._warm_probs(ids, hist)
        return _fill_oov((self._prob_ids(ids, hist) if p is None else p).tolist(), known, oov)

    def _token_ids(self, tokens: Sequence[str]) -> tuple[list[int], np.ndarray]:
        """Each token's id (-1 outside the vocabulary), and the ids to score (<unk> for those)."""
        known = [self._index.get(t, -1) for t in tokens]
        return known, np.array([self._unk if i < 0 else i for i in known], dtype=self._id_dtype)

    def distribution(self, context: Sequence[str] = ()) -> np.ndarray:
        """P(vocab[i] | context) for every id i but <s> (the last id): sums to 1."""
        self._check()
        return self._dist_ids(self._ids(context))

    @property
    def size(self) -> int:
        """Stored probabilities: one per vocabulary word and one per stored n-gram of each order
        (its parameters, for the ablation table beside the LSTM's)."""
        self._check()
        return len(self._uni) + sum(len(nxt) for nxt in self._next.values())

    def session(self) -> NgramSession:
        """State for one text being typed, starting at <s>."""
        self._check()
        return NgramSession(self)

    # ------------------------------------------------------------- suggestion
    def _prefix_range(self, prefix: str) -> tuple[int, int]:
        """Ids [lo, hi) of the suggestable words starting with `prefix`."""
        if not prefix:
            return 0, self.n_words
        words = self._sorted_words
        return bisect_left(words, prefix), bisect_left(words, prefix + _MAX_CHAR)

    def _rank_range(self, lo: int, hi: int, k: int) -> np.ndarray:
        """The k best ids of [lo, hi) by unigram rank, best first."""
        ranks = self._uni_rank[lo:hi]
        if len(ranks) > k:
            ranks = np.partition(ranks, k - 1)[:k]
        return self._uni_order[np.sort(ranks)]

    def _unigram_top(self, prefix: str, lo: int, hi: int, k: int) -> np.ndarray:
        """The k best ids of [lo, hi) = `prefix`'s range by P_1 (the precomputed list when there is one)."""
        top = self._prefix_top.get(prefix)
        if top is None or len(top) < k:
            return self._rank_range(lo, hi, k)
        return top[:k]

    def _next_top(self, hist: Sequence[int], k: int, extra: np.ndarray) -> tuple[list[int], list[float]] | None:
        """The k best next words with no prefix (the ids `_suggest_ids` ranks in full) and
        `_prob_id` of each id of `extra`, then of each of those k, in one pass over the context's
        orders (the keystroke after a space needs both); None when only ranking in full is exact.

        Ranked candidates are each order's best followers (its `_follow_table` entry, or all the
        suggestable followers of a small context) and the P_1 top list, scored with
        `_suggest_ids`'s float operations. With a table, any other follower scores at most the sum
        of the tables' bounds, each times its order's back-off weight: the k-th candidate must
        beat that. Probabilities use `_prob_id`'s operations, in its order."""
        levels = self._levels_for(hist)
        if k > _FOLLOW_TABLE_K or not levels or levels[-1][0] != 2:
            return None
        parts: list[np.ndarray] = []
        bound, beta, tabled = 0.0, 1.0, False
        for n, s, e, g in levels:
            entry = self._follow_top[n].get(s)
            if entry is None:
                seg = self._next[n][s:e]
                parts.append(seg[: int(seg.searchsorted(self._n_words_key))])
            else:
                parts.append(entry[0])
                bound += beta * entry[1]
                tabled = True
            beta *= g
        if not len(parts[-1]):
            return None  # nothing suggestable follows: `_suggest_ids` gives the P_1 list
        parts.append(self._unigram_top("", 0, self.n_words, k))
        r = sum(map(len, parts))  # ranked candidates (repeats included), then `extra`
        ids = np.concatenate([*parts, extra.astype(self._id_dtype, copy=False)])
        uni = beta * self._uni[ids]
        found_vals: list[tuple[np.ndarray, np.ndarray]] = []
        p, b = None, 1.0
        for n, s, e, g in levels:
            seg = self._next[n][s:e]
            i = seg.searchsorted(ids)
            np.minimum(i, len(seg) - 1, out=i)
            found = seg[i] == ids
            val = self._alpha[n][s:e][i]
            if b != 1.0:
                val = b * val
            p = np.where(found, val, 0.0) if p is None else np.where(found, p + val, p)
            found_vals.append((found[:r], val[:r]))
            b *= g
        p = (p + uni).tolist()
        # The lowest order's value plus beta * P_1 (beta * P_1 alone for a P_1-list word it does
        # not follow), then each higher order's value, highest first: as `_suggest_ids` adds them.
        hit, val = found_vals[-1]
        score = np.where(hit, val + uni[:r], uni[:r])
        for found, val in found_vals[:-1]:
            if (found > hit).any():
                return None  # a follower missing at the lowest order: `_suggest_ids` merges differently
            score = np.where(found, score + val, score)
        order = np.lexsort((self._uni_rank[ids[:r]], -score))[: k * len(parts)]  # a word is in each part at most once
        best: list[int] = []
        last = 0.0
        for j, i, sc in zip(order.tolist(), ids[order].tolist(), score[order].tolist()):
            if i not in best:
                best.append(i)
                p.append(p[j])
                last = sc
                if len(best) == k:
                    break
        if len(best) < k or (tabled and not last > bound * (1 + 1e-9)):
            return None
        return best, p[r:]

    def _suggest_ids(self, hist: Sequence[int], prefix: str, k: int) -> list[int]:
        """The top k ids after `hist` that complete `prefix`: never the prefix itself, which saves
        no keystroke (the space after it types it as well as a tap would)."""
        if k <= 0:
            return []
        if not prefix:
            fast = self._next_top(hist, k, np.zeros(0, self._id_dtype))
            if fast is not None:
                return fast[0]
            return self._rank_ids(hist, prefix, k)
        typed = self._index.get(prefix)
        return [i for i in self._rank_ids(hist, prefix, k + 1) if i != typed][:k]

    def _follower_parts(self, hist: Sequence[int], lo: int,
                        hi: int) -> tuple[list[np.ndarray], list[np.ndarray], float]:
        """Per seen order of the context, highest first: its followers among ids [lo, hi) and
        their back-off-weighted values; and the back-off weight of words that follow at no order."""
        id_parts: list[np.ndarray] = []
        val_parts: list[np.ndarray] = []
        beta = 1.0
        lo_key, hi_key = self._id_dtype.type(lo), self._id_dtype.type(hi)  # no conversion of the segments
        for n, s, e, g in self._levels_for(hist):
            seg = self._next[n][s:e]
            a = int(seg.searchsorted(lo_key)) if lo else 0
            b = int(seg.searchsorted(hi_key))
            if b > a:
                id_parts.append(seg[a:b])
                val_parts.append(beta * self._alpha[n][s + a : s + b])
            beta *= g
        return id_parts, val_parts, beta

    def _followers(self, hist: Sequence[int], lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, float] | None:
        """The followers of the context among ids [lo, hi), each scored as ranking sums it (the
        lowest seen order's value plus back-off times P_1, then each higher order's), and the
        back-off weight of the words that follow at no order; None when none follows."""
        return self._merged(*self._follower_parts(hist, lo, hi))

    def _merged(self, id_parts: list[np.ndarray], val_parts: list[np.ndarray],
                beta: float) -> tuple[np.ndarray, np.ndarray, float] | None:
        """`_followers` from `_follower_parts`' result."""
        if not id_parts:
            return None
        # Followers at order n are followers at order n-1 too (an n-gram's suffix has a left
        # neighbour), so the lowest seen order's ids hold every candidate but the P_1 top list.
        ids = id_parts[-1]
        score = val_parts[-1] + beta * self._uni[ids]
        for hi_ids, hi_vals in zip(id_parts[:-1], val_parts[:-1]):
            pos = ids.searchsorted(hi_ids)
            if pos[-1] >= len(ids) or not np.array_equal(ids[pos], hi_ids):  # cannot happen for fitted counts
                ids, inv = np.unique(np.concatenate(id_parts), return_inverse=True)
                score = np.bincount(inv, weights=np.concatenate(val_parts)) + beta * self._uni[ids]
                break
            score[pos] += hi_vals
        return ids, score, beta

    def warm(self, context: Sequence[str]) -> None:
        """Score every suggestable follower of `context` now, for ranking and as `_prob_ids` would,
        so the keystrokes of the next word cut and look up instead of merging the orders again
        (the keyboard calls this between keystrokes, after a space). One context is kept; the
        same values either way."""
        self._check()
        hist = tuple(self._ids(context))
        if self._warm is not None and self._warm[0] == hist:
            return
        id_parts, val_parts, beta = self._follower_parts(hist, 0, self.n_words)
        found = self._merged(id_parts, val_parts, beta)
        if found is not None:
            ids, score, _ = found
            prob = np.zeros(len(ids))
            for part, vals in zip(id_parts, val_parts):   # `_prob_ids`'s additions, in its order
                prob[ids.searchsorted(part)] += vals
            found = (ids, score, beta, prob + beta * self._uni[ids])
        self._warm = (hist, found)

    def forget_warm(self) -> None:
        """Drop the warmed context (`warm`)."""
        self._warm = None

    def _warm_probs(self, ws: np.ndarray, hist: Sequence[int]) -> np.ndarray | None:
        """`_prob_ids(ws, hist)`, the suggestable words' looked up in the warmed context's
        followers (None when it is another context or nothing suggestable follows it)."""
        warm = self._warm
        if warm is None or warm[0] != tuple(hist) or warm[1] is None:
            return None
        ids, _, beta, prob = warm[1]
        pos = np.minimum(ids.searchsorted(ws), len(ids) - 1)
        p = np.where(ids[pos] == ws, prob[pos], beta * self._uni[ws])
        other = ws >= self.n_words   # punctuation, </s>, <unk>: not among the warmed followers
        if other.any():
            p[other] = self._prob_ids(ws[other], hist)
        return p

    def _rank_ids(self, hist: Sequence[int], prefix: str, k: int) -> list[int]:
        """The top k ids starting with `prefix`, ranked from every follower of the context."""
        lo, hi = self._prefix_range(prefix)
        if lo >= hi:
            return []
        warm = self._warm
        if warm is not None and warm[0] == tuple(hist):
            found = warm[1]
            if found is not None:   # the warmed followers' [lo, hi): elementwise the same scores
                ids, score, beta, _ = found
                key = self._id_dtype.type   # a key of the array's dtype: searchsorted does not convert the array
                a, b = ids.searchsorted(key(lo)), ids.searchsorted(key(hi))
                found = (ids[a:b], score[a:b], beta) if b > a else None
        else:
            found = self._followers(hist, lo, hi)
        top = self._unigram_top(prefix, lo, hi, k)
        if found is None:
            return top.tolist()  # scores are beta * P_1: unigram order
        ids, score, beta = found
        # Any other word scores beta * P_1(w), below each of the P_1 top list, so only the
        # top list's words missing from `ids` can still make the top k.
        pos = np.minimum(ids.searchsorted(top), len(ids) - 1)
        extra = top[ids[pos] != top]
        if len(extra):
            ids = np.concatenate([ids, extra])
            score = np.concatenate([score, beta * self._uni[extra]])
        if len(ids) > k:
            keep = score >= _kth_largest(score, k)  # ties stay in
            ids, score = ids[keep], score[keep]
        best = np.lexsort((self._uni_rank[ids], -score))[:k]
        return ids[best].tolist()

    def suggest(self, context: Sequence[str] = (), prefix: str = "", k: int = 3) -> list[str]:
        """Top-k distinct words after `context` (tokens, e.g. ["<s>", "I"]) that complete `prefix`
        (start with it and are longer)."""
        self._check()
        return [self.vocab[i] for i in self._suggest_ids(self._ids(context), prefix, k)]

    def suggest_scored(self, context: Sequence[str], k: int, tokens: Sequence[str],
                       oov: float | None = None) -> tuple[list[str], list[float]]:
        """`suggest(context, "", k)`, and `prob` of each of `tokens` then of each suggested word
        (a token outside the vocabulary as <unk>, or `oov` when given), in one pass over the
        context: the keyboard, after a space, asks for both."""
        self._check()
        hist = self._ids(context)
        known, extra = self._token_ids(tokens)
        fast = self._next_top(hist, k, extra) if k > 0 else None
        if fast is None:
            top = self._rank_ids(hist, "", k) if k > 0 else []
            probs = self._prob_ids(np.concatenate([extra, np.array(top, dtype=self._id_dtype)]), hist).tolist()
        else:
            top, probs = fast
        return [self.vocab[i] for i in top], _fill_oov(probs, known, oov)

    # ------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike[str], *, mode: int | None = None) -> None:
        """Write the model as a compressed numpy .npz (no pickle): loading it needs no refit. Not
        safetensors, the format of every version's weights: the shipped base n-gram's arrays
        hold 114 MB, which safetensors would store as they are and the .npz compresses to 24 MB
        for the app's one download; it is never exchanged with the coordinator. Atomically
        (`protocol.artifact.atomic_write`: a failed write leaves the old file or none), private
        unless `mode` says otherwise: a model counted from users' text holds their word sequences.
        The compressed archive is built in memory first (24 MB for the shipped base n-gram)."""
        self._check()
        arrays: dict[str, np.ndarray] = {
            "meta": np.array([self.order, self.min_count, self.n_words], dtype=np.int64),
            "fixed_discount": np.array([np.nan if self.discount is None else self.discount]),
            "vocab": np.array(self.vocab, dtype=str),
            "freq": self._freq,
            "uni": self._uni,
            "discounts": np.array([self.discounts[n] for n in range(1, self.order + 1)]),
        }
        for n, parts in self._levels.items():
            for name, arr in zip(("ctx", "bounds", "gamma", "next", "alpha"), parts):
                arrays[f"{name}{n}"] = arr
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        atomic_write(path, buf.getvalue(), mode=mode)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KneserNeyLM:
        """Read a model written by `save`; ValueError naming the file when it is not one (cut
        short, damaged, another kind of .npz: numpy's own messages would suggest unpickling it)."""
        try:
            return cls._load(path)
        except (ValueError, KeyError, IndexError, EOFError, TypeError, AttributeError, zipfile.BadZipFile) as e:
            # TypeError / AttributeError: a .npy file (one array, not an archive) has no `with` nor keys
            raise ValueError(f"{path} is not an n-gram model written by tools.proxy_ngram "
                             f"(damaged or cut short: {type(e).__name__})") from e

    @classmethod
    def _load(cls, path: str | os.PathLike[str]) -> KneserNeyLM:
        with np.load(path, allow_pickle=False) as z:
            order, min_count, n_words = (int(x) for x in z["meta"])
            fixed = float(z["fixed_discount"][0])
            lm = cls(order, None if math.isnan(fixed) else fixed, min_count)
            discounts = {n + 1: (float(d[0]), float(d[1]), float(d[2])) for n, d in enumerate(z["discounts"])}
            levels = {
                n: tuple(z[f"{name}{n}"] for name in ("ctx", "bounds", "gamma", "next", "alpha"))
                for n in range(2, order + 1)
            }
            lm._install(z["vocab"].tolist(), n_words, z["freq"], z["uni"], discounts, levels)
        return lm


class NgramSession:
    """The context of one text being typed: fed completed chunks, asked for next words."""

    def __init__(self, lm: KneserNeyLM) -> None:
        self._lm = lm
        self._keep = max(lm.order - 1, 1)
        self._hist: list[int] = [lm._bos]
        self._chunks: list[str] = []  # the completed chunks `update` has fed

    def _push(self, chunk: str) -> None:
        """Append a completed chunk's tokens without scoring them (`update`'s path)."""
        lm = self._lm
        self._hist.extend(lm._index.get(tok, lm._unk) for tok in words_of_chunk(chunk))
        self._fed(chunk)

    def _fed(self, chunk: str) -> None:
        """After a chunk's tokens joined the history (`feed` or `_push`): keep only the order-1 the
        next prediction needs, and remember the chunk for `update`."""
        if len(self._hist) > self._keep:
            del self._hist[: -self._keep]
        self._chunks.append(chunk)

    @property
    def context(self) -> list[str]:
        """The tokens the next prediction is conditioned on (at most order-1 of them)."""
        return [self._lm.vocab[i] for i in self._hist]

    def feed(self, chunk: str) -> float:
        """Append a completed chunk's tokens to the context; return their summed natural-log probability."""
        lm = self._lm
        lp = 0.0
        for tok in words_of_chunk(chunk):
            w = lm._index.get(tok, lm._unk)
            lp += math.log(lm._prob_id(w, self._hist))
            self._hist.append(w)
        self._fed(chunk)
        return lp

    def suggest(self, prefix: str = "", k: int = 3) -> list[str]:
        """Top-k distinct words given the context so far that complete `prefix` ("" = next word)."""
        return [self._lm.vocab[i] for i in self._lm._suggest_ids(self._hist, prefix, k)]

    def update(self, text: str, k: int = 3) -> list[str]:
        """The keyboard's entry point, as `edge_runtime.session.Session.update`: the whole text
        before the cursor in, suggestions out; only chunks not fed before are fed (an edit
        before the last chunk starts the text over), so the n-gram's keystroke cost is measured
        on the same path as the LSTM's (`tools.ablation`)."""
        parts, partial = typed_chunks(nfc(text))
        if parts[:len(self._chunks)] != self._chunks:
            self.reset()
        for chunk in parts[len(self._chunks):]:
            self._push(chunk)
        split = word_being_typed(partial)
        if split is None:   # "lord,": the next word comes after a space
            return []
        lead, prefix = split
        prefix = unformatted(prefix)   # as the keyboard's session reads it
        if not lead:
            return self.suggest(prefix, k)
        lm = self._lm   # '"hel': "hel" completed after the quote
        hist = self._hist + lm._ids(words_of_chunk(lead))
        return [lm.vocab[i] for i in lm._suggest_ids(hist, prefix, k)]

    def reset(self) -> None:
        """Start a new text: the context goes back to <s>."""
        self._hist = [self._lm._bos]
        self._chunks = []


def _fill_oov(probs: list[float], known: list[int], oov: float | None) -> list[float]:
    """`probs` with the entries of tokens outside the vocabulary (id -1 in `known`) set to `oov`,
    when given (else they keep <unk>'s probability)."""
    if oov is not None:
        for j, i in enumerate(known):
            if i < 0:
                probs[j] = oov
    return probs
