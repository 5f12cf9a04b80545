"""Next-word metrics on the held-out users of any corpus.

    python -m tools.evaluate --model DIR --corpus FILE [--split test] [--baseline] [--json]

Prints next-word top-1/top-3 accuracy, word perplexity and keystroke savings rate of the
keyboard on a model version (the same TFLite predictor and on-device personal model the
keyboard uses; each held-out user's first half typed before their second half is scored), optionally next to a
Kneser-Ney word trigram fitted on the corpus's train users. `--json` prints one JSON object
with keys top1, top3, word_perplexity, ksr, words (and `ngram` with --baseline).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from protocol.cli import HelpFormatter, Parser, add_version
from tools._cli import BASE_NGRAM_HELP, DEFAULT_CORPUS, DEFAULT_EVAL_WORDS, base_ngram_arg, run


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m tools.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    add_version(p)
    p.add_argument("--model", required=True, action="append", help="version directory (repeat to compare)")
    p.add_argument("--corpus", default=DEFAULT_CORPUS, help="JSONL or plain-text corpus")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("--seed", type=int, default=0, help="user split seed (same as training)")
    p.add_argument("--max-words", type=int, default=DEFAULT_EVAL_WORDS,
                   help="held-out words scored (past every word, an even share per user)")
    p.add_argument("--baseline", action="store_true", help="also score a Kneser-Ney trigram fitted on the train users")
    p.add_argument("--lstm-alone", action="store_true",
                   help="also score each model's LSTM without the user's own words (the global model alone)")
    p.add_argument("--personalization", action="store_true",
                   help="per held-out user: the keyboard with vs without the user's own words "
                        "(mean gain, share of users who benefit) for the first --model")
    p.add_argument("--base-ngram", default="", metavar="FILE", type=base_ngram_arg, help=BASE_NGRAM_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p


def lstm_factory(version_dir: str, *, personal: bool = True, own_words: bool = True, personal_lstm: bool = True,
                 base_ngram: str = ""):
    """New-device sessions over one version: the FedKeys keyboard (`personal`: the global LSTM, the
    base n-gram and what it learns on the device: the user's own words and, with `personal_lstm`,
    its own fine-tuned copy of the LSTM, and the words of the text being typed; without `own_words`
    none of them) or the global LSTM alone. `base_ngram` is the device setting of that name.

    A keyboard session's `personalize()` is the device's idle-and-charging moment: it fine-tunes
    the user's copy on the text learned so far (`edge_runtime.personalize`, the device's defaults)."""
    import os

    from edge_runtime import personalize, trainer
    from edge_runtime.base_ngram import load_base_ngram
    from edge_runtime.predictor import FOLLOW_WEIGHT, TEXT_WEIGHT, Predictor
    from protocol.artifact import TOKENIZER
    from protocol.interpreter import Model
    from protocol.text import load_tokenizer

    model = Model.load(version_dir)
    sp = load_tokenizer(os.path.join(version_dir, TOKENIZER))
    base = load_base_ngram(base_ngram) if personal else None
    trainable: list[trainer.SignatureModel] = []   # one training interpreter, reset for every user

    def new_session():
        # The words of the text being typed count with what the device learns (`own_words`): the
        # LSTM alone and the keyboard without it complete from the word list only.
        on = personal and own_words
        predictor = Predictor(model, sp, base=base, text_weight=TEXT_WEIGHT if on else 0.0,
                              follow_weight=FOLLOW_WEIGHT if on else 0.0)
        session = predictor.session()
        if not (personal and own_words):
            return session
        typed: list[str] = []

        def learn(text: str) -> None:
            typed.append(text)
            session.p.learn(text)

        def personalize_now() -> None:
            if not trainable:
                trainable.append(trainer.load_model(version_dir))
            weights = personalize.fine_tune(version_dir, typed, model=trainable[0])
            if weights is not None:
                session.p = Predictor(Model.load(version_dir, weights=weights, verify=False), sp,
                                      personal=predictor.personal, base=base)
                session.reset()

        session.learn = learn
        if personal_lstm:
            session.personalize = personalize_now
        return session

    return new_session


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from edge_runtime.ngram import KneserNeyLM
    from model.corpus import read_corpus, split_users
    from tools.wordeval import evaluate_words, leak_note, one_document_corpus, pieces_note, typed_in_pieces

    if args.max_words < 1:
        raise ValueError("--max-words must be >= 1")
    records = read_corpus(args.corpus)
    split = split_users(records, seed=args.seed)
    texts, pieces = typed_in_pieces(split.part(args.split), one_document_corpus(records))
    if pieces:
        print(pieces_note(pieces, len(texts), f"{args.split} users"), file=sys.stderr)
    if args.split != "train" and (leak := leak_note(split, args.split, f"{args.split} users")):
        print(leak, file=sys.stderr)
    if not texts:
        raise ValueError(f"the {args.split} split of {args.corpus} has no users; try --split train")
    train = split.texts("train") if args.baseline else []
    if args.baseline and (args.split == "train" or not train):   # else scored on its own text
        raise ValueError("--baseline fits its trigram on the train users and scores the others: "
                         + ("leave out --split train" if args.split == "train" else
                            f"{args.corpus} has no train users (every user fell in validation or test)"))
    progress = not args.json and sys.stderr.isatty()
    rows: dict[str, dict] = {}
    if args.baseline:
        t0 = time.time()
        lm = KneserNeyLM.fit(train, order=3)
        rows["ngram"] = evaluate_words(lm.session, texts, max_words=args.max_words, progress=progress,
                                       desc="n-gram").to_dict()
        rows["ngram"]["seconds"] = round(time.time() - t0, 1)
    for d in args.model:
        for name, personal in ((d, True), (f"{d} (LSTM alone)", False)):
            if not personal and not args.lstm_alone:
                continue
            t0 = time.time()
            factory = lstm_factory(d, personal=personal, base_ngram=args.base_ngram)
            rows[name] = evaluate_words(factory, texts, max_words=args.max_words,
                                        progress=progress, desc=name).to_dict()
            rows[name]["seconds"] = round(time.time() - t0, 1)
    if args.personalization:
        rows["personalization"] = personalization(args.model[0], texts, args.max_words, base_ngram=args.base_ngram)
    if args.json:
        out = dict(rows[args.model[0]])
        if args.personalization:
            out["personalization"] = rows.pop("personalization")
        if len(args.model) > 1:
            out["models"] = {d: rows[d] for d in args.model}
        if args.lstm_alone:
            out["lstm_alone"] = {d: rows[f"{d} (LSTM alone)"] for d in args.model}
        if args.baseline:
            out["ngram"] = rows["ngram"]
        print(json.dumps(out))
        return 0
    pers = rows.pop("personalization", None)
    print(f"{args.corpus}, {args.split} users ({len(split.part(args.split))}), {rows[args.model[0]]['words']} words")
    print(f"{'model':55} {'top-1':>7} {'top-3':>7} {'KSR':>7} {'word ppl':>9}")
    for name, r in rows.items():
        print(f"{name:55} {r['top1']:7.2%} {r['top3']:7.2%} {r['ksr']:7.2%} {r['word_perplexity']:9.1f}")
    if pers and not pers["users"]:
        print(f"personalization: {pers['note']}")
    elif pers:
        print(f"personalization over {pers['users']} users with >= {pers['min_words']} scored words: mean top-3 gain "
              f"{pers['mean_top3_gain']:+.2%}, mean KSR gain {pers['mean_ksr_gain']:+.2%}; users who gain top-3: "
              f"{pers['share_top3_gain']:.0%} (lose: {pers['share_top3_loss']:.0%})")
    return 0


def personalization(version_dir: str, users: dict, max_words: int, min_words: int = 20, *,
                    base_ngram: str = "") -> dict:
    """Per user, the keyboard with what it learns from the user (own words, mixture weights) vs the
    same keyboard without it, on the same words."""
    from tools.wordeval import evaluate_words

    with_p: dict[str, list[int]] = {}
    without: dict[str, list[int]] = {}
    evaluate_words(lstm_factory(version_dir, base_ngram=base_ngram), users, max_words=max_words, per_user=with_p)
    evaluate_words(lstm_factory(version_dir, own_words=False, base_ngram=base_ngram), users, max_words=max_words,
                   per_user=without)
    gains3, gainsk = [], []
    for u, (n, h3, sv, ty) in with_p.items():
        n0, h30, sv0, _ = without[u]
        if n < min_words or n != n0:
            continue
        gains3.append((h3 - h30) / n)
        gainsk.append((sv - sv0) / ty)
    if not gains3:   # the rows already scored stand; say why this one is empty
        return {"users": 0, "min_words": min_words, "note": f"no held-out user has {min_words} or more scored "
                f"words within --max-words {max_words}; raise --max-words for a per-user comparison"}
    return {"users": len(gains3), "min_words": min_words,
            "mean_top3_gain": sum(gains3) / len(gains3), "mean_ksr_gain": sum(gainsk) / len(gainsk),
            "share_top3_gain": sum(g > 0 for g in gains3) / len(gains3),
            "share_top3_loss": sum(g < 0 for g in gains3) / len(gains3)}


def cli() -> None:
    """The `fedkeys-evaluate` console script."""
    run(main)


if __name__ == "__main__":
    cli()
