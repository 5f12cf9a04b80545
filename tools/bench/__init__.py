"""Benchmarks of the edge runtime: per-keystroke suggestion latency and on-device training.

    python -m tools.bench keystroke --model DIR [--corpus FILE]
    python -m tools.bench train --model DIR

Numbers, not pass/fail: each command prints a small table with both sides of its comparison
measured in the same run.
"""
