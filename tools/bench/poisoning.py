"""Poisoning within the norm bound: accuracy after one round, per aggregator and attacker share.

Honest devices fine-tune a version on their own users' text through the device trainer
(clipped, noised with the plan's sigma) exactly as on a phone; attackers send an update the
coordinator's validation still accepts (L2 norm 0.999 x the norm bound, the largest example
count), in one of two shapes: `flip`, the opposite of the honest mean direction, and `boost`,
the whole norm on one output bias (the rarest piece's logit), which the mean passes through
as norm / n on a single coordinate. For each attacker share
the same honest updates are reused (only k of them are replaced), aggregated with each
coordinator aggregator (`coordinator.aggregation.aggregate`), applied to the base version
(FedAvg, server learning rate 1) and scored on held-out users' text with the version's
`evaluate` signature (next-piece top-3). The `secure` column is what a secure-aggregation round
computes from the same devices (docs/privacy.md): honest devices train without noise of their
own and add their Skellam share, everyone's vector goes through the protocol's quantization
(`protocol.ddp`) and is summed in Z_2^32 (the pairwise masks cancel exactly, so they are left
out), and the unweighted mean is decoded; σ is then the central noise on the sum. Nothing is
checked there, so the attacker is not held to the norm bound; it sends the same vector as in
the plain columns, for comparison. Prints a Markdown table; `--json` writes the numbers.

    python -m tools.bench poisoning --model DIR [--corpus FILE] [--devices 10] [--sigmas 0,0.5]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from coordinator.aggregation import AGGREGATORS, aggregate, bounded_weight
from coordinator.validation import norm_bound
from edge_runtime.trainer import evaluate_windows, load_model, text_windows, train
from edge_runtime.update import NoiseSource, decode_delta
from model.corpus import read_corpus, split_users
from protocol import artifact, ddp
from protocol.plan import TrainPlan

COLUMNS = (*AGGREGATORS, "secure")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("poisoning", help="top-3 after one round vs attacker share, per aggregator",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="base version directory (e.g. python -m tests.tiny_version DIR)")
    p.add_argument("--corpus", help="JSONL or plain-text corpus (default: the repository's corpora/shakespeare.jsonl)")
    p.add_argument("--devices", type=int, default=10, help="devices per round (honest + attackers)")
    p.add_argument("--shares", default="0,0.1,0.2,0.3,0.4", help="attacker shares to try")
    p.add_argument("--sigmas", default="0,0.1,0.5", help="device noise multipliers to try")
    p.add_argument("--attacks", default="flip,boost", help="attack shapes to try (flip, boost)")
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--learning-rate", type=float, default=0.5)
    p.add_argument("--max-examples", type=int, default=64)
    p.add_argument("--eval-texts", type=int, default=300)
    p.add_argument("--trim", type=float, default=0.2, help="trimmed_mean: share cut at each end")
    p.add_argument("--repeats", type=int, default=3, help="rounds per setting (fresh noise), averaged")
    p.add_argument("--json", help="also write the results here")


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise ValueError(f"expected comma-separated numbers, got {text!r}") from e


class _Scorer:
    """Next-piece top-3 of a weight vector on the held-out texts, with the version's `evaluate`
    signature: the model and the windows are made once, every aggregate is only set and scored."""

    def __init__(self, base: Path, manifest: artifact.Manifest, texts: list[str]) -> None:
        self.model, self.tensors = load_model(base), manifest.tensors
        self.data = text_windows(base, texts, manifest)
        self.batch = manifest.architecture().model.train_batch

    def __call__(self, vector: np.ndarray) -> float:
        weights = artifact.unflatten(vector.astype(np.float32), self.tensors)
        totals = evaluate_windows(self.model, weights, self.data, self.batch)
        return totals["top3"] / totals["count"]


def _secure_mean(ups: list[tuple[np.ndarray, bool]], clip: float, sigma: float, seed: int) -> np.ndarray:
    """A secure round's decoded mean of `ups` ((vector, honest) pairs; no one drops out)."""
    n, d = len(ups), ups[0][0].size
    scale = ddp.choose_scale(clip, n, sigma, d, n)
    mu = ddp.skellam_mu(sigma, scale, clip, d, n)
    total = np.zeros(d, np.uint32)
    for i, (v, honest) in enumerate(ups):
        total += ddp.encode(v, scale, mu if honest else 0.0, seed=seed * 1000 + i)   # wraps mod 2^32
    return ddp.decode_sum(total, scale, n).astype(np.float64)


def _train_all(base: Path, users: list, plan: TrainPlan, rep: int, manifest: artifact.Manifest) -> list:
    out = []
    for i, (_, texts) in enumerate(users):
        res = train(base, texts, plan, shuffle_seed=rep * 1000 + i, noise=NoiseSource(bytes([i + 1, rep + 1]) * 16))
        out.append((decode_delta(res.update.delta, manifest.tensors).astype(np.float64), res.examples))
    return out


