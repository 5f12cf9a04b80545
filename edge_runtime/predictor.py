"""Suggestions for the keyboard's strip: three next-word models mixed, weights learned per user.

    P(w | context) = a * P_lstm(w | context) + b * P_ngram(w | last two tokens)
                     + c * P_personal(w | last two tokens)

- P_lstm: the global word LSTM (the model version, trained federatedly). Its softmax covers
  the most frequent words; the rarer words of the word list share its <unk> by proxy
  frequency (`probs_of`). One `infer` call per completed token.
- P_ngram: the base Kneser-Ney trigram fitted on proxy text (`edge_runtime.base_ngram`),
  shipped with the keyboard, never trained on anyone's text. An n-gram and an LSTM make
  different mistakes; their mixture beats either.
- P_personal: the user's own words (`PersonalModel`), learned from the device's text cache
  only, never uploaded.

A typed prefix is completed from that mixture and from the words of the text being typed
(`TextWords`, a cache model: a name or a term typed once in an e-mail is likely again in it),
which get `TEXT_WEIGHT` of a completion's score by how often this text holds them; the next
word, from the mixture and from the words that followed the last chunk earlier in the text
(`FOLLOW_WEIGHT`).

(a, b, c) are learned on the device from what the user commits: online EM on each component's
posterior responsibility for every committed token, from a Dirichlet prior. A user whose text the
global LSTM predicts well moves weight to it; one who repeats themselves, to their own words.
The same evidence is kept apart for the two kinds of history (`PersonalModel.seen`): after a
word the user typed before, their own words know what follows it and earn more weight than
after one they never typed (chat rooms: +0.8 top-3 on held-out users, docs/quality.md). The
weights belong to the user (`PersonalModel.mix`, `mix_by_seen`), so they survive model updates.

Completing a typed prefix is a cut of these distributions: words are kept sorted, a prefix is
an index range found by bisection. Every suggestion is a word-list word or a word the user
typed before: never one assembled from pieces; and never a slur or a swear word
(`protocol.text.is_blocked`) that this user has not typed. A text being typed is a `Session`
(`edge_runtime.session`): it keeps the model's state per completed chunk, so a keystroke feeds
only what is new, and readies what the next keystroke will need between keystrokes.

Each component's candidates are found without ranking everything (a sampled threshold over
the softmax, the base n-gram's precomputed best followers) and scored together, in the same
float operations as one word at a time: the strip is what ranking in full gives.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from edge_runtime.ngram import KneserNeyLM
from edge_runtime.personal import BOS, HISTORY_PRIOR, PersonalModel
from edge_runtime.session import Session, TextWords
from protocol.arch import SIG_INFER, SIG_STEP
from protocol.interpreter import Model
from protocol.text import (
    BOS_ID,
    UNK_ID,
    is_blocked,
    plain_quotes,
    quote_led,
    suggestable,
    tokens,
    vocab_of,
)

_MAX_CHAR = chr(0x10FFFF)
_T = TypeVar("_T")
# Share of the LSTM's <unk> probability given to the word list's rarer words (the rest stands for
# words outside the list); among them it goes by proxy frequency. 0 turns the tail off.
TAIL_MASS = 0.8
# Prefix ranges of at most this many words are cut by `np.argpartition` over all of them; in larger
# ones (a first letter, the next word after a space) the top few are found first (`_top_set`).
_SMALL_RANGE = 256
# Tokens the user's words count per step of `Predictor.learning`: the first part after the model
# steps runs with cold caches (measured alone in the bench's flow: 64 tokens up to ~2 ms, 16 ~1 ms).
LEARN_PART = 16
# The user's own words weigh in by how much of them there is: their mixture weight is scaled by
# n / (n + PERSONAL_EVIDENCE) for n tokens typed. Unscaled, one committed "Hello." would make
# the personal unigram 50% "Hello" after any history it never saw, and "Hello" top every strip. Validation
# users, version 0 (their first halves typed first, so n is large): Shakespeare 19.04% / 44.18%
# against 19.06% / 44.20% without, e-mail 24.68% / 46.35% against 24.62% / 46.32%.
PERSONAL_EVIDENCE = 50.0

# The share of a completion's score that goes to the words of the text being typed, by how often
# the text holds each (Kuhn and De Mori 1990's cache). On held-out e-mail senders it completes
# names, addresses and terms the word list lacks (docs/quality.md, "This text's words"); after a
# space it is left out, where it cost next-word top-3.
TEXT_WEIGHT = 0.05
# The same for the next word after a space, from the words that followed the last chunk earlier in
# the text (a bigram cache): "Red" followed by "Hat" once makes "Hat" likely after the next "Red".
FOLLOW_WEIGHT = 0.1
# A completion's score is divided by (letters it adds) ** this: of two words about as likely, the
# shorter is offered first. A short word left out of the strip is typed in full; a long one is
# offered again as its next letters narrow the range. Validation users, version 0, the whole
# keyboard: KSR +0.3 (Shakespeare), +0.1 (e-mail), +0.4 (chat rooms) at 0.5, less at 0.25 and 1,
# a loss at 2; top-1 and top-3 (no prefix) unchanged. Probability ranking (0) is best for the
# Kneser-Ney trigram alone: the mixture of parts ranks long completions too high
# (docs/quality.md, "Shorter completions first").
SHORTER_FIRST = 0.5
# A prefix typed with a capital ("Hin", "USB") also completes the word list's words that have it in
# lower case ("hindi", "usb"; the list's 100,000 present-day words are all lower case), shown in
# the typed case ("Hindi", "USB") and scored as that lower-case word times this share: a capital
# mid-sentence mostly means a name, which the lower-case word's probability does not know. Version
# 0, validation users, KSR (top-3 after a space does not change): e-mail 46.35% -> 46.91%,
# Shakespeare 44.18% -> 44.62%, chat rooms 38.54% -> 38.72%, film 50.30% -> 50.55% at 0.03; 1
# (no discount) loses on film, and 0.01-0.1 read within 0.1 of 0.03 (docs/quality.md,
# "A capital's completions in lower case").
FOLDED_SHARE = 0.03




class _Node:
    """The LSTM's state after some tokens (h, c) and its next-token log-probabilities.

    A session keeps one per completed chunk so that a backspace or a cursor move rewinds instead
    of re-running the text. The log-probabilities (40 KB of float32) and `head` (80 KB) are only
    needed where suggestions are asked, so a node the session has moved past drops them (`cool`)
    and recomputes them, the same values, from the state before its last token (`pre`) if it
    becomes the tip again: kept, a 16,000-character text held 400 MB of them."""

    __slots__ = ("_lp", "h", "c", "head", "pre")

    def __init__(self, logprobs: np.ndarray | None, h: np.ndarray, c: np.ndarray,
                 pre: tuple[Callable[..., tuple[np.ndarray, ...]], int, np.ndarray, np.ndarray] | None = None
                 ) -> None:
        self._lp = logprobs
        self.h, self.c = h, c
        self.head: np.ndarray | None = None  # exp(logprobs): P of the softmax's words, computed on first suggestion
        # (the model's step, the last token, h and c before it): to recompute. The step, not a method
        # of the predictor: the predictor holds its root node, and a node holding the predictor would
        # make a cycle that only Python's rare full collection frees, with the predictor's interpreter
        # (58 MB): a device process would grow to 2.2 GB over 200 rounds of canary evaluations.
        self.pre = pre

    @property
    def logprobs(self) -> np.ndarray:
        """(V,) next-token log-probabilities after this node."""
        if self._lp is None:
            step, tok, h, c = self.pre
            self._lp = step(np.array([tok], np.int32), h, c)[0][0]
        return self._lp

    def cool(self) -> None:
        """Drop what can be recomputed (nothing, for a node made without `pre`; a session never
        cools its first node, the predictor's root, which every session shares)."""
        if self.pre is not None:
            self._lp = self.head = None


@dataclass
class Predictor:
    """Suggestion engine over one model version and one user's personal model."""

    model: Model
    sp: object
    personal: PersonalModel = field(default_factory=PersonalModel)
    base: KneserNeyLM | None = None  # the base n-gram (edge_runtime.base_ngram); None: LSTM + personal only
    candidates: int = 8  # words per prefix each component proposes for the mixture
    tail_mass: float = TAIL_MASS
    # Slurs, strong profanity and explicit slang (`protocol.text.is_blocked`) are not offered
    # unless this user typed the word before, as keyboards do by default.
    block_offensive: bool = True
    # The share of a completion's score for the words of the text being typed, and of a next
    # word's for those that followed the last chunk in it; 0 turns them off (the references that
    # score the LSTM alone).
    text_weight: float = TEXT_WEIGHT
    follow_weight: float = FOLLOW_WEIGHT

    def __post_init__(self) -> None:
        if self.model.manifest is None:
            raise ValueError("Predictor needs a Model loaded from a version directory")
        arch = self.model.manifest.architecture()
        self.hidden = arch.model.hidden_dim
        self.vocab = vocab_of(self.sp, arch.model.vocab_size)
        lim = self.vocab.limit
        tail = np.exp(self.vocab.log_freq[lim:].astype(np.float64))
        # A word list no longer than the softmax has no tail: one unused entry keeps the
        # vectorised lookups below (np.where evaluates both branches) in bounds.
        self.tail_share = (self.tail_mass * tail / tail.sum()) if len(tail) else np.zeros(1)
        self.sorted_words, self.sorted_ids = self.vocab.offered if self.block_offensive else self.vocab.suggestable
        # Next-word candidates come from the softmax's own words: a tail word gets a share of
        # <unk> far below the softmax's top words, and scanning 150k words after every space costs.
        self.head_ids = self.sorted_ids[self.sorted_ids < lim]
        # The softmax's ids that are suggested (not specials or punctuation), for its top words.
        self._is_head = np.zeros(arch.model.vocab_size, bool)
        self._is_head[self.head_ids] = True
        self._n_not_head = int(arch.model.vocab_size - len(self.head_ids))
        # Per sorted word: where its P_lstm comes from (its own softmax id, or <unk> times its
        # share), so a prefix range's probabilities are two slices, a gather and a multiply in
        # place (`span_probs`: head[_span_head] * _span_mult, 1 for softmax words, so bit for bit
        # the per-word values in half the passes over 150k words).
        tail_ids = self.sorted_ids >= lim
        self._span_head = np.where(tail_ids, UNK_ID, self.sorted_ids)
        self._span_mult = np.where(tail_ids, self.tail_share[np.where(tail_ids, self.sorted_ids - lim, 0)], 1.0)
        # `infer` (constant weights, patched in at load) when the version has it, else `step`.
        fast = bool(arch.infer_patches) and self.model.has_signature(SIG_INFER)
        self._step = self.model.stepper(SIG_INFER if fast else SIG_STEP, ("tokens", "h", "c"), ("logprobs", "h", "c"))
        self._token = np.zeros(1, np.int32)  # the step's token input, filled in place
        # The sorted words' first characters, each once, and where its words start (`likely_firsts`).
        self._firsts = sorted({w[0] for w in self.sorted_words})
        self._first_starts = np.array([bisect.bisect_left(self.sorted_words, c) for c in self._firsts], np.intp)
        zero = np.zeros((1, self.hidden), np.float32)
        self._warm: tuple[_Node, np.ndarray] | None = None  # `warm`'s node and its P_lstm per sorted word
        self.root = self.advance_ids(_Node(np.zeros(0), zero, zero), [BOS_ID])

    # ------------------------------------------------------------------ model
    def advance_ids(self, node: _Node, ids: list[int]) -> _Node:
        token = self._token
        for t in ids:
            token[0] = t
            logprobs, h, c = self._step(token, node.h, node.c)
            node = _Node(logprobs[0], h, c, (self._step, t, node.h, node.c))
        return node

    def probs_of(self, node: _Node, ids: np.ndarray) -> np.ndarray:
        """P_lstm of word-list ids: the softmax for its own words, its <unk> shared by frequency
        among the rarer list words (computed for the ids asked only: the keystroke path never
        builds the whole word-list vector)."""
        if node.head is None:
            node.head = np.exp(node.logprobs.astype(np.float64))
        lim = self.vocab.limit
        if len(ids) and ids.max() < lim:
            return node.head[ids]
        tail = ids >= lim
        return np.where(tail, node.head[UNK_ID] * self.tail_share[np.where(tail, ids - lim, 0)],
                        node.head[np.where(tail, 0, ids)])

    def span_probs(self, node: _Node, lo: int, hi: int) -> np.ndarray:
        """`probs_of(node, sorted_ids[lo:hi])`, the same values, from arrays laid out per sorted word
        (cut from the whole list's when `warm` computed it for this node)."""
        warm = self._warm
        if warm is not None and warm[0] is node:
            return warm[1][lo:hi]
        if node.head is None:
            node.head = np.exp(node.logprobs.astype(np.float64))
        out = node.head.take(self._span_head[lo:hi])
        out *= self._span_mult[lo:hi]
        return out

    def warm(self, node: _Node, hist: tuple[str, ...]) -> None:
        """Between keystrokes, after a space: compute what every prefix of the next word cuts from
        (P_lstm over the whole word list, the base n-gram's scored followers, the user's followers
        of this history by word), so the first letters, whose ranges are the largest, only cut.
        One node is kept; the same strips."""
        self.warm_lstm(node)
        if self.base is not None:
            self.base.warm(hist)
        self.personal.warm(hist)

    def warm_lstm(self, node: _Node) -> None:
        """`warm`'s largest part, P_lstm over the whole word list, which `Session.prefetch` runs
        in a call of its own so that no one call holds the keyboard for all of `warm`."""
        if self._warm is None or self._warm[0] is not node:
            self._warm = (node, self.span_probs(node, 0, len(self.sorted_ids)))

    def word_probs(self, node: _Node) -> np.ndarray:
        """P_lstm over the whole word list (tests and analysis; `suggest` asks `probs_of`)."""
        return self.probs_of(node, np.arange(len(self.vocab)))

    def lstm_prob(self, node: _Node, tok: str) -> float:
        i = self.vocab.index.get(tok)
        if i is None:
            return math.exp(float(node.logprobs[UNK_ID])) * (1 - self.tail_mass)
        if i < self.vocab.limit:
            return math.exp(float(node.logprobs[i]))
        return math.exp(float(node.logprobs[UNK_ID])) * float(self.tail_share[i - self.vocab.limit])

    def weights(self, mix: list[float] | None = None, hist: tuple[str, ...] | None = None,
                by_seen: list[list[float]] | None = None) -> tuple[float, float, float]:
        """Mixture weights (lstm, ngram, personal) over the parts present: the user's overall
        evidence (`mix`, else the personal model's); with `hist`, those weights as a prior of
        `HISTORY_PRIOR` pseudo-tokens plus the evidence of that kind of history (`by_seen`, else
        the personal model's; `PersonalModel.seen`)."""
        personal = self.personal
        mix = personal.mix if mix is None else mix
        n = len(personal)
        on = (1.0, 1.0 if self.base is not None else 0.0, n / (n + PERSONAL_EVIDENCE) if n else 0.0)
        a, b, c = (m * o for m, o in zip(mix, on))
        t = a + b + c
        if hist is None:
            return a / t, b / t, c / t
        ev = (personal.mix_by_seen if by_seen is None else by_seen)[personal.seen(hist)]
        a, b, c = (HISTORY_PRIOR * w / t + e * o for w, e, o in zip((a, b, c), ev, on))
        t = a + b + c
        return a / t, b / t, c / t

    def ngram_prob(self, tok: str, hist: tuple[str, ...]) -> float:
        """P_ngram(tok | the last two tokens); 0 for a word outside the n-gram's vocabulary."""
        base = self.base
        return base.prob(tok, hist) if base is not None and tok in base else 0.0

    def component_probs(self, node: _Node, tok: str, hist: tuple[str, ...]) -> tuple[float, float, float]:
        """(lstm, ngram, personal) probabilities of `tok` after `node` / `hist`."""
        return self.lstm_prob(node, tok), self.ngram_prob(tok, hist), self.personal.prob(tok, hist)

    def mixture(self, probs: tuple[float, float, float], hist: tuple[str, ...] | None = None) -> float:
        return sum(w * p for w, p in zip(self.weights(hist=hist), probs))

    def observe(self, probs: tuple[float, float, float], mix: list[float] | None = None,
                hist: tuple[str, ...] | None = None, by_seen: list[list[float]] | None = None) -> None:
        """One online EM step on the weights from a token the user typed (on `mix` and `by_seen`,
        else on the personal model's evidence): the overall evidence takes each part's posterior
        responsibility under the overall weights; with `hist`, that kind of history's evidence
        takes it under the weights the strip used there."""
        personal = self.personal
        mix = personal.mix if mix is None else mix
        by_seen = personal.mix_by_seen if by_seen is None else by_seen
        if hist is not None:
            _responsibilities(self.weights(mix, hist, by_seen), probs, by_seen[personal.seen(hist)])
        _responsibilities(self.weights(mix), probs, mix)

    def learn(self, text: str) -> None:
        """The user committed `text` (it stays on the device): the mixture weights learn how well
        each part predicted it, token by token, then the personal model learns its words.

        Learning happens on commit, not while typing, so suggestions depend only on committed
        text (a backspace or a re-typed word is not counted twice)."""
        for _ in self.learning(text):
            pass

    def learning(self, text: str) -> Iterator[int]:
        """`learn`, one model step at a time: it yields after each token's step, so the keyboard
        can answer a keystroke between two steps instead of after the whole text (a long e-mail
        is hundreds of steps). The mixture's evidence is learned on a copy, step by step (the
        same arithmetic: the weights depend on the evidence and on whether the user has words,
        which does not change until the end); then the user's words count the text,
        `LEARN_PART` tokens a step, and the copy takes over with the last part. So nothing the
        strip reads changes before the counting, and for a text of up to `LEARN_PART` tokens
        nothing changes before the last step. Each yield says how many of the text's tokens the
        user's words have counted so far (0 during the model steps).

        While the user has no words yet (the first text) the mixture learns nothing: with no
        personal part its weight is 0 and every token would count against it, so one long first
        text (a newsletter pasted whole) kept the user's own words near weight 0 for good. Measured
        on validation users: e-mail top-3 23.3% -> 24.6%, chat rooms and Shakespeare +0.1."""
        toks = tokens(text)
        personal = self.personal
        node, hist = self.root, (BOS, BOS)
        mix, by_seen = list(personal.mix), [list(e) for e in personal.mix_by_seen]
        weigh = len(personal) > 0   # see below
        for tok in toks:
            if weigh:
                self.observe(self.component_probs(node, tok, hist), mix, hist, by_seen)
                node = self.advance_ids(node, self.vocab.ids([tok]))
                hist = (hist[-1], tok)
            yield 0
        after, last = (BOS, BOS), max(0, len(toks) - 1) // LEARN_PART * LEARN_PART
        for i in range(0, last, LEARN_PART):   # the parts before the last
            after = personal.add(toks[i:i + LEARN_PART], after)
            yield i + LEARN_PART
        personal.add(toks[last:], after)
        personal.mix, personal.mix_by_seen = mix, by_seen

    def session(self) -> Session:
        return Session(self)

    def strip_key(self) -> tuple:
        """What the next-word strip depends on besides the context: the user's words and the
        mixture's evidence (both change only when the user commits text). The model itself, not
        its id: a wiped user's model must not match a new one at the same address."""
        personal = self.personal
        return (personal, personal.total, tuple(personal.mix), tuple(map(tuple, personal.mix_by_seen)),
                personal.removed)

    def forget_warm(self) -> None:
        """Drop what `warm` computed (a benchmark times the keystroke path without it)."""
        self._warm = None
        if self.base is not None:
            self.base.forget_warm()

    # ------------------------------------------------------------- suggestion
    def prefix_range(self, prefix: str) -> tuple[int, int]:
        if not prefix:
            return 0, len(self.sorted_words)
        return (bisect.bisect_left(self.sorted_words, prefix),
                bisect.bisect_left(self.sorted_words, prefix + _MAX_CHAR))

    def lstm_top(self, node: _Node, m: int, span: tuple[int, int] | None = None) -> np.ndarray:
        """The ids of the (at most) m words that P_lstm ranks highest among the sorted words
        [lo, hi) = `span` (the softmax's suggestable words when None): the set `np.argpartition`
        of their probabilities picks.

        In a large range the top m is found from a sample (`_top_set`); when the m-th and
        (m+1)-th are not tied, it is the only possible answer. On a tie (or in a small range)
        argpartition picks among all of them, as it always did. With no prefix the float32 log-probabilities
        are ranked directly: exp is increasing, and the m-th best of a distribution is below 1/m,
        where neighbouring float32 values are farther apart than float64 exp's rounding."""
        if span is None:
            if len(self.head_ids) > m:
                top = _top_set(node.logprobs, m, self._is_head, self._n_not_head)
                if top is not None:
                    return top
            ids = self.head_ids
            if len(ids) <= m:
                return ids
            p = self.probs_of(node, ids)
        else:
            lo, hi = span
            ids = self.sorted_ids[lo:hi]
            if len(ids) <= m:
                return ids
            p = self.span_probs(node, lo, hi)
            if len(ids) > _SMALL_RANGE:
                top = _top_set(p, m)
                if top is not None:
                    return ids[top]
        return ids[np.argpartition(-p, m - 1)[:m]]

    def scores(self, node: _Node, hist: tuple[str, ...], words: list[str], weights: tuple[float, float, float],
               ngram: list[float] | None = None) -> list[float]:
        """The mixture's score of each word: wl * P_lstm (0 for a word outside the word list) +
        wn * P_ngram (0 outside the n-gram's vocabulary; `ngram` when already computed) +
        wp * P_personal, a component left out when its weight is 0. The same float operations as
        one word at a time, with each history looked up once for all the words."""
        wl, wn, wp = weights
        get, lim, exp = self.vocab.index.get, self.vocab.limit, math.exp
        ids = [get(w) for w in words]
        # wl * lstm_prob(node, w), with the log-probabilities read in one gather
        lps = node.logprobs[[UNK_ID if i is None or i >= lim else i for i in ids]].tolist()
        sc = [0.0 if i is None else wl * exp(v) if i < lim else wl * (exp(v) * float(self.tail_share[i - lim]))
              for i, v in zip(ids, lps)]
        if wn:
            if ngram is None:
                ngram = self.base.probs(words, hist, oov=0.0)
            sc = [a + wn * b for a, b in zip(sc, ngram)]
        if wp:
            sc = [a + wp * b for a, b in zip(sc, self.personal.probs(words, hist))]
        return sc

    def suggest(self, node: _Node, hist: tuple[str, ...], prefix: str = "", k: int = 3,
                text: TextWords | None = None, follows: dict[str, int] | None = None) -> list[str]:
        """Top-k distinct words starting with `prefix` after the context (`node`, `hist`): each
        component proposes its best m, the mixture ranks them (ties by word; a completion's score
        divided by its added letters ** SHORTER_FIRST); a prefix is also
        completed from the words of the `text` being typed (`with_text`), and the next word (no
        prefix) from the words that `follows` the last chunk in it (`TextWords.after`)."""
        if k <= 0:
            return []
        plain = plain_quotes(prefix)
        if plain != prefix:   # "don\u2019", "\u2018Wh": ranked as typed plainly, shown as the user typed
            return [prefix + w[len(prefix):] for w in self.suggest(node, hist, plain, k, text, follows)]
        weights = self.weights(hist=hist)
        if prefix:
            cands = self._candidates(node, hist, prefix, k, weights) | set(self.text_words(text, prefix))
            scored = self._scored(node, hist, cands, self._folded(node, hist, prefix, k, weights), weights)
            words, scores = list(scored), list(scored.values())
            if quote_led(prefix):   # (no folded words: "'Hin" folds inside `_quoted`)
                words, scores = self._quoted(node, hist, prefix, k, weights, text, words, scores)
            else:
                scores = self.with_text(scores, words, text)
            return _best(words, _shorter_first(scores, words, len(prefix)), k)
        _, wn, wp = weights
        m = self._per_part(weights, k)
        cands: set[str] = set()
        vw = self.vocab.words
        cands.update(vw[i] for i in self.lstm_top(node, m).tolist())
        if wp:
            cands.update(self.personal.candidates(hist, prefix, m))
        if self.personal.removed:   # the n-gram's and the text's words below pass `offered`
            cands -= self.personal.removed
        follows = follows if follows and self.follow_weight else None
        if follows:
            cands.update(w for w in follows if self.offered(w))
        ngram = None
        if wn:  # the n-gram's suggestions and its probabilities in one pass
            words = list(cands)   # offered already: the LSTM's from `offered`, the user's typed
            top, probs = self._offered_best(m, lambda n: self.base.suggest_scored(hist, n, words, oov=0.0),
                                            self.base_offered)
            known = dict(zip(words, probs))
            top_probs = [(w, p) for w, p in zip(top, probs[len(words):]) if self.base_offered(w)][:m]
            known.update((w, p) for w, p in top_probs if w not in known)
            words, ngram = list(known), list(known.values())
        else:
            words = list(cands)
        if not words:
            return []
        scores = self.scores(node, hist, words, weights, ngram)
        if follows:
            fw, n = self.follow_weight, sum(follows.values())
            scores = [(1.0 - fw) * sc + fw * follows.get(w, 0) / n for sc, w in zip(scores, words)]
        return _best(words, scores, k)

    def _quoted(self, node: _Node, hist: tuple[str, ...], prefix: str, k: int,
                weights: tuple[float, float, float], text: TextWords | None,
                words: list[str], scores: list[float]) -> tuple[list[str], list[float]]:
        """A prefix led by a single quote ("'hel") also completes the word inside the quote: the
        tokenizer keeps an apostrophe with its word (``'tis``, ``know't``), so the word list's own
        quote-led words alone left "'hel" a handful of rare ones. Each completion w of "hel" is
        offered as "'" + w with w's score in this context; a word in both keeps the higher score.
        `scores` are `words`' mixture scores; the words of the text being typed weigh in on both
        lists alike, so the two compare."""
        quote, inner = prefix[0], prefix[1:]
        scored = self._scored(node, hist, self._candidates(node, hist, inner, k, weights) | set(
            self.text_words(text, inner)), self._folded(node, hist, inner, k, weights), weights)
        iw = list(scored)
        both = text is not None and any(w in text.counts for w in (*words, *iw))   # one in either: both
        scores = self.with_text(scores, words, text, always=both)
        inner_scores = self.with_text(list(scored.values()), iw, text, always=both)
        best = dict(zip(words, scores))
        for w, sc in zip(iw, inner_scores):
            qw = quote + w
            if sc > best.get(qw, -1.0) and qw not in self.personal.removed:
                best[qw] = sc
        return list(best), list(best.values())

    def text_words(self, text: TextWords | None, prefix: str) -> list[str]:
        """The words of the text being typed that complete `prefix` and may be offered."""
        if text is None or not text.n or not self.text_weight:
            return []
        return [w for w in text.starting(prefix) if w != prefix and self.offered(w)]

    def with_text(self, scores: list[float], words: list[str], text: TextWords | None,
                  always: bool = False) -> list[float]:
        """A completion's score: (1 - text_weight) * the mixture's + text_weight * the word's share
        of the text being typed; `scores` itself when no word is in the text (unless `always`)."""
        tw = self.text_weight
        if text is None or not tw or not (always or any(w in text.counts for w in words)):
            return scores
        return [(1.0 - tw) * sc + tw * text.share(w) for sc, w in zip(scores, words)]

    def _per_part(self, weights: tuple[float, float, float], k: int) -> int:
        """How many words each part proposes: `candidates` when another part is mixed in with the
        LSTM (its best k need not be the mixture's), else the LSTM's own best k."""
        m = self.candidates if (weights[1] or weights[2]) else k
        return m + min(len(self.personal.removed), self.candidates)   # words removed from its best

    def _candidates(self, node: _Node, hist: tuple[str, ...], prefix: str, k: int,
                    weights: tuple[float, float, float]) -> set[str]:
        """The words each component proposes for a typed `prefix` (not empty): its best m other
        than the prefix itself, which saves no keystroke (a space types it as well as a tap)."""
        _, wn, wp = weights
        m = self._per_part(weights, k)
        lo, hi = self.prefix_range(prefix)
        if lo < hi and self.sorted_words[lo] == prefix:   # the prefix sorts first in its own range
            lo += 1
        cands: set[str] = set()
        if hi > lo:
            vw = self.vocab.words
            cands.update(vw[i] for i in self.lstm_top(node, m, (lo, hi)).tolist())
        if wp:   # its candidates are its best m of each of three kinds, so one more of each, not a cut
            own = self.personal.candidates(hist, prefix, m)
            cands.update(own if prefix not in own else
                         (w for w in self.personal.candidates(hist, prefix, m + 1) if w != prefix))
        if wn:
            cands.update(self.base_top(hist, prefix, m))   # the n-gram never offers the prefix itself
        return cands - self.personal.removed if self.personal.removed else cands

    def _folded(self, node: _Node, hist: tuple[str, ...], prefix: str, k: int,
                weights: tuple[float, float, float]) -> dict[str, str]:
        """For a prefix typed with a capital, the best m words that complete it in lower case of
        P_lstm's word list and of the user's own words, as {the word in the typed case: the
        lower-case word} ("Hin": {"Hindi": "hindi", ...}; "US": {"USB": "usb", ...}; a user who
        typed "quixote" gets "Quixote" for "Qui"); {} for other prefixes (`FOLDED_SHARE`)."""
        if not prefix[:1].isupper() or quote_led(prefix):
            return {}
        rest = prefix[1:]
        if rest.isupper():                      # "US": all capitals
            lower, shown = prefix.lower(), str.upper
        elif rest == rest.lower():              # "Hin", "H": a capital first
            lower, shown = prefix[0].lower() + rest, _capital_first
        else:                                   # "McD": the words' own casing only
            return {}
        m = self._per_part(weights, k)
        lo, hi = self.prefix_range(lower)
        if lo < hi and self.sorted_words[lo] == lower:
            lo += 1
        vw = self.vocab.words
        words = [vw[i] for i in self.lstm_top(node, m, (lo, hi)).tolist()] if hi > lo else []
        if weights[2]:
            words += self.personal.candidates(hist, lower, m)
        removed, out = self.personal.removed, {}
        for w in words:   # a word the user removed stays removed in the case a capital shows it in
            if (d := shown(w)) not in (prefix, w) and d.startswith(prefix) and w not in removed and self.offered(d):
                out[d] = w
        return out

    def _scored(self, node: _Node, hist: tuple[str, ...], words: set[str], folded: dict[str, str],
                weights: tuple[float, float, float]) -> dict[str, float]:
        """The mixture's score of each of `words` and of each folded word (`_folded`): the larger
        of its own score and `FOLDED_SHARE` times its lower-case list word's."""
        todo = list(words | set(folded.values()) | set(folded))
        sc = dict(zip(todo, self.scores(node, hist, todo, weights)))
        out = {w: sc[w] for w in words}
        for d, w in folded.items():
            out[d] = max(out.get(d, sc[d]), FOLDED_SHARE * sc[w])
        return out

    def base_top(self, hist: tuple[str, ...], prefix: str, m: int) -> list[str]:
        """The base n-gram's best m offered words for `prefix`: blocked ones are skipped, not
        counted, so a blocked word among its best does not leave the n-gram fewer candidates."""
        words, _ = self._offered_best(m, lambda n: (self.base.suggest(hist, prefix, n), None), self.base_offered)
        return [w for w in words if self.base_offered(w)][:m]

    def base_offered(self, word: str) -> bool:
        """Whether the strip may show the base n-gram's `word`: `offered`, and a word of the word
        list (in its case, or in lower case, a capital first or all capitals), or one this user
        typed. The n-gram's proxy text holds glued words and typos seen once ("areyou", "dont't",
        "It's'", "before1"), which the word list, from the same text's 50,000 most frequent words
        and a public frequency list, does not."""
        if not self.offered(word):
            return False
        index = self.vocab.index
        if word in index or word in self.personal.uni:
            return True
        lower = word.lower()
        if word.isupper() or word == _capital_first(lower):   # "USB", "Hindi": the list's "usb", "hindi"
            return lower in index or _capital_first(lower) in index
        return word == lower and _capital_first(word) in index   # "london": the list's "London"

    def _offered_best(self, m: int, ask: Callable[[int], tuple[list[str], _T]],
                      ok: Callable[[str], bool] | None = None) -> tuple[list[str], _T]:
        """`ask(n)` (a part's best n words, and what came with them) for n from m up, growing
        past words it may not show (`ok`, by default `offered`) until its words hold m it may or
        it has no more; the last answer."""
        ok = ok or self.offered
        want = m
        while True:
            words, more = ask(want)
            kept = sum(map(ok, words))
            if kept >= m or len(words) < want:
                return words, more
            want = max(want + m - kept, 2 * want)

    def offered(self, word: str) -> bool:
        """Whether the strip may show `word`: a word (`protocol.text.suggestable`: the base
        n-gram's vocabulary and the text's chunks hold "____" and "cooker''"), not removed by the
        user, and not blocked or typed by this user before."""
        personal = self.personal
        return (word not in personal.removed and suggestable(word)
                and (not self.block_offensive or word in personal.uni or not is_blocked(word)))

    def likely_firsts(self, node: _Node, n: int, hist: tuple[str, ...]) -> list[str]:
        """The n likeliest first characters of the next word (of those the word list's words
        begin with), likeliest first: P_lstm's mass over the words each begins, weighted by the
        mixture's LSTM weight, plus the share of the user's typed words (per use, whatever the
        context) it begins, weighted by the personal weight (the weights of `hist`'s kind, as the
        strips use them); the n-gram part is left out. A user who types "i" for "I" or writes in
        lower case gets those readied. Needs `warm` for `node` (else [])."""
        warm = self._warm
        if warm is None or warm[0] is not node or n <= 0:
            return []
        mass = np.add.reduceat(warm[1], self._first_starts)
        wl, _, wp = self.weights(hist=hist)
        firsts = self.personal.firsts
        total = sum(firsts.values())
        if wp and total:
            mass = wl * mass + (wp / total) * np.array([firsts.get(c, 0) for c in self._firsts], np.float64)
        return [self._firsts[i] for i in np.argsort(-mass, kind="stable")[:n].tolist()]

    def first_strips(self, node: _Node, hist: tuple[str, ...], firsts: Sequence[str],
                     k: int = 3, text: TextWords | None = None) -> dict[str, list[str]]:
        """`suggest(node, hist, c, k, text)` for each one-character prefix c of `firsts`, with every
        candidate scored in one pass: a word's mixture score depends on the context, not on the
        prefix (only its length rule does, applied per strip), so each strip is the one `suggest` gives."""
        if k <= 0:
            return {c: [] for c in firsts}
        weights = self.weights(hist=hist)
        per = {c: self._candidates(node, hist, c, k, weights) | set(self.text_words(text, c)) for c in firsts}
        folded = {c: self._folded(node, hist, c, k, weights) for c in firsts}
        score = self._scored(node, hist, set().union(*per.values()), {d: w for f in folded.values()
                                                                        for d, w in f.items()}, weights)
        strips = {}
        for c, ws in per.items():
            ws = list(ws | set(folded[c]))
            strips[c] = _best(ws, _shorter_first(self.with_text([score[w] for w in ws], ws, text), ws, len(c)), k)
        return strips


def _responsibilities(weights: tuple[float, float, float], probs: tuple[float, float, float],
                      into: list[float]) -> None:
    """Add each part's posterior responsibility for a token (weights * probs, normalised) to `into`."""
    joint = [w * p for w, p in zip(weights, probs)]
    total = sum(joint)
    if total > 0:
        for i, j in enumerate(joint):
            into[i] += j / total


def _capital_first(word: str) -> str:
    """`word` with its first character in upper case ("hindi" -> "Hindi")."""
    return word[:1].upper() + word[1:]


def _shorter_first(scores: list[float], words: list[str], typed: int) -> list[float]:
    """Completion scores of `words` for a prefix of `typed` characters, by `SHORTER_FIRST`."""
    return [sc / max(len(w) - typed, 1) ** SHORTER_FIRST for sc, w in zip(scores, words)]


def _best(words: list[str], scores: list[float], k: int) -> list[str]:
    """The k best-scored words, ties by word."""
    return [w for _, w in sorted(zip([-sc for sc in scores], words))[:k]]




def _top_set(v: np.ndarray, m: int, allowed: np.ndarray | None = None, n_banned: int = 0,
             step: int = 16) -> np.ndarray | None:
    """Indices of the m largest values of `v` among the `allowed` positions (all when None; the
    others number `n_banned`), in no order, when the m-th is above the (m+1)-th, else None.

    The (m+1+n_banned)-th largest of every `step`-th value is a threshold that at least m+1
    allowed values reach, so only the ~(m+1) * step values above it are partitioned."""
    n = m + 1 + n_banned
    if len(v) >= 4 * n * step:
        idx = (v >= np.partition(v[::step], -n)[-n]).nonzero()[0]
    else:
        idx = np.arange(len(v))
    if allowed is not None:
        idx = idx[allowed[idx]]
    if len(idx) <= m:
        return None
    w = v[idx]
    top = idx[w > np.partition(w, -m - 1)[-m - 1]]
    return top if len(top) == m else None
