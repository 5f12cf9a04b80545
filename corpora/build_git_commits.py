#!/usr/bin/env python3
"""Build a device corpus of another genre, commit messages, from a git repository: one user per
author. Used only to check the recipe on text it was never tuned on (docs/quality.md, "A fifth
genre"); NOT vendored: a repository's commit messages are its authors' text, under no licence
that says so.

The source measured: numpy's repository at 1f90bbb55e65e7de68921bc3f1a2d94492fdf689 (a public
clone: `git clone --bare https://github.com/numpy/numpy numpy.git`). Then:
    python3 build_git_commits.py numpy.git numpy_commits.jsonl
(31,521 texts from 2,281 authors, 562,483 words; sha256 of the result
8233ee83b6bacfc67ff114773811aac26e105086d26746e62aeafa1231ca802b).

- non-merge commits only (a merge's message is "Merge pull request #N from user/branch", written
  by the tool, and by the one who merged);
- user = the author's name as .mailmap gives it (%aN); one text per commit, in author-date order;
- trailer lines dropped ("Signed-off-by:", "Co-authored-by:", "Cc:", "Change-Id:",
  "git-svn-id:" and the like) and lines that are only an issue reference ("Closes #123");
- e-mail addresses removed; nothing else changed: subject prefixes (BUG:, DOC:), code, paths and
  hashes stay as typed;
- at most 1,500,000 words (the oldest commits first).
Standard library and git only.
"""
import re
import subprocess
import sys

from jsonl_build import run, write_records

MAX_WORDS = 1_500_000
TRAILER = re.compile(
    r"^\s*([A-Za-z][A-Za-z-]*-by|Cc|Bcc|Change-Id|git-svn-id|Signed-off|Co-authored|"
    r"Reviewed|Acked|Tested|Reported|Suggested|Helped|Backport-of|PR-URL|Pull-Request|Link)\s*:",
    re.IGNORECASE)
REF = r"(?:#|gh-?|GH-?|https?://github\.com/\S+/(?:issues|pull)/)\d+"
REF_ONLY = re.compile(
    r"^\s*(?:(?:closes?|closed|fix(?:es|ed)?|refs?|references?|see(?: also)?|resolves?|resolved|"
    r"xref|backport(?: of)?|related(?: to)?|addresses|part of|follow-?up (?:to|of)|supersedes|"
    r"replaces|issue|pr)\b[\s:]*)?"
    + REF + r"(?:[\s,;&]+(?:and\s+)?" + REF + r")*[\s.]*$",
    re.IGNORECASE)
EMAIL = re.compile(r"<?[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+>?")


def clean(message: str) -> str:
    """A commit message without its trailers, issue-reference lines and e-mail addresses."""
    kept = [EMAIL.sub("", line).rstrip() for line in message.splitlines()
            if not (TRAILER.match(line) or REF_ONLY.match(line))]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept).strip("\n"))


def build(src: str, out: str) -> tuple[int, int]:
    """Write the commit messages of the repository `src` (a .git directory) to `out`."""
    try:
        log = subprocess.run(["git", "--git-dir", src, "log", "--no-merges", "--format=%aN%x00%at%x00%B%x1e"],
                             check=True, capture_output=True).stdout.decode("utf-8", "replace")
    except (OSError, subprocess.CalledProcessError) as e:
        sys.exit(f"cannot read the commits of {src}: {getattr(e, 'stderr', b'').decode(errors='replace').strip() or e}")
    commits = []
    for i, rec in enumerate(log.split("\x1e")):
        if rec.strip("\n"):
            author, ts, body = rec.lstrip("\n").split("\x00", 2)
            commits.append((int(ts), -i, author.strip(), body))
    commits.sort()   # author date, oldest first; git's own (newest-first) order breaks ties
    rows, words = [], 0
    for _, _, author, body in commits:
        text = clean(body)
        if not text.strip() or not author:
            continue
        words += len(text.split())
        if words > MAX_WORDS:
            break
        rows.append({"user": author, "text": text})
    return write_records(rows, out, f"{src}: no commit messages found")


def main() -> None:
    run("usage: build_git_commits.py [GIT_DIR (default .git)] [OUT (default git_commits.jsonl)]",
        ".git", "git_commits.jsonl", build, ("commits", "authors"))


if __name__ == "__main__":
    main()
