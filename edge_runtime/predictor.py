"""Suggestions for the keyboard's strip, fed incrementally through the `step` signature.

The recurrent state after each completed whitespace chunk is kept, so a keystroke feeds only
what is new, and backspace or a cursor move rewinds to a cached state instead of re-running
the context. Words are assembled from SentencePiece pieces by a prefix-constrained beam
search up to the next word boundary: after a space that is next-word prediction, inside a
word it is completion of the typed prefix.

Pieces never cross whitespace (SentencePiece splits on it), so encoding chunk by chunk gives
the same ids as encoding the whole text.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field

import numpy as np

from edge_runtime.interpreter import Model
from model.config import BOS_ID, EOS_ID, SIG_INFER, SIG_STEP

_WORD = re.compile(r"^[\w']+$")
WORD_START = "\u2581"


@dataclass
class _Node:
    logprobs: np.ndarray  # (V,) next-piece log-probabilities after this node
    h: np.ndarray
    c: np.ndarray
    cache: dict = field(default_factory=dict)  # per-node results reused across keystrokes


class PieceTable:
    """Classifies the vocabulary once: word starts, word continuations, and word boundaries."""

    def __init__(self, sp):
        V = sp.get_piece_size()
        self.text: list[str] = []
        starts, conts = [], []
        boundary = np.zeros(V, bool)
        for i in range(V):
            p = sp.id_to_piece(i)
            if sp.is_control(i) or sp.is_unknown(i):
                self.text.append("")
                boundary[i] = i == EOS_ID
                continue
            if p.startswith(WORD_START):
                body = p[1:]
                boundary[i] = True
                if body == "" or _WORD.match(body):
                    starts.append((body, i))
                self.text.append(body)
            else:
                self.text.append(p)
                if _WORD.match(p):
                    conts.append((p, i))
                else:
                    boundary[i] = True  # punctuation ends the word before it
        self.boundary_ids = np.flatnonzero(boundary)
        self.inner_ids = np.flatnonzero(~boundary)  # fewer than the boundary pieces: cheaper to sum
        self.starts = sorted(starts)
        self.conts = sorted(conts)
        self._start_keys = [t for t, _ in self.starts]
        self._cont_keys = [t for t, _ in self.conts]
        self.start_ids = np.array([i for _, i in self.starts])
        self.cont_ids = np.array([i for _, i in self.conts])

    def allowed(self, first: bool, remaining: str) -> np.ndarray:
        """Ids of pieces that keep the word consistent with the `remaining` typed characters:
        pieces starting with `remaining`, or pieces that are a prefix of it."""
        if first:
            keys, table, ids = self._start_keys, self.starts, self.start_ids
        else:
            keys, table, ids = self._cont_keys, self.conts, self.cont_ids
        if not remaining:
            return ids
        lo = bisect.bisect_left(keys, remaining)
        hi = bisect.bisect_left(keys, remaining + "\U0010ffff")
        out = [table[j][1] for j in range(lo, hi)]
        for n in range(0 if first else 1, len(remaining)):
            j = bisect.bisect_left(keys, remaining[:n])
            if j < len(keys) and keys[j] == remaining[:n]:
                out.append(table[j][1])
        return np.array(out, dtype=np.int64)


@dataclass
class Predictor:
    """Suggestion engine over one model version. Cheap to create sessions from."""

    model: Model
    sp: object
    beam: int = 6
    max_pieces: int = 4
    table: PieceTable = field(init=False)

    def __post_init__(self):
        self.table = PieceTable(self.sp)
        if self.model.manifest is None:
            raise ValueError("Predictor needs a Model loaded from a version directory")
        arch = self.model.manifest.arch
        self.hidden = int(arch["model"]["hidden_dim"])
        # `infer` (constant weights, patched in at load) when the version has it, else `step`.
        fast = bool(arch.get("infer_patches")) and self.model.has_signature(SIG_INFER)
        self._step = self.model.runner(SIG_INFER if fast else SIG_STEP)
        zero = np.zeros((1, self.hidden), np.float32)
        self.root = self._run([BOS_ID], zero, zero)[0]

    def _run(self, tokens: list[int], h: np.ndarray, c: np.ndarray) -> list[_Node]:
        out = self._step(tokens=np.asarray(tokens, np.int32), h=h, c=c)
        lp = out["logprobs"]
        return [_Node(lp[i], out["h"][i:i + 1], out["c"][i:i + 1]) for i in range(len(tokens))]

    def advance(self, node: _Node, ids: list[int]) -> tuple[_Node, float]:
        """Feed `ids` one at a time; returns the new node and their summed log-probability."""
        total = 0.0
        for t in ids:
            total += float(node.logprobs[t])
            node = self._run([t], node.h, node.c)[0]
        return node, total

    def session(self) -> Session:
        return Session(self)

    def complete(self, node: _Node, prefix: str, k: int = 3, memo: dict | None = None) -> list[str]:
        """Top-k distinct words starting with `prefix` after the context `node`."""
        memo = memo if memo is not None else {}
        tbl = self.table
        finished: dict[str, float] = {}
        frontier: list[tuple[tuple[int, ...], str, float]] = [((), "", 0.0)]
        for depth in range(self.max_pieces + 1):
            cands: list[tuple[float, tuple[int, ...], str]] = []
            for pieces, surf, score in frontier:
                nd = memo.get(pieces) if pieces else node
                lp = nd.logprobs
                if pieces and surf and surf.startswith(prefix):
                    if "end" not in nd.cache:  # log P(word ends here) = log(1 - P(it goes on))
                        nd.cache["end"] = float(np.log(max(1.0 - float(np.exp(lp[tbl.inner_ids]).sum()), 1e-30)))
                    end = score + nd.cache["end"]
                    if end > finished.get(surf, -np.inf):
                        finished[surf] = end
                if depth == self.max_pieces:
                    continue
                rem = prefix[len(surf):] if len(prefix) > len(surf) else ""
                key = ("top", not pieces, rem)
                if key not in nd.cache:  # the best allowed pieces after this node, for this prefix
                    ids = tbl.allowed(not pieces, rem)
                    scores = lp[ids]
                    if ids.size > self.beam:
                        top = np.argpartition(-scores, self.beam)[:self.beam]
                        ids, scores = ids[top], scores[top]
                    nd.cache[key] = list(zip(ids.tolist(), scores.tolist()))
                for i, s in nd.cache[key]:
                    cands.append((score + s, pieces + (i,), surf + tbl.text[i]))
            if not cands:
                break
            cands.sort(key=lambda t: -t[0])
            cands = cands[:self.beam]
            best_done = sorted(finished.values(), reverse=True)
            if len(best_done) >= k and cands[0][0] < best_done[k - 1]:
                break  # every open beam already scores below the k-th finished word
            todo = [(p, par) for _, p, _ in cands if p not in memo for par in [p[:-1]]]
            if todo:
                hs = np.concatenate([(memo[par] if par else node).h for _, par in todo])
                cs = np.concatenate([(memo[par] if par else node).c for _, par in todo])
                for (p, _), nd in zip(todo, self._run([p[-1] for p, _ in todo], hs, cs)):
                    memo[p] = nd
            frontier = [(p, s, sc) for sc, p, s in cands]
        return [w for w, _ in sorted(finished.items(), key=lambda t: -t[1])[:k]]


class Session:
    """One text being typed: a stack of states, one per completed whitespace chunk."""

    def __init__(self, predictor: Predictor):
        self.p = predictor
        self.chunks: list[str] = []
        self.nodes: list[_Node] = [predictor.root]
        self._memo: dict = {}

    def reset(self) -> None:
        self.chunks, self.nodes, self._memo = [], [self.p.root], {}

    def feed(self, chunk: str) -> float:
        """Append a completed chunk; returns the log-probability the model gave its pieces."""
        ids = self.p.sp.encode(chunk)
        node, lp, done = self.nodes[-1], 0.0, 0
        # The completion search usually already stepped through this word's pieces: reuse them.
        while done < len(ids) and tuple(ids[:done + 1]) in self._memo:
            lp += float(node.logprobs[ids[done]])
            node = self._memo[tuple(ids[:done + 1])]
            done += 1
        node, rest = self.p.advance(node, ids[done:])
        lp += rest
        self.chunks.append(chunk)
        self.nodes.append(node)
        self._memo = {}
        return lp

    def rewind(self, n_chunks: int) -> None:
        """Back to the state after the first `n_chunks` chunks (backspace, cursor moves)."""
        if n_chunks < len(self.chunks):
            del self.chunks[n_chunks:]
            del self.nodes[n_chunks + 1:]
            self._memo = {}

    def suggest(self, prefix: str = "", k: int = 3) -> list[str]:
        return self.p.complete(self.nodes[-1], prefix, k, self._memo)

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
