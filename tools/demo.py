"""The one-command FedKeys run: build version 0, a central reference, and score them.

    python -m tools.demo [--data-dir data] [--corpus FILE] [--proxy FILE]

Steps (each reused when its output already exists, so a re-run is quick):
1. version 0: SentencePiece tokenizer + LSTM pretrained on the proxy corpus only, exported to
   builtin-only TFLite and linted in the slim interpreter (data/models/v0);
2. central reference: version 0 trained further on the device corpus's train users
   (data/models/central), the upper bound for federated learning;
3. evaluation on the device corpus's held-out users: Kneser-Ney trigram, proxy-only, central,
   written to data/report.md and data/report.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from tools._cli import DEFAULT_CORPUS, DEFAULT_PROXY, run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="data", help="everything goes under this directory (default: data)")
    p.add_argument("--corpus", default=DEFAULT_CORPUS, help="device text (JSONL or plain text)")
    p.add_argument("--proxy", default=DEFAULT_PROXY, help="proxy text for the tokenizer and version 0")
    p.add_argument("--pretrain-epochs", type=int, default=2)
    p.add_argument("--pretrain-steps", type=int, default=700, help="steps per pretraining epoch (batch 64)")
    p.add_argument("--central-epochs", type=int, default=4)
    p.add_argument("--max-words", type=int, default=3000, help="held-out words scored per model")
    p.add_argument("--rebuild", action="store_true", help="retrain even if the versions exist")
    return p


def _step(title: str, cmd: list[str]) -> None:
    print(f"\n== {title}\n$ {' '.join(cmd)}", flush=True)
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", *cmd])
    if res.returncode != 0:
        raise SystemExit(f"error: step '{title}' failed (exit {res.returncode})")
    print(f"   done in {time.time() - t0:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from model.corpus import read_corpus

    for path in (args.corpus, args.proxy):
        read_corpus(path)  # fail fast, with a clear message, before minutes of training
    data = Path(args.data_dir)
    v0, central = data / "models" / "v0", data / "models" / "central"
    if args.rebuild or not (v0 / "manifest.json").exists():
        _step("version 0 from proxy text", ["tools.pretrain", "--proxy", args.proxy, "--out", str(v0),
                                            "--epochs", str(args.pretrain_epochs),
                                            "--steps-per-epoch", str(args.pretrain_steps)])
    else:
        print(f"reusing {v0}")
    if args.rebuild or not (central / "manifest.json").exists():
        _step("central reference on the device corpus's train users",
              ["tools.pretrain", "--corpus", args.corpus, "--init", str(v0), "--out", str(central),
               "--epochs", str(args.central_epochs), "--patience", "2", "--lr", "1e-3"])
    else:
        print(f"reusing {central}")
    print("\n== evaluation on held-out users", flush=True)
    out = subprocess.run([sys.executable, "-m", "tools.evaluate", "--model", str(v0), "--model", str(central),
                          "--corpus", args.corpus, "--baseline", "--json", "--max-words", str(args.max_words)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"error: evaluation failed: {out.stderr.strip()[-500:]}")
    res = json.loads(out.stdout)
    rows = [("Kneser-Ney trigram (train users)", res["ngram"]), ("LSTM, proxy only (v0)", res["models"][str(v0)]),
            ("LSTM, central on train users", res["models"][str(central)])]
    lines = [f"Held-out users of `{Path(args.corpus).name}` ({res['words']} words), proxy `{Path(args.proxy).name}`.",
             "", "| model | top-1 | top-3 | KSR | word perplexity |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {n} | {r['top1']:.1%} | {r['top3']:.1%} | {r['ksr']:.1%} | {r['word_perplexity']:.1f} |"
              for n, r in rows]
    gap = rows[2][1]["top3"] - rows[0][1]["top3"]
    lines += ["", f"Central LSTM vs n-gram, top-3: {gap * 100:+.1f} points."]
    report = "\n".join(lines)
    (data / "report.md").write_text(report + "\n")
    (data / "report.json").write_text(json.dumps({n: r for n, r in rows}, indent=2))
    print(report)
    print(f"\nreport: {data / 'report.md'}")
    return 0


if __name__ == "__main__":
    run(main)
