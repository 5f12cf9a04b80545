"""`python -m tools.simulate` end to end on a small corpus this test writes: a real coordinator
process, real edge runtimes in a process pool, two rounds, the report files."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from model.corpus import read_corpus, split_users

ROOT = Path(__file__).resolve().parents[2]
WORDS = ("the king shall come to the castle tonight and my lord will speak with thee of love and war "
         "good morrow sweet friend I pray you tell me what news from the court").split()


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "160"}


def write_corpus(path: Path, users: int, texts_per_user: int, seed: int) -> Path:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for u in range(users):
            for _ in range(texts_per_user):
                text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12)))
                f.write(json.dumps({"user": f"user{u:02d}", "text": text}) + "\n")
    return path


def simulate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.simulate", *args], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=300, check=False)


def test_simulation_end_to_end_on_a_small_corpus(tmp_path, exported_version):
    corpus = write_corpus(tmp_path / "corpus.jsonl", users=8, texts_per_user=30, seed=1)   # 5 train users
    proxy = write_corpus(tmp_path / "proxy.jsonl", users=3, texts_per_user=10, seed=2)
    data = tmp_path / "sim"
    r = simulate("--corpus", str(corpus), "--proxy", str(proxy), "--devices", "32", "--rounds", "2",
                 "--data-dir", str(data), "--v0", str(exported_version), "--no-central", "--participation", "1.0",
                 "--dropout", "0", "--max-examples", "16", "--batch-size", "4", "--eval-words", "60",
                 "--canary-fraction", "1.0", "--canary-min-reports", "2", "--workers", "2", "--no-progress")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    # fewer train users than --devices: all of them run (once refused), and the report says how many
    assert "has 5 train users, so 5 devices run, not --devices 32" in r.stdout

    md = (data / "report.md").read_text()
    assert "5 simulated devices" in md
    # DP is on by default: the federated rows name their noise and both epsilons.
    assert "| LSTM, proxy text only (version 0) |" in md
    assert "| LSTM, federated with DP noise (σ=0.01, ε=" in md and "ε against the coordinator" in md
    assert "(global model alone) |" in md and "FedKeys keyboard, federated with DP noise" in md
    assert "vs the central trigram" in md
    # each claim carries how much the choice of held-out users alone could move it
    assert re.search(r"vs the central trigram: top-3 [+-]\d+\.\d \(95% interval [+-]\d+\.\d to [+-]\d+\.\d\)", md), md
    assert "Kneser-Ney" in md and "report.png" in md
    # what the word budget covered: every held-out user with a word, out of how many words
    from model.corpus import read_corpus, split_users
    from tools.wordeval import scored_words
    heldout = split_users(read_corpus(corpus), seed=0).test
    covered = re.search(r"evaluated on (\d+) words of (\d+) of the (\d+) held-out users "
                        r".*the scored halves of all \d+ hold ([\d,]+) words", md)
    assert covered and int(covered[1]) == 60 and int(covered[3]) == len(heldout), md[:800]
    assert int(covered[2]) == sum(1 for n in scored_words(heldout).values() if n)   # an even share reaches all
    assert int(covered[4].replace(",", "")) == sum(scored_words(heldout).values())
    png = (data / "report.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000

    report = json.loads((data / "report.json").read_text())
    rounds = report["federations"][0]["rounds"]
    assert [x["round"] for x in rounds] == [1, 2]
    for x in rounds:
        assert x["status"] == "done" and x["accepted"] >= 1 and x["eligible"] == 5, x
        assert x["verdict"] in ("promote", "reject"), x
        assert x["canary_reports"] >= 2 and x["candidate_metrics"]["words"] > 0
    assert report["federations"][0]["final_version"]
    final = Path(report["federations"][0]["final_version_dir"])   # where a user takes the final model from
    assert final.name == report["federations"][0]["final_version"] and (final / "manifest.json").is_file()
    assert f"final model, federated: {final} (python -m tools.evaluate --model DIR)" in r.stdout
    # the disk the devices' versions take: said before they enroll, measured in the report
    assert "federated: each device keeps 2 versions of " in r.stdout
    assert report["federations"][0]["devices_bytes"] > 0 and "for the 5 simulated devices (" in md
    # Read by automation: the references and both views of the federated result.
    refs = report["references"]
    assert {"ngram", "ngram_shared", "ngram_proxy", "proxy", "proxy_lstm", "keyboard_v0"} <= set(refs)
    # issue 10's fields: `proxy` is version 0's LSTM alone (shippable without users' text), as it was
    # filed; it held the keyboard on version 0 until 7 December, and a checker read it as the proxy LSTM
    assert refs["proxy"] == refs["proxy_lstm"] != refs["keyboard_v0"]
    for key in ("final_metrics", "global_metrics"):
        assert {"top1", "top3", "ksr"} <= set(report["federations"][0][key]), key
    # tools.rescore: the same run's claims on every held-out word and with every user the same
    r = subprocess.run([sys.executable, "-m", "tools.rescore", "--data-dir", str(data), "--json"], cwd=ROOT,
                       env=_env(), capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ngram: top-3" in r.stderr and "keyboard (the run's final version): top-3" in r.stderr   # progress
    again = json.loads(r.stdout)
    total = sum(scored_words(heldout).values())
    assert again["heldout_words"] == total and again["every_word"]["words"] == total
    assert again["run"]["words"] == 60 and again["every_user"]["users"] == again["every_word"]["users"]
    on_run = again["run"]["claims"]["keyboard vs central trigram, top-3"][0]
    assert on_run == pytest.approx((report["federations"][0]["final_metrics"]["top3"]
                                    - report["references"]["ngram"]["top3"]) * 100)
    rows = again["rows"]   # every model's rates on those words: the claims are their differences
    assert "central" not in rows and {"ngram", "keyboard_v0", "keyboard", "global"} <= set(rows)
    assert again["every_word"]["claims"]["keyboard vs central trigram, KSR"][0] == pytest.approx(
        (rows["keyboard"]["ksr"] - rows["ngram"]["ksr"]) * 100)
    for w in ("run", "every_word", "every_user"):
        d, lo, hi = again[w]["claims"]["keyboard vs best shippable, top-3"]
        assert lo <= d <= hi and "global LSTM vs central LSTM, top-3" not in again[w]["claims"]   # --no-central
    # re-scored on the run's own budget, every word is the run's word: the same claims, from a fresh scoring
    # in one process (the run scored its held-out users in two)
    r = subprocess.run([sys.executable, "-m", "tools.rescore", "--data-dir", str(data), "--json", "--eval-words",
                        "60", "--workers", "1"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300,
                       check=False)
    same = json.loads(r.stdout)
    for label, (d, lo, hi) in same["run"]["claims"].items():
        assert same["every_word"]["claims"][label] == pytest.approx([d, lo, hi], abs=1e-9), label
    # Every device kept its own state: identity, text cache, installed versions.
    devices = sorted((data / "runs" / "federated" / "devices").iterdir())
    assert len(devices) == 5
    for d in devices:
        assert (d / "device.json").exists() and (d / "text_cache.sqlite3").exists()
    # Typed text never reached the coordinator's files.
    needle = b"good morrow sweet friend"
    coord = data / "runs" / "federated" / "coordinator"
    assert not [p for p in coord.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_bad_input_is_one_line(tmp_path):
    r = simulate("--corpus", str(tmp_path / "missing.jsonl"), "--devices", "2", "--rounds", "1",
                 "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 2 and r.stderr.strip() == f"error: {tmp_path / 'missing.jsonl'}: no such file", r.stderr
    corpus = write_corpus(tmp_path / "c.jsonl", users=24, texts_per_user=2, seed=0)
    r = simulate("--corpus", str(corpus), "--devices", "2", "--rounds", "0", "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 2 and r.stderr.strip() == "error: --rounds must be >= 1"
    for bad, msg in ((["--clip-norm", "inf"], "learning rates and clip must be finite and > 0"),
                     (["--server-lr", "1e400"], "learning rates and clip must be finite and > 0"),
                     (["--noise-multiplier", "nan"], "noise multipliers must be finite and >= 0"),
                     (["--central-epochs", "-1"], "--central-epochs must be >= 1"),
                     (["--canary-tolerance", "-5"], "--canary-tolerance must be finite and >= 0"),
                     # past a device's own limits every device refuses every round: refused up front
                     (["--clip-norm", "11"], "--clip-norm 11 is above what a device accepts (10"),
                     (["--epochs", "21"], "--epochs 21 is above what a device accepts (20")):
        r = simulate("--corpus", str(corpus), "--devices", "2", "--rounds", "1", "--data-dir", str(tmp_path / "d"),
                     *bad)
        assert r.returncode == 2 and r.stderr.strip().startswith("error: ") and msg in r.stderr, (bad, r.stderr)
    # a --data-dir that is a file: one line naming it, not a traceback
    (tmp_path / "a-file").write_text("x")
    r = simulate("--corpus", str(corpus), "--proxy", str(corpus), "--devices", "2", "--rounds", "1",
                 "--data-dir", str(tmp_path / "a-file"), "--no-central")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "a-file" in r.stderr, r.stderr
    # ... or a folder inside one: the file is named, not "File exists"
    for data_dir in (tmp_path / "a-file", tmp_path / "a-file" / "run"):
        r = simulate("--corpus", str(corpus), "--proxy", str(corpus), "--devices", "2", "--rounds", "1",
                     "--data-dir", str(data_dir), "--no-central")
        assert r.returncode == 2 and r.stderr.startswith(f"error: {tmp_path / 'a-file'} is a file, not a folder"), \
            r.stderr


def test_a_second_simulation_into_the_same_data_dir_is_refused(tmp_path):
    """It deleted the running one's coordinator, which then failed naming its database."""
    import fcntl

    corpus = write_corpus(tmp_path / "c.jsonl", users=24, texts_per_user=2, seed=0)
    d = tmp_path / "d"
    d.mkdir()
    with open(d / ".simulate.lock", "a") as running:   # as a first run holds it
        fcntl.flock(running, fcntl.LOCK_EX)
        r = simulate("--corpus", str(corpus), "--proxy", str(corpus), "--devices", "2", "--rounds", "1",
                     "--data-dir", str(d), "--no-central")
        assert r.returncode == 1 and "another simulation" in r.stderr and str(d) in r.stderr, r.stderr
        assert sorted(p.name for p in d.iterdir()) == [".simulate.lock"]
        r = subprocess.run([sys.executable, "-m", "tools.rescore", "--data-dir", str(d)], cwd=ROOT,
                           capture_output=True, text=True, timeout=120, check=False)
        assert r.returncode == 1 and "another simulation" in r.stderr, r.stderr   # not scoring a run replaced


