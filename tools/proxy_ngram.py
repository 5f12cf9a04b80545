"""Fit the keyboard's base n-gram on proxy text (no device text) and save it.

    python -m tools.proxy_ngram --proxy FILE [--proxy FILE ...] --out edge_runtime/data/proxy_trigram.npz
"""

from __future__ import annotations

import argparse
import time

from protocol.cli import HelpFormatter, Parser, add_version
from tools._cli import check_out_file, run


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m tools.proxy_ngram", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    add_version(p)
    p.add_argument("--proxy", action="append", required=True, help="proxy corpus (JSONL/text); repeat to combine")
    p.add_argument("--out", required=True, help="where to write the model (.npz)")
    p.add_argument("--order", type=int, default=3, help="n-gram order")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from edge_runtime.ngram import KneserNeyLM
    from model.corpus import read_corpus

    # through a link, its file (models/ngram/proxy_trigram.npz is one to the shipped n-gram): the
    # write renames a new file over its target, which replaced the link and left the shipped one as it was
    out = check_out_file(args.out, args.proxy).resolve()
    if out.exists() and not args.force:   # `--out` naming the shipped file replaced it silently
        raise FileExistsError(f"--out {out} exists; give a new file, or --force to replace it")
    t0 = time.time()
    texts = [r.text for p in args.proxy for r in read_corpus(p)]
    lm = KneserNeyLM.fit(texts, order=args.order)
    lm.save(out, mode=0o644)   # a public artifact, as the shipped one is
    print(f"{out}: order {args.order}, {len(lm.vocab):,} words from {len(texts):,} proxy texts, "
          f"{out.stat().st_size / 1e6:.1f} MB, {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    run(main)
