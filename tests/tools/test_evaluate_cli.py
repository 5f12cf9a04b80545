"""`python -m tools.evaluate` as a user runs it: JSON on an unseen corpus, clean errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORDS = "the king my lord good night sweet prince shall we go and see the sea at dawn".split()


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "tools.evaluate", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)


@pytest.fixture
def fresh_corpus(tmp_path) -> Path:
    """A corpus no model has seen, in the JSONL format, with enough users for a test split."""
    lines = []
    for u in range(40):
        for r in range(4):
            words = [WORDS[(u * 7 + r * 3 + i) % len(WORDS)] for i in range(8)]
            lines.append(json.dumps({"user": f"person {u}", "text": " ".join(words) + ".", "extra": r}))
    p = tmp_path / "fresh.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_json_on_a_corpus_it_has_never_seen(exported_version, fresh_corpus):
    res = run("--model", str(exported_version), "--corpus", str(fresh_corpus), "--json", "--max-words", "200",
              "--baseline")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert {"top1", "top3", "word_perplexity", "ksr", "words"} <= set(out)
    assert 0 < out["words"] <= 200
    assert 0.0 <= out["top1"] <= out["top3"] <= 1.0 and 0.0 <= out["ksr"] < 1.0 and out["word_perplexity"] > 1.0
    assert out["ngram"]["words"] == out["words"]


def test_personalization_compares_each_user_with_and_without_their_own_words(exported_version, tmp_path):
    """Users who repeat themselves: their own words must help most of them, and never cost on average."""
    lines = []
    for u in range(40):
        habit = f"Zorblax{u} Quintessa{u} barbecue"  # each user's private phrase, not in the word list
        for r in range(12):
            words = [WORDS[(u * 7 + r * 3 + i) % len(WORDS)] for i in range(6)]
            lines.append(json.dumps({"user": f"person {u}", "text": f"{habit} {' '.join(words)} {habit}"}))
    corpus = tmp_path / "habits.jsonl"
    corpus.write_text("\n".join(lines) + "\n")
    res = run("--model", str(exported_version), "--corpus", str(corpus), "--json", "--max-words", "800",
              "--personalization")
    assert res.returncode == 0, res.stderr
    pers = json.loads(res.stdout)["personalization"]
    assert pers["users"] >= 2 and pers["mean_top3_gain"] > 0.05 and pers["mean_ksr_gain"] > 0.05
    assert pers["share_top3_gain"] > 0.5 >= pers["share_top3_loss"]


def test_personalization_with_too_few_words_keeps_the_rows_it_scored(exported_version, fresh_corpus):
    """A --max-words too small for any user's 20 words exited 2 and dropped every row already scored."""
    res = run("--model", str(exported_version), "--corpus", str(fresh_corpus), "--max-words", "12",
              "--personalization", "--baseline")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert "n-gram" in res.stdout or "ngram" in res.stdout, res.stdout
    assert "personalization: no held-out user has 20 or more scored words" in res.stdout, res.stdout
    res = run("--model", str(exported_version), "--corpus", str(fresh_corpus), "--max-words", "12",
              "--personalization", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert 0 < out["words"] <= 12 and out["personalization"]["users"] == 0 and "--max-words" in \
        out["personalization"]["note"]


def test_held_out_text_a_train_user_also_has_is_warned_about(exported_version, tmp_path):
    own = [json.dumps({"user": f"person {u}", "text": f"person {u} says the king {r} rides at dawn"})
           for u in range(40) for r in range(4)]
    reply = [json.dumps({"user": f"person {u}", "text": "thanks I will look at it on monday and tell you what broke"})
             for u in range(40)]
    for lines, warned in ((own, False), (own + reply, True)):
        corpus = tmp_path / "corpus.jsonl"
        corpus.write_text("\n".join(lines) + "\n")
        res = run("--model", str(exported_version), "--corpus", str(corpus), "--max-words", "20", "--json")
        assert res.returncode == 0 and ("a train user also has" in res.stderr) == warned, res.stderr


@pytest.mark.parametrize("content,needle", [
    (None, "no such file"),
    ("", "file is empty"),
    ('{"user": "a", "text": "fine"}\n{"user": "a", "text": \n', "bad.jsonl:2: malformed JSON"),
    ('{"user": "a", "text": "fine"}\n{"user": "b"}\n', "bad.jsonl:2: missing field(s) 'text'"),
])
def test_bad_corpus_is_one_line_and_exit_2(tmp_path, exported_version, content, needle):
    p = tmp_path / "bad.jsonl"
    if content is not None:
        p.write_text(content)
    res = run("--model", str(exported_version), "--corpus", str(p), "--json")
    assert res.returncode == 2
    assert needle in res.stderr and "Traceback" not in res.stderr and res.stdout == ""


def test_the_baseline_is_never_scored_on_its_own_text(tmp_path, exported_version, fresh_corpus):
    """With no train users, --baseline fitted its trigram on the held-out users it then scored
    (63% top-1 against 4.7% with train users), without a word; --split train did the same."""
    from model.corpus import Record, split_users

    names = [f"person {i}" for i in range(200)]
    held = [n for n in names if split_users([Record(n, "x"), Record("other", "y")]).part("test").get(n)][:2]
    p = tmp_path / "held_out_only.jsonl"
    p.write_text("".join(json.dumps({"user": u, "text": " ".join(WORDS)}) + "\n" for u in held for _ in range(5)))
    res = run("--model", str(exported_version), "--corpus", str(p), "--baseline")
    assert res.returncode == 2 and "has no train users" in res.stderr and "Traceback" not in res.stderr, res.stderr
    res = run("--model", str(exported_version), "--corpus", str(fresh_corpus), "--baseline", "--split", "train")
    assert res.returncode == 2 and "leave out --split train" in res.stderr, res.stderr


def test_missing_model_directory_is_a_clear_error(tmp_path, fresh_corpus):
    res = run("--model", str(tmp_path / "nothing"), "--corpus", str(fresh_corpus))
    assert res.returncode == 2 and "not a model version directory" in res.stderr and "Traceback" not in res.stderr


def test_ablation_chooses_rows_on_validation_users_without_scoring_a_test_user(exported_version, fresh_corpus,
                                                                               capsys):
    """The ablation scored only the test users, the ones the issue's claims are made on: a choice
    between rows made on it wore them out. `--split validation` scores the validation users."""
    from model.corpus import read_corpus, split_users
    from tools.ablation import main
    from tools.wordeval import scored_words

    split = split_users(read_corpus(fresh_corpus), seed=0)
    assert split.validation and set(split.validation).isdisjoint(split.test)
    assert main(["--model", str(exported_version), "--corpus", str(fresh_corpus), "--max-words", "40",
                 "--max-keystrokes", "20", "--split", "validation"]) == 0
    out = capsys.readouterr().out
    assert f"{len(split.validation)} validation users" in out and "held-out users" not in out.splitlines()[0]
    words = sum(scored_words(split.validation, 40).values())
    assert f"Every row scored the same {words:,} words" in out, out


def test_ablation_table_scores_every_part_on_the_same_words(exported_version, fresh_corpus):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-m", "tools.ablation", "--model", str(exported_version), "--corpus",
                          str(fresh_corpus), "--max-words", "120", "--max-keystrokes", "150",
                          "--central", str(exported_version), "--ngram-bounds", "4"],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stderr
    main_table, bounds_table = res.stdout.split("What an n-gram learned from devices could add at most")
    rows = [line.split("|")[1:-1] for line in main_table.splitlines() if line.startswith("| ") and "%" in line]
    assert len(rows) == 3 + 6 + 2
    # the header said --max-words as the words scored, and "10k softmax" whatever the version's size
    import re

    from protocol.artifact import read_manifest
    same = re.search(r"Every row scored the same ([\d,]+) words", res.stdout)
    assert same and 0 < int(same.group(1).replace(",", "")) <= 120 and "up to 120 words" in res.stdout
    softmax = read_manifest(exported_version).architecture().model.vocab_size
    assert any(f"LSTM, {softmax:,}-word softmax only" in r[0] for r in rows), rows
    # --ngram-bounds: the keyboard with six base n-grams, from the proxy one to all train users' text
    bounds = [line.split("|")[1:-1] for line in bounds_table.splitlines() if line.startswith("| ") and "%" in line]
    from model.corpus import read_corpus, split_users
    n_train = len(split_users(read_corpus(fresh_corpus), seed=0).train)
    assert [b[0].strip().split(",")[0] for b in bounds] == [
        "the proxy trigram (what ships)", "the 4 devices' text", "the 4 devices' text",
        *[f"all {n_train} train users' text"] * 3], bounds
    stored = [int(b[4].replace(",", "")) for b in bounds]
    assert stored[2] <= stored[1] and stored[4] <= stored[3] <= stored[5], stored   # thresholds keep a part
    assert all(0.0 <= float(b[2].strip().rstrip("%")) <= 100.0 for b in bounds)
    # the central trigram keeping only what 2+ train users typed stores a part of the central one
    sizes = [int(r[5].split()[0].replace(",", "")) for r in rows[:2]]
    assert "at least 2 train users" in rows[1][0] and 0 < sizes[1] <= sizes[0], rows[:2]
    from protocol.artifact import encode_weights_q8, load_version
    manifest, weights = load_version(exported_version)
    per_version = f"{len(encode_weights_q8(weights)) / 1e6:.2f} MB per version"
    for name, top1, top3, ksr, keystroke, params, download in rows:
        t1, t3, k = (float(x.strip().rstrip("%")) for x in (top1, top3, ksr))
        assert 0.0 <= t1 <= t3 <= 100.0 and 0.0 <= k < 100.0
        p50, p99 = (float(x) for x in keystroke.split("/"))
        assert 0.0 < p50 <= p99, (name, keystroke)
        if "trigram" in name:
            assert "n-gram probabilities" in params and int(params.split()[0].replace(",", "")) > 0
        else:   # every LSTM row: its parameters and its int8 download, plus the base n-gram once if used
            assert params.strip().startswith(f"{manifest.num_params:,}"), (name, params)
            assert download.strip().startswith(per_version), (name, download)
            assert ("once" in download) == ("base n-gram" in name or "keyboard" in name), (name, download)
    bad = subprocess.run([sys.executable, "-m", "tools.ablation", "--corpus", str(fresh_corpus), "--max-words", "0"],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "--max-words" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "tools.evaluate", "--model", "no-such-dir", "--corpus",
                          str(fresh_corpus), "--max-words", "0"],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --max-words must be >= 1", bad.stderr
    bad = subprocess.run([sys.executable, "-m", "tools.ablation", "--corpus", str(fresh_corpus), "--ngram-bounds",
                          "500"], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "train users" in bad.stderr, bad.stderr
