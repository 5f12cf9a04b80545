"""Word-level metrics a keyboard user feels, for any model with a typing session.

A *session* has ``feed(chunk) -> logprob`` and ``suggest(prefix, k) -> words`` (the LSTM's
`edge_runtime.session.Session` and the n-gram's `NgramSession` both do), so every model is
scored by the same loop:

Protocol: each held-out user's texts in order; the first half is typed into the user's device
before scoring (it fills the keyboard's private, personal part), the second half is scored:
every word of it while the word budget lasts, else an even share of the budget per user
(`scored_words`), so a budget never leaves a held-out user out.

- next-word top-1 / top-3: after each space, is the next word among the strip's 1 / 3 words;
- keystroke savings rate (KSR): type each word letter by letter and accept it (one tap, which
  also types the space) as soon as it is in the three suggestions. Saved = letters not typed;
  KSR = saved / (letters + spaces) over all target words;
- word perplexity: exp(-total log-probability / number of whitespace chunks).

Targets are chunks that start with a word character (their leading word: letters, digits,
apostrophes and the combining marks of `protocol.text.WORD_CLASS`).
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, astuple, dataclass
from typing import Any

from tqdm import tqdm

from edge_runtime.ngram import leading_word
from edge_runtime.word_metrics import score_word
from protocol.text import nfc


@dataclass
class WordMetrics:
    top1: float
    top3: float
    word_perplexity: float
    ksr: float
    words: int

    def to_dict(self) -> dict:
        return asdict(self)


MAX_SCORED_USERS = 100   # past the word budget, at most this many users are scored (each costs a device)


def split_document(text: str, most: int = 20) -> list[str]:
    """One long text as several, in order: its paragraphs when it has some, else runs of its
    sentences (at most `most` pieces). A corpus of one document per user (essays, reviews) trains
    nothing as it is, and has nothing typed before it is scored; split, it has both."""
    import re

    from model.corpus import paragraphs

    if len(parts := paragraphs(text)) >= 2:
        return parts
    sentences = [x for x in re.split(r"(?:(?<=[.!?…])|(?<=[.!?…][\"'”’)\]]))\s+", text.strip()) if x]
    per = max(1, math.ceil(len(sentences) / most))
    return [" ".join(sentences[i:i + per]) for i in range(0, len(sentences), per)]


ONE_DOCUMENT_SHARE = 0.8   # of a corpus's users holding one text: a corpus of one document per user
LEAK_SHARE = 0.02           # of held-out words in texts a train user also has: warned about (`leak_note`)
# Shorter texts that train users also have are what people say, not text copied: a conversation's
# "Uh-huh." and "Yeah." repeat across speakers (4% of Switchboard's held-out words).
LEAK_MIN_WORDS = 6


def one_document_corpus(records: Sequence[Any]) -> bool:
    """Whether most of a corpus's users (`ONE_DOCUMENT_SHARE`, over all of them: the same answer
    for every split and seed) hold one text each: essays, reviews. The shipped corpora are far
    from it (Shakespeare 17%, e-mail 52%)."""
    counts = Counter(r.user for r in records)
    return bool(counts) and sum(n == 1 for n in counts.values()) >= ONE_DOCUMENT_SHARE * len(counts)


def typed_in_pieces(users: Mapping[str, Sequence[str]], one_document: bool) -> tuple[dict[str, list[str]], int]:
    """Users with their single documents split (`split_document`) in a corpus of one document per
    user (`one_document_corpus`): (users, how many were split). A user's first half is typed before
    the second is scored (`halves`), and a user of one text would have nothing typed: on such a corpus the
    keyboard's own parts would learn nothing and its claims flip sign (-11.3 top-3 against the
    central trigram, +3.0 split). Other corpora are scored as they are."""
    if not one_document:
        return {u: list(t) for u, t in users.items()}, 0
    single = sum(len(t) == 1 for t in users.values())
    return {u: (split_document(t[0]) if len(t) == 1 else list(t)) for u, t in users.items()}, single


def pieces_note(pieces: int, users: int, who: str = "held-out users") -> str:
    """What the tools say when `typed_in_pieces` split `pieces` of `users` users' documents."""
    return (f"note: {pieces} of the {users} {who} hold one text, typed as its paragraphs (or runs of its "
            "sentences): the first half before the second half is scored")