def test_the_simulation_holds_its_data_dir_for_the_whole_run_and_lets_go_after(tmp_path, monkeypatch):
    """The lock must cover every step that writes the data directory, and go with any failure."""
    import fcntl
    import importlib

    cli = importlib.import_module("tools.simulate.cli")   # the package's `cli` is the console script
    d = tmp_path / "d"
    d.mkdir()
    seen = []

    def probe(*_a, **_k):
        with open(d / ".simulate.lock", "a") as other:
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen.append("free")
            except BlockingIOError:
                seen.append("held")
        raise RuntimeError("stop here")

    monkeypatch.setattr(cli, "ensure_v0", probe)
    corpus = write_corpus(tmp_path / "c.jsonl", users=24, texts_per_user=2, seed=0)
    args = cli.build_parser().parse_args(["--corpus", str(corpus), "--proxy", str(corpus), "--devices", "2",
                                          "--rounds", "1", "--data-dir", str(d), "--no-central"])
    with pytest.raises(RuntimeError, match="stop here"):
        cli.simulate(args, "test")
    assert seen == ["held"]
    with open(d / ".simulate.lock", "a") as after:
        fcntl.flock(after, fcntl.LOCK_EX | fcntl.LOCK_NB)   # released with the failure


def test_devices_are_users_who_can_train_and_a_corpus_of_single_texts_is_refused(tmp_path):
    """A device keeps its newest text back to evaluate on, so a user of one text trains nothing:
    e-mail's simulations ran 5 such senders of one long e-mail among their 32 devices."""
    from tools.simulate.population import load_population

    rows = [{"user": f"long{i}", "text": "word " * 400} for i in range(3)]          # one long text each
    rows += [{"user": f"u{i}", "text": f"short text {j} of user {i}"} for i in range(40) for j in range(3)]
    corpus = tmp_path / "mixed.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train = split_users(read_corpus(str(corpus)), seed=0).train
    assert sum(u.startswith("long") for u in train) >= 1        # a long single text would have ranked first
    pop = load_population(str(corpus), 4)
    assert [len(texts) >= 2 for _, texts in pop.users] == [True] * 4, pop.users
    single = tmp_path / "single.jsonl"
    single.write_text("".join(json.dumps({"user": f"u{i}", "text": f"hi there {i}"}) + "\n" for i in range(40)))
    r = simulate("--corpus", str(single), "--proxy", str(corpus), "--devices", "2", "--rounds", "1",
                 "--data-dir", str(tmp_path / "d"), "--no-central")
    assert r.returncode == 2 and "every device's user has one text" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_child_tools_run_without_progress_bars_when_the_simulation_shows_none(monkeypatch):
    """A log of `tools.simulate --no-progress` (or of a run piped to a file) must not fill with
    the child pretraining's redrawn bars."""
    import argparse

    from tools.simulate import population
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert population._progress_args(argparse.Namespace(no_progress=True)) == ["--no-progress"]
    assert population._progress_args(argparse.Namespace(no_progress=False)) == []
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    assert population._progress_args(argparse.Namespace(no_progress=False)) == ["--no-progress"]


