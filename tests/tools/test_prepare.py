"""tools.prepare: other files become a corpus every tool reads, with the checks a held-out score needs."""

from __future__ import annotations

import json
import os
import stat
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
    with pytest.raises(CorpusError, match=r"--devices 4; .*tools.prepare .*--texts-per-user .*--format paragraphs"):
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
    assert leaked and f"warning: of the held-out texts, {leaked} also appear in the training part" in r.stdout
    r = _prepare(str(a), "--user-field", "author", "--text-field", "body", "--dedupe", "--force", "--out", str(out))
    recs = read_corpus(out)
    assert r.returncode == 0 and len(recs) == len({x.text for x in recs}) == 45 and "warning" not in r.stdout


@pytest.mark.parametrize("setup, args, needle", [
    ("exists", [], "exists: pass --force"),
    ("same", [], "is also an input"),
    ("fifo", ["--force"], "is not a regular file"),        # /dev/null as root: the rename would replace the node
    ("bad", [], ":2: missing field(s) 'text'"),
    ("bad-over", ["--force"], ":2: missing field(s) 'text'"),
    ("good", ["--texts-per-user", "5"], "every input here is JSON Lines"),
])
def test_user_errors_are_one_line_and_never_touch_the_existing_corpus(tmp_path, setup, args, needle):
    src = tmp_path / "in.jsonl"
    src.write_text('{"user": "a", "text": "hi there"}\n' + ('{"user": "b"}\n' if setup.startswith("bad") else ""))
    out = src if setup == "same" else tmp_path / "out.jsonl"
    if setup == "fifo":
        os.mkfifo(out)
    if setup in ("exists", "bad-over"):
        out.write_text("precious\n")
    r = _prepare(str(src), "--out", str(out), *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr and needle in r.stderr, r.stderr
    if setup in ("exists", "bad-over"):
        assert out.read_text() == "precious\n"
    if setup == "bad":
        assert not out.exists()
    if setup == "fifo":
        assert stat.S_ISFIFO(out.stat().st_mode)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]    # no temporary left behind


def test_simulating_a_one_user_json_lines_corpus_does_not_suggest_pseudo_users(tmp_path):
    """Its one user is a real person; dealing them into pseudo-users is for plain text only."""
    from model.corpus import CorpusError
    from tools.simulate import load_population

    c = tmp_path / "c.jsonl"
    c.write_text("".join(json.dumps({"user": "ann", "text": f"text number {i}"}) + "\n" for i in range(30)))
    with pytest.raises(CorpusError) as e:
        load_population(str(c), 4)
    assert "fewer than --devices 4" in str(e.value) and "tools.prepare" not in str(e.value)


def test_a_forced_plain_format_never_reads_json_lines_as_text(tmp_path):
    j = tmp_path / "j.jsonl"
    j.write_text(json.dumps({"user": "u1", "text": "secret words"}) + "\n")
    book = _book(tmp_path / "book.txt", 3)
    out = tmp_path / "out.jsonl"
    r = _prepare(str(j), str(book), "--format", "paragraphs", "--out", str(out))
    assert r.returncode == 2 and "first line is a JSON object" in r.stderr and not out.exists(), r.stderr


def test_plain_files_that_would_be_the_same_user_are_refused(tmp_path):
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        _book(tmp_path / d / "notes.txt", 2)
    r = _prepare(str(tmp_path / "x" / "notes.txt"), str(tmp_path / "y" / "notes.txt"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "would both be user 'notes'" in r.stderr, r.stderr
    j = tmp_path / "j.jsonl"
    j.write_text(json.dumps({"user": "notes", "text": "a real user called notes"}) + "\n")
    r = _prepare(str(j), str(tmp_path / "x" / "notes.txt"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "a user of the JSON Lines input too" in r.stderr, r.stderr


def test_pseudo_users_are_dealt_after_short_texts_are_dropped_and_the_wording_counts(tmp_path):
    t = tmp_path / "t.txt"
    t.write_text("one\n" + "".join(f"a longer text {i}\n" for i in range(4)))
    out = tmp_path / "o.jsonl"
    r = _prepare(str(t), "--min-words", "2", "--texts-per-user", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert [x.user for x in read_corpus(out)] == ["t #1", "t #1", "t #2", "t #2"]
    assert "4 texts from 2 users" in r.stdout and "1 text under --min-words dropped" in r.stdout
    assert "not a new person" in r.stdout
    r = _prepare(str(t), "--texts-per-user", "100", "--force", "--out", str(out))     # one pseudo-user: no caveat
    assert r.returncode == 0 and "from 1 user," in r.stdout and "not a new person" not in r.stdout


def test_a_write_that_fails_is_one_line_and_leaves_nothing(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"user": "a", "text": "hi there"}\n')
    (tmp_path / "afile").write_text("x")
    r = _prepare(str(src), "--out", str(tmp_path / "afile" / "out.jsonl"))       # its folder is a file
    assert r.returncode == 2 and "Traceback" not in r.stderr and "cannot write" in r.stderr, r.stderr
    assert f"{tmp_path / 'afile'} is a file, not a folder" in r.stderr and "File exists" not in r.stderr
    (tmp_path / "adir").mkdir()
    r = _prepare(str(src), "--out", str(tmp_path / "adir"))
    assert r.returncode == 2 and "is a folder" in r.stderr, r.stderr


def test_the_text_is_never_printed(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"user": f"u{i}", "text": f"zebracorn {i} said this"}) + "\n"
                           for i in range(60)))
    r = _prepare(str(src), "--out", str(tmp_path / "o.jsonl"))
    assert r.returncode == 0 and "zebracorn" not in r.stdout + r.stderr


def test_a_closed_pipe_ends_the_command_quietly(tmp_path):
    """`python -m tools.X | head -1`: the reader goes away; no traceback, exit 141 like Unix tools."""
    src = tmp_path / "in.jsonl"
    src.write_text('{"user": "a", "text": "hi there"}\n')
    with subprocess.Popen([sys.executable, "-m", "tools.prepare", str(src), "--out", str(tmp_path / "o.jsonl")],
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=os.environ | {"PYTHONPATH": str(REPO)}) as proc:
        proc.stdout.close()                             # before the child prints anything
        err = proc.stderr.read()
        assert proc.wait(timeout=120) == 141 and "Traceback" not in err, err
    assert (tmp_path / "o.jsonl").exists()              # the work itself was done


def test_a_broken_pipe_that_is_not_stdout_still_fails_loudly():
    """A socket or child process gone is an error, not a reader that stopped reading."""
    code = ("from tools._cli import run\n"
            "def main(argv):\n    raise BrokenPipeError(32, 'the coordinator closed the socket')\n"
            "run(main)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                       check=False, env=os.environ | {"PYTHONPATH": str(REPO)})
    assert r.returncode == 1 and "the coordinator closed the socket" in r.stderr, r.stderr
