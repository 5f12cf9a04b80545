#!/usr/bin/env python3
"""Build cornell_movies.jsonl, a fourth device corpus of another genre (film dialogue), from
`movie_lines.txt` of the Cornell Movie-Dialogs Corpus (Danescu-Niculescu-Mizil and Lee 2011).
Used only to check the recipe on text it was never tuned on (docs/quality.md, "A fourth genre");
NOT vendored: the corpus is distributed for research without a licence that allows
redistribution.

The source measured (a partial copy of the file, 3,197,751 bytes, 28,674 lines, sha256
05363a0533e91ebc12404d7e63006c1f2b335063b049d49f91d70374455ab8bd), from a public repository:
    git clone https://github.com/M0rfes/PythonChatBot
    git -C PythonChatBot show 65f46b4:movie_lines.txt > movie_lines.txt
The full file (304,713 lines) is in Cornell's cornell_movie_dialogs_corpus.zip and builds the
same way. Then:
    python3 build_cornell_movies.py movie_lines.txt cornell_movies.jsonl
(sha256 of the result from the partial copy, the records docs/quality.md measured:
aef4e983459e9d6d7f1c959c9b22ecfc2beb3893352746931143248f6740977a).

One record per line of dialogue, in the corpus's line order (its `L<number>` ids; the file
lists them in reverse within a film): {"user": the character's id ("u0"; a character belongs
to one film), "text": the line, stripped}. The file is Latin-1. Empty lines and malformed rows
are dropped. Standard library only.
"""
import sys

from jsonl_build import run, write_jsonl

SEP = " +++$+++ "


def build(src: str, out: str) -> tuple[int, int]:
    """Write the dialogue lines of `src` to `out` (`write_jsonl`: all or nothing)."""
    rows = []
    try:
        with open(src, encoding="latin-1") as fh:
            for line in fh:
                parts = line.rstrip("\n").split(SEP)
                if len(parts) != 5 or not parts[0][1:].isdigit():
                    continue
                text = parts[4].strip()
                if parts[1] and text:
                    rows.append((int(parts[0][1:]), parts[1], text))
    except OSError as e:
        sys.exit(f"cannot read {src}: {e}")
    if not rows:
        sys.exit(f"{src}: no dialogue lines found (expected 'L<n>{SEP}u<n>{SEP}m<n>{SEP}NAME{SEP}text')")
    rows.sort()
    write_jsonl(({"user": u, "text": t} for _, u, t in rows), out)
    return len(rows), len({u for _, u, _ in rows})


def main() -> None:
    run("usage: build_cornell_movies.py [SOURCE (default movie_lines.txt)] [OUT (default cornell_movies.jsonl)]",
        "movie_lines.txt", "cornell_movies.jsonl", build, ("lines", "characters"))


if __name__ == "__main__":
    main()
