"""Secure aggregation: costs, epsilon and the Paillier alternative, as markdown tables (docs/privacy.md).

    python -m tools.secagg_bench costs     [--devices 10 100 500] [--dropout 0 0.1 0.3] [--full-dim-max 100]
    python -m tools.secagg_bench epsilon   [--rounds 8 100 1000]
    python -m tools.secagg_bench paillier  [--slice 16]
    python -m tools.secagg_bench discovery --corpus FILE [--model models/v0] [--k 8] [--z 0 0.5 1 2] [--devices 32 0]

`costs` runs the real protocol (protocol.secagg, protocol.ddp, the wire messages serialized to
count bytes, edge_runtime.secagg_client's masking and Revealer) in one process: no HTTP, so
500 devices fit a laptop. It checks the unmasked sum equals the sum of the devices' quantized
inputs. Bytes and Shamir time come from that run at a small dimension (they do not depend on
it); the coordinator's unmask time at the model's full dimension is measured directly up to
`--full-dim-max` devices and, above, extrapolated from the measured cost of one mask
expansion (the masked inputs there are random: the coordinator's work does not depend on them).

`discovery` runs a word-discovery round's math (protocol.discovery: votes over the version's
word-list tail, Skellam shares via protocol.ddp, the coordinator's bar) with a corpus's train
users as the devices (the N with the most text; 0: all of them) and prints what it finds at
each noise multiplier, with the epsilon of that one release against the coordinator.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.secagg_client import Revealer, masked_vector
from protocol import ddp, secagg
from protocol import secagg_wire as sw
from protocol.artifact import read_manifest
from protocol.cli import EXIT_USER_ERROR, Parser, add_version
from tools import privacy_skellam
from tools.shipped import SHIPPED_V0


@functools.cache
def full_dim() -> int:
    """The shipped version 0's size (1,356,048 parameters): the update every device masks. Read
    when a measurement needs it, not at import: `--help` of an installed copy, which ships no
    version 0, would end in a traceback."""
    return read_manifest(SHIPPED_V0).num_params

DESIGN_DROPOUT = 0.3


def _jbytes(d: dict) -> int:
    return len(json.dumps(d, separators=(",", ":")).encode())


@dataclass
class RoundCost:
    n: int
    dropped: int
    k: int
    t: int
    up: float                # bytes per surviving device, uploaded
    down: float
    shamir_s: float          # coordinator: recovering the seeds
    expansions: int          # coordinator: PRG mask expansions to remove
    unmask_s: float          # coordinator: sum + masks removed, at this run's dimension
    peak_mb: float


def simulate(n: int, dropout: float, dim: int, seed: int = 0, noise_multiplier: float = 0.5) -> RoundCost:
    """One whole secure round in memory; raises if the unmasked sum is wrong."""
    rng = random.Random(seed)
    rid = 1
    k, t = secagg.graph_degree(n, DESIGN_DROPOUT)
    n_min = min(n, max(2, math.ceil((1 - DESIGN_DROPOUT) * n)))
    scale = ddp.choose_scale(1.0, n, noise_multiplier, dim, n_min)
    mu = ddp.skellam_mu(noise_multiplier, scale, 1.0, dim, n_min)
    gseed = os.urandom(32)
    graph = secagg.neighbours(n, k, gseed)
    enc = [secagg.generate_keypair() for _ in range(n)]
    msk = [secagg.generate_keypair() for _ in range(n)]
    up = [_jbytes(sw.SecAggKeys(enc[i][1], msk[i][1]).to_dict()) for i in range(n)]
    down = [0] * n
    rosters = []
    for i in range(n):
        r = sw.SecAggRoster(rid, i, n, k, t, n_min, gseed, dim, scale, mu,
                            tuple(sw.Neighbour(j, enc[j][1], msk[j][1]) for j in graph[i]))
        down[i] += _jbytes(r.to_dict())
        rosters.append(r)
    self_seeds = [os.urandom(32) for _ in range(n)]
    boxes: dict[int, dict[int, bytes]] = {i: {} for i in range(n)}
    for i in range(n):
        a, b = secagg.share_secret(self_seeds[i], t, k), secagg.share_secret(msk[i][0], t, k)
        cts = {j: secagg.encrypt_share(secagg.agree(enc[i][0], enc[j][1], b"enc", rid, i, j), rid, i, j, x + y)
               for j, x, y in zip(graph[i], a, b, strict=True)}
        up[i] += _jbytes(sw.SecAggShares(cts).to_dict())
        for j, ct in cts.items():
            boxes[j][i] = ct
    # At most what the round survives: round(7.5) dropped 8 of 25, leaving 17 of the n_min 18.
    dropped = set(rng.sample(range(n), min(math.floor(dropout * n + 1e-9), n - n_min)))
    survivors = [i for i in range(n) if i not in dropped]
    held, masked, truth = {}, {}, np.zeros(dim, np.uint32)
    for i in survivors:
        down[i] += _jbytes(sw.SecAggInbox(boxes[i]).to_dict())
        held[i] = {}
        for j, ct in boxes[i].items():
            pt = secagg.decrypt_share(secagg.agree(enc[i][0], enc[j][1], b"enc", rid, j, i), rid, j, i, ct)
            held[i][j] = (pt[:secagg.SHARE_BYTES], pt[secagg.SHARE_BYTES:])
        x = np.random.default_rng(i).normal(size=dim)
        x /= max(1.0, np.linalg.norm(x))
        truth += ddp.encode(x, scale, mu, seed=1000 + i)
        masked[i] = masked_vector(x, rosters[i], msk[i][0], self_seeds[i], {j: sw.Neighbour(j, enc[j][1], msk[j][1])
                                                                       for j in boxes[i]}, seed=1000 + i)
        up[i] += 4 * dim
    t0 = time.perf_counter()
    total = np.zeros(dim, np.uint32)
    for y in masked.values():
        total += y
    reveals: dict[tuple[str, int], list[bytes]] = {}
    for i in survivors:
        nb = set(graph[i])
        req = sw.SecAggUnmaskRequest(tuple(sorted(nb - dropped)), tuple(sorted(nb & dropped)), len(survivors))
        down[i] += _jbytes(req.to_dict())
        ans = Revealer(i, held[i], n_min).answer(req)
        up[i] += _jbytes(ans.to_dict())
        for kind, shares in (("self", ans.self_shares), ("key", ans.key_shares)):
            for owner, s in shares.items():
                reveals.setdefault((kind, owner), []).append(s)
    ts = time.perf_counter()
    seeds = {i: secagg.recover_secret(reveals[("self", i)], t) for i in survivors}
    keys = {j: secagg.recover_secret(reveals[("key", j)], t) for j in dropped}
    shamir_s = time.perf_counter() - ts
    tracemalloc.start()     # only around the vector work: it slows big-integer arithmetic ~10x
    t1 = time.perf_counter()
    out = secagg.unmask_sum(total, seeds, keys, {i: msk[i][1] for i in survivors}, graph, rid)
    unmask_s = time.perf_counter() - t1 + (t1 - t0)
    held_shares = sum(len(x) for v in reveals.values() for x in v)
    peak = (tracemalloc.get_traced_memory()[1] + held_shares) / 2**20
    tracemalloc.stop()
    if not np.array_equal(out, truth):
        raise AssertionError("the unmasked sum differs from the sum of the quantized inputs")
    expansions = len(survivors) + sum(len(set(graph[j]) - dropped) for j in dropped)
    return RoundCost(n, len(dropped), k, t, float(np.mean([up[i] for i in survivors])),
                     float(np.mean([down[i] for i in survivors])), shamir_s, expansions, unmask_s, peak)


def coordinator_full_dim(c: RoundCost, dim: int | None = None) -> tuple[float, float]:
    """(seconds, peak MiB) of the coordinator's sum + unmask at `dim`, measured: a masked vector
    added once per survivor, real mask expansions (as many as the simulated round needed). The
    masked vector is made before the clock starts: drawing it (os.urandom) is the device's work,
    and inside the clock it doubled the 0%-dropout rows. Each add here is from memory; the service
    reads each survivor's blob from disk first (about 1 ms more per device at this size)."""
    dim = full_dim() if dim is None else dim
    arriving = np.frombuffer(os.urandom(4 * dim), "<u4")
    tracemalloc.start()
    t0 = time.perf_counter()
    acc = np.zeros(dim, np.uint32)
    for _ in range(c.n - c.dropped):
        acc += arriving
    for e in range(c.expansions):
        secagg.add_mask(acc, e.to_bytes(32, "little"), -1)
    secs = time.perf_counter() - t0 + c.shamir_s
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return secs, peak