def leak_note(split: Any, name: str = "test", who: str = "held-out users") -> str:
    """A warning when `LEAK_SHARE` or more of part `name`'s words are in texts a train user also
    has (`Split.leaked`), counting texts of `LEAK_MIN_WORDS` words or more: quoted replies and
    forwarded mail score the central references on text they trained on. The shipped corpora hold
    0.0 to 0.7%. "" when under it."""
    texts, words = split.leaked(name, LEAK_MIN_WORDS)
    total = sum(len(t.split()) for t in split.texts(name))
    if not total or words < LEAK_SHARE * total:
        return ""
    return (f"warning: {words / total:.0%} of the {who}' words are in {texts:,} texts that a train user also has, "
            "word for word; the references trained on train users' text (the central trigram and LSTM) read high "
            "on them. `python -m tools.prepare FILE --dedupe --out NEW.jsonl` drops the repeats")


def halves(texts: Sequence[str]) -> tuple[Sequence[str], Sequence[str]]:
    """A user's texts in order: the first half is typed before scoring, the second half is scored."""
    cut = len(texts) // 2
    return texts[:cut], texts[cut:]


def targets(text: str) -> int:
    """How many target words a text holds: whitespace chunks that start with a word character."""
    return sum(1 for chunk in text.split() if leading_word(chunk))


def scored_words(users: Mapping[str, Sequence[str]], max_words: int | None = None) -> dict[str, int]:
    """How many target words `evaluate_words` scores for each user (in user order) under a word
    budget (None: all of them, what a budget is drawn from).

    Every word of every scored half while they fit in the budget. Past it, the budget is shared
    out evenly (water-filling): a user with fewer words than an even share is scored on all of
    them, the rest get the same number each (the first few in user order one more each, to spend
    the budget exactly), taken from the start of their scored half. So a budget of at least one
    word per user reaches every held-out user with a word, whatever the genre's text length: one
    text per user in turn, as before, spent an e-mail corpus's 1,500 words on 16 of its 70
    held-out senders.

    Past the budget, at most `MAX_SCORED_USERS` users with words are scored: every scored user
    costs a device that learns its first half and fine-tunes its own LSTM copy (~0.35 s a
    scoring), which is what makes a corpus with hundreds of held-out users slow, not its words.
    The users kept are the first by a hash of their names, a sample that does not depend on the
    corpus's order."""
    have = {u: sum(targets(t) for t in halves(texts)[1]) for u, texts in users.items()}
    left = sys.maxsize if max_words is None else max_words
    if sum(have.values()) <= left:
        return have
    with_words = sorted((u for u in have if have[u]), key=lambda u: hashlib.sha256(u.encode()).digest())
    keep = set(with_words[:MAX_SCORED_USERS])
    have = {u: n if u in keep else 0 for u, n in have.items()}
    if sum(have.values()) <= left:
        return have
    got = dict.fromkeys(have, 0)
    rest = sorted(have, key=have.__getitem__)
    for i, u in enumerate(rest):
        share = left // (len(rest) - i)
        if have[u] > share:    # this user and everyone after have more than an even share
            big = set(rest[i:])
            extra = left - share * len(big)
            for v in (v for v in users if v in big):
                got[v] = share + (1 if extra > 0 else 0)
                extra -= 1
            break
        got[u] = have[u]
        left -= have[u]
    return got


