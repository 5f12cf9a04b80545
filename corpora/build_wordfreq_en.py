#!/usr/bin/env python3
"""Build wordfreq_en.tsv: present-day English words and their frequencies, from wordfreq 3.1.1.

Obtain the source (its data files are inside the package):
    pip install wordfreq==3.1.1 better-profanity==0.7.0
Then:
    python3 build_wordfreq_en.py wordfreq_en.tsv

One line per word, `word<TAB>frequency` (a share of all English words, 4 significant digits),
most frequent first: the first 150,000 words of wordfreq's `large` English list that hold a
letter and are not in better-profanity 0.7.0's word list (MIT licence): the keyboard completes
every word of its list, and a keyboard does not offer swear words or slurs to people who did
not type them before (the user's own words still come back to them). wordfreq blends
subtitles, Wikipedia, news, books, web text, Twitter and Reddit, so it knows the words people
type today (`server`, `install`, `email`) that the proxy text (novels, plays, addresses, chat
about films) is too small or too old to hold. wordfreq lower-cases everything, so every word
here is lower case. The list is what the keyboard's word list takes its tail from (`make v0`,
`python -m tools.add_words --tail`); it is public data, no device text.
Deterministic for the pinned version.
"""
import sys
from importlib.metadata import version
from importlib.resources import files
from pathlib import Path

import wordfreq

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "wordfreq_en.tsv")
COUNT = 150_000


def main() -> None:
    got = version("wordfreq")
    assert got == "3.1.1", f"wordfreq {got}: build with 3.1.1 (its data differs between versions)"
    got = version("better-profanity")
    assert got == "0.7.0", f"better-profanity {got}: build with 0.7.0"
    blocked = set(files("better_profanity").joinpath("profanity_wordlist.txt").read_text().lower().split())
    n = skipped = 0
    with OUT.open("w", encoding="utf-8", newline="\n") as out:
        for w in wordfreq.top_n_list("en", 400_000, wordlist="large"):
            if n == COUNT:
                break
            if not any(ch.isalpha() for ch in w) or any(ch.isspace() for ch in w):
                continue
            if w in blocked:
                skipped += 1
                continue
            out.write(f"{w}\t{wordfreq.word_frequency(w, 'en', wordlist='large'):.4g}\n")
            n += 1
    print(f"{OUT}: {n:,} words ({skipped} offensive words left out)")


if __name__ == "__main__":
    main()
