"""Per-keystroke suggestion latency: incremental `Session.update` vs recomputing the context.

The held-out texts that are not typed are learned first as the user's own history, so the
mixture with the personal model runs on every keystroke as it does on a device in use.

Held-out text (the corpus's test users) is typed one character at a time. The incremental
path keeps one session per text, as the keyboard does: each keystroke calls
`Session.update(text_so_far)`, which feeds only new chunks through `step`. The recompute path
is what a stateless predictor would do: a new session at every keystroke, fed the last
`context_words` words. The incremental path runs twice: as the keyboard runs it, with
`Session.prefetch` between keystrokes (the idle time while a finger moves: it readies the state
and strip a space would need, and after a space the next word's likeliest first letters; called
until it has nothing more to do, as the keyboard server's idle thread calls it, one call per hold
of its lock; timed apart, as idle work, in all and its longest call: a keystroke that arrives
meanwhile waits for the call under way), and with all the work on the keystroke. All paths are
timed in the same run, text by text in turn, over the same keystrokes (the recompute path over
an even sample of them, since it is slow), after an untimed warm-up.

Each path types as the demo page makes a user type: the page commits every finished sentence
at the keystroke that finishes it (the space after `.`, `!` or `?`), and the rest of a text when
it is sent, and the keyboard server learns each commit into the user's words. So each path has its own
predictor (one model, one base n-gram, a copy of the same history) that learns the same commits
at the same keystrokes, and its caches age as they would on a device in that mode. On the
keyboard path a send is the emptied field's strip and its prefetch, the commit's `learn` (which
lands after that prefetch on the keyboard server), then the server's prefetch again; a finished
sentence's commit is its `learn` after the keystroke's prefetch, then a prefetch again. The
emptied field's strip and the learns are timed in rows of their own: the strip answers the send;
a learn runs between keystrokes, one model step per hold of the keyboard's lock, so its longest
step is what a keystroke that arrives meanwhile waits for.
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import os
import re
import time
from collections.abc import Callable

import numpy as np

# The page's sentence end (sentences.js, sentenceEnds), simplified: . ! or ? (closing quotes and
# brackets allowed) followed by a space or a newline.
SENTENCE_END = re.compile(r"""[.!?]+["')\]]*\s""")


def finished_sentences(text: str, committed: int) -> tuple[str, int]:
    """What the page commits once `text` is before the cursor, when the first `committed`
    characters are committed already: the finished sentences after them, and the new mark."""
    end = committed
    for m in SENTENCE_END.finditer(text, committed):
        end = m.end()
    return text[committed:end].strip(), end


def page_commits(text_keys: list[str], mark: int = 0) -> tuple[dict[int, str], str]:
    """The page's commits while one text is typed (`text_keys`: the text before the cursor after
    each keystroke; `mark` characters committed before): each finished sentence by the keystroke
    that finished it, and the uncommitted rest, which the send commits."""
    at: dict[int, str] = {}
    for i, prefix in enumerate(text_keys):
        sentence, mark = finished_sentences(prefix, mark)
        if sentence:
            at[i] = sentence
    return at, text_keys[-1][mark:].strip() if text_keys else ""


_DONE = object()


