"""`python -m tools.bench {keystroke,swap,memory,train,aggregation,load,poisoning,ptb}`: see the modules
of the same names."""

from __future__ import annotations

import argparse

from protocol.cli import Parser, add_version
from tools._cli import BASE_NGRAM_HELP, DEFAULT_CORPUS, base_ngram_arg, run


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="python -m tools.bench", description=(
        "Edge runtime benchmarks: keystroke latency (incremental vs recompute) and training "
        "throughput (TFLite vs TensorFlow) with the edge process's peak memory."))
    add_version(ap)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    k = sub.add_parser("keystroke", help="p50/p99 ms per keystroke: incremental vs recomputing the context",
                       description="Types held-out text char by char through Session.update; compares with a "
                                   "fresh session over the last --context-words words at every keystroke.")
    k.add_argument("--model", required=True, help="model version directory")
    k.add_argument("--corpus", default=DEFAULT_CORPUS, help="JSONL or plain-text corpus (its test users are typed)")
    k.add_argument("--max-keystrokes", type=int, default=3000, help="keystrokes timed on the incremental path")
    k.add_argument("--max-recompute", type=int, default=400,
                   help="keystrokes timed on the recompute path (an even sample of the same keystrokes)")
    k.add_argument("--context-words", type=int, default=20, help="context cap of the recompute path")
    k.add_argument("--warmup", type=int, default=20, help="untimed keystrokes first")
    k.add_argument("--base-ngram", default="", metavar="FILE", type=base_ngram_arg, help=BASE_NGRAM_HELP)
    t = sub.add_parser("train", help="tokens/s of the train signature in ai-edge-litert vs TensorFlow, peak RSS",
                       description="Times the same SGD step in the slim interpreter (in a subprocess that "
                                   "imports no TensorFlow, also measuring its peak RSS) and in TensorFlow.")
    t.add_argument("--model", required=True, help="model version directory")
    t.add_argument("--steps", type=int, default=50, help="timed steps per backend")
    t.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    t.add_argument("--repeats", type=int, default=3,
                   help="runs per backend, interleaved (edge, TensorFlow, edge, ...); medians reported")
    sub.add_parser("aggregation", add_help=False,
                   help="coordinator aggregation: streaming FedAvg vs Flower's aggregate, time and peak memory")
    from tools.bench.load import add_parser as add_load
    from tools.bench.memory import add_parser as add_memory
    from tools.bench.poisoning import add_parser as add_poisoning
    from tools.bench.ptb import add_parser as add_ptb
    from tools.bench.swap import add_parser as add_swap

    add_swap(sub)
    add_memory(sub)
    add_load(sub)
    add_poisoning(sub)
    add_ptb(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args, rest = ap.parse_known_args(argv)
    if args.command == "aggregation":
        from tools.bench.aggregation import main as aggregation
        return aggregation(rest)
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "keystroke":
        from tools.bench.keystroke import main as keystroke
        return keystroke(args)
    if args.command == "swap":
        from tools.bench.swap import main as swap
        return swap(args)
    if args.command == "memory":
        from tools.bench.memory import main as memory
        return memory(args)
    if args.command == "train":
        from tools.bench.train import main as train
        return train(args)
    if args.command == "poisoning":
        from tools.bench.poisoning import main as poisoning
        return poisoning(args)
    if args.command == "ptb":
        from tools.bench.ptb import main as ptb
        return ptb(args)
    if args.command == "load":
        from tools.bench.load import main as load
        return load(args)
    ap.print_help()
    return 2


if __name__ == "__main__":
    run(main)
