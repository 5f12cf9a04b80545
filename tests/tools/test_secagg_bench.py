"""tools.secagg_bench at toy sizes: the protocol simulation recovers the exact sum after dropouts,
its byte counts are what the docs' table claims (about 2x a float16 upload), epsilon columns agree."""

from __future__ import annotations

import math

import pytest

from tools import secagg_bench


def test_simulated_round_recovers_the_sum_and_counts_bytes():
    c = secagg_bench.simulate(10, 0.3, 256)          # raises if the unmasked sum is wrong
    assert (c.k, c.t, c.dropped) == (9, 5, 3)
    assert c.expansions == 7 + 3 * 7                 # survivors' self masks + dropped x surviving neighbours
    up_full = c.up - 4 * 256 + 4 * secagg_bench.full_dim()
    assert 1.95 < up_full / (2 * secagg_bench.full_dim()) < 2.1


def test_epsilon_table_and_cli(capsys):
    table = secagg_bench.epsilon_table([8], 1e-6, 10**6, noise_on_mean=1e-3)
    rows = [r for r in table.splitlines() if r.startswith("| 1,000 |")]
    exact, sampled = (float(x) for x in rows[0].split("|")[3:5])
    assert math.isclose(exact, 18, rel_tol=0.05) and sampled < exact
    assert secagg_bench.main(["costs", "--devices", "10", "--dropout", "0.3", "--full-dim-max", "0",
                              "--sim-dim", "64"]) == 0
    out = capsys.readouterr().out
    assert "| 10 | 30% | 9 / 5 |" in out and "extrapolated" in out
    # 30% of 25 is 7.5 devices: round() dropped 8, one more than the round survives (a traceback)
    assert secagg_bench.main(["costs", "--devices", "25", "3", "--dropout", "0.3", "0.2", "--full-dim-max", "0",
                              "--sim-dim", "16"]) == 0


def test_devices_for_an_epsilon_is_the_fewest_that_reach_it(capsys):
    """README's and privacy.md's "devices per round for epsilon <= 10" came from no command."""
    def eps(n: int) -> float:
        return secagg_bench.coordinator_epsilon(n, 100, 1e-6, 0.01)[0]

    n = secagg_bench.devices_for(10, 100, 1e-6)
    assert eps(n) <= 10 < eps(n - 1)
    assert secagg_bench.devices_for(1e-4, 100, 1e-6) is None       # the accountant's floor: not a million
    assert secagg_bench.main(["epsilon", "--for-epsilon", "10", "--rounds", "100"]) == 0
    assert f"| 10 | {n:,} |" in capsys.readouterr().out


def test_discovery_table_finds_the_word_many_users_typed(tmp_path, exported_version, capsys):
    import json

    from protocol.artifact import TOKENIZER, read_manifest
    from protocol.vocab import dictionary

    V = read_manifest(exported_version).architecture().model.vocab_size
    tail = [w for w in dictionary((exported_version / TOKENIZER).read_bytes(), V) if w.isalpha()]
    common, rare = tail[0], tail[1]
    rows = [{"user": f"u{i}", "text": f"we said {common} and {common} again" + (f" {rare}" if i < 2 else "")}
            for i in range(60)]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    argv = ["discovery", "--corpus", str(corpus), "--model", str(exported_version), "--k", "2",
            "--z", "0", "4", "--devices", "0", "--words-out", str(tmp_path / "found")]
    assert secagg_bench.main(argv) == 0
    lines = [r.split("|") for r in capsys.readouterr().out.splitlines() if r.startswith("| ") and r[2].isdigit()]
    assert len(lines) == 2
    no_noise, noised = lines
    assert (float(no_noise[2]), float(noised[2])) == (0.0, 4.0)
    n = int(no_noise[1].replace(",", ""))
    assert 30 < n < 60                                        # the train users only
    assert f"`{common}`" in no_noise[7] and f"`{rare}`" not in no_noise[7]     # 2 votes < 3
    assert no_noise[6].strip() == "0" and "*" not in no_noise[7]               # without noise, nothing found is noise
    assert no_noise[3].strip() == "inf" and math.isfinite(float(noised[3]))
    assert float(noised[4]) > float(no_noise[4])              # the noise raises the bar
    assert (tmp_path / "found" / f"found_{n}_z0.txt").read_text().split()[0] == common
    # 2 devices at z = 2: whatever passes the bar is noise (the probe's "found" words no user typed)
    assert secagg_bench.main([*argv[:5], "--k", "2", "--z", "2", "--devices", "2"]) == 0
    row = [r.split("|") for r in capsys.readouterr().out.splitlines() if r.startswith("| 2 |")][0]
    found, noise = int(row[5].replace(",", "")), int(row[6].replace(",", ""))
    shown = [w.strip() for w in row[7].split(",") if w.strip()]
    assert noise <= found and sum(w.endswith("*") for w in shown) == min(noise, len(shown))
    assert all(w.endswith("*") for w in shown if w.strip("`*") not in (common, rare))