def test_central_reference_epochs_are_capped_for_large_corpora(monkeypatch, tmp_path):
    """By default each central epoch is capped (a corpus of millions of words would take hours);
    the cap reaches tools.pretrain, 0 asks for full passes, a negative cap is refused."""
    import argparse

    from tools.simulate import build_parser, population
    from tools.simulate.cli import CENTRAL_STEPS_PER_EPOCH
    calls: list[list[str]] = []
    monkeypatch.setattr(population, "_subprocess_step", lambda title, module_args: calls.append(module_args))
    base = dict(no_central=False, central=None, corpus="c.jsonl", central_epochs=4, no_progress=True, rebuild=False)
    default = build_parser().parse_args(["--corpus", "c.jsonl"]).central_steps_per_epoch
    for steps in (default, 0, 50):
        population.ensure_central(tmp_path, tmp_path / "v0", argparse.Namespace(**base, central_steps_per_epoch=steps))
    assert calls[0][calls[0].index("--steps-per-epoch") + 1] == str(CENTRAL_STEPS_PER_EPOCH)
    assert "--steps-per-epoch" not in calls[1]
    assert calls[2][calls[2].index("--steps-per-epoch") + 1] == "50"
    bad = simulate("--corpus", "c.jsonl", "--central-steps-per-epoch", "-1")
    assert bad.returncode == 2 and "--central-steps-per-epoch must be >= 0" in bad.stderr, bad.stderr


