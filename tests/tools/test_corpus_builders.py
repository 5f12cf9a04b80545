"""The third- and fourth-genre corpora are not vendored (their licences do not allow it), so their
builders are the only way to repeat docs/quality.md's checks: the chat rooms' must keep every post
a person wrote, in file and post order, under the corpus's own pseudonym, and drop the chat
server's JOIN/PART lines; the film dialogue's must put every line under its character in the
corpus's line order; both, on bad input, say what is wrong without a traceback or a half-written
file."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILDER = ROOT / "corpora" / "build_nps_chat.py"
MOVIES = ROOT / "corpora" / "build_cornell_movies.py"


def session(*posts: tuple[str, str | None, str]) -> str:
    rows = "\n".join(f'<Post class="{cls}"' + (f' user="{user}"' if user else "") + f">{text}<terminals/></Post>"
                     for cls, user, text in posts)
    return f'<?xml version="1.0"?>\n<Session><Posts>\n{rows}\n</Posts></Session>\n'


def build(src: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BUILDER), str(src), str(out)], capture_output=True, text=True)


def test_build_nps_chat_keeps_posts_in_order_and_drops_system_lines(tmp_path: Path) -> None:
    src = tmp_path / "nps_chat"
    src.mkdir()
    (src / "10-19-20s_706posts.xml").write_text(session(
        ("Statement", "10-19-20sUser7", "now im left with this name"),
        ("System", "10-19-20sUser76", "PART"),
        ("Greet", "10-19-20sUser59", "hey everyone  "),
        ("Statement", "10-19-20sUser59", ""),
        ("Statement", None, "a post nobody wrote")), encoding="utf-8")
    (src / "11-08-teens_706posts.xml").write_text(session(("Statement", "11-08-teensUser3", "lol")), encoding="utf-8")
    out = tmp_path / "nps_chat.jsonl"
    run = build(src, out)
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert records == [{"user": "10-19-20sUser7", "text": "now im left with this name"},
                       {"user": "10-19-20sUser59", "text": "hey everyone"},
                       {"user": "11-08-teensUser3", "text": "lol"}]
    assert "3 posts, 3 users" in run.stdout


def test_build_nps_chat_says_what_is_missing(tmp_path: Path) -> None:
    run = build(tmp_path / "none", tmp_path / "out.jsonl")
    assert run.returncode != 0
    assert "unzip" in run.stderr and "Traceback" not in run.stderr


def test_build_nps_chat_rejects_a_broken_file_and_writes_nothing(tmp_path: Path) -> None:
    src = tmp_path / "nps_chat"
    src.mkdir()
    (src / "a.xml").write_text(session(("Statement", "u1", "fine")), encoding="utf-8")
    (src / "b.xml").write_text("<Session><Posts>", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    run = build(src, out)
    assert run.returncode != 0
    assert "b.xml" in run.stderr and "Traceback" not in run.stderr
    assert list(tmp_path.iterdir()) == [src]   # neither the output nor its temporary file


def test_build_nps_chat_leaves_no_temporary_file_when_it_cannot_write(tmp_path: Path) -> None:
    src = tmp_path / "nps [2008]"   # glob metacharacters in the path are taken literally
    src.mkdir()
    (src / "a.xml").write_text(session(("Statement", "u1", "fine")), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    out.mkdir()   # the result cannot replace a directory
    run = build(src, out)
    assert run.returncode != 0
    assert "cannot write" in run.stderr and "Traceback" not in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nps [2008]", "out.jsonl"]


def movie_line(n: int, user: str, text: str) -> str:
    return f"L{n} +++$+++ {user} +++$+++ m0 +++$+++ NAME +++$+++ {text}\n"


def build_movies(src: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(MOVIES), str(src), str(out)], capture_output=True, text=True)


def test_build_cornell_movies_orders_lines_by_id_and_keeps_latin1_text(tmp_path: Path) -> None:
    src = tmp_path / "movie_lines.txt"
    # The corpus lists a film's lines in reverse; ids order them. Latin-1, as the corpus ships.
    src.write_bytes((movie_line(1045, "u0", "They do not!") + movie_line(1044, "u2", "They do to!")
                     + movie_line(985, "u0", "Caf\xe9?  ") + movie_line(984, "u2", "   ")
                     + "a line that is not one\n" + movie_line(983, "", "nobody said it")).encode("latin-1"))
    out = tmp_path / "movies.jsonl"
    run = build_movies(src, out)
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert records == [{"user": "u0", "text": "Caf\xe9?"}, {"user": "u2", "text": "They do to!"},
                       {"user": "u0", "text": "They do not!"}]
    assert "3 lines, 2 characters" in run.stdout


def test_build_cornell_movies_says_what_is_wrong_and_writes_nothing(tmp_path: Path) -> None:
    missing = build_movies(tmp_path / "none.txt", tmp_path / "out.jsonl")
    assert missing.returncode != 0 and "cannot read" in missing.stderr and "Traceback" not in missing.stderr
    src = tmp_path / "notes.txt"
    src.write_text("not the corpus\n", encoding="utf-8")
    wrong = build_movies(src, tmp_path / "out.jsonl")
    assert wrong.returncode != 0 and "no dialogue lines" in wrong.stderr and "Traceback" not in wrong.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_the_vendored_corpora_builders_never_empty_a_corpus_on_a_wrong_source(tmp_path: Path) -> None:
    """A mistyped source path (or --help taken for one) left an empty corpus at OUT, the vendored
    file itself in corpora/README.md's commands; the e-mail builder even exited 0."""
    for name in ("spamassassin_ham", "gutenberg_mix", "topical_chat"):
        out = tmp_path / f"{name}.jsonl"
        out.write_text('{"user": "a", "text": "kept"}\n')
        builder = ROOT / "corpora" / f"build_{name}.py"
        r = subprocess.run([sys.executable, str(builder), str(tmp_path / "nowhere"), str(out)],
                           capture_output=True, text=True, cwd=tmp_path)
        assert r.returncode != 0 and r.stderr.strip() == f"no such source: {tmp_path / 'nowhere'} (see --help)"
        h = subprocess.run([sys.executable, str(builder), "--help"], capture_output=True, text=True, cwd=tmp_path)
        assert h.returncode == 0 and "Build" in h.stdout
        assert out.read_text() == '{"user": "a", "text": "kept"}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.jsonl" for n in
                                                                 ("spamassassin_ham", "gutenberg_mix", "topical_chat"))


