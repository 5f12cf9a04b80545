"""tools.bench runs end to end on a tiny version and prints the rows it promises (no timing thresholds)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import HAS_TF

ROOT = Path(__file__).resolve().parents[2]
CORPUS = """I will see you at the station tomorrow morning
thanks for the lovely dinner last night
can you send me the notes from the meeting please
we should go to the park if the weather is good
my train is running late again today
"""


def bench(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "tools.bench", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300, check=False)


def test_keystroke_bench_prints_both_paths_and_ratio(exported_version, tmp_path):
    corpus = tmp_path / "held_out.txt"
    corpus.write_text(CORPUS * 8)   # a few held-out texts: the keyboard path sends between them
    r = bench("keystroke", "--model", str(exported_version), "--corpus", str(corpus),
              "--max-keystrokes", "120", "--max-recompute", "10", "--warmup", "2")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    # The header counts the texts typed (it counted distinct first letters): one user's plain text
    # holds out its last tenth (4 of 40 lines), and the timed keys begin 3 of them.
    typed = ([t for t in CORPUS.splitlines() if t.strip()] * 8)[-4:]
    start, n = 0, 0
    while start < 2 + 120:   # the texts begun before the last timed keystroke (2 warm-up ones)
        start, n = start + len(typed[n]), n + 1
    assert f"120 keystrokes over {n} held-out texts of" in lines[0], lines[0]
    for row in ("incremental, prefetch between keys (the keyboard)",
                "  idle work between keystrokes, in all (prefetch)",
                "incremental, all work on the keystroke", "  of which right after a space",
                "recompute (new session, <= 20 words)", "  the emptied field's strip after a send",
                "  a commit's learn, in all (between keystrokes)",
                "  a commit's learn, its longest step (holds the keyboard)",
                "  idle work, its longest step (holds the keyboard)"):
        assert any(ln.startswith(row) for ln in lines), (row, r.stdout)
    assert "p50 ms" in lines[2] and "p99 ms" in lines[2]
    # Both clocks, measured on the same calls: wall time and the keystroke's own CPU time; a ratio
    # for each incremental path.
    assert lines[1] == "wall clock:" and "thread CPU time:" in lines
    ratios = [ln for ln in lines if ln.startswith("ratio recompute/incremental")]
    assert len(ratios) == 4 and all("p50" in ln and "p99" in ln for ln in ratios)
    assert sum("prefetch between keys: p50" in ln for ln in ratios) == 2


def test_a_corpus_without_held_out_users_is_not_called_held_out(tmp_path):
    from tools.bench.keystroke import held_out_texts

    corpus = tmp_path / "two_lines.txt"
    corpus.write_text("I will see you at the station\nthanks for the lovely dinner\n")   # too short to split
    texts, kind = held_out_texts(str(corpus))
    assert len(texts) == 2 and "held-out" not in kind.replace("no held-out user", "")
    corpus.write_text(CORPUS * 8)
    assert held_out_texts(str(corpus)) == (([t for t in CORPUS.splitlines()] * 8)[-4:], "held-out texts")


@pytest.mark.skipif(not HAS_TF, reason="the TensorFlow side of the comparison needs TensorFlow")
def test_train_bench_prints_both_backends_and_edge_memory(exported_version):
    r = bench("train", "--model", str(exported_version), "--steps", "3", "--warmup", "1", "--repeats", "2")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "edge: " in out and "(train signature)" in out and "tensorflow" in out and "(train_step)" in out, out
    assert "median of 2 runs each, interleaved" in out, out
    assert "edge process peak RSS (MiB)" in out and "tensorflow imported: no" in out, out
    # The second edge run starts after TensorFlow is loaded here: its peak must still be its own
    # (getrusage's ru_maxrss carries the parent's over fork and exec).
    edge_mb = float(re.search(r"edge process peak RSS \(MiB\)\s+([\d.]+)", out).group(1))
    tf_mb = float(re.search(r"tensorflow process peak RSS \(MiB\)\s+([\d.]+)", out).group(1))
    assert edge_mb < tf_mb / 2, out
    # A relative --model from another folder: the edge side runs in the repository, which it
    # once resolved the path against ("no manifest.json in tiny").
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    r = subprocess.run([sys.executable, "-m", "tools.bench", "train", "--model", exported_version.name, "--steps", "2",
                        "--warmup", "1"], cwd=exported_version.parent, env=env, capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == 0 and "edge: " in r.stdout, r.stderr[-2000:]


def test_memory_bench_prints_each_setup_from_a_process_of_its_own(exported_version, tmp_path):
    corpus = tmp_path / "held_out.txt"
    corpus.write_text(CORPUS * 8)
    r = bench("memory", "--model", str(exported_version), "--corpus", str(corpus), "--chars", "300")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "one session typed 300 characters" in lines[0], lines[0]
    rows = {ln[:34].strip(): [float(x) for x in ln[34:].split()[:5]] for ln in lines[2:4]}
    shipped, bare = rows["keyboard as shipped"], rows["keyboard without its base n-gram"]
    # Loading the shipped base n-gram shows (`base_ngram` off reached the second process only)
    assert shipped[1] > bare[1] + 20, r.stdout
    share = re.search(r"the base n-gram: (\d+) MiB of the (\d+) MiB loaded", r.stdout)
    assert share and int(share.group(1)) > 20, r.stdout
    assert all(imported < loaded <= peak for imported, loaded, _, peak, _ in rows.values()), rows
    r = bench("memory", "--model", str(tmp_path / "missing"))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "no manifest.json" in r.stderr, r.stderr


def test_swap_bench_types_through_new_versions_both_ways(exported_version, tmp_path):
    r = bench("swap", "--model", str(exported_version), "--versions", "1", "--interval", "0.5")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("1 new versions, one every 0.5 s, while a message of 1,000 to 2,000 characters")
    assert "p99 ms" in lines[1], r.stdout
    rows = {ln[:34].strip(): ln[34:].split() for ln in lines[2:4]}
    assert set(rows) == {"load on the keystroke (before)", "load on a thread (ships)"}, r.stdout
    for keystrokes, versions, p50, p99, slowest, _ in rows.values():
        assert int(keystrokes) > 50 and versions == "2" and 0 < float(p50) <= float(p99) <= float(slowest)
    assert lines[4].startswith("ratio before/ships, slowest keystroke: ") and lines[4].endswith("x")
    r = bench("swap", "--model", str(exported_version), "--versions", "0")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "--versions" in r.stderr, r.stderr


def test_bench_errors_are_one_line(tmp_path):
    r = bench("keystroke", "--model", str(tmp_path / "missing"), "--corpus", str(tmp_path / "none.txt"))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = bench()
    assert r.returncode == 2 and "keystroke" in r.stdout


@pytest.mark.skipif(not HAS_TF, reason="the bench reads the corpus through model/ (TensorFlow environment)")
def test_poisoning_bench_prints_a_row_per_aggregator_and_share(exported_version, tmp_path):
    import json as _json

    corpus = tmp_path / "c.jsonl"
    lines = CORPUS.strip().splitlines()
    corpus.write_text("".join(_json.dumps({"user": f"u{i % 12}", "text": t}) + "\n"
                              for i, t in enumerate(lines * 24)))
    out = tmp_path / "p.json"
    r = bench("poisoning", "--model", str(exported_version), "--corpus", str(corpus), "--devices", "4",
              "--shares", "0,0.25", "--sigmas", "0,0.5", "--repeats", "1", "--eval-texts", "20", "--json", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| σ | attack | attackers | mean | trimmed_mean | median | secure |" in r.stdout
    rows = _json.loads(out.read_text())["results"]
    assert {(x["sigma"], x["attack"], x["attackers"]) for x in rows} == {
        (s, a, k) for s in (0, 0.5) for a, k in (("-", 0), ("flip", 1), ("boost", 1))}
    assert all(0 <= x[k] <= 1 for x in rows for k in ("mean", "trimmed_mean", "median", "secure"))
    # --json naming the corpus replaced it with the results; a folder failed after all the work
    before = corpus.read_bytes()
    for bad, says in ((corpus, "is also an input"), (tmp_path, "is a folder")):
        r = bench("poisoning", "--model", str(exported_version), "--corpus", str(corpus), "--json", str(bad))
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert corpus.read_bytes() == before


@pytest.mark.skipif(not HAS_TF, reason="the PTB bench trains with TensorFlow")
def test_ptb_bench_scores_every_model_on_the_same_test_tokens(tmp_path):
    """A tiny corpus in PTB's format (one sentence per line, closed vocabulary): the bench fits
    the n-grams, trains the recipe briefly and prints one row per model plus the published ones."""
    words = "the cat sat on a mat <unk> dog ran to N".split()
    rng = __import__("random").Random(0)
    for split, n in (("train", 300), ("valid", 30), ("test", 20)):
        lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(n)]
        (tmp_path / f"ptb.{split}.txt").write_text(" " + "\n ".join(lines) + "\n")
    test_tokens = sum(len(ln.split()) + 1 for ln in (tmp_path / "ptb.test.txt").read_text().splitlines())
    r = bench("ptb", "--data-dir", str(tmp_path), "--epochs", "1", "--steps-per-epoch", "3",
              "--embed-dim", "8", "--hidden-dim", "16", "--json")
    assert r.returncode == 0, r.stderr
    out = __import__("json").loads(r.stdout)
    assert out["test_tokens"] == test_tokens
    names = [row["model"] for row in out["rows"]]
    assert any(n.startswith("Kneser-Ney 3-gram") for n in names)
    assert any(n.startswith("Kneser-Ney 4-gram") for n in names)
    assert any(n.startswith("FedKeys LSTM") for n in names) and "KN5 (Mikolov et al. 2011)" in names
    for row in out["rows"][:3]:     # measured rows: random words over 11 + </s> are not predictable
        assert 5.0 < row["perplexity"] < 40.0, row
        assert 0.0 <= row["top1"] <= row["top3"] <= 1.0, row
    assert [row["perplexity"] for row in out["rows"][3:]] == [141.2, 114.5]


def test_ptb_bench_default_ngram_orders_fit_ptbs_ten_thousand_words():
    # Real PTB has 10,000 word types; the default once asked for a 5-gram, whose int64 keys
    # overflow at that vocabulary, and the bench stopped before training anything.
    import argparse

    from edge_runtime.ngram import KneserNeyLM
    from tools.bench.ptb import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    orders = [int(o) for o in parser.parse_args(["ptb"]).ngram_orders.split(",")]
    texts = [" ".join(f"w{i}" for i in range(j, j + 50)) for j in range(0, 10_000, 50)]
    for order in orders:
        lm = KneserNeyLM.fit(texts, order=order)
        assert lm.n_words == 10_000 and lm.prob("w1", ["w0"]) > lm.prob("w2", ["w0"])


def test_ptb_bench_reads_mikolovs_tarball_and_refuses_a_broken_one(tmp_path):
    import io
    import tarfile

    from tools.bench.ptb import fetch

    src = {split: f" a b c\n {split} d\n" for split in ("train", "valid", "test")}
    with tarfile.open(tmp_path / "simple-examples.tgz", "w:gz") as tar:
        for split, text in src.items():
            info = tarfile.TarInfo(f"./simple-examples/data/ptb.{split}.txt")
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text.encode()))
        other = tarfile.TarInfo("../outside.txt")   # never written: only the three files are read
        other.size = 1
        tar.addfile(other, io.BytesIO(b"x"))
    data = fetch(tmp_path, "http://127.0.0.1:9/nothing")
    assert data["valid"] == [["a", "b", "c"], ["valid", "d"]]
    assert not (tmp_path.parent / "outside.txt").exists()

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "simple-examples.tgz").write_bytes(b"\x1f\x8b not really gzip")
    r = bench("ptb", "--data-dir", str(broken), "--url", "http://127.0.0.1:9/nothing")
    assert r.returncode != 0 and "simple-examples.tgz" in r.stderr and "Traceback" not in r.stderr


def test_ptb_bench_refuses_a_dropout_outside_zero_to_one_before_reading_data(tmp_path):
    r = bench("ptb", "--data-dir", str(tmp_path), "--url", "http://127.0.0.1:9/nothing", "--dropout", "1.5")
    assert r.returncode != 0 and "--dropout must be in [0, 1)" in r.stderr and "Traceback" not in r.stderr
    assert not any(tmp_path.iterdir())


def test_ptb_bench_says_where_to_put_the_data_when_it_cannot_download(tmp_path):
    r = bench("ptb", "--data-dir", str(tmp_path), "--url", "http://127.0.0.1:9/nothing")
    assert r.returncode != 0
    assert "ptb.train.txt" in r.stderr and "Traceback" not in r.stderr


def test_the_keystroke_bench_commits_as_the_page_does():
    """The page commits each finished sentence (. ! or ?, closing quotes allowed, then a space) at
    the keystroke that finishes it, and the rest of a text when it is sent."""
    from tools.bench.keystroke import keystrokes, page_commits

    text = 'Stay, "I pray you!" Is it so?\nNo. And then'
    commits, rest = page_commits(keystrokes([text], 1000))
    assert [(text[:i + 1][-1], s) for i, s in commits.items()] == [
        (" ", 'Stay, "I pray you!"'), ("\n", "Is it so?"), (" ", "No.")]
    assert rest == "And then"
    assert page_commits(keystrokes(["Done. "], 100)) == ({5: "Done."}, "")
    # Typing from the middle of a text: what came before the mark is not committed again.
    keys = keystrokes(["One. Two. Three"], 100)[6:]
    assert page_commits(keys, mark=5) == ({3: "Two."}, "Three")


def test_shares_that_round_to_one_attacker_count_make_one_row():
    from tools.bench.poisoning import attacker_counts

    assert attacker_counts([0, 0.1, 0.2, 0.3, 0.4], 5) == [0, 1, 2]
    assert attacker_counts([0, 0.1, 0.12], 4) == [0]


def test_ptb_bench_refuses_bad_settings_and_an_empty_split_in_one_line(tmp_path):
    """An empty ptb.test.txt divided by zero (a traceback); --epochs 0 and --ngram-orders 9 failed
    inside TensorFlow and numpy after the download."""
    (tmp_path / "ptb.train.txt").write_text("a b c\n")
    (tmp_path / "ptb.valid.txt").write_text("a b\n")
    (tmp_path / "ptb.test.txt").write_text("")
    for extra, says in ((["--epochs", "0"], "--epochs"), (["--ngram-orders", "9"], "--ngram-orders"),
                        ([], "ptb.test.txt holds no words")):
        r = bench("ptb", "--data-dir", str(tmp_path), *extra)
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