def test_report_says_when_the_central_reference_saw_a_share_of_its_windows():
    """The central row names the cap only when it bound: a full pass reads as before."""
    from tools.simulate.report import central_cap
    full = {"central": {"top3": 0.2, "training": {"windows": 12212, "windows_per_epoch": 12212}}}
    capped = {"central": {"top3": 0.2, "training": {"windows": 500000, "windows_per_epoch": 128000}}}
    assert central_cap(full) == "" and central_cap({"central": {"top3": 0.2}}) == "" and central_cap({}) == ""
    assert "128,000 of its 500,000 windows" in central_cap(capped)


def test_simulated_devices_follow_the_runs_own_noise_even_zero():
    """The device's default floor refuses unnoised plans from a coordinator it does not control;
    the simulator runs both sides, so `--noise-multiplier 0` must still train."""
    from edge_runtime.config import EdgeConfig
    from edge_runtime.plan_guard import PlanFloor
    from protocol.plan import TrainPlan
    from tools.simulate.devices import device_config

    plan = TrainPlan(round_id=1, epochs=3, batch_size=16, learning_rate=0.5, clip_norm=3.0, noise_multiplier=0.0,
                     max_examples=192)
    assert PlanFloor.from_config(EdgeConfig(data_dir="x")).refusal(plan)          # a phone refuses it
    assert PlanFloor.from_config(device_config("x", True)).refusal(plan) is None   # a simulated device trains


