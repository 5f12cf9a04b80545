#!/usr/bin/env python3
"""Build nps_chat.jsonl, a third device corpus of another genre (2006 online chat rooms), from
the NPS Chat Corpus release 1.0 as NLTK distributes it. Used only to check the recipe on text it
was never tuned on (docs/quality.md, "A third genre"); NOT vendored: its licence allows
"non-commercial, non-profit educational and research use" only.

Obtain the source (GitHub nltk/nltk_data, packages/corpora/nps_chat.zip, 301,366 bytes):
    git clone --depth 1 https://github.com/nltk/nltk_data && unzip nltk_data/packages/corpora/nps_chat.zip
Then:
    python3 build_nps_chat.py nps_chat nps_chat.jsonl

One record per post, in file and post order: {"user": the corpus's own pseudonym (per chat
room and day, e.g. "10-19-20sUser7"), "text": the post}. Posts of class "System" (JOIN, PART,
NICK lines) are dropped. Standard library only; 7,935 posts, 698 users, 32k words.
"""
import glob
import json
import sys
import xml.etree.ElementTree as ET

SRC = sys.argv[1] if len(sys.argv) > 1 else "nps_chat"
OUT = sys.argv[2] if len(sys.argv) > 2 else "nps_chat.jsonl"


def main() -> None:
    files = sorted(glob.glob(f"{SRC}/*.xml"))
    if not files:
        sys.exit(f"no .xml files in {SRC}: unzip nltk_data's packages/corpora/nps_chat.zip first")
    posts, users = 0, set()
    with open(OUT, "w", encoding="utf-8") as out:
        for f in files:
            for post in ET.parse(f).getroot().iter("Post"):
                text = (post.text or "").strip()
                if post.get("class") == "System" or not text:
                    continue
                out.write(json.dumps({"user": post.get("user"), "text": text}, ensure_ascii=False) + "\n")
                posts += 1
                users.add(post.get("user"))
    print(f"{OUT}: {posts} posts, {len(users)} users")


if __name__ == "__main__":
    main()
