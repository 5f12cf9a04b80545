"""The ablation table of docs/quality.md: what each part of the keyboard adds, on held-out users.

    python -m tools.ablation --corpus FILE [--model models/v0] [--central DIR] [--max-words 5000]

One markdown row per model, all scored on the same held-out words with the protocol of
`tools.wordeval` (each user's first half typed before the second half is scored): the
Kneser-Ney trigram fitted on the corpus's train users (collects their text), the same trigram
keeping only what at least 2 train users typed (the most a release protecting each user could
hold), and the trigram on the proxy text (the shipped base n-gram), then the version's LSTM
with the keyboard's parts added one at a time, and the central reference (`--central`, the LSTM
trained on the train users) alone and in the keyboard.

Each row also carries what the issue asks of every lever: the keystroke cost (thread CPU ms
per `update` call at p50 / p99, one device in use, `tools.bench.keystroke.device_keystrokes`),
the parameters (the LSTM's weights; an n-gram's stored probabilities) and the download (the
LSTM's weights per version in their int8 download form; the base n-gram once, with the app).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
from typing import TYPE_CHECKING

from protocol.artifact import read_manifest
from protocol.cli import HelpFormatter, Parser, add_version
from tools._cli import (
    BASE_NGRAM_HELP,
    DEFAULT_CORPUS,
    DEFAULT_EVAL_WORDS,
    SCORED_SPLITS,
    base_ngram_arg,
    run,
    scored_name,
)
from tools.shipped import SHIPPED_V0

if TYPE_CHECKING:
    from edge_runtime.ngram import KneserNeyLM
    from model.corpus import Split


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m tools.ablation", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    add_version(p)
    p.add_argument("--corpus", default=DEFAULT_CORPUS, help="device corpus (JSONL or plain text)")
    p.add_argument("--model", default=str(SHIPPED_V0), help="version directory")
    p.add_argument("--central", help="the central reference's version directory (optional)")
    p.add_argument("--max-words", type=int, default=DEFAULT_EVAL_WORDS,
                   help="held-out words scored (past every word, an even share per user)")
    p.add_argument("--split", default="test", choices=SCORED_SPLITS,
                   help="the users scored, never trained on: test (the held-out users every claim is on) or "
                        "validation (to choose between rows without looking at the test users)")
    p.add_argument("--max-keystrokes", type=int, default=1500, help="keystrokes timed per row")
    p.add_argument("--base-ngram", default="", metavar="FILE", type=base_ngram_arg, help=BASE_NGRAM_HELP)
    p.add_argument("--ngram-bounds", type=int, default=0, metavar="DEVICES",
                   help="also print what an n-gram learned from devices could add at most: the keyboard "
                        "(without its own LSTM copy) with its base n-gram replaced by a trigram of the "
                        "DEVICES train users tools.simulate would pick, or of all train users; all of "
                        "their text or only what 2 or 3 of them typed (0: off)")
    return p


def ngram_bounds(args: argparse.Namespace, split: Split, users: dict[str, list[str]], base: KneserNeyLM,
                 central: KneserNeyLM,
                 shared: KneserNeyLM | None) -> None:
    """The second table of `--ngram-bounds`: upper bounds, without noise, of a federated n-gram.
    `central` and `shared` are the main table's trigrams of all train users (all of their text;
    what 2+ of them typed, None when they share no word)."""
    from edge_runtime.ngram import KneserNeyLM
    from tools.simulate import load_population
    from tools.wordeval import evaluate_words

    devices = load_population(args.corpus, args.ngram_bounds).users
    everyone = split.train.items()

    name = os.path.basename(os.path.normpath(args.model))
    print(f"\nWhat an n-gram learned from devices could add at most (no noise): the keyboard on {name} "
          "without its own LSTM copy, its base n-gram =\n")
    print("| base n-gram | top-1 | top-3 | KSR | stored probabilities |\n|---|---:|---:|---:|---:|")
    n, everyone_n = len(devices), len(split.train)
    rows = [("the proxy trigram (what ships)", lambda: base),
            (f"the {n} devices' text, all of it", lambda: KneserNeyLM.fit_users(devices)),
            (f"the {n} devices' text, only what at least 2 of them typed",
             lambda: KneserNeyLM.fit_users(devices, min_users=2)),
            (f"all {everyone_n} train users' text, only what at least 2 of them typed",   # None: raises why
             lambda: shared if shared is not None else KneserNeyLM.fit_users(everyone, min_users=2)),
            (f"all {everyone_n} train users' text, only what at least 3 of them typed",
             lambda: KneserNeyLM.fit_users(everyone, min_users=3)),
            (f"all {everyone_n} train users' text, all of it (collects text)", lambda: central)]
    for label, build in rows:
        try:
            lm = build()
        except ValueError as e:   # users who share no word
            print(f"| {label} | – | – | – | {e} |")
            continue
        m = evaluate_words(keyboard_factory(args.model, tail=True, base=True, own_words=True, personal_lstm=False,
                                            ngram=lm, base_ngram=args.base_ngram), users, max_words=args.max_words)
        print(f"| {label} | {m.top1:.1%} | {m.top3:.1%} | {m.ksr:.1%} | {lm.size:,} |", flush=True)


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def lstm_costs(version_dir: str) -> tuple[int, int]:
    """(parameters, bytes a device downloads per version: the weights' int8 form)."""
    from protocol.artifact import encode_weights_q8, load_version

    manifest, weights = load_version(version_dir)
    return manifest.num_params, len(encode_weights_q8(weights))


def keyboard_factory(version_dir: str, *, tail: bool, base: bool, own_words: bool, personal_lstm: bool,
                     ngram: KneserNeyLM | None = None, base_ngram: str = ""):
    """Sessions of the keyboard's predictor with the chosen parts (tools.evaluate.lstm_factory
    builds the full keyboard; this one switches parts off one by one). `ngram` replaces the
    base n-gram that `base_ngram` names (`--ngram-bounds`: what an n-gram learned from devices could add)."""
    from edge_runtime.base_ngram import load_base_ngram
    from edge_runtime.predictor import FOLLOW_WEIGHT, TAIL_MASS, TEXT_WEIGHT, Predictor
    from protocol.artifact import TOKENIZER
    from protocol.interpreter import Model
    from protocol.text import load_tokenizer
    from tools.evaluate import lstm_factory

    if own_words and base and tail and ngram is None:
        return lstm_factory(version_dir, personal_lstm=personal_lstm, base_ngram=base_ngram)
    if personal_lstm:
        raise ValueError("the user's own LSTM copy runs only in the full keyboard with its base n-gram")
    model = Model.load(version_dir)
    sp = load_tokenizer(os.path.join(version_dir, TOKENIZER))
    if ngram is None:
        ngram = load_base_ngram(base_ngram) if base else None

    def new_session():
        # The words of the text being typed count as the user's own words (`Predictor.text_weight`).
        p = Predictor(model, sp, base=ngram, tail_mass=TAIL_MASS if tail else 0.0,
                      text_weight=TEXT_WEIGHT if own_words else 0.0,
                      follow_weight=FOLLOW_WEIGHT if own_words else 0.0)
        s = p.session()
        if own_words:
            s.learn = p.learn
        return s

    return new_session


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from edge_runtime.base_ngram import load_base_ngram, resolve
    from edge_runtime.ngram import KneserNeyLM
    from model.corpus import read_corpus, split_users
    from tools.bench.keystroke import device_keystrokes, percentiles
    from tools.wordeval import evaluate_words, leak_note, one_document_corpus, pieces_note, typed_in_pieces

    if args.max_words < 1:
        raise ValueError("--max-words must be >= 1")
    if args.central:   # another corpus's reference, or one trained on these held-out users, read as a bound
        from tools.simulate.population import refuse_unfit_central

        refuse_unfit_central(pathlib.Path(args.central), None, args.corpus)
    records = read_corpus(args.corpus)
    split = split_users(records, seed=0)
    who = f"{scored_name(args.split)} users"
    users, pieces = typed_in_pieces(split.part(args.split), one_document_corpus(records))
    if pieces:
        print(pieces_note(pieces, len(users), who), file=sys.stderr)
    if leak := leak_note(split, args.split, who):
        print(leak, file=sys.stderr)
    if not users:
        raise ValueError(f"{args.corpus}: no held-out ({args.split}) users; the corpus needs more users")
    if not split.train:   # the central trigram is fitted on them
        raise ValueError(f"{args.corpus}: no train users for the central references; the corpus needs more users")

    if args.max_keystrokes < 1:
        raise ValueError("--max-keystrokes must be >= 1")
    if args.ngram_bounds < 0:
        raise ValueError("--ngram-bounds must be >= 0")
    if args.ngram_bounds > len(split.train):
        raise ValueError(f"--ngram-bounds {args.ngram_bounds}: {args.corpus} has only {len(split.train)} train users")
    texts = [t for t in split.texts(args.split) if t.strip()]

    scored: set[int] = set()

    def row(name: str, factory, params: str, download: str) -> None:
        m = evaluate_words(factory, users, max_words=args.max_words)
        scored.add(m.words)
        p50, p99, _ = percentiles(device_keystrokes(factory, texts, args.max_keystrokes))
        print(f"| {name} | {m.top1:.1%} | {m.top3:.1%} | {m.ksr:.1%} | {p50:.2f} / {p99:.2f} | {params} | {download} |",
              flush=True)

    base_path = resolve(args.base_ngram)
    base = load_base_ngram(args.base_ngram)
    if base is None:
        raise ValueError(f"no base n-gram at {base_path}: build it with `make v0`" if base_path else
                         "the ablation's rows compare parts of the keyboard: --base-ngram off leaves none to compare")
    base_once = f"{_mb(base_path.stat().st_size)} once"
    print(f"{args.corpus}: {len(users)} {who}, up to {args.max_words:,} words (the count scored follows "
          f"the table), {args.max_keystrokes} keystrokes timed per row (thread CPU ms per keystroke)\n")
    print("| model | top-1 | top-3 | KSR | keystroke p50 / p99 ms | parameters | download |\n"
          "|---|---:|---:|---:|---:|---:|---|")
    central_ngram = KneserNeyLM.fit(split.texts("train"), order=3)
    row("Kneser-Ney trigram, central on train users (collects text)", central_ngram.session,
        f"{central_ngram.size:,} n-gram probabilities", "— (not shippable)")
    try:
        shared = KneserNeyLM.fit_users(split.train.items(), min_users=2)
    except ValueError:   # train users who share no word: no row
        shared = None
    if shared is not None:
        row("Kneser-Ney trigram, central, only words and n-grams at least 2 train users typed", shared.session,
            f"{shared.size:,} n-gram probabilities", "— (not shippable)")
    row("Kneser-Ney trigram, proxy text only (the shipped base n-gram)", base.session,
        f"{base.size:,} n-gram probabilities", base_once)
    softmax = read_manifest(args.model).architecture().model.vocab_size
    parts = [(f"LSTM, {softmax:,}-word softmax only",
              dict(tail=False, base=False, own_words=False, personal_lstm=False)),
             ("LSTM + word-list tail", dict(tail=True, base=False, own_words=False, personal_lstm=False)),
             ("LSTM + tail + base n-gram", dict(tail=True, base=True, own_words=False, personal_lstm=False)),
             ("LSTM + tail + user's own words", dict(tail=True, base=False, own_words=True, personal_lstm=False)),
             ("LSTM + tail + base n-gram + user's own words", dict(tail=True, base=True, own_words=True,
                                                                  personal_lstm=False)),
             ("keyboard: all of it + the user's own copy of the LSTM", dict(tail=True, base=True, own_words=True,
                                                                          personal_lstm=True))]
    lstm_cost = {d: lstm_costs(d) for d in (args.model, args.central) if d}   # load + quantize once per version

    def costs(version_dir: str, with_base: bool) -> tuple[str, str]:
        n, q8 = lstm_cost[version_dir]
        if with_base:
            return f"{n:,} + {base.size:,} n-gram", f"{_mb(q8)} per version + {base_once}"
        return f"{n:,}", f"{_mb(q8)} per version"

    name = os.path.basename(os.path.normpath(args.model))
    for label, kw in parts:
        row(f"{name}: {label}", keyboard_factory(args.model, **kw, base_ngram=args.base_ngram),
            *costs(args.model, kw["base"]))
    if args.central:
        row("central LSTM (collects text): LSTM + tail",
            keyboard_factory(args.central, tail=True, base=False, own_words=False, personal_lstm=False),
            *costs(args.central, False))
        row("central LSTM in the keyboard", keyboard_factory(args.central, tail=True, base=True, own_words=True,
                                                             personal_lstm=True, base_ngram=args.base_ngram),
            *costs(args.central, True))
    counts = " / ".join(f"{w:,}" for w in sorted(scored))
    print(f"\n{'Every row scored the same' if len(scored) == 1 else 'Rows scored'} {counts} words. The user's own "
          "words and own copy of the LSTM are learned on the device: nothing to download.")
    if args.ngram_bounds:
        ngram_bounds(args, split, users, base, central_ngram, shared)   # the main table's users, as it typed them
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