def test_report_names_the_central_trigrams_shared_part_when_there_is_one(tmp_path):
    """references.ngram_shared (the central trigram kept to what 2+ train users typed) is a row and
    a claim; a corpus whose train users share nothing has no such reference, and the report still renders."""
    from tools.simulate.federation import FederationResult
    from tools.simulate.report import headline_rows, verdict_lines

    def m(top3: float) -> dict:
        return {"top1": top3 / 2, "top3": top3, "ksr": top3 * 2, "words": 100}

    refs = {"ngram": m(0.24), "ngram_shared": m(0.20), "ngram_proxy": m(0.20), "proxy_lstm": m(0.21),
            "keyboard_v0": m(0.22)}
    fed = FederationResult("federated", 0.0, [], "v1", m(0.22), m(0.21), tmp_path, tmp_path)
    labels = [label for label, _ in headline_rows(refs, [fed], 8)]
    assert labels[1].startswith("the same trigram, only the words and n-grams at least 2 train users typed")
    assert "vs its part that at least 2 train users typed: top-3 +2.0 points" in verdict_lines(refs, fed)[0]
    del refs["ngram_shared"]
    assert len(headline_rows(refs, [fed], 8)) == len(labels) - 1
    assert verdict_lines(refs, fed)[0].endswith("KSR -4.0 points.")


def test_each_round_is_one_sentence_with_every_figure_whatever_the_terminal_width():
    """The console's per-round account: a table of twelve columns cut its figures to `39.…` in an
    80- or 120-column terminal; a sentence wraps and keeps them."""
    import io

    from rich.console import Console

    from tools.simulate.federation import RoundResult
    from tools.simulate.report import round_line

    r = RoundResult(round=3, eligible=30, trained=29, dropped=1, accepted=28, rejected=1,
                    rejection_reasons={"norm": 1}, verdict="promote", canary_reports=3,
                    candidate_metrics={"top3": 0.2234, "ksr": 0.391}, stable_metrics={"top3": 0.2234, "ksr": 0.3912},
                    epsilon=float("inf"), epsilon_local=12.5)
    line = round_line(r, "federated: round 3/8 (37 s)")
    assert line == ("federated: round 3/8 (37 s): 30 eligible, 29 uploaded, 1 dropped, 28 accepted, 1 rejected "
                    "(norm 1); canary: promote on 3 canary reports; candidate top-3 22.3%; deployed top-3 22.3%, "
                    "KSR 39.1%; ε ∞ (against the coordinator 12.5)")
    out = io.StringIO()
    Console(file=out, width=80, markup=False, highlight=False).print(line)
    assert "…" not in out.getvalue() and "39.1%" in out.getvalue() and "(norm 1)" in out.getvalue()
    assert round_line(RoundResult(round=1), "t").count("–") == 3   # no metrics yet: a dash, not a crash
    # eligible devices with nothing cached to train on were missing from the sentence
    assert "1 dropped, 9 skipped (nothing cached to train on), 28 accepted" in round_line(
        RoundResult(round=3, eligible=39, trained=29, dropped=1, skipped=9, accepted=28), "t")


