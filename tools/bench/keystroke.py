"""Per-keystroke suggestion latency: incremental `Session.update` vs recomputing the context.

The held-out texts that are not typed are learned first as the user's own history, so the
mixture with the personal model runs on every keystroke as it does on a device in use.

Held-out text (the corpus's test users) is typed one character at a time. The incremental
path keeps one session per text, as the keyboard does: each keystroke calls
`Session.update(text_so_far)`, which feeds only new chunks through `step`. The recompute path
is what a stateless predictor would do: a new session at every keystroke, fed the last
`context_words` words. The incremental path runs twice: as the keyboard runs it, with
`Session.prefetch` between keystrokes (the idle time while a finger moves: it readies the state
and strip a space would need; timed apart, as idle work), and with all the work on the
keystroke. All paths are timed in the same run, text by text in turn, over the same keystrokes
(the recompute path over an even sample of them, since it is slow), after an untimed warm-up.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable

import numpy as np


def held_out_texts(corpus: str) -> list[str]:
    from model.corpus import read_corpus, split_users

    records = read_corpus(corpus)
    texts = split_users(records).texts("test") or [r.text for r in records]
    return [t for t in texts if t.strip()]


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
            idle.append(_timed(session.prefetch))
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
    from edge_runtime.predictor import Predictor
    from protocol.artifact import TOKENIZER
    from protocol.interpreter import Model
    from protocol.text import load_tokenizer

    if args.max_keystrokes < 1 or args.max_recompute < 1 or args.context_words < 1 or args.warmup < 0:
        raise ValueError("--max-keystrokes, --max-recompute and --context-words must be >= 1, --warmup >= 0")
    model = Model.load(args.model)
    from edge_runtime.base_ngram import load_base_ngram

    predictor = Predictor(model, load_tokenizer(os.path.join(args.model, TOKENIZER)), base=load_base_ngram())
    texts = held_out_texts(args.corpus)
    keys = keystrokes(texts, args.warmup + args.max_keystrokes)
    typed = sum(1 for k in keys if len(k) == 1)
    for past in texts[typed:]:   # the user's history: the keyboard's personal part is in play
        predictor.learn(past)
    warm, keys = keys[:args.warmup], keys[args.warmup:]
    if not keys:
        raise ValueError(f"{args.corpus}: not enough held-out text for {args.warmup} warm-up keystrokes")
    time_incremental(predictor.session, warm, idle=[])
    time_recompute(predictor.session, warm[:5], args.context_words)

    stride = max(1, math.ceil(len(keys) / args.max_recompute))
    idle_both: list[tuple[float, float]] = []
    pre_both: list[tuple[float, float]] = []
    inc_both: list[tuple[float, float]] = []
    rec_both: list[tuple[float, float]] = []
    # Text by text, the three paths in turn: a burst of load from other jobs hits all of them.
    starts = [i for i, k in enumerate(keys) if len(k) == 1 and i > 0]
    for a, b in zip([0, *starts], [*starts, len(keys)]):
        pre_both += time_incremental(predictor.session, keys[a:b], idle=idle_both)
        predictor.forget_warm()   # the other paths get no head start from the prefetch run's warm-up
        inc_both += time_incremental(predictor.session, keys[a:b])
        predictor.forget_warm()
        rec_both += time_recompute(predictor.session, keys[-(-a // stride) * stride:b:stride], args.context_words)
    vid = model.manifest.version_id if model.manifest else args.model
    n_texts = len({k for k in keys if len(k) == 1}) or 1
    space = [i for i, k in enumerate(keys) if k[-1].isspace()]  # the slowest keystrokes without prefetch
    print(f"keystroke latency, model {vid} ({model.backend}), {len(keys)} keystrokes over ~{n_texts} held-out "
          f"texts of {args.corpus}")
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
                row("  idle work between keystrokes (prefetch)", [t[col] for t in idle])
            same = [ms[i] for i in range(0, len(keys), stride)]
            row("  the same keys as recompute", same)
            s50, s99, smean = percentiles(same)
            ratios.append(f"{short}: p50 {r50 / max(s50, 1e-9):.1f}x, "
                          f"p99 {r99 / max(s99, 1e-9):.1f}x, mean {rmean / max(smean, 1e-9):.1f}x")
        row(f"recompute (new session, <= {args.context_words} words)", rec)
        for r in ratios:
            print(f"ratio recompute/incremental (same keys), {r}")
    return 0
