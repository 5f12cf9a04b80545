"""The aggregation benchmark runs and both methods agree (timings are printed, not asserted)."""

from __future__ import annotations

from tools.bench import aggregation as bench


def test_bench_runs_and_methods_agree(capsys):
    assert bench.main(["--updates", "6", "--tiny"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith("6 ")]
    assert [r[1] for r in rows] == ["fedkeys", "flower"]
    assert float(rows[0][-1]) < 1e-6          # max |diff| between streaming FedAvg and Flower's aggregate