def test_a_central_reference_left_by_a_run_on_other_text_or_another_version_0_is_not_reused(
        monkeypatch, tmp_path, exported_version):
    """A second simulation in the same --data-dir with another --corpus (or version 0) must train
    its own central reference, not compare its federation against the first run's."""
    import argparse

    from tools.pretrain import sources_sha256
    from tools.simulate import population
    calls: list[list[str]] = []
    monkeypatch.setattr(population, "_subprocess_step", lambda title, module_args: calls.append(module_args))
    one, two = write_corpus(tmp_path / "one.jsonl", users=6, texts_per_user=2, seed=0), \
        write_corpus(tmp_path / "two.jsonl", users=6, texts_per_user=2, seed=1)
    central = tmp_path / "models" / "central"
    shutil.copytree(exported_version, central)
    m = json.loads((central / "manifest.json").read_text())
    v0_weights = json.loads((exported_version / "manifest.json").read_text())["weights_sha256"]
    m["metrics"] = {**m["metrics"], "source": "one.jsonl", "source_sha256": sources_sha256([str(one)]),
                    "init_weights_sha256": v0_weights}
    (central / "manifest.json").write_text(json.dumps(m))
    args = lambda corpus: argparse.Namespace(no_central=False, central=None, corpus=str(corpus),  # noqa: E731
                                             central_epochs=4, no_progress=True, rebuild=False,
                                             central_steps_per_epoch=0)
    assert population.central_is_stale(central, exported_version, str(one)) is None
    population.ensure_central(tmp_path, exported_version, args(one))
    assert calls == []                                                        # same text, same version 0: reused
    assert "other text" in population.central_is_stale(central, exported_version, str(two))
    population.ensure_central(tmp_path, exported_version, args(two))
    assert len(calls) == 1 and calls[0][calls[0].index("--corpus") + 1] == str(two)
    m["metrics"]["init_weights_sha256"] = "0" * 64
    (central / "manifest.json").write_text(json.dumps(m))
    assert "another version 0" in population.central_is_stale(central, exported_version, str(one))
    # trained on another split of the users (tools.pretrain --seed 1 before it kept the split): held-out
    # users among its training text
    m["metrics"]["init_weights_sha256"] = v0_weights
    m["metrics"]["split_seed"] = 1
    (central / "manifest.json").write_text(json.dumps(m))
    assert "another split of the users" in population.central_is_stale(central, exported_version, str(one))
    # and one given by hand is checked too (another corpus's reference moved a claim by 2 points)
    del m["metrics"]["split_seed"]
    (central / "manifest.json").write_text(json.dumps(m))
    given = lambda corpus: argparse.Namespace(**{**vars(args(corpus)), "central": str(central)})  # noqa: E731
    assert population.ensure_central(tmp_path, exported_version, given(one)) == central
    from model.corpus import CorpusError

    with pytest.raises(CorpusError, match="does not fit this run: it was trained on other text"):
        population.ensure_central(tmp_path, exported_version, given(two))
    assert len(calls) == 1                                                    # nothing trained meanwhile


def test_cached_reference_scores_follow_the_corpus_content_not_its_size_and_time(tmp_path):
    """An edit that keeps the file's size, with its old mtime put back, reused the scores of the
    text before: the cache key is the content now."""
    from tools.simulate.references import _file_key

    p = tmp_path / "c.jsonl"
    p.write_text('{"user": "a", "text": "the cat"}\n')
    before, st = _file_key(p), p.stat()
    p.write_text('{"user": "a", "text": "zzz cat"}\n')
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert p.stat().st_size == st.st_size and _file_key(p) != before
    p.write_text('{"user": "a", "text": "the cat"}\n')
    assert _file_key(p) == before