@dataclass
class Tally:
    """`evaluate_words`' raw sums: users scored apart (in other processes) add up exactly."""

    hit1: int = 0
    hit3: int = 0
    words: int = 0
    saved: int = 0
    typed: int = 0
    logprob: float = 0.0
    chunks: int = 0

    def __add__(self, other: Tally) -> Tally:
        return Tally(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def metrics(self) -> WordMetrics:
        if self.words == 0:
            raise ValueError("no words to evaluate in the chosen split")
        return WordMetrics(top1=self.hit1 / self.words, top3=self.hit3 / self.words,
                           word_perplexity=math.exp(-self.logprob / max(self.chunks, 1)),
                           ksr=self.saved / self.typed, words=self.words)


def evaluate_words(new_session: Callable[[], object], users: Mapping[str, Sequence[str]], *, max_words: int,
                   progress: bool = False, desc: str = "evaluating",
                   per_user: dict[str, list[int]] | None = None) -> WordMetrics:
    """Score held-out users as a keyboard meets them: one device (session) per user.

    Each user's first half is typed into the device before scoring, and every scored text is
    committed after it is scored, so a session with a ``learn(text)`` method (the FedKeys
    keyboard's personal model) learns from the user's past text only; a session with a
    ``personalize()`` method is then given one idle-and-charging moment to fine-tune its own copy
    of the LSTM on that past text (`tools.evaluate.lstm_factory`). Sessions without them
    (the references) see the same texts and change nothing. Each user's scored half is scored
    from its start, on as many words as `scored_words` gives them under `max_words`, and fed up to
    its last scored word (so word perplexity covers the scored part only). `per_user`, if given,
    receives [words, top-3 hits, letters saved, letters typed] for each user.
    """
    if max_words < 1:
        raise ValueError("the word budget must be >= 1")
    quota = scored_words(users, max_words)
    with tqdm(total=sum(quota.values()), desc=desc, unit="word", disable=not progress, leave=False) as bar:
        return score_users(new_session, users, quota, per_user, bar.update).metrics()


def score_users(new_session: Callable[[], object], users: Mapping[str, Sequence[str]], quota: Mapping[str, int],
                per_user: dict[str, list[int]] | None = None,
                scored_one: Callable[[], object] = lambda: None) -> Tally:
    """`evaluate_words`' loop over the users given, each on its `quota` of words (`scored_words`
    of the whole population, so a part of it scores exactly what it would within the whole)."""
    t = Tally()
    for user, texts in users.items():
        mine = [0, 0, 0, 0]
        if per_user is not None:
            per_user[user] = mine
        if not quota[user]:
            continue
        session = new_session()
        past, scored = halves(texts)
        if hasattr(session, "learn"):
            for text in past:                     # typed and committed before scoring starts
                session.learn(text)
        if hasattr(session, "personalize"):       # then the device was idle and charging once
            session.personalize()
        for text in scored:
            if mine[0] >= quota[user]:
                break
            session.reset()
            for chunk in text.split():
                target = leading_word(nfc(chunk))   # as the strip spells it (`protocol.text.nfc`)
                if target:
                    if mine[0] >= quota[user]:
                        break
                    t.words += 1
                    scored_one()
                    one = score_word(session, target)
                    t.hit1 += one.top1
                    t.hit3 += one.top3
                    t.typed += one.typed
                    t.saved += one.saved
                    mine[0] += 1
                    mine[1] += one.top3
                    mine[2] += one.saved
                    mine[3] += one.typed
                t.logprob += session.feed(chunk)
                t.chunks += 1
            if hasattr(session, "learn"):
                session.learn(text)
    return t


_PER_USER = {"top3": (1, 0), "ksr": (2, 3)}   # (numerator, denominator) in a `per_user` entry


def paired_interval(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]], metric: str, *, n: int = 2000,
                    level: float = 0.95, seed: int = 0) -> tuple[float, float] | tuple[None, None]:
    """Bootstrap interval, in points, of metric(a) - metric(b) for two models scored on the same
    held-out users' same words (`per_user` lists in the same user order): users are resampled
    with replacement, both models together, so the interval shows how much of a difference the
    choice of held-out users alone could make. `metric` is "top3" or "ksr". (None, None) when
    fewer than 2 users have a scored word: resampling one user gives an interval of width 0, which
    would read as certainty."""
    import numpy as np

    if metric not in _PER_USER:
        raise ValueError(f"metric must be one of {sorted(_PER_USER)}")
    if len(a) != len(b) or not a:
        raise ValueError("per-user results must cover the same, non-empty list of users")
    num, den = _PER_USER[metric]
    xa, xb = np.asarray(a, float), np.asarray(b, float)
    if not np.array_equal(xa[:, den], xb[:, den]):
        raise ValueError("per-user results are not on the same words")
    if (xa[:, 0] > 0).sum() < 2:
        return None, None
    idx = np.random.default_rng(seed).integers(0, len(a), size=(n, len(a)))
    d = xa[idx, den].sum(1)
    diff = (xa[idx, num].sum(1) - xb[idx, num].sum(1)) / np.maximum(d, 1) * 100
    lo, hi = np.percentile(diff, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(lo), float(hi)


def user_mean_difference(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]], metric: str, *, n: int = 2000,
                         level: float = 0.95, seed: int = 0) -> tuple[float, float | None, float | None]:
    """metric(a) - metric(b) in points with every user weighted the same (each user's rate first,
    then the mean over users who have a scored word), and its bootstrap interval over users:
    (difference, low, high), the bounds None for a single user (as `paired_interval`'s). The
    word-weighted difference is `paired_interval`'s."""
    import numpy as np

    if metric not in _PER_USER:
        raise ValueError(f"metric must be one of {sorted(_PER_USER)}")
    xa, xb = np.asarray(a, float), np.asarray(b, float)
    num, den = _PER_USER[metric]
    if xa.shape != xb.shape or not len(xa) or not np.array_equal(xa[:, [0, den]], xb[:, [0, den]]):
        raise ValueError("per-user results are not on the same words")
    keep = xa[:, 0] > 0
    d = (xa[keep, num] / xa[keep, den] - xb[keep, num] / xb[keep, den]) * 100
    if not len(d):
        raise ValueError("no user has a scored word")
    if len(d) < 2:
        return float(d.mean()), None, None
    idx = np.random.default_rng(seed).integers(0, len(d), size=(n, len(d)))
    lo, hi = np.percentile(d[idx].mean(1), [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(d.mean()), float(lo), float(hi)
