"""Give words their own softmax rows in a new model version (same graph; a canary candidate),
or, with --tail, add words to its word list for completion only (the same weights).

    python -m tools.add_words --base models/v0 --words words.txt --out models/v0-words
    python -m tools.add_words --base models/v0 --tail corpora/wordfreq_en.tsv --out models/v0-tail
    python -m coordinator import-version models/v0-words     # goes out through the canary

On a running coordinator, build on its stable version, not on version 0 (import-version refuses
a version that does not build on the stable one, whose rounds it would drop):

    python -m coordinator export-version STABLE_ID data/stable
    python -m tools.add_words --base data/stable --words words.txt --out data/stable-words

`words.txt` holds one word per line, from a public source (nothing here reads device text). The
rarest softmax words make room and stay in the word list's tail (docs/quality.md, "Device words
as softmax rows"). `--tail` reads `word<TAB>frequency` lines (`corpora/wordfreq_en.tsv`) and
appends the words the list lacks (in any casing) to its tail, most frequent first, up to --max-tail; no id
moves, so the weights are the source's (`make v0` builds version 0's word list this way). The list's
licence notice (--notice; by default the file of the same name ending in .LICENSE beside it, as
`corpora/wordfreq_en.LICENSE`) goes into the new version's signed manifest, so it reaches every device
with the word list (`python -m edge_runtime notices` prints it there).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from protocol.cli import HelpFormatter, Parser, add_version
from tools._cli import run

DEFAULT_MAX_TAIL = 100_000   # docs/quality.md, "Present-day words in the word list"


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m tools.add_words", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    add_version(p)
    p.add_argument("--base", required=True, help="the version directory to start from (e.g. the stable one)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--words", help="text file, one word per line ('#' starts a comment): softmax rows")
    what.add_argument("--tail", help="word<TAB>frequency file: words for the word list's tail (completion only)")
    p.add_argument("--max-tail", type=int, default=None,
                   help=f"with --tail: add at most this many words (default {DEFAULT_MAX_TAIL:,})")
    p.add_argument("--notice", help="with --tail: the list's licence notice, a text file (default: the list's "
                                    "name with .LICENSE, if that file exists)")
    p.add_argument("--out", required=True, help="new, empty directory for the new version")
    p.add_argument("--version-id", help="id of the new version (default: <parent>-w<count>-<tokenizer hash>, "
                                        "-t<count>- with --tail; with --tail, the base's own id builds the same "
                                        "version further)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import json

    from protocol.vocab import VocabError, add_tail_words, add_words, read_frequencies, read_notice, read_words, summary

    if args.tail is None:
        if args.max_tail is not None or args.notice is not None:
            raise VocabError("--max-tail and --notice go with --tail, not --words")
        print(summary(add_words(args.base, read_words(args.words), args.out, version_id=args.version_id)))
        return 0
    limit = DEFAULT_MAX_TAIL if args.max_tail is None else args.max_tail
    if limit < 1:
        raise VocabError("--max-tail must be >= 1")
    beside = Path(args.tail).with_suffix(".LICENSE")
    notice_path = Path(args.notice) if args.notice is not None else (beside if beside.is_file() else None)
    vid, added, skipped = add_tail_words(args.base, read_frequencies(args.tail), args.out, limit=limit,
                                version_id=args.version_id, notice=read_notice(notice_path) if notice_path else "")
    print(json.dumps({"version_id": vid, "out": args.out, "tail_words_added": len(added), "first": added[:10],
                      "skipped": skipped, "notice": str(notice_path) if notice_path else None}, indent=2))
    return 0


if __name__ == "__main__":
    run(main)