def per_add_seconds(dim: int | None = None, reps: int = 20) -> float:
    """One masked vector added into the accumulator (what each survivor costs the coordinator)."""
    dim = full_dim() if dim is None else dim
    acc, arriving = np.zeros(dim, np.uint32), np.frombuffer(os.urandom(4 * dim), "<u4")
    t0 = time.perf_counter()
    for _ in range(reps):
        acc += arriving
    return (time.perf_counter() - t0) / reps


def per_expansion_seconds(dim: int | None = None, reps: int = 10) -> float:
    dim = full_dim() if dim is None else dim
    acc = np.zeros(dim, np.uint32)
    t0 = time.perf_counter()
    for e in range(reps):
        secagg.add_mask(acc, e.to_bytes(32, "little"), 1)
    return (time.perf_counter() - t0) / reps


def costs(devices: list[int], dropouts: list[float], full_dim_max: int, sim_dim: int) -> str:
    plain = 2 * full_dim() + 400            # float16 safetensors body + header
    per, add = per_expansion_seconds(), per_add_seconds()
    rows = ["| devices | dropout | k / t | up per device | vs float16 | down | Shamir s | mask expansions | "
            f"coordinator unmask s ({full_dim() / 1e6:.2f} M) | peak MiB | how |",
            "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for n in devices:
        for p in dropouts:
            c = simulate(n, p, sim_dim)
            up_full = c.up - 4 * sim_dim + 4 * full_dim()
            if n <= full_dim_max:
                secs, peak = coordinator_full_dim(c)
                how = "measured"
            else:
                secs = c.shamir_s + c.expansions * per + (n - c.dropped) * add
                peak, how = 3 * 4 * full_dim() / 2**20 + c.peak_mb, "extrapolated"
            rows.append(f"| {n} | {p:.0%} | {c.k} / {c.t} | {up_full / 2**20:.2f} MiB | {up_full / plain:.2f}x | "
                        f"{c.down / 1024:.1f} KiB | {c.shamir_s:.2f} | {c.expansions} | {secs:.1f} | {peak:.0f} | "
                        f"{how} |")
    rows.append(f"\nOne mask expansion at {full_dim():,} parameters: {per * 1e3:.1f} ms (ChaCha20 + uint32 add); "
                f"one masked vector added: {add * 1e3:.1f} ms. "
                f"Protocol run (bytes, Shamir, correctness) at dimension {sim_dim}; sum verified exactly.")
    return "\n".join(rows)


def epsilon_table(rounds: list[int], delta: float, population: int, noise_on_mean: float = 0.01) -> str:
    """Central epsilon at a fixed noise on the mean update, z C / n = noise_on_mean C (docs/privacy.md:
    0.01 C cost at most 0.4 points of top-3 in tools.secagg_quality)."""
    rows = ["| devices per round | central z | " + " | ".join(
        f"eps vs coordinator, {r} rounds | eps sampled (q = n/{population:,}), {r} rounds" for r in rounds) + " |",
        "|---:|---:|" + "---:|---:|" * len(rounds)]
    for n in (10, 100, 1000, 5000, 10000, 50000):
        z = noise_on_mean * n
        cells = []
        for r in rounds:
            exact, gauss = coordinator_epsilon(n, r, delta, noise_on_mean)
            assert math.isclose(exact, gauss, rel_tol=1e-3) or exact == gauss
            samp = privacy_skellam.central_epsilon(r, z, delta, sampling_rate=min(1.0, n / population))
            cells += [_fmt(exact), _fmt(samp)]
        rows.append(f"| {n:,} | {z:g} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


MAX_DEVICES = 1_000_000


def coordinator_epsilon(n: int, rounds: int, delta: float, noise_on_mean: float) -> tuple[float, float]:
    """(exact Skellam, Gaussian at the same variance) epsilon against the coordinator of `rounds`
    secure rounds of n devices at z = noise_on_mean * n, at the model's full size."""
    z = noise_on_mean * n
    s = ddp.choose_scale(1.0, n, z, full_dim(), max(2, math.ceil(0.7 * n)))
    return privacy_skellam.skellam_vs_gaussian(z, s, 1.0, full_dim(), rounds, delta)


def devices_for(target: float, rounds: int, delta: float, noise_on_mean: float = 0.01) -> int | None:
    """The fewest devices per round whose noised sums, at z = noise_on_mean * n, keep epsilon against
    the coordinator at or under `target` after `rounds` rounds (bisection on the exact Skellam RDP);
    None when even MAX_DEVICES do not (below about 0.03 the accountant's own floor)."""
    def eps(n: int) -> float:
        return coordinator_epsilon(n, rounds, delta, noise_on_mean)[0]

    if eps(MAX_DEVICES) > target:
        return None
    lo, hi = 2, MAX_DEVICES
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if eps(mid) <= target else (mid + 1, hi)
    return lo


def devices_table(targets: list[float], rounds: list[int], delta: float, noise_on_mean: float = 0.01) -> str:
    """Devices per round for each epsilon target and round count (README's and privacy.md's figures)."""
    rows = [f"| epsilon vs coordinator ≤ (delta {delta:g}) | " + " | ".join(f"{r} rounds" for r in rounds) + " |",
            "|---:|" + "---:|" * len(rounds)]
    for t in targets:
        found = (devices_for(t, r, delta, noise_on_mean) for r in rounds)
        rows.append(f"| {t:g} | " + " | ".join(f"{n:,}" if n else f"over {MAX_DEVICES:,}" for n in found) + " |")
    return "\n".join(rows)


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else (f"{x:.3g}" if x < 1e4 else f"{x:.1e}")


def paillier(slice_len: int, n_devices: int = 100) -> str:
    """Paillier (phe, 2048-bit) on a slice of the update, extrapolated to the model's parameters."""
    from phe import paillier as ph

    t0 = time.perf_counter()
    pk, sk = ph.generate_paillier_keypair(n_length=2048)
    keygen = time.perf_counter() - t0
    vals = [random.randrange(2**31) for _ in range(slice_len)]
    t0 = time.perf_counter()
    cts = [pk.raw_encrypt(v) for v in vals]
    enc = (time.perf_counter() - t0) / slice_len
    t0 = time.perf_counter()
    acc = cts[0]
    for c in cts[1:]:
        acc = acc * c % pk.nsquare                  # homomorphic addition
    add = (time.perf_counter() - t0) / max(1, slice_len - 1)
    t0 = time.perf_counter()
    assert sk.raw_decrypt(acc) == sum(vals) % pk.n
    dec = time.perf_counter() - t0
    ct_bytes = 2 * 2048 // 8
    slot_bits = 32 + math.ceil(math.log2(n_devices)) + 1
    per_ct = 2047 // slot_bits                      # coordinates packed per ciphertext
    lines = ["| variant | ciphertexts per device | upload per device | vs float16 | device encrypt | "
             f"coordinator add ({n_devices} devices) | decrypt |", "|---|---:|---:|---:|---:|---:|---:|"]
    dim = full_dim()
    variants = (("one coordinate per ciphertext", dim), (f"{per_ct} coordinates packed", -(-dim // per_ct)))
    for name, m in variants:
        up = m * ct_bytes
        lines.append(f"| {name} | {m:,} | {up / 2**20:.0f} MiB | {up / (2 * dim):.0f}x | {m * enc / 3600:.1f} h | "
                     f"{m * add * n_devices / 60:.1f} min | {m * dec:.0f} s |")
    lines.append(f"\nMeasured on {slice_len} values (2048-bit modulus): key generation "
                 f"{keygen:.1f} s, encrypt {enc * 1e3:.0f} ms, homomorphic add {add * 1e6:.0f} us, decrypt "
                 f"{dec * 1e3:.0f} ms per ciphertext; extrapolated linearly to {full_dim():,} parameters.")
    return "\n".join(lines)


def discovery_table(corpus: str, model: str, k: int, zs: list[float], devices: list[int],
                    delta: float = 1e-6, words_out: str | None = None) -> str:
    """Words a discovery round finds among a corpus's train users (docs/privacy.md); with
    `words_out`, each non-empty list also goes to DIR/found_<devices>_z<z>.txt for tools.add_words."""
    from coordinator.privacy import RoundPrivacy, epsilon
    from protocol import discovery, vocab
    from protocol.artifact import TOKENIZER, read_manifest
    from tools.simulate.population import load_population

    V = read_manifest(model).architecture().model.vocab_size
    words = vocab.dictionary((Path(model) / TOKENIZER).read_bytes(), V)
    ranked = load_population(corpus, None).users        # most text first, as tools.simulate picks
    lines = [f"| devices | z | epsilon (one release, delta {delta:g}) | bar (votes) | words found | of them noise | "
             "first words (* no device voted for it) |",
             "|---:|---:|---:|---:|---:|---:|---|"]
    index = {w: i for i, w in enumerate(words)}
    for want in devices:
        pool = ranked[:want] if want else ranked
        votes = [discovery.vote(texts, words, k)[0] for _, texts in pool]
        n = len(votes)
        voters = np.zeros(len(words), np.int32)   # devices that voted for each word: a found word none
        for v in votes:                           # voted for is noise (the tool sees what no coordinator can)
            voters += v > 0
        for z in zs:
            scale = ddp.choose_scale(discovery.SENSITIVITY, n, z, len(words), n)
            mu = ddp.skellam_mu(z, scale, discovery.SENSITIVITY, len(words), n)
            total = np.zeros(len(words), np.uint32)
            for i, v in enumerate(votes):   # masks cancel in the sum: the coordinator decodes this
                total += ddp.encode(v, scale, mu, seed=1000 * n + i)
            std = discovery.count_std(k, mu, n, scale)
            found, bar = discovery.found(ddp.decode_sum(total, scale, 1), words, k, std, int(vocab.MAX_SHARE * V))
            eps = epsilon([RoundPrivacy(1.0, z)], delta) if z > 0 else math.inf
            if words_out and found:
                Path(words_out).mkdir(parents=True, exist_ok=True)
                (Path(words_out) / f"found_{n}_z{z:g}.txt").write_text("\n".join(found) + "\n", encoding="utf-8")
            noise = {w for w in found if voters[index[w]] == 0}
            lines.append(f"| {n:,} | {z:g} | {_fmt(eps)} | {bar:.1f} | {len(found):,} | {len(noise):,} | "
                         f"{', '.join(f'`{w}`' + ('*' if w in noise else '') for w in found[:8])} |")
    return "\n".join(lines)


def _check(a: argparse.Namespace) -> None:
    """One-line errors for numbers no table can be built from (a NaN noise would print epsilon 0)."""
    def fin(x: float) -> bool:
        return math.isfinite(x) and x >= 0

    checks: list[tuple[bool, str]] = []
    if a.cmd == "costs":
        checks = [(all(n >= 3 for n in a.devices), "--devices must be >= 3"),
                  (all(fin(d) and d <= DESIGN_DROPOUT for d in a.dropout),
                   f"--dropout must be in [0, {DESIGN_DROPOUT}]: the rounds are built to survive that much"),
                  (a.sim_dim >= 1 and a.full_dim_max >= 0, "--sim-dim must be >= 1 and --full-dim-max >= 0")]
    elif a.cmd == "epsilon":
        checks = [(all(1 <= r <= 10**6 for r in a.rounds), "--rounds must be in [1, 1e6]"),
                  (0 < a.delta < 1, "--delta must be in (0, 1)"), (a.population >= 1, "--population must be >= 1"),
                  (fin(a.noise_on_mean) and a.noise_on_mean > 0, "--noise-on-mean must be a number > 0"),
                  (all(fin(e) and e > 0 for e in a.for_epsilon or ()),   # NaN read 1,000,000 devices
                   "--for-epsilon must be numbers > 0")]
    elif a.cmd == "paillier":
        checks = [(1 <= a.slice <= 4096, "--slice must be in [1, 4096]")]
    elif a.cmd == "discovery":
        checks = [(a.k >= 1, "--k must be >= 1"), (all(fin(z) for z in a.z), "--z must be numbers >= 0"),
                  (all(n >= 0 for n in a.devices), "--devices must be >= 0 (0: every train user)")]
    for ok, msg in checks:
        if not ok:
            raise ValueError(msg)


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="python -m tools.secagg_bench", description=__doc__.split("\n")[0])
    add_version(ap)
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")   # none: the help, as tools.bench gives it
    c = sub.add_parser("costs", help="client and server cost of a secure round by cohort and dropout")
    c.add_argument("--devices", type=int, nargs="+", default=[10, 100, 500])
    c.add_argument("--dropout", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    c.add_argument("--full-dim-max", type=int, default=100, help="measure at full size up to this many devices")
    c.add_argument("--sim-dim", type=int, default=1024)
    e = sub.add_parser("epsilon", help="epsilon against the coordinator by rounds (or the devices an epsilon needs)")
    e.add_argument("--rounds", type=int, nargs="+", default=[8, 100, 1000])
    e.add_argument("--delta", type=float, default=1e-6)
    e.add_argument("--population", type=int, default=1_000_000)
    e.add_argument("--noise-on-mean", type=float, default=0.01, help="z C / n, in units of C")
    e.add_argument("--for-epsilon", type=float, nargs="+", metavar="EPS",
                   help="instead: the fewest devices per round for epsilon vs the coordinator at or under each")
    p = sub.add_parser("paillier", help="the Paillier alternative's costs, for comparison")
    p.add_argument("--slice", type=int, default=16)
    d = sub.add_parser("discovery", help="what a private word discovery finds among a corpus's users")
    d.add_argument("--corpus", required=True, help="JSON Lines or plain text; its train users are the devices")
    d.add_argument("--model", default=str(SHIPPED_V0), help="version whose word-list tail is the dictionary")
    d.add_argument("--k", type=int, default=8, help="words each device votes for")
    d.add_argument("--z", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0], help="noise multipliers")
    d.add_argument("--devices", type=int, nargs="+", default=[32, 0], help="devices (0: every train user)")
    d.add_argument("--words-out", metavar="DIR", help="write each list found to DIR (input for tools.add_words)")
    a = ap.parse_args(argv)
    if a.cmd is None:
        ap.print_help()
        return EXIT_USER_ERROR
    _check(a)
    if a.cmd == "costs":
        print(costs(a.devices, a.dropout, a.full_dim_max, a.sim_dim))
    elif a.cmd == "epsilon":
        print(devices_table(a.for_epsilon, a.rounds, a.delta, a.noise_on_mean) if a.for_epsilon
              else epsilon_table(a.rounds, a.delta, a.population, a.noise_on_mean))
    elif a.cmd == "discovery":
        print(discovery_table(a.corpus, a.model, a.k, a.z, a.devices, words_out=a.words_out))
    else:
        print(paillier(a.slice))
    return 0


if __name__ == "__main__":
    from tools._cli import run

    run(main)
