"""Scoring models on the held-out users, and the reference scores every report compares against.

A model is scored through the keyboard's own predictor (tools.wordeval: top-1, top-3, keystroke
savings), exactly as a user would see it. The references (n-grams, version 0, the central LSTM)
do not change between runs with the same inputs, so they are cached in DIR/reference.json keyed
by the files they came from."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from contextlib import ExitStack, contextmanager
from pathlib import Path

from protocol.artifact import atomic_write, read_manifest
from tools._cli import worker_pool
from tools.simulate.population import Population

_LSTM = "lstm:v2"   # the LSTM alone's cached scores; v2: completions of a capital in lower case


@contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """Send fd 2 to `path` meanwhile: device workers and scorers print the runtime's delegate banner
    (once per process) and TensorFlow's start-up lines, which belong in the run's logs, not its console."""
    sys.stderr.flush()
    with open(path, "ab") as f:   # opened first: a log that cannot open leaves fd 2 as it was, nothing leaked
        saved = os.dup(2)
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def score_version(version_dir: Path, users: dict[str, list[str]], max_words: int, *,
                  personal: bool = True, pool: Executor | None = None, workers: int = 1) -> dict[str, float]:
    """The FedKeys keyboard on this version (`personal`), or the version's LSTM alone.

    With a process `pool`, the users are scored in `workers` parts at once, split by what they
    cost (each held-out device first learns its user's whole first half: on a corpus of long
    histories that is most of a round); the figures are those of one process, the sums of the
    same per-user counts. Without one, the whole population is the one part, scored here."""
    from tools.wordeval import Tally, halves, scored_words

    quota = scored_words(users, max_words)
    parts = workers if pool is not None and workers > 1 else 1
    bins: list[list[str]] = [[] for _ in range(parts)]
    load = [0] * parts
    cost = {u: sum(len(t.split()) for t in halves(users[u])[0]) + 10 * quota[u] for u in users if quota[u]}
    for u in sorted(cost, key=cost.__getitem__, reverse=True):   # the costliest first, to the lightest part
        i = load.index(min(load))
        bins[i].append(u)
        load[i] += cost[u]
    jobs = [(str(version_dir), personal, {u: users[u] for u in b}, {u: quota[u] for u in b}) for b in bins if b]
    if parts > 1:
        results = [f.result() for f in [pool.submit(_score_part, *job) for job in jobs]]
    else:
        results = [_score_part(*job) for job in jobs]
    total, counts = Tally(), {}
    for tally, per_user in results:
        total += tally
        counts.update(per_user)
    return {**total.metrics().to_dict(), "per_user": [counts.get(u, [0, 0, 0, 0]) for u in users]}


def _score_part(version_dir: str, personal: bool, users: dict[str, list[str]], quota: dict[str, int]):
    """One process's share of `score_version`: its users' sums and per-user counts."""
    from tools.evaluate import lstm_factory
    from tools.wordeval import score_users

    per_user: dict[str, list[int]] = {}
    return score_users(lstm_factory(version_dir, personal=personal), users, quota, per_user), per_user


def scored(new_session, users: dict[str, list[str]], max_words: int) -> dict:
    """`evaluate_words` as a dict, with each user's counts in user order (no names) for the
    report's intervals (`tools.wordeval.paired_interval`)."""
    from tools.wordeval import evaluate_words

    per_user: dict[str, list[int]] = {}
    out = evaluate_words(new_session, users, max_words=max_words, per_user=per_user).to_dict()
    return {**out, "per_user": list(per_user.values())}


def _file_key(path: Path) -> str:
    """A file's content (sha256): an edit that keeps its size and whole-second mtime, or a copy
    put back with its old times, must not reuse scores of the text before (~0.1 s per 30 MB)."""
    from tools.pretrain import sources_sha256

    return "sha256-" + sources_sha256([str(path)])[:32]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def words_key(corpus: Path, max_words: int, pop: Population) -> str:
    """What the scored words depend on, in a cached score's key: the corpus's content, the budget
    (per-user counts in `scored_words` order), how held-out documents are typed, and whose words."""
    key = f"{_file_key(corpus)}:{max_words}:even-share"
    if pop.heldout_split:   # held-out documents typed in pieces (`typed_in_pieces`): other words scored
        key += ":pieces"
    if pop.scored != "test":   # other users (the test users' keys stay as they were)
        key += f":{pop.scored}"
    return key


