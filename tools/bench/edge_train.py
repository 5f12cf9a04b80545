"""The edge side of `python -m tools.bench train`, run in its own process.

Imports no TensorFlow (checked, and reported), so its peak RSS (`resource.getrusage`) is what
a device pays to train through the slim interpreter. Prints one JSON object on stdout.

    python -m tools.bench.edge_train --model DIR [--steps N] [--warmup N]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np


def proc_status_kb(key: str, pid: int | str = "self") -> int | None:
    """A kB field of a process's /proc status (VmRSS, VmHWM), or None where there is none (the
    process is gone, or not Linux). The benchmarks' one reader of it."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak RSS in MiB. Linux's VmHWM first: getrusage's ru_maxrss survives fork and
    exec, so a subprocess started by a parent holding TensorFlow would report the parent's peak."""
    kb = proc_status_kb("VmHWM")
    if kb is not None:
        return kb / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def random_batch(rng: np.random.Generator, vocab: int, batch: int, seq_len: int):
    x = rng.integers(4, vocab, size=(batch, seq_len), dtype=np.int32)
    y = rng.integers(4, vocab, size=(batch, seq_len), dtype=np.int32)
    return x, y, np.ones((batch, seq_len), np.float32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.edge_train")
    ap.add_argument("--model", required=True)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:   # steps 0 divided by zero at the end
        raise ValueError("--steps must be >= 1 and --warmup >= 0")
    rss_start = peak_rss_mb()
    from protocol.arch import SIG_TRAIN
    from protocol.interpreter import Model

    model = Model.load(args.model)
    cfg = model.manifest.architecture().model
    B, T, V = cfg.train_batch, cfg.seq_len, cfg.vocab_size
    rss_loaded = peak_rss_mb()
    train = model.runner(SIG_TRAIN)
    rng = np.random.default_rng(0)
    batches = [random_batch(rng, V, B, T) for _ in range(min(args.steps + args.warmup, 64))]
    lr = np.array([1e-3], np.float32)
    for i in range(args.warmup):
        x, y, m = batches[i % len(batches)]
        train(x=x, y=y, mask=m, lr=lr)
    t0 = time.perf_counter()
    for i in range(args.steps):
        x, y, m = batches[i % len(batches)]
        loss = train(x=x, y=y, mask=m, lr=lr)["loss"]
    secs = time.perf_counter() - t0
    print(json.dumps({
        "backend": model.backend, "version_id": model.manifest.version_id, "batch": B, "seq_len": T,
        "steps": args.steps, "seconds": secs, "tokens_per_s": args.steps * B * T / secs,
        "ms_per_step": 1e3 * secs / args.steps, "last_loss": float(np.asarray(loss).reshape(-1)[0]),
        "rss_start_mb": rss_start, "rss_loaded_mb": rss_loaded, "peak_rss_mb": peak_rss_mb(),
        "tensorflow_imported": any(m.split(".")[0] == "tensorflow" for m in sys.modules),
    }))
    return 0


if __name__ == "__main__":
    from tools._cli import run

    run(main)   # a bad --model is one line, exit 2, not a traceback
