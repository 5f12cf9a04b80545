"""Turn text files into a FedKeys corpus: JSON Lines of {"user": ..., "text": ...}.

    python -m tools.prepare FILE [FILE ...] --out data/corpus.jsonl [--format paragraphs] [--texts-per-user 20]

Every FedKeys tool reads that format directly, and plain text as one user's lines. This command
converts the rest: JSON Lines with other field names (`--user-field author --text-field body`),
books and notes whose records are paragraphs (`--format paragraphs`), several plain-text files
each from one writer (each file is a user, named after the file), and one writer's text dealt
into pseudo-users of consecutive texts (`--texts-per-user N`) so a simulation has devices to run.
It prints how the users split into train / validation / test (the split every tool uses) and
warns about held-out texts that a train user also has, which would make held-out scores read
high. It never prints the text itself.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import unicodedata
from pathlib import Path

from model.corpus import FORMATS, CorpusError, Record, is_plain_text, read_corpus, split_users
from protocol.cli import HelpFormatter, add_version
from tools._cli import run

SIMULATE_DEVICES = 32     # what the check and the docs run: tools.simulate --devices 32


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.prepare", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    add_version(p)
    p.add_argument("inputs", nargs="+", metavar="FILE", help="JSON Lines or plain-text files, combined in order")
    p.add_argument("--out", required=True, help="the corpus to write (.jsonl)")
    p.add_argument("--format", default="auto", choices=FORMATS,
                   help="how to read the inputs: auto (JSON Lines if a file starts with '{', else one text a "
                        "line), jsonl, lines, or paragraphs (texts separated by blank lines, wrapped lines joined)")
    p.add_argument("--user-field", default="user", help="the JSON field that names the writer")
    p.add_argument("--text-field", default="text", help="the JSON field that holds the text")
    p.add_argument("--texts-per-user", type=int, default=0,
                   help="plain-text files only: deal each file's texts, in order, into pseudo-users of this many "
                        "consecutive texts (0: the whole file is one user)")
    p.add_argument("--min-words", type=int, default=1, help="drop texts with fewer words")
    p.add_argument("--dedupe", action="store_true",
                   help="drop a text that appeared before in the corpus (signatures, quoted replies, boilerplate)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    return p


def _n(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def _normal(text: str) -> str:
    """One line of NFC text with single spaces: what a keyboard would have typed."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def _records(path: str, args: argparse.Namespace) -> tuple[list[Record], bool]:
    """A file's records with their users named, and whether it was plain text."""
    recs = read_corpus(path, fmt=args.format, user_field=args.user_field, text_field=args.text_field)
    plain = args.format in ("lines", "paragraphs") or (args.format == "auto" and is_plain_text(path))
    if not plain:
        return recs, False
    name, n = Path(path).stem, args.texts_per_user
    if n <= 0:
        return [Record(name, r.text) for r in recs], True
    width = len(str((len(recs) - 1) // n + 1))
    return [Record(f"{name} #{i // n + 1:0{width}d}", r.text) for i, r in enumerate(recs)], True


def prepare(args: argparse.Namespace) -> dict:
    """Read, normalise and check the inputs; return the records and what the summary reports."""
    if args.texts_per_user < 0 or args.min_words < 0:
        raise CorpusError("--texts-per-user and --min-words must be >= 0")
    out = Path(args.out).resolve()
    for f in args.inputs:
        if Path(f).resolve() == out:
            raise CorpusError(f"--out {args.out} is also an input: write the corpus somewhere else")
    if out.exists() and not args.force:
        raise CorpusError(f"{args.out} exists: pass --force to overwrite it")
    if out.is_dir():
        raise CorpusError(f"{args.out} is a directory: --out names the .jsonl file to write")
    records, seen = [], set()
    stats = {"files": len(args.inputs), "plain_files": 0, "short": 0, "duplicates": 0}
    for f in args.inputs:
        recs, plain = _records(f, args)
        stats["plain_files"] += plain
        for r in recs:
            text = _normal(r.text)
            if len(text.split()) < max(1, args.min_words):
                stats["short"] += 1
                continue
            if text in seen:
                stats["duplicates"] += 1
                if args.dedupe:
                    continue
            seen.add(text)
            records.append(Record(r.user, text))
    if not records:
        raise CorpusError("no texts left to write (check --min-words and the inputs)")
    if args.texts_per_user and not stats["plain_files"]:
        raise CorpusError("--texts-per-user deals plain-text files into pseudo-users; every input here is JSON Lines")
    split = split_users(records, seed=0)
    train_texts = {t for texts in split.train.values() for t in texts}
    stats.update(records=records, split=split, words=sum(len(r.text.split()) for r in records),
                 users=len({r.user for r in records}),
                 leaked=sum(t in train_texts for texts in split.test.values() for t in texts))
    return stats


def _write(out: Path, records: list[Record]) -> None:
    """All or nothing: a temporary file beside `out`, renamed over it when complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps({"user": r.user, "text": r.text}, ensure_ascii=False) + "\n")
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    s = prepare(args)
    out = Path(args.out)
    _write(out, s["records"])
    split = s["split"]
    kept = "dropped" if args.dedupe else "kept"
    print(f"{out}: {_n(len(s['records']), 'text')} from {_n(s['users'], 'user')}, {_n(s['words'], 'word')} "
          f"({_n(s['files'], 'file')}; {_n(s['short'], 'text')} under --min-words dropped, "
          f"{_n(s['duplicates'], 'repeated text')} {kept})")
    if s["users"] == 1:
        print(f"one user: every tool splits its texts in order, {len(split.texts('train')):,} to train, "
              f"{len(split.texts('validation')):,} to validation and the last {len(split.texts('test')):,} held out")
    else:
        print(f"split by user (seed 0, as every tool splits it): {len(split.train):,} train, "
              f"{len(split.validation):,} validation, {len(split.test):,} held-out (test) users")
    if args.texts_per_user and s["plain_files"]:
        print(f"note: plain text was dealt into pseudo-users of {args.texts_per_user} consecutive texts; a held-out "
              "pseudo-user is other passages by the same writer(s), not a new person, so its scores read higher")
    if s["leaked"]:
        print(f"warning: {s['leaked']:,} held-out texts also appear among the train users' texts; the references "
              "that train on them (central trigram and LSTM) will read high. --dedupe drops repeats")
    if not split.test:
        print("warning: no held-out users: tools.evaluate and tools.simulate need some (more users, or "
              "--texts-per-user for plain text)")
    if len(split.train) < SIMULATE_DEVICES:
        print(f"note: tools.simulate --devices {SIMULATE_DEVICES} needs {SIMULATE_DEVICES} train users; this corpus "
              f"has {len(split.train)} (pass --devices {max(1, len(split.train))}, or deal plain text with "
              "--texts-per-user)")
    return 0


def cli() -> None:
    run(main)


if __name__ == "__main__":
    cli()