def reference_scores(data: Path, pop: Population, corpus: str, proxy: list[str], v0: Path, central: Path | None,
                     max_words: int, quiet_log: Path, workers: int = 1,
                     pool: Executor | None = None, say: Callable[[str], None] | None = None) -> dict[str, dict]:
    """References on the held-out users, cached in DIR/reference.json:

    ngram: Kneser-Ney trigram fitted centrally on the corpus's train users (collects their text);
    ngram_shared: the same trigram keeping only tokens and n-grams that at least 2 train users typed
    (what a release protecting each user could hold at most: how much of the central trigram's lead
    rests on what one user typed);
    ngram_proxy: the same trigram fitted on the proxy text only (shippable without users' text);
    keyboard_v0: the FedKeys keyboard on version 0 (proxy LSTM + base n-gram + the user's own words and own LSTM
    copy); proxy_lstm: version 0's LSTM alone; central: the LSTM trained centrally on all train users.
    The LSTMs are scored in `workers` processes: the caller's `pool`, or one started for the first.
    Each reference is cached as soon as it is scored (a run stopped midway keeps what it scored), and
    `say` hears of it: on every held-out word one reference takes minutes."""
    from edge_runtime.base_ngram import resolve
    from edge_runtime.ngram import KneserNeyLM
    from model.corpus import read_corpus, split_users

    cache_path = data / "reference.json"
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    out: dict[str, dict] = {}
    corpus_key = words_key(Path(corpus), max_words, pop)
    # The keyboard's score also depends on the base n-gram it mixes in (the shipped file).
    base = resolve()
    base_key = _file_key(base) if base is not None and base.is_file() else "no-base-ngram"
    wanted: dict[str, str] = {
        "ngram": f"ngram:{corpus_key}",
        "ngram_shared": f"ngram:users>=2:v2:{corpus_key}",   # v2: continuation counts of every extension
        "ngram_proxy": f"ngram:{':'.join(_file_key(Path(p)) for p in proxy)}:{corpus_key}",
        # v3: the keyboard also suggests from the words of the text being typed (`Predictor.text_weight`,
        # `follow_weight`); v4: its mixture learns nothing from a user's first text (`Predictor.learning`);
        # v5: its weights are kept per kind of history (`PersonalModel.seen`) from a (40, 40, 20) prior;
        # v6: of two completions about as likely, the shorter first (`predictor.SHORTER_FIRST`);
        # v7: a capital's completions in lower case (`FOLDED_SHARE`), the base n-gram's words only
        # if the word list holds them (`Predictor.base_offered`). The LSTM alone completes through
        # the same predictor: its scores carry the decoder's version too (`_LSTM`).
        "keyboard_v0": f"keyboard:v7:{_sha(v0 / 'manifest.json')}:{base_key}:{corpus_key}",
        "proxy_lstm": f"{_LSTM}:{_sha(v0 / 'manifest.json')}:{corpus_key}",
    }
    if central is not None:
        wanted["central"] = f"{_LSTM}:{_sha(central / 'manifest.json')}:{corpus_key}"
    train_users = functools.cache(lambda: split_users(read_corpus(corpus), seed=0).train)   # read once
    with ExitStack() as stack:
        for name, key in wanted.items():
            if key in cache:
                out[name] = cache[key]
                continue
            t0 = time.time()
            if name.startswith("ngram"):
                if name == "ngram_proxy":
                    lm = KneserNeyLM.fit([r.text for p in proxy for r in read_corpus(p)], order=3)
                else:
                    try:
                        lm = KneserNeyLM.fit_users(train_users().items(), 3,
                                                   min_users=2 if name == "ngram_shared" else 1)
                    except ValueError:   # ngram_shared of train users who share no word: no such reference, no row
                        if name == "ngram":
                            raise
                        continue
                out[name] = scored(lm.session, pop.heldout, max_words)
            else:
                with stderr_to(quiet_log):   # before the pool starts: its processes print there too
                    if pool is None and workers > 1:
                        pool = stack.enter_context(worker_pool(workers))
                    out[name] = score_version(central if name == "central" else v0, pop.heldout, max_words,
                                              personal=name == "keyboard_v0", pool=pool, workers=workers)
            out[name]["seconds"] = round(time.time() - t0, 1)
            cache[key] = out[name]
            atomic_write(cache_path, json.dumps(cache, indent=1).encode())
            if say is not None:
                say(f"  {name}: top-3 {out[name]['top3']:.1%} on {out[name]['words']:,} words "
                    f"({out[name]['seconds']:.0f} s)")
    if "central" in out:   # how much of the train users' text the reference saw per epoch (the report says)
        trained = read_manifest(central).metrics.get("pretrain", {})
        if "windows_per_epoch" in trained:
            out["central"] = {**out["central"], "training": {k: trained[k] for k in ("windows", "windows_per_epoch")}}
    return out
