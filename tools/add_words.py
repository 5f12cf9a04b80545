"""Give words their own softmax rows in a new model version (same graph; a canary candidate),
or, with --tail, add words to its word list for completion only (the same weights).

    python -m tools.add_words --base models/v0 --words words.txt --out models/v0-words
    python -m tools.add_words --base models/v0 --tail corpora/wordfreq_en.tsv --out models/v0-tail
    python -m coordinator import-version models/v0-words     # goes out through the canary

`words.txt` holds one word per line, from a public source (nothing here reads device text). The
rarest softmax words make room and stay in the word list's tail (docs/quality.md, "Device words
as softmax rows"). `--tail` reads `word<TAB>frequency` lines (`corpora/wordfreq_en.tsv`) and
appends the words the list lacks (in any casing) to its tail, most frequent first, up to --max-tail; no id
moves, so the weights are the source's (`make v0` builds version 0's word list this way).
"""

from __future__ import annotations

import argparse

from protocol.cli import HelpFormatter, add_version
from tools._cli import run

DEFAULT_MAX_TAIL = 100_000   # docs/quality.md, "Present-day words in the word list"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.add_words", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    add_version(p)
    p.add_argument("--base", required=True, help="the version directory to start from (e.g. the stable one)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--words", help="text file, one word per line ('#' starts a comment): softmax rows")
    what.add_argument("--tail", help="word<TAB>frequency file: words for the word list's tail (completion only)")
    p.add_argument("--max-tail", type=int, default=None,
                   help=f"with --tail: add at most this many words (default {DEFAULT_MAX_TAIL:,})")
    p.add_argument("--out", required=True, help="new, empty directory for the new version")
    p.add_argument("--version-id", help="id of the new version (default: <parent>-w<count>-<tokenizer hash>, "
                                        "-t<count>- with --tail; with --tail, the base's own id builds the same "
                                        "version further)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import json

    from protocol.vocab import VocabError, add_tail_words, add_words, read_frequencies, read_words, summary

    if args.tail is None:
        if args.max_tail is not None:
            raise VocabError("--max-tail goes with --tail, not --words")
        print(summary(add_words(args.base, read_words(args.words), args.out, version_id=args.version_id)))
        return 0
    limit = DEFAULT_MAX_TAIL if args.max_tail is None else args.max_tail
    if limit < 1:
        raise VocabError("--max-tail must be >= 1")
    vid, added = add_tail_words(args.base, read_frequencies(args.tail), args.out, limit=limit,
                                version_id=args.version_id)
    print(json.dumps({"version_id": vid, "out": args.out, "tail_words_added": len(added), "first": added[:10]},
                     indent=2))
    return 0


if __name__ == "__main__":
    run(main)
