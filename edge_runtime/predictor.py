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

(a, b, c) are learned on the device from what the user commits: online EM on each component's
posterior responsibility for every committed token, from a Dirichlet prior. A user whose text the
global LSTM predicts well moves weight to it; one who repeats themselves, to their own words.
The weights belong to the user (`PersonalModel.mix`), so they survive model updates.

Completing a typed prefix is a cut of these distributions: words are kept sorted, a prefix is
an index range found by bisection. Every suggestion is a word-list word or a word the user
typed before: never one assembled from pieces. The recurrent state after each completed
whitespace chunk is kept, so a keystroke feeds only what is new, and backspace or a cursor
move rewinds to a cached state instead of re-running the context.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

import numpy as np

from edge_runtime.personal import BOS, PersonalModel
from protocol.arch import SIG_INFER, SIG_STEP
from protocol.interpreter import Model
from protocol.ngram import KneserNeyLM
from protocol.text import BOS_ID, UNK_ID, tokens, vocab_of

_MAX_CHAR = chr(0x10FFFF)
# Share of the LSTM's <unk> probability given to the word list's rarer words (the rest stands for
# words outside the list); among them it goes by proxy frequency. 0 turns the tail off.
TAIL_MASS = 0.8


@dataclass
class _Node:
    logprobs: np.ndarray  # (V,) next-token log-probabilities after this node
    h: np.ndarray
    c: np.ndarray
    head: np.ndarray | None = None  # exp(logprobs): P of the softmax's words, computed on first suggestion


@dataclass
class Predictor:
    """Suggestion engine over one model version and one user's personal model."""

    model: Model
    sp: object
    personal: PersonalModel = field(default_factory=PersonalModel)
    base: KneserNeyLM | None = None  # the base n-gram (edge_runtime.base_ngram); None: LSTM + personal only
    candidates: int = 8  # words per prefix each component proposes for the mixture
    tail_mass: float = TAIL_MASS

    def __post_init__(self) -> None:
        if self.model.manifest is None:
            raise ValueError("Predictor needs a Model loaded from a version directory")
        arch = self.model.manifest.architecture()
        self.hidden = arch.model.hidden_dim
        self.vocab = vocab_of(self.sp, arch.model.vocab_size)
        lim = self.vocab.limit
        tail = np.exp(self.vocab.log_freq[lim:].astype(np.float64))
        self.tail_share = (self.tail_mass * tail / tail.sum()) if len(tail) else tail
        self.sorted_words, self.sorted_ids = self.vocab.suggestable
        # Next-word candidates come from the softmax's own words: a tail word gets a share of
        # <unk> far below the softmax's top words, and scanning 50k words after every space costs.
        self.head_ids = self.sorted_ids[self.sorted_ids < lim]
        # `infer` (constant weights, patched in at load) when the version has it, else `step`.
        fast = bool(arch.infer_patches) and self.model.has_signature(SIG_INFER)
        self._step = self.model.runner(SIG_INFER if fast else SIG_STEP)
        zero = np.zeros((1, self.hidden), np.float32)
        self.root = self.advance_ids(_Node(np.zeros(0), zero, zero), [BOS_ID])

    # ------------------------------------------------------------------ model
    def advance_ids(self, node: _Node, ids: list[int]) -> _Node:
        for t in ids:
            out = self._step(tokens=np.array([t], np.int32), h=node.h, c=node.c)
            node = _Node(out["logprobs"][0], out["h"], out["c"])
        return node

    def probs_of(self, node: _Node, ids: np.ndarray) -> np.ndarray:
        """P_lstm of word-list ids: the softmax for its own words, its <unk> shared by frequency
        among the rarer list words (computed for the ids asked only: the keystroke path never
        builds the whole 50k-word vector)."""
        if node.head is None:
            node.head = np.exp(node.logprobs.astype(np.float64))
        lim = self.vocab.limit
        if len(ids) and ids.max() < lim:
            return node.head[ids]
        tail = ids >= lim
        return np.where(tail, node.head[UNK_ID] * self.tail_share[np.where(tail, ids - lim, 0)],
                        node.head[np.where(tail, 0, ids)])

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

    def weights(self) -> tuple[float, float, float]:
        """Mixture weights (lstm, ngram, personal): the user's evidence, over the parts present."""
        mix = self.personal.mix
        a, b, c = mix[0], mix[1] if self.base is not None else 0.0, mix[2] if len(self.personal) else 0.0
        t = a + b + c
        return a / t, b / t, c / t

    def ngram_prob(self, tok: str, hist: tuple[str, ...]) -> float:
        """P_ngram(tok | the last two tokens); 0 for a word outside the n-gram's vocabulary."""
        base = self.base
        return base.prob(tok, hist) if base is not None and tok in base else 0.0

    def component_probs(self, node: _Node, tok: str, hist: tuple[str, ...]) -> tuple[float, float, float]:
        """(lstm, ngram, personal) probabilities of `tok` after `node` / `hist`."""
        return self.lstm_prob(node, tok), self.ngram_prob(tok, hist), self.personal.prob(tok, hist)

    def mixture(self, probs: tuple[float, float, float]) -> float:
        return sum(w * p for w, p in zip(self.weights(), probs))

    def observe(self, probs: tuple[float, float, float]) -> None:
        """One online EM step on the weights from a token the user typed."""
        joint = [w * p for w, p in zip(self.weights(), probs)]
        total = sum(joint)
        if total > 0:
            for i, j in enumerate(joint):
                self.personal.mix[i] += j / total

    def learn(self, text: str) -> None:
        """The user committed `text` (it stays on the device): the mixture weights learn how well
        each part predicted it, token by token, then the personal model learns its words.

        Learning happens on commit, not while typing, so suggestions depend only on committed
        text (a backspace or a re-typed word is not counted twice)."""
        toks = tokens(text)
        node, hist = self.root, (BOS, BOS)
        for tok in toks:
            self.observe(self.component_probs(node, tok, hist))
            node = self.advance_ids(node, self.vocab.ids([tok]))
            hist = (hist[-1], tok)
        self.personal.add(toks)

    def session(self) -> Session:
        return Session(self)

    # ------------------------------------------------------------- suggestion
    def prefix_range(self, prefix: str) -> tuple[int, int]:
        if not prefix:
            return 0, len(self.sorted_words)
        return (bisect.bisect_left(self.sorted_words, prefix),
                bisect.bisect_left(self.sorted_words, prefix + _MAX_CHAR))

    def suggest(self, node: _Node, hist: tuple[str, ...], prefix: str = "", k: int = 3) -> list[str]:
        """Top-k distinct words starting with `prefix` after the context (`node`, `hist`)."""
        if k <= 0:
            return []
        wl, wn, wp = self.weights()
        m = self.candidates if (wn or wp) else k
        cands: set[str] = set()
        lo, hi = self.prefix_range(prefix)
        ids = self.sorted_ids[lo:hi] if prefix else self.head_ids
        if len(ids):
            p = self.probs_of(node, ids)
            top = np.argpartition(-p, min(m, len(ids)) - 1)[:m] if len(ids) > m else np.arange(len(ids))
            cands.update(self.vocab.words[ids[j]] for j in top)
        if wn:
            cands.update(self.base.suggest(hist, prefix, m))
        if wp:
            cands.update(self.personal.candidates(hist, prefix, m))
        index, pm = self.vocab.index, self.personal

        def score(w: str) -> float:
            sc = wl * self.lstm_prob(node, w) if w in index else 0.0
            if wn:
                sc += wn * self.ngram_prob(w, hist)
            if wp:
                sc += wp * pm.prob(w, hist)
            return sc

        return sorted(cands, key=lambda w: (-score(w), w))[:k]


