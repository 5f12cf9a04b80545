"""Benchmarks: per-keystroke suggestion latency and on-device training (the edge runtime), the
coordinator's aggregation and its service under load, poisoning, and the Penn Treebank paper table.

    python -m tools.bench keystroke --model DIR [--corpus FILE]
    python -m tools.bench train --model DIR
    python -m tools.bench aggregation | load | poisoning | ptb   (each: --help)

Numbers, not pass/fail: each command prints a small table with both sides of its comparison
measured in the same run.
"""
