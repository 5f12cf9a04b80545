#!/usr/bin/env python3
"""Build wordfreq_en.tsv: present-day English words and their frequencies, from wordfreq 3.1.1.

Obtain the source (its data files are inside the package):
    pip install wordfreq==3.1.1
Then, from the repository's root:
    python3 corpora/build_wordfreq_en.py corpora/wordfreq_en.tsv

One line per word, `word<TAB>frequency` (a share of all English words, 4 significant digits),
most frequent first: the first 150,000 words of wordfreq's `large` English list that

- hold a letter, and only Latin letters (the keyboard's proxy text is English; the list also
  holds `в`, `年`, `ʖ`);
- hold no run of two or more digits: wordfreq stores every such run as zeros (`a00`,
  `s00e00`), so those entries are not words anyone typed;
- hold no `_` or whitespace (`utm_source`, `o_o`);
- are not blocked words (`protocol.text.is_blocked`, `protocol/data/blocked_en.txt`: slurs,
  strong profanity, explicit slang, their endings and stems), which the keyboard would not
  offer anyway.

wordfreq blends subtitles, Wikipedia, news, books, web text, Twitter and Reddit, so it knows the
words people type today (`server`, `install`, `email`) that the proxy text (novels, plays,
addresses, chat about films) is too small or too old to hold. wordfreq lower-cases everything,
so every word here is lower case; `tools.add_words --tail` leaves out a word the word list
already holds in another casing. It is public data, no device text. Deterministic for the
pinned version.
"""
import re
import sys
import unicodedata
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "wordfreq_en.tsv")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the repository's protocol/
from jsonl_build import check_source, replaced  # noqa: E402

from protocol.text import is_blocked  # noqa: E402

COUNT = 150_000
_DIGITS = re.compile(r"\d{2}")


def latin_word(w: str) -> bool:
    """A letter a-z, and every letter Latin (`café` yes, `в` and `ʖ` no)."""
    return (any("a" <= ch <= "z" for ch in w)
            and all(unicodedata.name(ch, "").startswith("LATIN") for ch in w if ch.isalpha()))


def main() -> None:
    check_source(__doc__, None)
    try:
        got = version("wordfreq")
    except PackageNotFoundError:
        sys.exit("wordfreq is not installed: pip install wordfreq==3.1.1")
    if got != "3.1.1":
        sys.exit(f"wordfreq {got}: build with 3.1.1 (its data differs between versions)")
    import wordfreq

    n = 0
    left_out = {"blocked": 0, "digits": 0, "not a Latin word": 0}
    with replaced(OUT) as out:
        for w in wordfreq.top_n_list("en", 400_000, wordlist="large"):
            if n == COUNT:
                break
            if any(ch.isspace() or ch == "_" for ch in w) or not latin_word(w):
                left_out["not a Latin word"] += 1
            elif _DIGITS.search(w):
                left_out["digits"] += 1
            elif is_blocked(w):
                left_out["blocked"] += 1
            else:
                out.write(f"{w}\t{wordfreq.word_frequency(w, 'en', wordlist='large'):.4g}\n")
                n += 1
    if n < COUNT:
        sys.exit(f"{OUT}: only {n:,} words, not {COUNT:,}: wordfreq's list ran out")
    print(f"{OUT}: {n:,} words; left out: " + ", ".join(f"{v:,} {k}" for k, v in left_out.items()))


if __name__ == "__main__":
    main()
