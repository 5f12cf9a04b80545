#!/usr/bin/env python3
"""Build nps_chat.jsonl, a third device corpus of another genre (2006 online chat rooms), from
the NPS Chat Corpus release 1.0 as NLTK distributes it. Used only to check the recipe on text it
was never tuned on (docs/quality.md, "A third genre"); NOT vendored: its licence allows
"non-commercial, non-profit educational and research use" only.

Obtain the source (nltk/nltk_data on GitHub, packages/corpora/nps_chat.zip, 301,366 bytes,
sha256 a4433d5da5e62fdbede49efa572a53a0139fff1014ffbe86cb263e17cbb4a837):
    curl -LO https://raw.githubusercontent.com/nltk/nltk_data/gh-pages/packages/corpora/nps_chat.zip
    unzip nps_chat.zip
Then:
    python3 build_nps_chat.py nps_chat nps_chat.jsonl
(sha256 of the result, the file docs/quality.md measured:
6fde60f333f1bb72941d0a61cae308d85f3bcd43dd47f93fa9678d51edc5b472).

One record per post, in file and post order: {"user": the corpus's own pseudonym (per chat
room and day, e.g. "10-19-20sUser7"), "text": the post, stripped}. Posts of class "System"
(JOIN, PART, NICK lines) and posts without a user or text are dropped. Standard library only;
7,935 posts, 698 pseudonyms, 32k words.
"""
import glob
import os
import sys
import xml.etree.ElementTree as ET

from jsonl_build import run, write_records


def build(src: str, out: str) -> tuple[int, int]:
    """Write the posts of the session files in `src` to `out` (`write_jsonl`: all or nothing)."""
    files = sorted(f for f in glob.glob(os.path.join(glob.escape(src), "*.xml")) if os.path.isfile(f))
    if not files:
        sys.exit(f"no .xml files in {src}: unzip nltk_data's packages/corpora/nps_chat.zip first")
    records = []
    for f in files:
        try:
            root = ET.parse(f).getroot()
        except (ET.ParseError, OSError) as e:
            sys.exit(f"{f}: not a readable NPS Chat session file ({e})")
        for post in root.iter("Post"):
            user, text = post.get("user"), (post.text or "").strip()
            if post.get("class") != "System" and user and text:
                records.append({"user": user, "text": text})
    return write_records(records, out, f"{src}: no posts found")


def main() -> None:
    run("usage: build_nps_chat.py [SOURCE_DIR (default nps_chat)] [OUT (default nps_chat.jsonl)]",
        "nps_chat", "nps_chat.jsonl", build, ("posts", "users"))


if __name__ == "__main__":
    main()