def test_build_git_commits_keeps_each_authors_messages_without_trailers(tmp_path: Path) -> None:
    """The fifth genre (commit messages, not vendored): one user per author, oldest first, merges,
    trailers, issue-reference lines and e-mail addresses out, everything else as typed."""
    repo = tmp_path / "repo"
    env = {"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_SYSTEM": "/dev/null", "HOME": str(tmp_path)}

    def git(*args: str, who: str = "Ada", when: int = 0) -> None:
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                       env={**env, "GIT_AUTHOR_NAME": who, "GIT_AUTHOR_EMAIL": f"{who}@x.org",
                            "GIT_COMMITTER_NAME": who, "GIT_COMMITTER_EMAIL": f"{who}@x.org",
                            "GIT_AUTHOR_DATE": f"{1_600_000_000 + when} +0000",
                            "GIT_COMMITTER_DATE": f"{1_600_000_000 + when} +0000", "PATH": "/usr/bin:/bin"})
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True, env={**env, "PATH": "/usr/bin:/bin"})
    git("commit", "-q", "--allow-empty", "-m", "BUG: fix dtype of ufunc\n\nAsk ada@x.org.\n\nCloses #12\n"
        "Signed-off-by: Ada <ada@x.org>", who="Ada", when=1)
    git("commit", "-q", "--allow-empty", "-m", "DOC: typo", who="Bob", when=2)
    git("checkout", "-q", "-b", "side")
    git("commit", "-q", "--allow-empty", "-m", "ENH: side work", who="Bob", when=3)
    git("checkout", "-q", "main")
    git("merge", "-q", "--no-ff", "-m", "Merge pull request #3 from bob/side", "side", who="Cy", when=4)
    out = tmp_path / "commits.jsonl"
    res = subprocess.run([sys.executable, str(ROOT / "corpora" / "build_git_commits.py"), str(repo / ".git"),
                          str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        {"user": "Ada", "text": "BUG: fix dtype of ufunc\n\nAsk ."}, {"user": "Bob", "text": "DOC: typo"},
        {"user": "Bob", "text": "ENH: side work"}]
    assert "3 commits, 2 authors" in res.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "corpora" / "build_git_commits.py"), str(tmp_path / "none"),
                          str(tmp_path / "x.jsonl")], capture_output=True, text=True)
    assert bad.returncode != 0 and "cannot read the commits" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "x.jsonl").exists()