def time_learning(predictor: object, text: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """(wall ms, CPU ms) of a commit's learn in all, and of its longest step: the keyboard server
    holds its lock for one step at a time (`Predictor.learning`), so that is what a keystroke
    that arrives meanwhile waits for. The last call (the mixture and the user's words take the
    text) counts as a step."""
    steps = predictor.learning(text)
    return _time_steps(lambda: next(steps, _DONE) is not _DONE)


def _time_steps(step: Callable[[], bool]) -> tuple[tuple[float, float], tuple[float, float]]:
    """Call `step` until it returns False (that call included); (wall ms, CPU ms) in all, and of
    the longest call."""
    times = []
    while True:
        more: list[bool] = []
        times.append(_timed(lambda m=more: m.append(step())))
        if not more[0]:
            break
    return ((sum(t[0] for t in times), sum(t[1] for t in times)),
            (max(t[0] for t in times), max(t[1] for t in times)))


def held_out_texts(corpus: str) -> tuple[list[str], str]:
    """The held-out users' texts, or every text when the corpus has no held-out user (one user's
    plain text), with the word that says which."""
    from model.corpus import read_corpus, split_users

    records = read_corpus(corpus)
    texts, kind = split_users(records).texts("test"), "held-out texts"
    if not texts:
        texts, kind = [r.text for r in records], "texts (no held-out user in it: every user's)"
    return [t for t in texts if t.strip()], kind


def keystrokes(texts: list[str], limit: int) -> list[str]:
    """Text before the cursor after each keystroke, text after text, up to `limit`."""
    out: list[str] = []
    for t in texts:
        for i in range(1, len(t) + 1):
            if len(out) >= limit:
                return out
            out.append(t[:i])
    return out


def last_words(text: str, n: int) -> str:
    """The last `n` words of `text`, keeping a trailing partial word or space as typed."""
    words = text.split()
    if len(words) <= n:
        return text
    tail = " ".join(words[-n:])
    return tail + " " if text[-1].isspace() else tail


def percentiles(ms: list[float]) -> tuple[float, float, float]:
    a = np.asarray(ms)
    return float(np.percentile(a, 50)), float(np.percentile(a, 99)), float(a.mean())


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall ms, this thread's CPU ms) of one call. CPU time does not count the time other
    processes hold the cores, so it shows the keystroke's own cost on a busy machine."""
    w0, c0 = time.perf_counter(), time.thread_time()
    fn()
    return (time.perf_counter() - w0) * 1e3, (time.thread_time() - c0) * 1e3


def time_prefetch(session: object) -> tuple[tuple[float, float], tuple[float, float]]:
    """(wall ms, CPU ms) of the idle work between two keystrokes in all, and of its longest step:
    the keyboard server's idle thread calls `prefetch` until it has nothing more to do, one call
    per hold of its lock, so a keystroke that arrives meanwhile waits for the call under way (and
    the rest is dropped: the session has moved on)."""
    return _time_steps(session.prefetch)


def time_incremental(new_session: Callable[[], object], keys: list[str], *,
                     idle: list[tuple[float, float]] | None = None) -> list[tuple[float, float]]:
    """(wall ms, CPU ms) of each keystroke's `update`. With `idle` given, `prefetch` runs after
    every keystroke, as the keyboard runs it between keystrokes, and its times go to `idle`."""
    out: list[tuple[float, float]] = []
    session = None
    for prefix in keys:
        if session is None or len(prefix) == 1:   # a new text starts: new session (new field)
            session = new_session()
        out.append(_timed(lambda s=session, p=prefix: s.update(p)))
        if idle is not None:
            idle.append(time_prefetch(session)[0])
    return out


def device_keystrokes(new_session: Callable[[], object], texts: list[str], max_keystrokes: int,
                      warmup: int = 100) -> list[float]:
    """Thread CPU ms of each `update` call on one device in use: the held-out texts that are not
    typed are learned first as its history (sessions with `learn`; those with `personalize`
    then fine-tune their own copy once), then the rest is typed a character at a time, a new
    text in the same field (`reset`) at each text's first keystroke. The first `warmup`
    keystrokes are not returned. One loop for every row of `tools.ablation`, the n-gram's
    sessions included."""
    keys = keystrokes(texts, warmup + max_keystrokes)
    started = sum(1 for k in keys if len(k) == 1)
    session = new_session()
    if hasattr(session, "learn"):
        for past in texts[started:]:
            session.learn(past)
    if hasattr(session, "personalize"):
        session.personalize()
    out: list[float] = []
    for i, prefix in enumerate(keys):
        if len(prefix) == 1:
            session.reset()
        ms = _timed(lambda p=prefix: session.update(p))[1]
        if i >= warmup:
            out.append(ms)
    if not out:
        raise ValueError(f"not enough held-out text for {warmup} warm-up keystrokes")
    return out


def time_recompute(new_session: Callable[[], object], keys: list[str],
                   context_words: int) -> list[tuple[float, float]]:
    contexts = [last_words(prefix, context_words) for prefix in keys]
    return [_timed(lambda c=ctx: new_session().update(c)) for ctx in contexts]


def main(args: argparse.Namespace) -> int:
    from edge_runtime.collector import settle
    from edge_runtime.predictor import Predictor
    from protocol.artifact import TOKENIZER
    from protocol.interpreter import Model
    from protocol.text import load_tokenizer

    if args.max_keystrokes < 1 or args.max_recompute < 1 or args.context_words < 1 or args.warmup < 0:
        raise ValueError("--max-keystrokes, --max-recompute and --context-words must be >= 1, --warmup >= 0")
    model = Model.load(args.model)
    from edge_runtime.base_ngram import load_base_ngram

    sp = load_tokenizer(os.path.join(args.model, TOKENIZER))
    base = load_base_ngram(args.base_ngram)
    predictor = Predictor(model, sp, base=base)
    texts, kind = held_out_texts(args.corpus)
    keys = keystrokes(texts, args.warmup + args.max_keystrokes)
    typed = sum(1 for k in keys if len(k) == 1)
    for past in texts[typed:]:   # the user's history: the keyboard's personal part is in play
        predictor.learn(past)
    # A full garbage collection with the user's words in memory, before they are settled (the
    # keyboard settles them once it has built them from the cache); a keystroke it falls on waits.
    walked = [_timed(gc.collect) for _ in range(5)]
    warm, keys = keys[:args.warmup], keys[args.warmup:]
    if not keys:
        raise ValueError(f"{args.corpus}: not enough held-out text for {args.warmup} warm-up keystrokes")
    # One predictor per path, each with the same history; the other two copy the user's words.
    kb, aw, rc = predictor, Predictor(model, sp, base=base), Predictor(model, sp, base=base)
    aw.personal, rc.personal = copy.deepcopy(kb.personal), copy.deepcopy(kb.personal)
    settle()   # as the keyboard does once it has built the user's words from the cache
    time_incremental(kb.session, warm, idle=[])
    time_incremental(aw.session, warm)
    time_recompute(rc.session, warm[:5], args.context_words)

    stride = max(1, math.ceil(len(keys) / args.max_recompute))
    idle_both: list[tuple[float, float]] = []   # each keystroke's idle work in all
    step_both: list[tuple[float, float]] = []   # and its longest step (a hold of the keyboard's lock)

    def idle(session: object) -> None:
        for out, t in zip((idle_both, step_both), time_prefetch(session)):
            out.append(t)

    pre_both: list[tuple[float, float]] = []
    inc_both: list[tuple[float, float]] = []
    rec_both: list[tuple[float, float]] = []
    empty_both: list[tuple[float, float]] = []
    learn_both: list[tuple[float, float]] = []   # each commit's learn in all
    hold_both: list[tuple[float, float]] = []    # and its longest step (the lock held at once)
    # Text by text, the three paths in turn: a burst of load from other jobs hits all of them.
    starts = [i for i, k in enumerate(keys) if len(k) == 1 and i > 0]
    kb_s, aw_s = kb.session(), aw.session()
    if warm and len(keys[0]) != 1:   # the first timed key goes on a text the warm-up began: the
        kb_s.update(warm[-1])         # sessions hold that text's state, untimed, as they would have
        time_prefetch(kb_s)           # (else the first key paid for the whole prefix, a recompute)
        base.forget_warm()
        aw_s.update(warm[-1])
    mark = finished_sentences(keys[0], 0)[1]   # what the warm-up typed counts as committed
    rest = ""
    for a, b in zip([0, *starts], [*starts, len(keys)]):
        if a > 0:   # the previous text is sent: the page commits its rest, the field is emptied
            kb_s = kb.session()
            empty_both.append(_timed(lambda s=kb_s: s.update("")))
            idle(kb_s)
            if rest:
                for out, t in zip((learn_both, hold_both), time_learning(kb, rest)):
                    out.append(t)
                idle(kb_s)
                aw.learn(rest)
                rc.learn(rest)
            aw_s = aw.session()
        block = keys[a:b]
        commits, rest = page_commits(block, mark if a == 0 else 0)
        for i, prefix in enumerate(block):   # the keyboard: prefetch after each strip and each learn
            pre_both.append(_timed(lambda s=kb_s, p=prefix: s.update(p)))
            idle(kb_s)
            if i in commits:
                for out, t in zip((learn_both, hold_both), time_learning(kb, commits[i])):
                    out.append(t)
                idle(kb_s)
        base.forget_warm()   # shared: the other paths get no head start from the keyboard's prefetch
        for i, prefix in enumerate(block):   # all the work on the keystroke
            inc_both.append(_timed(lambda s=aw_s, p=prefix: s.update(p)))
            if i in commits:
                aw.learn(commits[i])
        for i, prefix in enumerate(block):   # a new session per (sampled) keystroke
            if (a + i) % stride == 0:
                context = last_words(prefix, args.context_words)
                rec_both.append(_timed(lambda c=context: rc.session().update(c)))
            if i in commits:
                rc.learn(commits[i])
    # ... and after the typing: what a collection walks then (what the keystrokes and commits
    # made since the words were settled), not a floor measured right after the freeze.
    settled = [_timed(gc.collect) for _ in range(5)]
    vid = model.manifest.version_id if model.manifest else args.model
    n_texts = sum(1 for k in keys if len(k) == 1) + (len(keys[0]) != 1)   # the texts the timed keys type in
    space = [i for i, k in enumerate(keys) if k[-1].isspace()]  # the slowest keystrokes without prefetch
    print(f"keystroke latency, model {vid} ({model.backend}), {len(keys)} keystrokes over {n_texts} {kind} "
          f"of {args.corpus}")
    for clock, col in (("wall clock", 0), ("thread CPU time", 1)):
        rec = [t[col] for t in rec_both]
        r50, r99, rmean = percentiles(rec)
        print(f"{clock}:")
        print(f"{'path':52} {'keys':>6} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")

        def row(name: str, ms: list[float]) -> None:
            p50, p99, mean = percentiles(ms)
            print(f"{name:52} {len(ms):6d} {p50:8.3f} {p99:8.3f} {mean:8.3f}")

        ratios = []
        for short, runs, idle in (("prefetch between keys", pre_both, idle_both),
                                  ("all work on the keystroke", inc_both, None)):
            ms = [t[col] for t in runs]
            row(f"incremental, {short}" + (" (the keyboard)" if idle is not None else ""), ms)
            if space:
                row("  of which right after a space", [ms[i] for i in space])
            if idle is not None:
                row("  idle work between keystrokes, in all (prefetch)", [t[col] for t in idle])
                row("  idle work, its longest step (holds the keyboard)", [t[col] for t in step_both])
                if empty_both:
                    row("  the emptied field's strip after a send", [t[col] for t in empty_both])
                if learn_both:
                    row("  a commit's learn, in all (between keystrokes)", [t[col] for t in learn_both])
                    row("  a commit's learn, its longest step (holds the keyboard)", [t[col] for t in hold_both])
            same = [ms[i] for i in range(0, len(keys), stride)]
            row("  the same keys as recompute", same)
            s50, s99, smean = percentiles(same)
            ratios.append(f"{short}: p50 {r50 / max(s50, 1e-9):.1f}x, "
                          f"p99 {r99 / max(s99, 1e-9):.1f}x, mean {rmean / max(smean, 1e-9):.1f}x")
        row(f"recompute (new session, <= {args.context_words} words)", rec)
        for r in ratios:
            print(f"ratio recompute/incremental (same keys), {r}")
        gc_walked, gc_settled = ([t[col] for t in ts] for ts in (walked, settled))
        print(f"a full garbage collection (5 calls, median / max ms): the user's words "
              f"({len(kb.personal.follow):,} histories of {len(texts) - typed:,} texts) walked "
              f"{np.median(gc_walked):.3f} / {max(gc_walked):.3f}; after the typing, settled "
              f"{np.median(gc_settled):.3f} / {max(gc_settled):.3f}")
    return 0
