"""Give words their own softmax rows in a new model version (same graph; a canary candidate).

    python -m tools.add_words --base models/v0 --words words.txt --out models/v0-words
    python -m coordinator import-version models/v0-words     # goes out through the canary

`words.txt` holds one word per line, from a public source (nothing here reads device text). The
rarest softmax words make room and stay in the word list's tail (docs/quality.md, "Device words
as softmax rows").
"""

from __future__ import annotations

import argparse

from protocol.cli import HelpFormatter, add_version
from tools._cli import run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.add_words", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    add_version(p)
    p.add_argument("--base", required=True, help="the version directory to start from (e.g. the stable one)")
    p.add_argument("--words", required=True, help="text file, one word per line ('#' starts a comment)")
    p.add_argument("--out", required=True, help="new, empty directory for the new version")
    p.add_argument("--version-id", help="id of the new version (default: <parent>-w<count>-<tokenizer hash>)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from protocol.vocab import add_words, read_words, summary

    print(summary(add_words(args.base, read_words(args.words), args.out, version_id=args.version_id)))
    return 0


if __name__ == "__main__":
    run(main)
