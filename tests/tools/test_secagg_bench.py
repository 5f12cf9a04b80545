"""tools.secagg_bench at toy sizes: the protocol simulation recovers the exact sum after dropouts,
its byte counts are what the docs' table claims (about 2x a float16 upload), epsilon columns agree."""

from __future__ import annotations

import math

from tools import secagg_bench


def test_simulated_round_recovers_the_sum_and_counts_bytes():
    c = secagg_bench.simulate(10, 0.3, 256)          # raises if the unmasked sum is wrong
    assert (c.k, c.t, c.dropped) == (9, 5, 3)
    assert c.expansions == 7 + 3 * 7                 # survivors' self masks + dropped x surviving neighbours
    up_full = c.up - 4 * 256 + 4 * secagg_bench.FULL_DIM
    assert 1.95 < up_full / (2 * secagg_bench.FULL_DIM) < 2.1


def test_epsilon_table_and_cli(capsys):
    table = secagg_bench.epsilon_table([8], 1e-6, 10**6, noise_on_mean=1e-3)
    rows = [r for r in table.splitlines() if r.startswith("| 1,000 |")]
    exact, sampled = (float(x) for x in rows[0].split("|")[3:5])
    assert math.isclose(exact, 18, rel_tol=0.05) and sampled < exact
    assert secagg_bench.main(["costs", "--devices", "10", "--dropout", "0.3", "--full-dim-max", "0",
                              "--sim-dim", "64"]) == 0
    out = capsys.readouterr().out
    assert "| 10 | 30% | 9 / 5 |" in out and "extrapolated" in out
