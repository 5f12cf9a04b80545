"""A text being typed, keystroke by keystroke: the keyboard's entry point (`Session.update`).

The recurrent state after each completed whitespace chunk is kept, so a keystroke feeds only
what is new, and backspace or a cursor move rewinds to a kept state instead of re-running the
context; tokens of the chunk being typed that can no longer change are fed one per keystroke
before the space. Between keystrokes the keyboard calls `Session.prefetch`, which readies the
state and the strip that a space would need, so the keystroke after a word does not wait for
the model; after a space it readies the strips of the next word's likeliest first letters, the
keystrokes whose prefix ranges are the largest. The strips themselves are the predictor's
(`edge_runtime.predictor`): a session only decides what to feed it and what to reuse.

The words of the text being typed (`TextWords`) live here too: a cache model the predictor
completes prefixes and suggests next words from, in this session only.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge_runtime.ngram import leading_word
from edge_runtime.personal import BOS
from protocol.text import (
    complete_count,
    complete_tokens,
    nfc,
    plain_quotes,
    tokens,
    typed_chunks,
    unformatted,
    word_being_typed,
)

if TYPE_CHECKING:
    from edge_runtime.predictor import Predictor, _Node

_MAX_CHAR = chr(0x10FFFF)
# After a space, `Session.prefetch` ranks the strips of the next word's likeliest first characters
# (`Predictor.likely_firsts`), this many, `FIRST_PART` per step: a first letter,
# whose prefix range is the largest, is the slowest keystroke to rank. Of the first letters typed
# in the keystroke bench's held-out texts (its history learned, the emptied field readied), 16
# cover 90% on Shakespeare, 59% on e-mail (most of the rest are symbols such as "-", "+", "{",
# which no word-list word begins) and 75% on chat rooms (73% without the corpus's anonymised
# "10-19-20sUser" handles); the others are ranked on the keystroke.
FIRST_LETTERS = 16
FIRST_PART = 2


class TextWords:
    """The words of the text being typed (its completed chunks' leading words), counted, and which
    words followed each chunk in it; `pop` takes the last chunk back (a backspace over it). They
    live in the session only: the user's own words (`PersonalModel`) learn a text when it is
    committed. Kept sorted too, so a prefix's words are a bisection however long the text grows."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.n = 0
        self._sorted: list[str] = []
        self._chunks: list[str] = []
        self._follows: dict[str, dict[str, int]] = {}   # chunk -> {the word after it: count}

    def push(self, chunk: str) -> None:
        w = _chunk_word(chunk)
        if w:
            if w not in self.counts:
                bisect.insort(self._sorted, w)
            self.counts[w] = self.counts.get(w, 0) + 1
            self.n += 1
            if self._chunks:
                after = self._follows.setdefault(self._chunks[-1], {})
                after[w] = after.get(w, 0) + 1
        self._chunks.append(chunk)

    def pop(self) -> None:
        chunk = self._chunks.pop()
        w = _chunk_word(chunk)
        if w:
            left = self.counts[w] - 1
            if left:
                self.counts[w] = left
            else:
                del self.counts[w]
                del self._sorted[bisect.bisect_left(self._sorted, w)]
            self.n -= 1
            if self._chunks:
                prev = self._chunks[-1]
                after = self._follows[prev]
                if after[w] > 1:
                    after[w] -= 1
                elif len(after) > 1:
                    del after[w]
                else:
                    del self._follows[prev]

    def starting(self, prefix: str) -> list[str]:
        """The text's words that start with `prefix`."""
        lo = bisect.bisect_left(self._sorted, prefix)
        return self._sorted[lo:bisect.bisect_left(self._sorted, prefix + _MAX_CHAR, lo)]

    def share(self, word: str) -> float:
        """How often the text holds `word`, of all its words."""
        return self.counts.get(word, 0) / self.n if self.n else 0.0

    def after(self, pending: str | None = None) -> dict[str, int]:
        """The words that followed the last chunk earlier in the text, counted; with `pending`,
        those that followed `pending` in the text with `pending` appended (what `prefetch`
        readies for the space after the chunk being typed)."""
        if pending is None:
            if not self._chunks:
                return {}
            return self._follows.get(self._chunks[-1], {})
        got = self._follows.get(pending, {})
        w = _chunk_word(pending)
        if self._chunks and self._chunks[-1] == pending and w:   # "very very": the pair it completes
            got = {**got, w: got.get(w, 0) + 1}
        return got


def _chunk_word(chunk: str) -> str | None:
    """A chunk's word as the model reads it ("don\u2019t," -> "don't"), None for punctuation."""
    return leading_word(plain_quotes(chunk))
class Session:
    """One text being typed: a stack of states, one per completed whitespace chunk."""

    def __init__(self, predictor: Predictor):
        self.p = predictor
        self.reset()

    def reset(self) -> None:
        self.chunks: list[str] = []
        self.words = TextWords()   # the completed chunks' words, for completing a prefix
        self.nodes: list[_Node] = [self.p.root]
        self.hists: list[tuple[str, ...]] = [(BOS, BOS)]
        # (token, state, history) after each complete token of the chunk being typed, fed ahead
        # from nodes[-1] (`_feed_ahead`); emptied whenever nodes[-1] changes.
        self.ahead: list[tuple[str, _Node, tuple[str, ...]]] = []
        self.partial = ""  # the chunk being typed at the last `update`
        self.text: str | None = ""  # the text of the last `update` (None after a `feed` or `rewind`)
        self.readied: _Readied | None = None  # `prefetch`'s work for the space after `partial`
        self.firsts: _Firsts | None = None  # `prefetch`'s strips for the first letter after nodes[-1]
        self._lstm_warmed: _Node | None = None  # the node `prefetch` last ran `Predictor.warm_lstm` on
        # The chunks a rewind took off, with their states, the one next to the tip last: a cursor
        # moved back (a click, an arrow key) and then to the end again pushes them back unchanged,
        # and takes their states instead of re-running the text (0.4 s for 8,000 characters).
        self.undone: list[tuple[str, _Node, tuple[str, ...]]] = []

    def feed(self, chunk: str) -> float:
        """Append a completed chunk; returns the natural-log probability the mixture gave its tokens
        (word-level evaluation needs it; `update` appends without scoring, `_push`)."""
        chunk = nfc(chunk)
        node, hist, lp = self.nodes[-1], self.hists[-1], 0.0
        for tok in tokens(chunk):
            lp += math.log(max(self.p.mixture(self.p.component_probs(node, tok, hist), hist), 1e-30))
            node = self.p.advance_ids(node, self.p.vocab.ids([tok]))
            hist = (hist[-1], tok)
        self.undone = []
        self._append(chunk, node, hist)
        self.text = None
        return lp

    def _push(self, chunk: str) -> None:
        """Append a completed chunk, feeding only its tokens not already fed ahead; its probability,
        which the keyboard never shows, is not computed (a third of a one-token chunk's cost)."""
        undone, r = self.undone, self.readied
        if undone and undone[-1][0] == chunk:   # the cursor back where it was: the same chunk, the same state
            _, node, hist = undone.pop()
            self._append(chunk, node, hist)
            return
        self.undone = []
        if r is not None and r.fed(self.nodes[-1], chunk):
            node, hist = r.node, r.hist
        else:
            node, hist = self._fed(tokens(chunk))
        self._append(chunk, node, hist)

    def _fed(self, toks: list[str], *, keep: int = 0) -> tuple[_Node, tuple[str, ...]]:
        """State and history after `toks` from nodes[-1], starting from the fed-ahead states. The
        states of the first `keep` of `toks`, complete tokens of the chunk being typed, join the
        fed-ahead ones: a chunk without spaces (a pasted paragraph of Chinese, whose words no space
        ends) was fed whole again on every keystroke after it, 1,000 model steps each."""
        node, hist = self.nodes[-1], self.hists[-1]
        j = _common(self.ahead, toks)
        if j:
            _, node, hist = self.ahead[j - 1]
        kept = max(j, keep)
        if kept > j:
            del self.ahead[j:]   # for another version of the chunk (a cursor moved back into it)
        for i, tok in enumerate(toks[j:], j):
            node = self.p.advance_ids(node, self.p.vocab.ids([tok]))
            hist = (hist[-1], tok)
            if i < kept:
                self._keep_ahead(tok, node, hist)
        return node, hist

    def _keep_ahead(self, tok: str, node: _Node, hist: tuple[str, ...]) -> None:
        """Keep the state after `tok` as the newest fed-ahead one. Only the newest is suggested
        from: the one before keeps its h and c, and its 40 KB of log-probabilities go (kept, a
        pasted line of "a,b," would hold 321 MB)."""
        if self.ahead:
            self.ahead[-1][1].cool()
        self.ahead.append((tok, node, hist))

    def feed_partial(self, partial: str) -> None:
        """Feed the complete tokens of the chunk being typed (`complete_tokens`), after `feed_chunks`:
        a new version warmed on a thread (`KeyboardApp._warm`) then has them ready, as it has the
        completed chunks, instead of a keystroke feeding a long chunk without spaces."""
        self.partial = partial
        toks = complete_tokens(partial)
        self._fed(toks, keep=len(toks))

    def _append(self, chunk: str, node: _Node, hist: tuple[str, ...]) -> None:
        self.chunks.append(chunk)
        self.words.push(chunk)
        if len(self.nodes) > 1:   # the tip before: no longer suggested from until a rewind
            self.nodes[-1].cool()
        self.nodes.append(node)
        self.hists.append(hist)
        self.ahead = []

    def _feed_ahead(self, partial: str) -> None:
        """Feed the next token of the chunk being typed that later keystrokes cannot change
        (`complete_tokens`), so the space that completes the chunk has one token less to feed:
        typing "lord," feeds "lord" at the comma, and the space feeds ",". One token at most, so
        no keystroke feeds two where one would do. States are kept per token: a backspace drops
        only those whose token changed."""
        toks = complete_tokens(partial)
        j = _common(self.ahead, toks)
        del self.ahead[j:]
        if j < len(toks):
            node, hist = (self.ahead[-1][1], self.ahead[-1][2]) if self.ahead else (self.nodes[-1], self.hists[-1])
            tok = toks[j]
            r = self.readied   # "lord" readied for a space, then a comma: its state is the one to feed ahead
            if r is not None and r.base is self.nodes[-1] and r.toks == toks[:j + 1]:
                self._keep_ahead(tok, r.node, r.hist)
            else:
                self._keep_ahead(tok, self.p.advance_ids(node, self.p.vocab.ids([tok])), (hist[-1], tok))

    def feed_chunks(self, chunks: Sequence[str]) -> None:
        """Append completed chunks (`typed_chunks`) through the model alone, ranking nothing: no
        user words or n-gram are read, so a thread that holds a predictor no keystroke uses yet can
        build a session on the text being typed (a new version, `KeyboardApp._warm`). `update` then
        feeds only what differs."""
        for chunk in chunks:
            self._push(chunk)
        self.text = None   # `update` compares chunk by chunk from here

    def rewind(self, n_chunks: int) -> None:
        """Back to the state after the first `n_chunks` chunks (backspace, cursor moves)."""
        self.text = None
        if n_chunks < len(self.chunks):
            for _ in range(len(self.chunks) - n_chunks):
                self.words.pop()
            for node in self.nodes[n_chunks + 1:]:   # kept small: the tip's outputs, and a node a
                node.cool()                           # backspace made the tip, went in with them
            self.undone.extend(reversed(list(zip(self.chunks[n_chunks:], self.nodes[n_chunks + 1:],
                                                 self.hists[n_chunks + 1:]))))
            del self.chunks[n_chunks:]
            del self.nodes[n_chunks + 1:]
            del self.hists[n_chunks + 1:]
            self.ahead = []

    def suggest(self, prefix: str = "", k: int = 3) -> list[str]:
        return self.p.suggest(self.nodes[-1], self.hists[-1], prefix, k, self.words,
                              None if prefix else self.words.after())

    def update(self, text: str, k: int = 3) -> list[str]:
        """The keyboard's entry point: the whole text before the cursor in, suggestions out.

        Only chunks that differ from the cached ones are (re)fed. A keystroke inside a chunk
        that has nothing else to feed also feeds a complete token of the chunk ahead
        (`_feed_ahead`), so no keystroke feeds more than one token while the user types: the
        keystroke right after a space, the one waited on most, feeds at most one. Suggestions are
        the same either way: they depend on the completed chunks, and on the chunk being typed
        only through what opens it ('"' in '"hel', `word_being_typed`) and the word's prefix.
        """
        text = nfc(text)   # as `tokens` reads it: the same word's two spellings are one
        prev, self.text = self.text, None   # set again only once this text is fully fed
        if prev is not None and text.startswith(prev):
            # Typing appended to the last text: only the chunk being typed and what follows it are
            # new, so a keystroke costs the same at the end of a long text as at its start.
            new, partial = typed_chunks(self.partial + text[len(prev):])
        else:
            parts, partial = typed_chunks(text)
            same = len(self.chunks)
            if parts[:same] != self.chunks:  # an edit before the last chunk
                same = _shared_prefix(parts, self.chunks)
            self.rewind(same)
            new = parts[same:]
        for chunk in new:
            self._push(chunk)
        if partial and not new:
            self._feed_ahead(partial)
        self.partial, self.text = partial, text
        r = self.readied
        if not partial and r is not None and r.node is self.nodes[-1] and r.ranked(k, self.p.strip_key()):
            return list(r.strip)
        f = self.firsts
        if len(partial) == 1 and f is not None and f.base is self.nodes[-1] and partial in f.strips \
                and f.ranked(k, self.p.strip_key()):
            return list(f.strips[partial])
        split = word_being_typed(partial)
        if split is None:   # "lord,": the next word comes after a space
            return []
        lead, prefix = split
        prefix = unformatted(prefix)   # "Zimbab\u00adwe" completes as "Zimbabwe"
        if lead:   # '"hel': "hel" completed after the quote, fed ahead already as a rule
            toks = tokens(lead)   # complete, all of them: the word being typed comes after
            node, hist = self._fed(toks, keep=len(toks))
            return self.p.suggest(node, hist, prefix, k, self.words, None)
        return self.suggest(prefix, k)

    def prefetch(self, k: int = 3) -> bool:
        """Idle-time work, for the keyboard to call after it has shown the strip: feed the chunk
        being typed as if a space ended it, and rank the strip that would follow. If the space
        comes, `update` takes both instead of computing them, so the keystroke after a word (the
        one a user waits on most: a model step and the next-word strip) costs a lookup; another
        letter makes them stale and the next prefetch redoes them.

        Right after a space (or in an empty field) it readies the next word instead: what every
        prefix of it cuts from (`Predictor.warm`), then the strips of its likeliest first
        characters (`FIRST_LETTERS`, `FIRST_PART` per call), the keystrokes whose prefix ranges
        are the largest. Returns whether a call again would do more: the keyboard server calls it
        until not, one call per hold of its lock, on a thread of its own, and stops once the
        session has moved on. The strips are the same either way, and work this session already
        did for this state and these user's words is not repeated."""
        partial, r = self.partial, self.readied
        if not partial:
            return self._prefetch_firsts(k)
        fed = r is not None and r.fed(self.nodes[-1], partial)
        if fed and r.ranked(k, self.p.strip_key()):
            return False
        if fed:   # the state is fed (a commit may have changed the user's words): rank, no model step
            toks, node, hist = r.toks, r.node, r.hist
        else:     # the model step in one call, the ranking in the next: each holds the keyboard less
            toks = tokens(partial)
            node, hist = self._fed(toks, keep=complete_count(partial, toks))
            self.readied = _Readied(partial, toks, self.nodes[-1], node, hist, k, self.p.strip_key(), None)
            return True
        strip = self.p.suggest(node, hist, "", k, follows=self.words.after(partial))
        self.readied = _Readied(partial, toks, self.nodes[-1], node, hist, k, self.p.strip_key(), strip)
        return False

    def _prefetch_firsts(self, k: int) -> bool:
        """`prefetch` after a space: warm the next word's cuts, then its first letters' strips."""
        node, hist, key, f = self.nodes[-1], self.hists[-1], self.p.strip_key(), self.firsts
        if f is None or f.base is not node or not f.ranked(k, key):
            if self._lstm_warmed is not node:   # in a call of its own (`warm_lstm`)
                self.p.warm_lstm(node)
                self._lstm_warmed = node
                return True
            self.p.warm(node, hist)   # its LSTM part again only if another session's replaced it
            self.firsts = _Firsts(node, k, key, self.p.likely_firsts(node, FIRST_LETTERS, hist), {})
            return bool(self.firsts.todo)
        if f.todo:
            part, f.todo = f.todo[:FIRST_PART], f.todo[FIRST_PART:]
            f.strips.update(self.p.first_strips(node, hist, part, k, self.words))
        return bool(f.todo)


class _RankedFor:
    """What `prefetch` ranked was ranked for a strip length `k` and a user as `key` describes them."""

    k: int
    key: tuple

    def ranked(self, k: int, key: tuple) -> bool:
        """Whether it is for k words and the user as `key` describes them."""
        return (self.k, self.key) == (k, key)


@dataclass
class _Firsts(_RankedFor):
    """`Session.prefetch`'s strips after a space: for each readied first character typed on `base`."""

    base: _Node
    k: int
    key: tuple
    todo: list[str]   # first characters still to rank, likeliest first
    strips: dict[str, list[str]]


@dataclass
class _Readied(_RankedFor):
    """`Session.prefetch`'s result: the state after `chunk` typed on `base`, and its strip (None
    until the call after the model step ranks it)."""

    chunk: str
    toks: list[str]
    base: _Node
    node: _Node
    hist: tuple[str, ...]
    k: int
    key: tuple
    strip: list[str] | None

    def ranked(self, k: int, key: tuple) -> bool:
        """Whether its strip is ranked, for k words and the user as `key` describes them."""
        return self.strip is not None and super().ranked(k, key)

    def fed(self, base: _Node, chunk: str) -> bool:
        """Whether `node` is the state after `chunk` typed on `base`."""
        return self.base is base and self.chunk == chunk


def _common(ahead: list[tuple[str, _Node, tuple[str, ...]]], toks: list[str]) -> int:
    """How many leading tokens of `toks` the fed-ahead states are for."""
    return _shared_prefix([a[0] for a in ahead], toks)


def _shared_prefix(a: Sequence[str], b: Sequence[str]) -> int:
    """How many leading items `a` and `b` have in common."""
    j = 0
    while j < min(len(a), len(b)) and a[j] == b[j]:
        j += 1
    return j
