"""What central noise costs in accuracy, and how many devices per round buy which epsilon.

    python -m tools.secagg_quality [--model models/v0] [--corpus corpora/shakespeare.jsonl] [--devices 32]

A documented mixture of real and replayed updates, one round: the `--devices` train speakers
with the most text each fine-tune the model through the real `train` signature (ai-edge-litert,
clipped to C, no device noise: edge_runtime.trainer), giving real clipped updates. A secure
round of n devices drawn from a population like these has (in expectation) the same mean
update, so the round's result is `base + mean + noise`, with noise of std sigma_mean per
coordinate on the mean (sigma_mean = z C / n for central noise multiplier z). We measure
next-token top-3 (the `evaluate` signature) on the held-out speakers at each sigma_mean, then
say which (n, epsilon) pairs give that sigma_mean. Replay is the approximation: n > devices is
not trained, only its noise is. The noise is Gaussian here; at these parameters the Skellam sum
matches it to ~10 digits in epsilon (tools.secagg_bench epsilon), and in distribution to within
its discreteness (Skellam mu ~10^12 per coordinate).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from edge_runtime import trainer
from protocol import artifact, wire
from protocol.cli import HelpFormatter, Parser, add_version
from tools import privacy_skellam
from tools._cli import DEFAULT_CORPUS
from tools.shipped import SHIPPED_V0


def heldout_top3(version: Path, weights: dict[str, np.ndarray], data: trainer.Windows) -> float:
    """Next-token top-3 accuracy of `weights` (a version's architecture) on held-out windows."""
    B = artifact.read_manifest(version).architecture().model.train_batch
    totals = trainer.evaluate_windows(trainer.load_model(version), weights, data, B)
    return totals["top3"] / totals["count"]


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="python -m tools.secagg_quality", description=__doc__.split("\n")[0],
                                 formatter_class=HelpFormatter)
    add_version(ap)
    ap.add_argument("--model", default=str(SHIPPED_V0), help="base version directory")
    ap.add_argument("--corpus", default=DEFAULT_CORPUS, help="JSON Lines or plain text; train users = devices")
    ap.add_argument("--devices", type=int, default=32, help="real updates (train speakers with the most text)")
    ap.add_argument("--max-examples", type=int, default=192)
    ap.add_argument("--learning-rate", type=float, default=0.5)
    ap.add_argument("--clip-norm", type=float, default=3.0)
    ap.add_argument("--eval-windows", type=int, default=1500)
    ap.add_argument("--sigma", type=float, nargs="+", default=[0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2],
                    help="noise std on the mean update per coordinate, in units of C")
    ap.add_argument("--rounds-eps", type=int, default=100, help="rounds composed for the epsilon column")
    ap.add_argument("--delta", type=float, default=1e-6)
    ap.add_argument("--poison", type=float, nargs="*", default=[],
                    help="also: device 0 sends -lambda x its update; top-3 in plain mode (norm check) vs secure")
    a = ap.parse_args(argv)
    if not (a.devices >= 1 and a.max_examples >= 1 and a.eval_windows >= 1 and a.rounds_eps >= 1):
        raise ValueError("--devices, --max-examples, --eval-windows and --rounds-eps must be >= 1")
    if not all(math.isfinite(x) and x > 0 for x in (a.learning_rate, a.clip_norm)):
        raise ValueError("--learning-rate and --clip-norm must be numbers > 0")
    if not (all(math.isfinite(s) and s >= 0 for s in (*a.sigma, *a.poison)) and 0 < a.delta < 1):
        raise ValueError("--sigma and --poison must be numbers >= 0, --delta in (0, 1)")
    from tools.simulate import load_population

    version = Path(a.model)
    pop = load_population(a.corpus, a.devices)
    plan = wire.TrainPlan(round_id=1, epochs=1, batch_size=16, learning_rate=a.learning_rate, clip_norm=a.clip_norm,
                          noise_multiplier=0.0, max_examples=a.max_examples)
    manifest, base = artifact.load_version(version)
    t0 = time.time()
    vecs = [trainer.train(version, texts, plan, shuffle_seed=i).update.vector for i, (_, texts) in enumerate(pop.users)]
    mean = np.mean(vecs, axis=0)
    print(f"{len(vecs)} real updates in {time.time() - t0:.0f} s; |mean| = {np.linalg.norm(mean):.3f} "
          f"(C = {a.clip_norm}), {mean.size:,} parameters")
    base_vec = artifact.flatten(base, manifest.tensors)
    texts = [t for user_texts in pop.heldout.values() for t in user_texts]   # every held-out user's texts
    held = trainer.text_windows(version, texts, manifest)   # tokenized once, scored for every row
    every = len(held)   # an even sample across users: the first windows were the first users' only
    held = held.take(np.unique(np.linspace(0, every - 1, min(a.eval_windows, every)).round().astype(np.int64)))
    v0 = heldout_top3(version, base, held)
    rng = np.random.default_rng(0)
    ns = (100, 1000, 10000, 100000)
    print(f"\nbase model: top-3 {v0:.2%} on an even sample of {len(held)} of the {every} windows of "
          f"{len(pop.heldout)} held-out users\n")
    print("| noise on the mean (x C) | top-3 after the round | vs no noise | " + " | ".join(
        f"eps vs coordinator, {n:,} devices/round" for n in ns) + " |")
    print("|---:|---:|---:|" + "---:|" * len(ns))
    # The round without noise, whatever --sigma lists: the first sigma was taken as it, so "vs no
    # noise" and the attacker table's "no attacker" read against a noisy round.
    clean = heldout_top3(version, artifact.unflatten((base_vec + mean).astype(np.float32), manifest.tensors), held)
    for s in a.sigma:
        noisy = base_vec + mean + s * a.clip_norm * rng.standard_normal(mean.size)
        top3 = heldout_top3(version, artifact.unflatten(noisy.astype(np.float32), manifest.tensors), held)
        eps = [privacy_skellam.central_epsilon(a.rounds_eps, s * n, a.delta) if s > 0 else math.inf for n in ns]
        print(f"| {s:g} | {top3:.2%} | {(top3 - clean) * 100:+.2f} pt | " + " | ".join(
            "inf" if math.isinf(e) else f"{e:.3g}" for e in eps) + " |")
    print(f"\nepsilon: {a.rounds_eps} rounds, delta {a.delta:g}, central z = sigma x n (no sampling amplification).")
    if a.poison:
        _poison(a, version, manifest, base_vec, vecs, held, clean)
    return 0


