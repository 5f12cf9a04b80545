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
from pathlib import Path

from model.corpus import FORMATS, CorpusError, Record, first_line, read_corpus, sniff_format, split_users
from protocol.artifact import atomic_write
from protocol.cli import HelpFormatter, Parser, add_version, file_in_the_way
from tools._cli import check_out_file, count, run

SIMULATE_DEVICES = 32     # the device count of the federated runs in docs/quality.md (tools.simulate --devices 32)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m tools.prepare", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    add_version(p)
    p.add_argument("inputs", nargs="+", metavar="FILE", help="JSON Lines or plain-text files, combined in order")
    p.add_argument("--out", required=True, help="the corpus to write (.jsonl)")
    p.add_argument("--format", default="auto", choices=FORMATS,
                   help="how to read the inputs: auto (JSON Lines if a file starts with '{', else one text a "
                        "line), jsonl, lines, or paragraphs (texts separated by blank lines, wrapped lines joined); "
                        "every text is written on one line, runs of whitespace as one space")
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


def one_writer_hint(corpus: str) -> str:
    """For a tool given a plain-text corpus (one user) where it needs many: the command that
    deals it into pseudo-users. Empty for JSON Lines, whose users are real people."""
    if sniff_format(corpus) != "lines":
        return ""
    return (f"; its text is all one writer's (plain text is one user): deal it into pseudo-users with python -m "
            f"tools.prepare {corpus} --texts-per-user 20 --out data/{Path(corpus).stem}-users.jsonl (add --format "
            "paragraphs for hard-wrapped text)")


def _read(path: str, args: argparse.Namespace) -> tuple[list[Record], bool]:
    """A file's records (texts on one line, short ones dropped later) and whether it is plain text.

    A forced plain format never reads a JSON Lines file: its JSON would become corpus text."""
    recs = read_corpus(path, fmt=args.format, user_field=args.user_field, text_field=args.text_field)
    plain = sniff_format(path) == "lines"
    if args.format in ("lines", "paragraphs") and not plain:
        try:
            first = json.loads(first_line(path))
        except (ValueError, RecursionError):
            first = None           # plain text that happens to start with '{' or '['
        if isinstance(first, dict) or (isinstance(first, list) and first and isinstance(first[0], dict)):
            what = "a JSON object" if isinstance(first, dict) else "a JSON array of objects"
            raise CorpusError(f"{path}: its first line is {what}, and --format {args.format} would keep the "
                              "JSON as text: convert JSON files in a run without --format")
        plain = True
    return [Record(r.user, " ".join(r.text.split())) for r in recs], plain


