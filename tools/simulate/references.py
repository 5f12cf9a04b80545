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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tools.simulate.population import Population


@contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """Send fd 2 to `path` meanwhile (LiteRT prints its delegate banner on every model load)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def score_version(version_dir: Path, users: dict[str, list[str]], max_words: int, *,
                  personal: bool = True) -> dict[str, float]:
    """The FedKeys keyboard on this version (`personal`), or the version's LSTM alone."""
    from tools.evaluate import lstm_factory

    return scored(lstm_factory(str(version_dir), personal=personal), users, max_words)


def scored(new_session, users: dict[str, list[str]], max_words: int) -> dict:
    """`evaluate_words` as a dict, with each user's counts in user order (no names) for the
    report's intervals (`tools.wordeval.paired_interval`)."""
    from tools.wordeval import evaluate_words

    per_user: dict[str, list[int]] = {}
    out = evaluate_words(new_session, users, max_words=max_words, per_user=per_user).to_dict()
    return {**out, "per_user": list(per_user.values())}


def _file_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def reference_scores(data: Path, pop: Population, corpus: str, proxy: list[str], v0: Path, central: Path | None,
                     max_words: int, quiet_log: Path) -> dict[str, dict]:
    """References on the held-out users, cached in DIR/reference.json:

    ngram: Kneser-Ney trigram fitted centrally on the corpus's train users (collects their text);
    ngram_shared: the same trigram keeping only tokens and n-grams that at least 2 train users typed
    (what a release protecting each user could hold at most: how much of the central trigram's lead
    rests on what one user typed);
    ngram_proxy: the same trigram fitted on the proxy text only (shippable without users' text);
    proxy: the FedKeys keyboard on version 0 (proxy LSTM + base n-gram + the user's own words and own LSTM copy);
    proxy_lstm: version 0's LSTM alone; central: the LSTM trained centrally on all train users."""
    from edge_runtime.base_ngram import configured_path
    from model.corpus import read_corpus, split_users
    from protocol.ngram import KneserNeyLM

    cache_path = data / "reference.json"
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    out: dict[str, dict] = {}
    corpus_key = f"{_file_key(Path(corpus))}:{max_words}:even-share"   # per-user counts, `scored_words` order
    # The keyboard's score also depends on the base n-gram it mixes in (FEDKEYS_BASE_NGRAM or the shipped file).
    base = configured_path()
    base_key = _file_key(base) if base is not None and base.is_file() else "no-base-ngram"
    wanted: dict[str, str] = {
        "ngram": f"ngram:{corpus_key}",
        "ngram_shared": f"ngram:users>=2:v2:{corpus_key}",   # v2: continuation counts of every extension
        "ngram_proxy": f"ngram:{':'.join(_file_key(Path(p)) for p in proxy)}:{corpus_key}",
        # v3: the keyboard also suggests from the words of the text being typed (`Predictor.text_weight`,
        # `follow_weight`); v4: its mixture learns nothing from a user's first text (`Predictor.learning`);
        # v5: its weights are kept per kind of history (`PersonalModel.seen`) from a (40, 40, 20) prior
        "proxy": f"keyboard:v5:{_sha(v0 / 'manifest.json')}:{base_key}:{corpus_key}",
        "proxy_lstm": f"lstm:{_sha(v0 / 'manifest.json')}:{corpus_key}",
    }
    if central is not None:
        wanted["central"] = f"lstm:{_sha(central / 'manifest.json')}:{corpus_key}"
    train_users = functools.cache(lambda: split_users(read_corpus(corpus), seed=0).train)   # read once
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
                    lm = KneserNeyLM.fit_users(train_users().items(), 3, min_users=2 if name == "ngram_shared" else 1)
                except ValueError:   # ngram_shared of train users who share no word: no such reference, no row
                    if name == "ngram":
                        raise
                    continue
            out[name] = scored(lm.session, pop.heldout, max_words)
        else:
            with stderr_to(quiet_log):
                out[name] = score_version(central if name == "central" else v0, pop.heldout, max_words,
                                          personal=name == "proxy")
        out[name]["seconds"] = round(time.time() - t0, 1)
        cache[key] = out[name]
    cache_path.write_text(json.dumps(cache, indent=1))
    return out