def _poison(a: argparse.Namespace, version: Path, manifest: artifact.Manifest, base_vec: np.ndarray,
            vecs: list[np.ndarray], held: trainer.Windows, clean: float) -> None:
    """One attacker among the devices sends -lambda times its honest update (no noise). Plain
    mode: the coordinator's norm check (coordinator.validation) refuses it above the bound, so
    the round averages the others. Secure mode: nothing can be checked; the ring's only limit is
    |q| < 2^31 per coordinate, which -lambda x stays far inside for these lambdas."""
    from coordinator.validation import norm_bound
    from protocol import ddp

    bound = norm_bound(a.clip_norm, 0.0, base_vec.size)
    n = len(vecs)
    scale = ddp.choose_scale(a.clip_norm, n, 0.0, base_vec.size, n)
    print("\n| attacker sends | its L2 norm | plain: accepted? | plain top-3 | secure top-3 (x fits the ring?) |")
    print("|---|---:|---|---:|---:|")
    for lam in a.poison:
        evil = -lam * vecs[0]
        norm = float(np.linalg.norm(evil))
        fits = float(np.abs(evil).max()) * scale < 2**31
        plain_in = norm <= bound
        plain = np.mean([evil, *vecs[1:]] if plain_in else vecs[1:], axis=0)
        secure = np.mean([evil, *vecs[1:]], axis=0)
        res = []
        for m in (plain, secure):
            w = artifact.unflatten((base_vec + m).astype(np.float32), manifest.tensors)
            res.append(heldout_top3(version, w, held))
        print(f"| -{lam:g} x update | {norm:.3g} | {'yes' if plain_in else 'no (norm)'} | {res[0]:.2%} | "
              f"{res[1]:.2%} ({'yes' if fits else 'no'}) |")
    print(f"\nno attacker: {clean:.2%}; plain-mode norm bound {bound:.3g} (C = {a.clip_norm}, no device noise); "
          f"{n} devices, one of them the attacker.")


if __name__ == "__main__":
    from tools._cli import run

    run(main)