def _attack(name: str, honest: list[tuple[np.ndarray, int]], manifest: artifact.Manifest,
            weights: dict[str, np.ndarray], norm: float) -> np.ndarray:
    """The attacker's update (L2 norm `norm`)."""
    if name == "flip":
        direction = np.mean([v for v, _ in honest], axis=0)
        return -direction / np.linalg.norm(direction) * norm
    offset = 0   # boost: the whole norm on the output bias of the piece the base model rates lowest
    for t in manifest.tensors:
        size = int(np.prod(t.shape))
        if t.name == "out_bias":
            v = np.zeros(sum(int(np.prod(x.shape)) for x in manifest.tensors))
            v[offset + int(np.argmin(weights["out_bias"]))] = norm
            return v
        offset += size
    raise ValueError("the model has no out_bias tensor to attack")


def attacker_counts(shares: list[float], devices: int) -> list[int]:
    """The attacker counts the shares of `devices` make, each once: two shares that round to the
    same count were both added into one row's mean, which then read twice a score (top-3 1.2)."""
    return sorted({round(share * devices) for share in shares})


def main(args: argparse.Namespace) -> int:
    from tools._cli import DEFAULT_CORPUS

    t0 = time.time()
    shares, sigmas = _floats(args.shares), _floats(args.sigmas)
    if args.devices < 1 or args.repeats < 1 or args.eval_texts < 1 or args.max_examples < 1:
        raise ValueError("--devices, --repeats, --eval-texts and --max-examples must be >= 1")
    if not shares or not all(0 <= x <= 1 for x in shares):
        raise ValueError(f"--shares must list attacker shares in [0, 1], got {args.shares!r}")
    if not sigmas or not all(x >= 0 for x in sigmas):
        raise ValueError(f"--sigmas must list noise multipliers >= 0, got {args.sigmas!r}")
    if args.json:   # before any work: a folder, the corpus or a version's own file is no place for it
        from tools._cli import check_out_file

        check_out_file(args.json, [args.corpus or DEFAULT_CORPUS, *Path(args.model).glob("*")], what="--json")
    base = Path(args.model)
    manifest, weights = artifact.load_version(base)
    base_vec = artifact.flatten(weights, manifest.tensors).astype(np.float64)
    split = split_users(read_corpus(args.corpus or DEFAULT_CORPUS), seed=0)
    users = sorted(split.train.items(), key=lambda kv: -len(kv[1]))[:args.devices]
    if len(users) < args.devices:
        raise ValueError(f"the corpus has only {len(users)} training users")
    held = split.texts("test")[:args.eval_texts]
    if not held:
        raise ValueError(f"{args.corpus or DEFAULT_CORPUS} has no held-out (test) users to score on")
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    if not attacks or set(attacks) - {"flip", "boost"}:
        raise ValueError(f"--attacks must list flip and/or boost, got {args.attacks!r}")
    d = base_vec.size
    results = []
    unnoised: dict[int, list] = {}
    score = _Scorer(base, manifest, held)
    base_top3 = score(base_vec)
    for sigma in sigmas:
        plan = TrainPlan(round_id=1, epochs=1, batch_size=16, learning_rate=args.learning_rate,
                         clip_norm=args.clip, noise_multiplier=sigma, max_examples=args.max_examples)
        rows: dict[tuple[str, int], dict] = {}
        for rep in range(args.repeats):
            honest = _train_all(base, users, plan, rep, manifest)
            if rep not in unnoised:     # secure rounds: devices add no Gaussian noise of their own
                unnoised[rep] = honest if sigma == 0 else _train_all(
                    base, users, dataclasses.replace(plan, noise_multiplier=0.0), rep, manifest)
            for attack_name in attacks:
                attack = _attack(attack_name, honest, manifest, weights, 0.999 * norm_bound(args.clip, sigma, d))
                for k in attacker_counts(shares, args.devices):
                    if k == 0 and attack_name != attacks[0]:
                        continue   # no attacker: the same for every attack shape
                    ups = [(attack, args.max_examples)] * k + honest[k:]
                    row = rows.setdefault((attack_name if k else "-", k), {
                        "sigma": sigma, "attack": attack_name if k else "-", "attackers": k,
                        "share": k / args.devices, **{n: 0.0 for n in COLUMNS}})
                    for name in AGGREGATORS:
                        pairs = ((v.astype(np.float32), bounded_weight(n, args.max_examples)) for v, n in ups)
                        delta = aggregate(name, pairs, trim=args.trim).astype(np.float64)
                        row[name] += score(base_vec + delta) / args.repeats
                    secure = [(attack, False)] * k + [(v, True) for v, _ in unnoised[rep][k:]]
                    delta = _secure_mean(secure, args.clip, sigma, seed=rep)
                    row["secure"] += score(base_vec + delta) / args.repeats
        results += list(rows.values())
    print(f"base version top-3: {base_top3:.3f} ({len(held)} held-out texts); {args.devices} devices, "
          f"clip {args.clip}, lr {args.learning_rate}, trimmed mean cuts {args.trim:.0%} per end; "
          f"mean of {args.repeats} rounds per cell; "
          f"{time.time() - t0:.0f} s\n")
    print("| σ | attack | attackers | " + " | ".join(COLUMNS) + " |")
    print("|---|---|---|" + "---|" * len(COLUMNS))
    for r in results:
        print(f"| {r['sigma']:g} | {r['attack']} | {r['attackers']} of {args.devices} | "
              + " | ".join(f"{r[n]:.3f}" for n in COLUMNS) + " |")
    if args.json:
        artifact.atomic_write(args.json, json.dumps({"base_top3": base_top3, "results": results}, indent=1).encode(),
                              mode=0o644)
    return 0