def _users(name: str, texts: list[str], n: int) -> list[Record]:
    """A plain-text file's texts as one user named after the file, or dealt in order into
    pseudo-users of n consecutive texts."""
    if n <= 0:
        return [Record(name, t) for t in texts]
    width = len(str((len(texts) - 1) // n + 1))
    return [Record(f"{name} #{i // n + 1:0{width}d}", t) for i, t in enumerate(texts)]


def prepare(args: argparse.Namespace) -> dict:
    """Read, clean and check the inputs; return the records and what the summary reports."""
    if args.texts_per_user < 0 or args.min_words < 0:
        raise CorpusError("--texts-per-user and --min-words must be >= 0")
    out = check_out_file(args.out, args.inputs)
    if out.exists() and not args.force:
        raise CorpusError(f"{args.out} exists: pass --force to overwrite it")
    records, seen, plain_names, json_users = [], set(), {}, set()
    stats = {"files": len(args.inputs), "plain_files": 0, "pseudo": False, "short": 0, "duplicates": 0}
    for f in args.inputs:
        recs, plain = _read(f, args)
        kept = []
        for r in recs:
            if len(r.text.split()) < max(1, args.min_words):
                stats["short"] += 1
                continue
            if r.text in seen:
                stats["duplicates"] += 1
                if args.dedupe:
                    continue
            seen.add(r.text)
            kept.append(r)
        if plain:
            name = Path(f).stem
            if name in plain_names:
                raise CorpusError(f"{f} and {plain_names[name]} would both be user {name!r} (a plain-text file is "
                                  "a user named after the file): rename one")
            plain_names[name] = f
            stats["plain_files"] += 1
            kept = _users(name, [r.text for r in kept], args.texts_per_user)
            stats["pseudo"] |= len({r.user for r in kept}) > 1
        else:
            json_users.update(r.user for r in kept)
        records.extend(kept)
    if clash := sorted(set(plain_names) & json_users):
        raise CorpusError(f"plain-text file {plain_names[clash[0]]} would be user {clash[0]!r}, a user of the JSON "
                          "Lines input too: rename the file")
    if not records:
        raise CorpusError("no texts left to write (check --min-words and the inputs)")
    if args.texts_per_user and not stats["plain_files"]:
        raise CorpusError("--texts-per-user deals plain-text files into pseudo-users; every input here is JSON Lines")
    split = split_users(records, seed=0)
    stats.update(records=records, split=split, words=sum(len(r.text.split()) for r in records),
                 users=len({r.user for r in records}), leaked=split.leaked("test")[0])
    return stats


def _write(out: Path, records: list[Record]) -> None:
    """All or nothing (`atomic_write`), readable by this account alone: a corpus is people's text."""
    data = "".join(json.dumps({"user": r.user, "text": r.text}, ensure_ascii=False) + "\n" for r in records)
    try:
        atomic_write(out, data.encode("utf-8"))
    except OSError as e:
        raise CorpusError(f"cannot write {out}: {file_in_the_way(e) or e.strerror or e}") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    s = prepare(args)
    out = Path(args.out)
    _write(out, s["records"])
    split = s["split"]
    kept = "dropped" if args.dedupe else "kept"
    print(f"{out}: {count(len(s['records']), 'text')} from {count(s['users'], 'user')}, {count(s['words'], 'word')} "
          f"({count(s['files'], 'file')}; {count(s['short'], 'text')} under --min-words dropped, "
          f"{count(s['duplicates'], 'repeated text')} {kept})")
    if s["users"] == 1:
        print(f"one user: every tool splits its texts in order, {len(split.texts('train')):,} to train, "
              f"{len(split.texts('validation')):,} to validation and the last {len(split.texts('test')):,} held out")
    else:
        print(f"split by user (seed 0, as every tool splits it): {len(split.train):,} train, "
              f"{len(split.validation):,} validation, {len(split.test):,} held-out (test) users")
    if s["pseudo"]:
        print(f"note: plain text was dealt into pseudo-users of {args.texts_per_user} consecutive texts; a held-out "
              "pseudo-user is other passages by the same writer(s), not a new person, so its scores read higher")
    if s["leaked"]:
        print(f"warning: of the held-out texts, {s['leaked']:,} also appear in the training part; the references "
              "that train on it (central trigram and LSTM) will read high. --dedupe drops repeats")
    deal = ("" if not s["plain_files"] else "; or a smaller --texts-per-user" if args.texts_per_user
            else "; or deal plain text into pseudo-users with --texts-per-user")
    if not split.test:
        print("warning: nothing is held out (" + ("fewer than 3 texts" if s["users"] == 1 else "too few users")
              + "): tools.evaluate and tools.simulate need held-out text" + deal)
    elif not split.train:
        print("warning: no train users (every user hashed to validation or held-out): tools.simulate has no "
              "device to run; the corpus needs more users" + deal)
    elif len(split.train) < SIMULATE_DEVICES:
        print(f"note: tools.simulate --devices {SIMULATE_DEVICES} needs {SIMULATE_DEVICES} train users and this corpus "
              f"has {len(split.train)}: pass --devices {len(split.train)}{deal}")
    return 0


def cli() -> None:
    run(main)


if __name__ == "__main__":
    cli()
