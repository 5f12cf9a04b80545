#!/usr/bin/env python3
"""Build topical_chat.jsonl from Amazon's Topical-Chat conversations (GitHub alexa/Topical-Chat).

Obtain the source:
    git clone https://github.com/alexa/Topical-Chat
    git -C Topical-Chat checkout 7c939229cbcf6f55f6977b341a5a2f2fe982d53f
Then:
    python3 build_topical_chat.py Topical-Chat/conversations topical_chat.jsonl

One record per message: {"user": conversation id + agent, "text": the message}. Only the four
validation and test files are used (valid_freq, valid_rare, test_freq, test_rare: 2,156
conversations); train.json is stored in Git LFS and not needed for a proxy of this size.
Conversations are read in file order and messages in conversation order, so the output is
byte-for-byte reproducible. Standard library only.
"""
import json
import sys
from pathlib import Path

from jsonl_build import check_source, replaced

SRC = Path(sys.argv[1] if len(sys.argv) > 1 else "Topical-Chat/conversations")
OUT = Path(sys.argv[2] if len(sys.argv) > 2 else "topical_chat.jsonl")
FILES = ["valid_freq", "valid_rare", "test_freq", "test_rare"]


def main() -> None:
    check_source(__doc__, SRC)
    n = words = 0
    with replaced(OUT) as out:
        for name in FILES:
            conversations = json.loads((SRC / f"{name}.json").read_text(encoding="utf-8"))
            for cid, conv in conversations.items():
                for turn in conv["content"]:
                    text = " ".join(turn["message"].split())
                    if not text:
                        continue
                    out.write(json.dumps({"user": f"tc_{cid}_{turn['agent']}", "text": text}) + "\n")
                    n += 1
                    words += len(text.split())
    print(f"{OUT}: {n:,} messages, {words:,} words")


if __name__ == "__main__":
    main()
