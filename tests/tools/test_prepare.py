"""tools.prepare: other files become a corpus every tool reads, with the checks a held-out score needs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from model.corpus import read_corpus, split_users

REPO = Path(__file__).resolve().parents[2]


def _prepare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.prepare", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False, env=os.environ | {"PYTHONPATH": str(REPO)})


def _book(path: Path, paragraphs: int) -> Path:
    """A hard-wrapped plain-text book: paragraphs of two wrapped lines, blank lines between."""
    path.write_text("".join(f"Paragraph {i} opens here and goes\n   on  to its end {i}.\n\n"
                            for i in range(paragraphs)))
    return path


def test_a_book_becomes_pseudo_users_a_simulation_can_run_on(tmp_path):
    from model.corpus import CorpusError
    from tools.simulate import load_population

    book = _book(tmp_path / "novel.txt", 400)
    with pytest.raises(CorpusError, match=r"fewer than --devices 4 .*python -m tools.prepare .*--texts-per-user"):
        load_population(str(book), 4)             # as read: one writer, and the error says what to run
    out = tmp_path / "out" / "novel.jsonl"
    r = _prepare(str(book), "--format", "paragraphs", "--texts-per-user", "10", "--out", str(out))
    assert r.returncode == 0, r.stderr
    recs = read_corpus(out)
    assert [x.text for x in recs[:2]] == ["Paragraph 0 opens here and goes on to its end 0.",
                                          "Paragraph 1 opens here and goes on to its end 1."]
    assert len(recs) == 400 and len({x.user for x in recs}) == 40
    assert {x.user for x in recs[:10]} == {"novel #01"} and recs[10].user == "novel #02"   # consecutive, in order
    split = split_users(recs, seed=0)
    assert f"{len(split.train)} train, {len(split.validation)} validation, {len(split.test)} held-out" in r.stdout
    assert "not a new person" in r.stdout                 # the caveat of pseudo-users is printed
    pop = load_population(str(out), 4)
    assert len(pop.users) == 4 and pop.heldout


def test_other_field_names_several_files_and_dedupe(tmp_path):
    a = tmp_path / "a.jsonl"
    a.write_text("".join(json.dumps({"author": f"w{i % 30}", "body": f"note {i % 45}\nsigned  w", "id": i}) + "\n"
                         for i in range(90)))
    plain = tmp_path / "diary.txt"
    plain.write_text("Dear diary\n\nok\n")
    out = tmp_path / "c.jsonl"
    r = _prepare(str(a), str(plain), "--user-field", "author", "--text-field", "body", "--min-words", "2",
                 "--out", str(out))
    assert r.returncode == 0, r.stderr
    recs = read_corpus(out)
    assert recs[0].text == "note 0 signed w" and {"w0", "diary"} <= {x.user for x in recs}   # a plain file is a user
    assert "ok" not in [x.text for x in recs] and "1 text under --min-words dropped" in r.stdout
    assert len(recs) == 91 and "45 repeated texts kept" in r.stdout
    split = split_users(recs, seed=0)
    train = {t for ts in split.train.values() for t in ts}
    leaked = sum(t in train for ts in split.test.values() for t in ts)
    assert leaked and f"warning: {leaked} held-out texts also appear" in r.stdout
    r = _prepare(str(a), "--user-field", "author", "--text-field", "body", "--dedupe", "--force", "--out", str(out))
    recs = read_corpus(out)
    assert r.returncode == 0 and len(recs) == len({x.text for x in recs}) == 45 and "warning" not in r.stdout


@pytest.mark.parametrize("setup, args, needle", [
    ("exists", [], "exists: pass --force"),
    ("same", [], "is also an input"),
    ("bad", [], ":2: missing field(s) 'text'"),
    ("bad-over", ["--force"], ":2: missing field(s) 'text'"),
    ("good", ["--texts-per-user", "5"], "every input here is JSON Lines"),
])
def test_user_errors_are_one_line_and_never_touch_the_existing_corpus(tmp_path, setup, args, needle):
    src = tmp_path / "in.jsonl"
    src.write_text('{"user": "a", "text": "hi there"}\n' + ('{"user": "b"}\n' if setup.startswith("bad") else ""))
    out = src if setup == "same" else tmp_path / "out.jsonl"
    if setup in ("exists", "bad-over"):
        out.write_text("precious\n")
    r = _prepare(str(src), "--out", str(out), *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr and needle in r.stderr, r.stderr
    if setup in ("exists", "bad-over"):
        assert out.read_text() == "precious\n"
    if setup == "bad":
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]    # no temporary left behind
