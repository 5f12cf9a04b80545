"""On-device training throughput: the `train` signature in the slim interpreter vs TensorFlow.

The edge side runs in a subprocess (tools.bench.edge_train) that imports no TensorFlow, so its
peak RSS is the device's real cost; the TensorFlow side runs the same step (the model's
`train_step` on the version's weights, via model.export.load_module, as the same fixed-shape
concrete function that was converted) in this process. Same batch shape, same number of
steps, random token ids (throughput does not depend on the text), same run, interleaved: edge,
TensorFlow, edge, TensorFlow, ... `--repeats` times, each side's median reported, so a machine
that slows down part-way slows both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tools.bench.edge_train import peak_rss_mb, random_batch

REPO = Path(__file__).resolve().parents[2]


def run_edge(model: str, steps: int, warmup: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    r = subprocess.run([sys.executable, "-m", "tools.bench.edge_train", "--model", str(Path(model).resolve()),
                        "--steps", str(steps), "--warmup", str(warmup)],   # it runs in REPO: the path made absolute
                       capture_output=True, text=True, env=env, cwd=REPO, check=False)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise ValueError(f"edge training subprocess failed: {last}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def tensorflow_timer(model: str, steps: int, warmup: int) -> Callable[[], dict]:
    """TensorFlow's side, loaded and warmed up once; each call times `steps` more steps."""
    from tools._cli import quiet_tensorflow

    quiet_tensorflow()
    import tensorflow as tf

    from model.export import load_module
    from model.lstm import signature_functions

    m, _ = load_module(model)
    cfg = m.cfg
    train = signature_functions(m)["train"]
    rng = np.random.default_rng(0)
    batches = [random_batch(rng, cfg.vocab_size, cfg.train_batch, cfg.seq_len)
               for _ in range(min(steps + warmup, 64))]
    lr = tf.constant([1e-3], tf.float32)
    for i in range(warmup):
        x, y, mk = batches[i % len(batches)]
        train(x=tf.constant(x), y=tf.constant(y), mask=tf.constant(mk), lr=lr)

    def timed() -> dict:
        t0 = time.perf_counter()
        for i in range(steps):
            x, y, mk = batches[i % len(batches)]
            loss = train(x=tf.constant(x), y=tf.constant(y), mask=tf.constant(mk), lr=lr)["loss"]
        secs = time.perf_counter() - t0
        tokens = steps * cfg.train_batch * cfg.seq_len
        return {"backend": f"tensorflow {tf.__version__}", "seconds": secs, "tokens_per_s": tokens / secs,
                "ms_per_step": 1e3 * secs / steps, "last_loss": float(loss.numpy().reshape(-1)[0]),
                "peak_rss_mb": peak_rss_mb()}

    return timed


def _median(runs: list[dict]) -> dict:
    """The run of median throughput (the RSS fields: the largest of any run)."""
    mid = sorted(runs, key=lambda r: r["tokens_per_s"])[len(runs) // 2]
    return {**mid, "tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs),
            "ms_per_step": statistics.median(r["ms_per_step"] for r in runs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}


def main(args: argparse.Namespace) -> int:
    if args.steps < 1 or args.warmup < 0 or args.repeats < 1:
        raise ValueError("--steps and --repeats must be >= 1 and --warmup >= 0")
    if not (Path(args.model) / "manifest.json").is_file():
        raise FileNotFoundError(f"{args.model}: not a model version directory (no manifest.json)")
    edges, tfs, tf_timer = [], [], None
    for _ in range(args.repeats):
        edges.append(run_edge(args.model, args.steps, args.warmup))
        tf_timer = tf_timer or tensorflow_timer(args.model, args.steps, args.warmup)
        tfs.append(tf_timer())
    edge, tf_ = _median(edges), _median(tfs)
    base = edge["tokens_per_s"]
    print(f"training throughput, model {edge['version_id']} (batch {edge['batch']} x {edge['seq_len']} tokens), "
          f"{args.steps} steps after {args.warmup} warm-up, median of {args.repeats} runs each, interleaved")
    print(f"{'backend':36} {'tokens/s':>10} {'ms/step':>9} {'vs edge':>8}")
    for name, r in ((f"edge: {edge['backend']} (train signature)", edge),
                    (f"{tf_['backend']} (train_step)", tf_)):
        print(f"{name:36} {r['tokens_per_s']:10.0f} {r['ms_per_step']:9.2f} {r['tokens_per_s'] / base:7.2f}x")
    print(f"{'edge process peak RSS (MiB)':36} {edge['peak_rss_mb']:10.1f}   (after model load "
          f"{edge['rss_loaded_mb']:.1f}, interpreter start {edge['rss_start_mb']:.1f}; "
          f"tensorflow imported: {'yes' if any(r['tensorflow_imported'] for r in edges) else 'no'})")
    print(f"{'tensorflow process peak RSS (MiB)':36} {tf_['peak_rss_mb']:10.1f}   "
          f"({tf_['peak_rss_mb'] / max(edge['peak_rss_mb'], 1e-9):.1f}x the edge process)")
    return 0
