"""Aggregation benchmark: the coordinator's streaming FedAvg vs Flower's `aggregate`.

    python -m tools.bench aggregation                 # 100 and 1,000 updates of the default model
    python -m tools.bench aggregation --updates 50 --tiny

Both read the same float16 safetensors update files (what devices upload) from disk, in the
same run. The streaming path holds one decoded update and one float64 accumulator at a time;
Flower's `aggregate` takes every update as an in-memory list. Peak memory is measured with
tracemalloc (numpy reports its buffers to it). Flower is imported if installed
(`pip install flwr`, for the benchmark only); otherwise its algorithm is reproduced verbatim
and the table says so.
"""

from __future__ import annotations

import tempfile
import time
import tracemalloc
from collections.abc import Callable
from functools import reduce
from pathlib import Path

import numpy as np

from coordinator.aggregation import StreamingMean, bounded_weight
from protocol.arch import ModelConfig
from protocol.artifact import TensorSpec, decode_weights, encode_weights, flatten, read_manifest, unflatten
from protocol.cli import Parser, add_version


def _flower_aggregate() -> tuple[Callable, str]:
    try:
        from flwr.server.strategy.aggregate import aggregate
        return aggregate, "flwr.server.strategy.aggregate.aggregate"
    except ImportError:
        def aggregate(results: list[tuple[list[np.ndarray], int]]) -> list[np.ndarray]:
            # Flower 1.x's algorithm, verbatim (flwr not installed here).
            num_examples_total = sum(n for _, n in results)
            weighted = [[layer * n for layer in weights] for weights, n in results]
            return [reduce(np.add, layers) / num_examples_total for layers in zip(*weighted, strict=True)]
        return aggregate, "Flower's aggregate reproduced (flwr not installed)"


def write_updates(directory: Path, tensors: list[TensorSpec], n: int, seed: int = 0) -> list[tuple[Path, int]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        update = {t.name: (0.01 * rng.standard_normal(t.shape, dtype=np.float32)) for t in tensors}
        p = directory / f"u{i:05d}.safetensors"
        p.write_bytes(encode_weights(update, "float16"))
        out.append((p, int(rng.integers(1, 500))))
    return out


def run_streaming(files: list[tuple[Path, int]], tensors: list[TensorSpec]) -> np.ndarray:
    size = sum(int(np.prod(t.shape)) for t in tensors)
    acc = StreamingMean(size)
    for path, n in files:
        acc.add(flatten(decode_weights(path.read_bytes()), tensors), bounded_weight(n, 10**9))
    return acc.mean()


def run_flower(files: list[tuple[Path, int]], tensors: list[TensorSpec], aggregate: Callable) -> np.ndarray:
    results = []
    for path, n in files:
        w = decode_weights(path.read_bytes())
        results.append(([w[t.name].astype(np.float32) for t in tensors], n))
    out = aggregate(results)
    return np.concatenate([np.asarray(a, dtype=np.float32).ravel() for a in out])


def measure(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, float, int]:
    tracemalloc.start()
    t0 = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, elapsed, peak


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="python -m tools.bench aggregation", description=__doc__.split("\n")[0])
    add_version(ap)   # --version is the release, as on every command; the version directory is --model
    ap.add_argument("--updates", type=int, nargs="+", default=[100, 1000], help="updates aggregated per run")
    ap.add_argument("--tiny", action="store_true", help="a 2k-parameter model instead of the default one")
    ap.add_argument("--model", metavar="DIR", help="take the tensor shapes from this version's manifest")
    args = ap.parse_args(argv)
    if args.model:
        tensors = read_manifest(args.model).tensors
    else:
        cfg = ModelConfig(vocab_size=64, embed_dim=8, hidden_dim=16) if args.tiny else ModelConfig()
        tensors = [TensorSpec(name, shape) for name, shape in cfg.weight_shapes()]
    params = sum(int(np.prod(t.shape)) for t in tensors)
    aggregate, flower_name = _flower_aggregate()
    print(f"model: {params:,} parameters ({params * 4 / 2**20:.1f} MiB float32); updates float16 on disk")
    print(f"peer: {flower_name}")
    print(f"{'updates':>8} {'method':<22} {'seconds':>9} {'peak MiB':>10} {'max |diff|':>11}")
    for n in args.updates:
        with tempfile.TemporaryDirectory() as tmp:
            files = write_updates(Path(tmp), tensors, n)
            ours, t_ours, m_ours = measure(lambda files=files: run_streaming(files, tensors))
            theirs, t_theirs, m_theirs = measure(lambda files=files: run_flower(files, tensors, aggregate))
            diff = float(np.max(np.abs(ours - theirs)))
            print(f"{n:>8} {'fedkeys streaming':<22} {t_ours:>9.3f} {m_ours / 2**20:>10.1f} {diff:>11.2e}")
            print(f"{n:>8} {'flower aggregate':<22} {t_theirs:>9.3f} {m_theirs / 2**20:>10.1f} {'':>11}")
            print(f"{n:>8} {'flower / fedkeys':<22} {t_theirs / max(t_ours, 1e-9):>8.1f}x "
                  f"{m_theirs / max(m_ours, 1):>9.1f}x")
            assert unflatten(ours, tensors).keys() == {t.name for t in tensors}
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
