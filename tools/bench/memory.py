"""`python -m tools.bench memory`: what the keyboard holds in memory, each setup in a process of its own.

A keyboard runs for days beside everything else on a phone-class board, so what it holds
matters as much as how fast it answers. Each setup runs in a fresh process (this module with
`--child`), so no setup's peak carries into the next, and reports its resident memory (VmRSS)
after the imports, after loading the keyboard's predictor on the version (the LSTM in the
interpreter, the word list, the base n-gram), and after typing into one session keystroke by
keystroke, each keystroke one `Session.update` with the whole text before the cursor as the
keyboard page sends it: `--chars` characters (the page's limit by default) of the held-out texts
joined, repeated from the first if they hold fewer; and its peak (VmHWM), loading included.
Setups, side by side: the keyboard as it ships, and without its base n-gram (the device setting
`base_ngram` off), which shows the n-gram's share.

    python -m tools.bench memory --model models/v0 [--corpus FILE] [--chars 16384]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from tools.bench.edge_train import peak_rss_mb, proc_status_kb

SETUPS = (("keyboard as shipped", ""), ("keyboard without its base n-gram", "off"))   # `base_ngram` settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("memory", help="the keyboard's resident memory: loaded, and after typing a long text",
                       description=__doc__.split("\n\n")[1])
    m.add_argument("--model", required=True, help="model version directory")
    m.add_argument("--corpus", default=None, help="JSONL or plain-text corpus whose held-out texts are typed "
                                                   "(default: the repository's Shakespeare)")
    m.add_argument("--chars", type=int, default=None,
                   help="characters typed into one session (default: the keyboard page's limit)")


def rss_mb() -> float:
    """This process's resident memory now, in MiB."""
    kb = proc_status_kb("VmRSS")
    if kb is None:
        raise OSError("no VmRSS in /proc/self/status")
    return kb / 1024.0


def child(model: str, corpus: str, chars: int, base_ngram: str) -> dict[str, float]:
    """One setup, in this process: memory after imports, after loading, at the peak of typing."""
    from edge_runtime.model_slot import load_predictor
    from tools.bench.keystroke import held_out_texts

    texts, _ = held_out_texts(corpus)
    if not texts:
        raise ValueError(f"{corpus}: no text to type")
    text = " ".join(texts)   # held-out texts joined into one long message, again from the first if short
    text = " ".join([text] * -(-chars // (len(text) + 1)))[:chars]
    imported = rss_mb()
    predictor = load_predictor(Path(model), base_ngram=base_ngram)
    loaded = rss_mb()
    session = predictor.session()
    t0 = time.perf_counter()
    for i in range(1, len(text) + 1):
        session.update(text[:i])
    return {"imported_mb": imported, "loaded_mb": loaded, "typed_rss_mb": rss_mb(), "peak_mb": peak_rss_mb(),
            "chars": len(text), "chunks": len(session.chunks), "seconds": time.perf_counter() - t0}


def main(args: argparse.Namespace) -> int:
    from edge_runtime.cache import MAX_TEXT
    from tools._cli import DEFAULT_CORPUS

    corpus = args.corpus or DEFAULT_CORPUS
    chars = MAX_TEXT if args.chars is None else args.chars
    if chars < 1:
        raise ValueError("--chars must be >= 1")
    if not Path(args.model, "manifest.json").is_file():
        raise ValueError(f"{args.model}: not a model version directory (no manifest.json)")
    rows = []
    for name, base in SETUPS:
        r = subprocess.run([sys.executable, "-m", "tools.bench.memory", "--child", str(Path(args.model).resolve()),
                            str(Path(corpus).resolve()), str(chars), base],
                           cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True,
                           check=False)   # run in the repository, wherever the command was started
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            if any(e in last for e in ("CorpusError", "ArtifactError")):   # the input's fault: one line, exit 2
                raise ValueError(f"the {name!r} process refused its input: {last.split(': ', 1)[-1]}")
            raise RuntimeError(f"the {name!r} process failed: {last}")
        rows.append((name, json.loads(r.stdout.strip().splitlines()[-1])))
    first = rows[0][1]
    print(f"keyboard memory, model {args.model}: one session typed {first['chars']:,} characters "
          f"({first['chunks']:,} words and marks) of {corpus}, keystroke by keystroke")
    print(f"{'setup':34} {'imports':>8} {'loaded':>8} {'typed':>8} {'peak':>8} {'kept':>6}  (MiB)")
    for name, r in rows:
        print(f"{name:34} {r['imported_mb']:8.0f} {r['loaded_mb']:8.0f} {r['typed_rss_mb']:8.0f} "
              f"{r['peak_mb']:8.0f} {r['typed_rss_mb'] - r['loaded_mb']:6.0f}")
    shipped, bare = rows[0][1], rows[1][1]
    share = shipped["loaded_mb"] - bare["loaded_mb"]
    kept = 1000 * (shipped["typed_rss_mb"] - shipped["loaded_mb"]) / max(shipped["chars"], 1)
    print(f"kept: what the typed session holds on to (typed - loaded), {kept:.2f} MiB per 1,000 characters; "
          f"peak: the most the process held while typing")
    print(f"the base n-gram: {share:.0f} MiB of the {shipped['loaded_mb']:.0f} MiB loaded "
          f"({share / shipped['loaded_mb']:.0%})")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"] and len(sys.argv) == 6:
        print(json.dumps(child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])))
    else:
        sys.exit("usage: python -m tools.bench memory --model DIR (this module runs one setup with --child)")
