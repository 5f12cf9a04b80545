"""Suggestions for the keyboard's strip: the global word LSTM mixed with the user's own words.

The model's softmax is over a word vocabulary, so a next-word distribution is one `infer` call
per completed token, and completing a typed prefix is a cut of that distribution: words are
kept sorted, a prefix is an index range found by bisection. Every suggestion is a vocabulary
word or a word the user typed before (`PersonalModel`): never one assembled from pieces.

    P(w | context) = (1 - lam) * P_lstm(w | context) + lam * P_personal(w | last two tokens)

P_lstm covers the whole word list: the softmax's own words, and the rarer list words through
the softmax's <unk> shared by their proxy frequency (`word_probs`).

`lam` is learned on the device, per user, from what the user types (online EM on the
posterior responsibility of the personal part, with a Beta prior): a person whose text the
global model already predicts well keeps a small `lam`.

The recurrent state after each completed whitespace chunk is kept, so a keystroke feeds only
what is new, and backspace or a cursor move rewinds to a cached state instead of re-running
the context.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

import numpy as np

from edge_runtime.interpreter import Model
from edge_runtime.personal import BOS, PersonalModel
from model.config import BOS_ID, SIG_INFER, SIG_STEP, UNK_ID
from model.data import tokens, vocab_of

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
    candidates: int = 8  # LSTM words per prefix considered for the mixture
    tail_mass: float = TAIL_MASS

    def __post_init__(self) -> None:
        if self.model.manifest is None:
            raise ValueError("Predictor needs a Model loaded from a version directory")
        arch = self.model.manifest.arch
        self.hidden = int(arch["model"]["hidden_dim"])
        self.vocab = vocab_of(self.sp, int(arch["model"]["vocab_size"]))
        lim = self.vocab.limit
        tail = np.exp(self.vocab.log_freq[lim:].astype(np.float64))
        self.tail_share = (self.tail_mass * tail / tail.sum()) if len(tail) else tail
        words = self.vocab.words
        ids = sorted((i for i, w in enumerate(words) if any(ch.isalnum() for ch in w)), key=words.__getitem__)
        self.sorted_words = [words[i] for i in ids]
        self.sorted_ids = np.array(ids, dtype=np.int64)
        # Next-word candidates come from the softmax's own words: a tail word gets a share of
        # <unk> far below the softmax's top words, and scanning 50k words after every space costs.
        self.head_ids = self.sorted_ids[self.sorted_ids < lim]
        # `infer` (constant weights, patched in at load) when the version has it, else `step`.
        fast = bool(arch.get("infer_patches")) and self.model.has_signature(SIG_INFER)
        self._step = self.model.runner(SIG_INFER if fast else SIG_STEP)
        zero = np.zeros((1, self.hidden), np.float32)
        self.root = self.advance_ids(_Node(np.zeros(0), zero, zero), [BOS_ID])

    # ------------------------------------------------------------------ model
    def advance_ids(self, node: _Node, ids: list[int]) -> _Node:
        for t in ids:
            out = self._step(tokens=np.array([t], np.int32), h=node.h, c=node.c)
            node = _Node(out["logprobs"][0], out["h"], out["c"])
        return node

    @property
    def lam(self) -> float:
        """Weight of the personal model in the mixture (0 until the user has typed anything)."""
        pm = self.personal
        return pm.lam_num / pm.lam_den if len(pm) else 0.0

    def probs_of(self, node: _Node, ids: np.ndarray) -> np.ndarray:
        """P(word | context) of word-list ids: the LSTM's softmax for its own words, its <unk>
        shared by frequency among the rarer list words (computed for the ids asked only:
        the keystroke path never builds the whole 50k-word vector)."""
        if node.head is None:
            node.head = np.exp(node.logprobs.astype(np.float64))
        lim = self.vocab.limit
        if len(ids) and ids.max() < lim:
            return node.head[ids]
        tail = ids >= lim
        return np.where(tail, node.head[UNK_ID] * self.tail_share[np.where(tail, ids - lim, 0)],
                        node.head[np.where(tail, 0, ids)])

    def word_probs(self, node: _Node) -> np.ndarray:
        """P(word | context) over the whole word list (tests and analysis; `suggest` asks `probs_of`)."""
        return self.probs_of(node, np.arange(len(self.vocab)))

    def lstm_prob(self, node: _Node, tok: str) -> float:
        i = self.vocab.index.get(tok)
        if i is None:
            return math.exp(float(node.logprobs[UNK_ID])) * (1 - self.tail_mass)
        if i < self.vocab.limit:
            return math.exp(float(node.logprobs[i]))
        return math.exp(float(node.logprobs[UNK_ID])) * float(self.tail_share[i - self.vocab.limit])

    def mixture_prob(self, node: _Node, tok: str, hist: tuple[str, ...]) -> tuple[float, float, float]:
        """(mixture, lstm, personal) probabilities of `tok` after `node` / `hist`."""
        pl = self.lstm_prob(node, tok)
        pp = self.personal.prob(tok, hist)
        lam = self.lam
        return (1 - lam) * pl + lam * pp, pl, pp

    def observe(self, pl: float, pp: float) -> None:
        """One online EM step on lam from a token the user actually typed."""
        if not len(self.personal):
            return
        lam = self.lam
        den = lam * pp + (1 - lam) * pl
        if den > 0:
            self.personal.lam_num += lam * pp / den
            self.personal.lam_den += 1.0

    def learn(self, text: str) -> None:
        """The user committed `text`: the personal model learns it (it stays on the device)."""
        self.personal.add(tokens(text))

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
        lo, hi = self.prefix_range(prefix)
        ids = self.sorted_ids[lo:hi] if prefix else self.head_ids
        lam = self.lam
        scores: dict[str, float] = {}
        if len(ids):
            p = self.probs_of(node, ids)
            m = min(self.candidates if lam else k, len(ids))
            top = np.argpartition(-p, m - 1)[:m] if len(ids) > m else np.arange(len(ids))
            words = self.vocab.words
            for j in top:
                scores[words[ids[j]]] = (1 - lam) * float(p[j])
        if lam:
            index, pm = self.vocab.index, self.personal
            for w in pm.candidates(hist, prefix, self.candidates):
                pl = self.lstm_prob(node, w) if w in index else 0.0
                scores[w] = (1 - lam) * pl + lam * pm.prob(w, hist)
        best = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        return [w for w, _ in best]


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
            pm, pl, pp = self.p.mixture_prob(node, tok, hist)
            self.p.observe(pl, pp)
            lp += math.log(max(pm, 1e-30))
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