def test_secagg_quality_scores_every_held_out_user_and_prints_each_noise_row(tmp_path, exported_version, capsys):
    """One round of real clipped updates, then the table per noise level; the held-out score must
    cover every held-out user's text (a dict of users once passed its names as the texts)."""
    import json
    import re

    from tools import secagg_quality

    words = "the station at six we will meet you there tonight with tickets and keys".split()
    rows = [{"user": f"u{i}", "text": " ".join(words[(i + j) % len(words)] for j in range(12))}
            for i in range(40) for _ in range(3)]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    argv = ["--model", str(exported_version), "--corpus", str(corpus), "--devices", "3", "--max-examples", "8",
            "--eval-windows", "40", "--sigma", "0", "0.1"]
    assert secagg_quality.main(argv) == 0
    out = capsys.readouterr().out
    held = re.search(r"on an even sample of (\d+) of the (\d+) windows of (\d+) held-out users", out)
    assert held and int(held.group(3)) >= 3 and int(held.group(1)) >= int(held.group(3)), out
    assert [r.split("|")[1].strip() for r in out.splitlines() if re.match(r"\| 0(\.1)? \|", r)] == ["0", "0.1"]
    # "vs no noise" reads against the round without noise even when --sigma does not start with 0
    # (it read against the first sigma listed)
    by_sigma = {r.split("|")[1].strip(): r.split("|")[2:4] for r in out.splitlines() if re.match(r"\| 0(\.1)? \|", r)}
    assert by_sigma["0"][1].strip() == "+0.00 pt"
    assert secagg_quality.main([*argv[:-3], "--sigma", "0.1", "0"]) == 0
    again = {r.split("|")[1].strip(): r.split("|")[2:4] for r in capsys.readouterr().out.splitlines()
             if re.match(r"\| 0(\.1)? \|", r)}
    assert again["0"][1].strip() == "+0.00 pt" and again["0"][0] == by_sigma["0"][0]


@pytest.mark.parametrize("argv, says", [
    (["epsilon", "--noise-on-mean", "nan"], "--noise-on-mean must be a number > 0"),   # once printed epsilon 0
    (["epsilon", "--rounds", "0"], "--rounds must be in [1, 1e6]"),
    (["epsilon", "--rounds", "1000000000000"], "--rounds must be in [1, 1e6]"),          # once a MemoryError
    (["costs", "--devices", "10", "--dropout", "0.6"], "--dropout must be in [0, 0.3]"),
    (["costs", "--devices", "10", "--dropout", "0.4"], "--dropout must be in [0, 0.3]"),   # the round fails past it
    (["paillier", "--slice", "0"], "--slice must be in [1, 4096]"),
    (["discovery", "--corpus", "x.jsonl", "--devices", "-1"], "--devices must be >= 0"),
])
def test_numbers_no_table_can_be_built_from_are_refused_before_any_work(argv, says):
    with pytest.raises(ValueError) as e:
        secagg_bench.main(argv)
    assert says in str(e.value)


def test_help_needs_no_version_0(monkeypatch, capsys):
    """An installed copy ships no version 0, and `--help` read its manifest at import: a traceback.
    The size is read when a measurement needs it."""
    import importlib

    import pytest

    from tools import shipped

    monkeypatch.setattr(shipped, "SHIPPED_V0", shipped.SHIPPED_V0.parent / "no-such-version")
    bench = importlib.reload(secagg_bench)
    try:
        with pytest.raises(SystemExit) as e:
            bench.main(["--help"])
        assert e.value.code == 0 and "usage" in capsys.readouterr().out
    finally:
        monkeypatch.undo()
        importlib.reload(secagg_bench)