def test_one_document_per_user_run_from_another_directory_with_relative_paths(tmp_path, exported_version):
    """Two ways the evaluator's command failed on a legitimate corpus: a corpus of one
    long document per user was refused, pointing at tools.prepare options that refuse JSON Lines;
    and run outside the checkout, the central reference's training looked for the relative
    --corpus and --data-dir in the checkout. Each document is now typed as its paragraphs or runs
    of sentences, and child tools run where the simulation was started."""
    import random

    rng = random.Random(3)
    rows = [{"user": f"author{i}",
             "text": "\n\n".join(" ".join(f"{' '.join(rng.choice(WORDS) for _ in range(9))}." for _ in range(3))
                                 for _ in range(6))} for i in range(12)]
    (tmp_path / "essays.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows)
                                           + json.dumps({"user": "author0", "text": None}) + "\n")   # a null: no text
    r = subprocess.run([sys.executable, "-m", "tools.simulate", "--corpus", "essays.jsonl", "--devices", "4",
                        "--rounds", "1", "--data-dir", "sim", "--v0", str(exported_version),
                        "--central-epochs", "1", "--central-steps-per-epoch", "2", "--participation", "1.0",
                        "--dropout", "0", "--max-examples", "16", "--batch-size", "4", "--eval-words", "40",
                        "--canary-fraction", "1.0", "--canary-min-reports", "1", "--no-progress"],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "each device's text is typed as its paragraphs" in r.stdout
    # and the held-out users' too: their first paragraphs are typed before the rest is scored
    assert re.search(r"note: \d+ of the \d+ held-out users hold one text", r.stdout), r.stdout[-2000:]
    report = json.loads((tmp_path / "sim" / "report.json").read_text())
    assert {"ngram", "proxy", "central"} <= set(report["references"])
    assert (tmp_path / "sim" / "models" / "central" / "manifest.json").is_file()
    assert not (ROOT / "sim").exists()


def test_the_callers_own_packages_do_not_shadow_the_coordinators(tmp_path, monkeypatch):
    """The simulator starts the coordinator in the caller's directory (its relative paths are
    there), and a `protocol.py` of the caller's own project there was imported in place of this
    one's package: "No module named 'protocol.cli'"."""
    from tools.coordinator_process import CoordinatorProcess

    project = tmp_path / "project"
    (project / "model").mkdir(parents=True)
    (project / "protocol.py").write_text('"""the caller\'s own module"""\n')
    (project / "model" / "__init__.py").write_text("")
    monkeypatch.chdir(project)
    proc = CoordinatorProcess(tmp_path / "coord", tmp_path / "coord.log")
    assert proc.cli("init")   # prints where it put the data directory


def test_the_report_says_where_the_final_version_is_and_keeps_the_keys_automation_reads(tmp_path):
    """The final federated version was found only by looking under runs/<name>/keyboard/models/:
    report.md, report.json (a key added, none renamed) and the console's last lines say where."""
    from tools.simulate.cli import build_parser
    from tools.simulate.federation import FederationResult, RoundResult
    from tools.simulate.population import Population
    from tools.simulate.report import final_dir_note, write_report

    def m(top3: float) -> dict:
        return {"top1": top3 / 2, "top3": top3, "ksr": top3 * 2, "words": 100, "per_user": [[100, 10, 20, 30]]}

    refs = {"ngram": m(0.24), "ngram_proxy": m(0.20), "proxy_lstm": m(0.21), "keyboard_v0": m(0.22),
            "central": m(0.25)}
    keyboard = tmp_path / "runs" / "federated" / "keyboard"
    rounds = [RoundResult(round=1, status="done", verdict="promote", verdict_reason="ok", stable="v0002-ab")]
    fed = FederationResult("federated", 0.0, rounds, "v0002-ab", m(0.23), m(0.22), keyboard, tmp_path / "c",
                           devices_bytes=1_010_000_000)
    assert fed.final_dir == keyboard / "models" / "v0002-ab"
    args = build_parser().parse_args(["--corpus", "c.jsonl"])
    pop = Population(users=[("u", ["a b c", "d e f"])], heldout={"h": ["a b c d", "e f g h"]}, train_users=1,
                     test_users=1)
    md = write_report(tmp_path, args, "python -m tools.simulate", pop, refs, [fed], refs["keyboard_v0"], 60.0)
    assert f"Final deployed version: `v0002-ab`, in `{fed.final_dir}`" in md.read_text()
    assert "python -m tools.evaluate --model DIR" in final_dir_note(fed)
    assert f"Disk: 1.01 GB for the 1 simulated device (`{keyboard.parent / 'devices'}`)" in md.read_text()
    report = json.loads((tmp_path / "report.json").read_text())
    assert {"ngram", "proxy", "central", "ngram_proxy"} <= set(report["references"])
    f = report["federations"][0]
    assert f["final_version_dir"] == str(fed.final_dir) and f["final_version"] == "v0002-ab"
    assert f["devices_bytes"] == 1_010_000_000
    assert {"final_metrics", "global_metrics", "rounds", "name", "noise_multiplier"} <= set(f)
    assert "validation users" not in md.read_text()
    val = replace(pop, scored="validation")   # `--split validation`: the report says whose words these are
    text = write_report(tmp_path, args, "python -m tools.simulate", val, refs, [fed], refs["keyboard_v0"], 60.0
                        ).read_text()
    assert "of the 1 validation users" in text and "Scored on the corpus's validation users" in text
    assert "stops early on them" in text   # the central reference chose its epoch on these users


def test_the_disk_the_devices_versions_take_is_said_up_front_and_measured(tmp_path):
    """32 devices keeping two 16 MB versions each (as a phone keeps one for rollback) filled 1.1 GB
    of a user's disk, which only `du` told them."""
    from tools.simulate.disk import bytes_on_disk, disk_note, version_bytes

    v0 = ROOT / "models" / "v0"
    per_version = version_bytes(v0)
    graph_and_words = (v0 / "model.tflite").stat().st_size + (v0 / "tokenizer.model").stat().st_size
    assert graph_and_words < per_version < graph_and_words + (v0 / "weights.safetensors").stat().st_size / 2
    note = disk_note("federated", 32, 15_792_478, tmp_path / "devices")
    assert note == ("federated: each device keeps 2 versions of 15.8 MB (the one in use and the previous one, as "
                    f"a phone keeps it for rollback): up to 1.01 GB under {tmp_path / 'devices'}")
    # two worker processes: two devices at once may hold a third version (installing, or a canary evaluating)
    with_workers = disk_note("federated", 32, 15_792_478, tmp_path / "devices", 2)
    assert "one at a time per worker process (2) also holds a third" in with_workers
    assert with_workers.endswith(f"up to 1.04 GB under {tmp_path / 'devices'}")   # 66 x 15.8 MB
    assert "up to 47.4 MB" in disk_note("federated", 1, 15_792_478, tmp_path, 2)   # never more than the devices
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_bytes(b"x" * 1000)
    (tmp_path / "b").write_bytes(b"y" * 10)
    os.link(tmp_path / "a" / "f", tmp_path / "a" / "g")   # a file linked twice takes its bytes once
    assert bytes_on_disk(tmp_path) == 1010


def test_a_version_inside_the_runs_it_would_delete_is_refused(tmp_path, exported_version):
    """The report names the final version's directory under DIR/runs/ for reuse; given back as
    --v0 with the same --data-dir, the run deleted it (rmtree of DIR/runs/<name>) before it
    started. Refused, with how to keep it, and left where it is."""
    kept = tmp_path / "sim" / "runs" / "federated" / "keyboard" / "models" / "v0009"
    shutil.copytree(exported_version, kept)
    r = subprocess.run([sys.executable, "-m", "tools.simulate", "--corpus", str(ROOT / "corpora" / "shakespeare.jsonl"),
                        "--devices", "2", "--rounds", "1", "--data-dir", str(tmp_path / "sim"), "--v0", str(kept),
                        "--no-central", "--no-progress"],
                       env=_env(), capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 2 and "which this run deletes before it starts: copy the version out" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and (kept / "manifest.json").is_file()


def test_a_log_that_cannot_open_leaves_stderr_and_the_open_files_as_they_were(tmp_path):
    """`stderr_to` used to copy fd 2 before opening the log: a log that could not open leaked the copy."""
    from tools.simulate.references import stderr_to

    fds = sorted(os.listdir("/proc/self/fd"))
    stat = os.fstat(2)
    with pytest.raises(FileNotFoundError), stderr_to(tmp_path / "missing" / "eval.log"):
        pass
    assert sorted(os.listdir("/proc/self/fd")) == fds
    assert (os.fstat(2).st_ino, os.fstat(2).st_dev) == (stat.st_ino, stat.st_dev)
    with stderr_to(tmp_path / "eval.log"):   # and one that opens takes fd 2 meanwhile, then gives it back
        os.write(2, b"banner\n")
    assert (tmp_path / "eval.log").read_bytes() == b"banner\n" and sorted(os.listdir("/proc/self/fd")) == fds


def test_a_recipe_is_tuned_on_validation_users_without_scoring_a_test_user(tmp_path):
    """Tuning the recipe's defaults on the test users' scores wears out the held-out claim; the
    simulator scored only them. `--split validation` scores the validation users instead, caches
    their references apart, and the report says so."""
    from tools.simulate.cli import build_parser
    from tools.simulate.population import load_population

    corpus = write_corpus(tmp_path / "c.jsonl", 60, 4, seed=3)
    split = split_users(read_corpus(str(corpus)), seed=0)
    test, val = load_population(str(corpus), 4), load_population(str(corpus), 4, scored="validation")
    assert set(test.heldout) == set(split.test) and set(val.heldout) == set(split.validation)
    assert not set(val.heldout) & set(split.test) and val.test_users == len(split.validation)
    assert val.who == "validation"
    assert val.users == test.users   # the same devices train
    from tools.simulate.references import words_key
    assert words_key(corpus, 5000, val) != words_key(corpus, 5000, test)   # their references are cached apart
    assert words_key(corpus, 5000, test) == f"{words_key(corpus, 5000, test).split(':')[0]}:5000:even-share"
    args = build_parser().parse_args(["--corpus", str(corpus), "--split", "validation"])
    assert args.split == "validation" and build_parser().parse_args(["--corpus", "c"]).split == "test"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--corpus", "c", "--split", "train"])   # trained on: nothing to learn from it
