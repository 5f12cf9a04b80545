"""Device-side helper for the end-to-end check; runs natively and on the board (no TensorFlow).

    python -m tools.arm.scenario type --data-dir DIR --index I

commits the scenario's sentences into the device's text cache, as the keyboard would (one
process instead of one `python -m edge_runtime type` per sentence: under emulation each
Python start costs seconds). Every device's text carries a marker only it has typed.
"""

from __future__ import annotations

import argparse
import sys

SENTENCES = (
    "I will see you at the station tomorrow morning",
    "thanks for the lovely dinner last night",
    "can you send me the notes from the meeting",
    "we should go to the park if the weather is good",
    "my train is running late again today",
    "let me know when you are home safe",
    "the kids loved the new book you gave them",
    "I think we need more coffee for the office",
    "happy birthday and have a wonderful day",
    "see you soon and take care of yourself",
)


def marker(i: int) -> str:
    """A string that exists only in device i's typed text (so it must never leave device i)."""
    return f"zqxmarker{i}vwk"


def type_corpus(data_dir: str, index: int) -> int:
    from edge_runtime import cache as text_cache
    from edge_runtime.config import load_config

    cfg = load_config(flags={"data_dir": data_dir})
    stored = sum(text_cache.type_text(cfg, f"{s} {marker(index)}" if j % 3 == 0 else s, "message")
                 for j, s in enumerate(SENTENCES))
    assert not text_cache.type_text(cfg, f"hunter2 {marker(index)}", "password")   # never cached
    return stored


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.arm.scenario")
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("type")
    t.add_argument("--data-dir", required=True)
    t.add_argument("--index", type=int, required=True)
    args = ap.parse_args(argv)
    n = type_corpus(args.data_dir, args.index)
    print(f"cached {n} texts")
    return 0 if n == len(SENTENCES) else 1


if __name__ == "__main__":
    sys.exit(main())
