#!/usr/bin/env python3
# ruff: noqa: E501  (long regular expressions read better on one line)
"""Build gutenberg_mix.jsonl: public-domain Project Gutenberg novels and plays
(English, no Shakespeare), taken from the public GitHub repository
RU-ECE/ECE451-Parallel (folder data/, commit c58dca3a6abedd8041057571c247e9a393cc3b4d),
which vendors plain-text Project Gutenberg eBooks.

Obtain the source: a clone/snapshot of that repository (in this workplace:
the search tool's fetch("github:RU-ECE/ECE451-Parallel") -> a bare git dir), then
    python3 build_gutenberg_mix.py /work/.mirror/RU-ECE+ECE451-Parallel/repo gutenberg_mix.jsonl

One record per paragraph: {"user": "pg<ebook-number>", "text": paragraph}.
The Project Gutenberg header and footer (licence boilerplate, trademark) are
removed; only the public-domain work itself is kept.
"""
import json
import re
import subprocess
import sys

from jsonl_build import check_source, replaced

REPO = sys.argv[1] if len(sys.argv) > 1 else "/work/.mirror/RU-ECE+ECE451-Parallel/repo"
OUT = sys.argv[2] if len(sys.argv) > 2 else "gutenberg_mix.jsonl"
COMMIT = "c58dca3a6abedd8041057571c247e9a393cc3b4d"
# (path in repo, PG ebook number, title / author)
BOOKS = [
    ("data/books/11-0.txt", 11, "Alice's Adventures in Wonderland / Lewis Carroll"),
    ("data/books/120-0.txt", 120, "Treasure Island / R. L. Stevenson"),
    ("data/books/158-0.txt", 158, "Emma / Jane Austen"),
    ("data/books/16-0.txt", 16, "Peter Pan / J. M. Barrie"),
    ("data/books/203-0.txt", 203, "Uncle Tom's Cabin / H. B. Stowe"),
    ("data/books/244-0.txt", 244, "A Study in Scarlet / A. Conan Doyle"),
    ("data/books/2852-0.txt", 2852, "The Hound of the Baskervilles / A. Conan Doyle"),
    ("data/books/308-0.txt", 308, "Three Men in a Boat / Jerome K. Jerome"),
    ("data/books/35-0.txt", 35, "The Time Machine / H. G. Wells"),
    ("data/books/36-0.txt", 36, "The War of the Worlds / H. G. Wells"),
    ("data/books/43-0.txt", 43, "Dr. Jekyll and Mr. Hyde / R. L. Stevenson"),
    ("data/books/46-0.txt", 46, "A Christmas Carol / Charles Dickens"),
    ("data/books/6688-0.txt", 6688, "The Mill on the Floss / George Eliot"),
    ("data/books/145-0.txt", 145, "Middlemarch / George Eliot"),
    ("data/books/74-0.txt", 74, "The Adventures of Tom Sawyer / Mark Twain"),
    ("data/books/76-0.txt", 76, "Adventures of Huckleberry Finn / Mark Twain"),
    ("data/books/766-0.txt", 766, "David Copperfield / Charles Dickens"),
    ("data/books/98-0.txt", 98, "A Tale of Two Cities / Charles Dickens"),
    ("data/books/Great_Expectations_CharlesDickens.txt", 1400, "Great Expectations / Charles Dickens"),
    ("data/books/Anne-of-Green-Gables.txt", 45, "Anne of Green Gables / L. M. Montgomery"),
    ("data/pg1342.txt", 1342, "Pride and Prejudice / Jane Austen"),
    ("data/pg161.txt", 161, "Sense and Sensibility / Jane Austen"),
    ("data/books/pg174.txt", 174, "The Picture of Dorian Gray / Oscar Wilde"),
    ("data/books/pg1260.txt", 1260, "Jane Eyre / Charlotte Bronte"),
    ("data/books/pg345.txt", 345, "Dracula / Bram Stoker"),
    ("data/books/pg55.txt", 55, "The Wonderful Wizard of Oz / L. Frank Baum"),
    ("data/books/pg768.txt", 768, "Wuthering Heights / Emily Bronte"),
    ("data/books/pg844.txt", 844, "The Importance of Being Earnest (play) / Oscar Wilde"),
    ("data/books/pg2542.txt", 2542, "A Doll's House (play) / Henrik Ibsen, English translation"),
    ("data/books/pg1254.txt", 1254, "Cyrano de Bergerac (play) / Edmond Rostand, tr. G. Thomas & M. F. Guillemard"),
    ("data/pg1661.txt", 1661, "The Adventures of Sherlock Holmes / A. Conan Doyle"),
    ("data/pg834.txt", 834, "The Memoirs of Sherlock Holmes / A. Conan Doyle"),
    ("data/pg108.txt", 108, "The Return of Sherlock Holmes / A. Conan Doyle"),
    ("data/pg2600.txt", 2600, "War and Peace / Leo Tolstoy, tr. L. & A. Maude"),
    ("data/pg1399.txt", 1399, "Anna Karenina / Leo Tolstoy, tr. C. Garnett"),
    ("data/books/28054-0.txt", 28054, "The Brothers Karamazov / F. Dostoyevsky, tr. C. Garnett"),
]
START = re.compile(r"^\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG", re.I)
END = re.compile(r"^\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG|^End of (the )?Project Gutenberg", re.I)

def paragraphs(raw):
    lines = raw.replace("\r", "").replace("\ufeff", "").split("\n")
    s = next((i for i, ln in enumerate(lines) if START.match(ln.strip())), -1) + 1
    e = next((i for i, ln in enumerate(lines) if i > s and END.match(ln.strip())), len(lines))
    cur = []
    for ln in lines[s:e] + [""]:
        t = ln.strip()
        if t:
            cur.append(t)
            continue
        if cur:
            p = re.sub(r"\s+", " ", " ".join(cur)).replace("_", "").strip()
            cur = []
            letters = sum(c.isalpha() for c in p)
            if letters < 3 or letters < 0.5 * len(p):
                continue
            if re.match(r"^(Produced by|Transcribed from|E-?text prepared|\[Illustration|\[?Project Gutenberg Editor|cover$)", p, re.I):
                continue
            if re.match(r"^(CHAPTER|BOOK|PART|ACT|SCENE|VOLUME|STAVE)\b[\sA-Z0-9.:,IVXL-]*$", p, re.I):
                continue
            yield p

def main():
    check_source(__doc__, REPO)
    n = 0
    with replaced(OUT) as fo:
        for path, pg, title in BOOKS:
            raw = subprocess.run(["git", "-C", REPO, "show", f"{COMMIT}:{path}"],
                                 capture_output=True, check=True).stdout.decode("utf-8", "replace")
            assert "shakespeare" not in title.lower()
            for p in paragraphs(raw):
                fo.write(json.dumps({"user": f"pg{pg}", "text": p}, ensure_ascii=False) + "\n")
                n += 1
    print(n, "records ->", OUT)

if __name__ == "__main__":
    main()