class Session:
    """One text being typed: a stack of states, one per completed whitespace chunk."""

    def __init__(self, predictor: Predictor):
        self.p = predictor
        self.reset()

    def reset(self) -> None:
        self.chunks: list[str] = []
        self.nodes: list[_Node] = [self.p.root]
        self.hists: list[tuple[str, ...]] = [(BOS, BOS)]

    def feed(self, chunk: str) -> float:
        """Append a completed chunk; returns the natural-log probability the mixture gave its tokens."""
        node, hist, lp = self.nodes[-1], self.hists[-1], 0.0
        for tok in tokens(chunk):
            lp += math.log(max(self.p.mixture(self.p.component_probs(node, tok, hist)), 1e-30))
            node = self.p.advance_ids(node, self.p.vocab.ids([tok]))
            hist = (hist[-1], tok)
        self.chunks.append(chunk)
        self.nodes.append(node)
        self.hists.append(hist)
        return lp

    def rewind(self, n_chunks: int) -> None:
        """Back to the state after the first `n_chunks` chunks (backspace, cursor moves)."""
        if n_chunks < len(self.chunks):
            del self.chunks[n_chunks:]
            del self.nodes[n_chunks + 1:]
            del self.hists[n_chunks + 1:]

    def suggest(self, prefix: str = "", k: int = 3) -> list[str]:
        return self.p.suggest(self.nodes[-1], self.hists[-1], prefix, k)

    def update(self, text: str, k: int = 3) -> list[str]:
        """The keyboard's entry point: the whole text before the cursor in, suggestions out.

        Only chunks that differ from the cached ones are (re)fed.
        """
        parts = text.split()
        partial = "" if (not text or text[-1].isspace()) else parts.pop()
        same = 0
        while same < min(len(parts), len(self.chunks)) and parts[same] == self.chunks[same]:
            same += 1
        self.rewind(same)
        for chunk in parts[same:]:
            self.feed(chunk)
        return self.suggest(partial, k)
