"""Reading corpora and splitting them by user.

Accepts JSON Lines of ``{"user": ..., "text": ...}`` (extra fields ignored) or plain text
(one record a line, all from one user). Users, not records, are split into train /
validation / test, so held-out users are people the keyboard never saw. `tools.prepare` turns
other files (other field names, paragraphs, several plain-text writers) into this format.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path


class CorpusError(ValueError):
    """The corpus file cannot be used; the message says why (and where)."""


@dataclass(frozen=True)
class Record:
    user: str
    text: str


FORMATS = ("auto", "jsonl", "json", "lines", "paragraphs")
# JSON Lines breaks records at \n only; str.splitlines also breaks at U+2028, U+0085 and others
# that json.dumps(..., ensure_ascii=False) writes raw inside a text. CR and CRLF files still read.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


_SURROGATE = re.compile("[\ud800-\udfff]")


def read_corpus(path: str | Path, *, fmt: str = "auto", user_field: str = "user",
                text_field: str = "text") -> list[Record]:
    """Read a JSONL or plain-text corpus, raising CorpusError with a precise reason.

    `fmt` "auto" reads JSON Lines when the first non-blank line starts with ``{``, one JSON
    array of such objects ("json", an export) when the whole file is one, and plain text (one
    record a line) otherwise; "paragraphs" reads plain text whose records are blocks
    separated by blank lines, their wrapped lines joined (a book's hard-wrapped text). Plain
    text is all from one user, "default". `user_field` / `text_field` name the JSON fields."""
    if fmt not in FORMATS:
        raise CorpusError(f"unknown corpus format {fmt!r}: use {', '.join(FORMATS)}")
    p = Path(path)
    if not p.exists():
        hint = ("; the corpora ship with the repository (corpora/), not with the installed package: "
                "pass --corpus FILE" if p.parent.name == "corpora" and "-packages" in str(p) else "")
        raise CorpusError(f"{p}: no such file{hint}")
    if p.is_dir():
        raise CorpusError(f"{p}: is a directory, expected a .jsonl or text file")
    if not p.is_file():   # a pipe (<(zcat f.gz)) or FIFO: tools read a corpus more than once
        raise CorpusError(f"{p}: not a regular file (a pipe or a device?): save it to a file first")
    try:
        text = p.read_text(encoding="utf-8-sig")   # -sig: a byte-order mark (Windows editors) is not text
    except UnicodeDecodeError as e:
        gz = "; it looks gzip-compressed: gunzip it first" if p.read_bytes()[:2] == b"\x1f\x8b" else ""
        raise CorpusError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start}){gz}") from None
    if (nul := text.find("\x00")) >= 0:   # valid UTF-8, but no text holds NUL: UTF-16 or a binary file
        utf16 = text[1::2].count("\x00") > len(text) // 4 or text[::2].count("\x00") > len(text) // 4
        hint = "; it looks like UTF-16 without a byte-order mark: save it as UTF-8" if utf16 else ": a binary file?"
        raise CorpusError(f"{p}: not text (a NUL character at character {nul}){hint}")
    lines = text.splitlines()   # plain text: any line end, U+2028 too
    first = next((ln for ln in lines if ln.strip()), None)
    if first is None:
        raise CorpusError(f"{p}: file is empty")
    sniffed = fmt == "auto"
    array = _json_array(text, p) if fmt in ("auto", "json") else None   # parsed once: a corpus may be large
    if sniffed:
        fmt = "json" if array is not None else _sniff(first)
    if fmt == "json":
        if array is None:
            raise CorpusError(f"{p}: not one JSON array of objects with {user_field!r} and {text_field!r}")
        return _records(p, ((f"record {i}", obj) for i, obj in enumerate(array, start=1)), user_field, text_field)
    if fmt == "paragraphs":
        return [Record("default", b) for b in paragraphs(text)]
    if fmt == "lines":
        return [Record("default", ln.strip()) for ln in lines if ln.strip()]
    return _records(p, _json_lines(p, _LINE_BREAK.split(text), first if sniffed else None), user_field, text_field)


def _json_lines(p: Path, lines: list[str], sniffed_first: str | None) -> Iterator[tuple[str, object]]:
    for no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield str(no), json.loads(line)
        except json.JSONDecodeError as e:
            hint = ("; if the file is plain text that starts with '{', convert it with `python -m tools.prepare "
                    "FILE --format lines --out FILE.jsonl`" if line == sniffed_first else "")
            raise CorpusError(f"{p}:{no}: malformed JSON at column {e.colno}: {e.msg}{hint}") from None
        except (ValueError, RecursionError) as e:   # nested thousands deep, an integer of 4,300+ digits
            raise CorpusError(f"{p}:{no}: JSON this tool cannot read: {_plain(e)}") from None


_EXPORT = re.compile(r"\s*\[\s*\{")   # how an export of records opens: "[{" or "[\n {"


def _json_array(text: str, p: Path | None = None) -> list | None:
    """The file as one JSON array of records (an export, not JSON Lines), or None when it is not
    one: it must open with an object ("[1]" or "[Enter Hamlet]" opening a plain text is text).
    Given the file's path `p`, a text that opens as an export and does not parse (cut short, a
    trailing comma) is refused where it breaks: read as plain text, its JSON would be the corpus."""
    if not text.lstrip().startswith("["):
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        if p is not None and _EXPORT.match(text) and not _first_line_whole(text):
            raise CorpusError(f"{p}:{e.lineno}: malformed JSON at column {e.colno}: {e.msg} "
                              "(the file opens as a JSON array of records)") from None
        return None
    except (ValueError, RecursionError) as e:
        if p is not None and _EXPORT.match(text):
            raise CorpusError(f"{p}: JSON this tool cannot read: {_plain(e)}") from None
        return None
    return value if isinstance(value, list) and value and isinstance(value[0], dict) else None


def _first_line_whole(text: str) -> bool:
    """Whether the first non-blank line is a JSON value by itself: JSON Lines whose first record
    is an array (line 1's error names it), not an export spread over lines."""
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    try:
        json.loads(first)
        return True
    except (ValueError, RecursionError):
        return False


def _plain(e: Exception) -> str:
    """What a JSON parser's non-syntax failure means, without Python's advice."""
    if isinstance(e, RecursionError):
        return "nested too deeply"
    return "a number too long to read" if "digits" in str(e) else str(e).split(";")[0][:120]


def paragraphs(text: str) -> list[str]:
    """The blocks of `text` between blank lines (any line end), each on one line with single
    spaces (a book's hard-wrapped paragraphs; `tools.simulate`'s parts of one long document)."""
    blocks = "\n".join(ln.strip() for ln in text.splitlines()).split("\n\n")
    return [" ".join(b.split()) for b in blocks if b.strip()]


def _records(p: Path, objects: Iterable[tuple[str, object]], uf: str, tf: str) -> list[Record]:
    """Records of parsed JSON objects, each checked; `where` names one in an error (a line number,
    or "record N" of an array)."""
    records = []
    for no, obj in objects:
        if not isinstance(obj, dict):
            raise CorpusError(f"{p}:{no}: expected a JSON object with {uf!r} and {tf!r}")
        missing = [k for k in (uf, tf) if k not in obj]
        if missing:
            raise CorpusError(f"{p}:{no}: missing field(s) {', '.join(repr(m) for m in missing)}")
        if obj[tf] is None:   # chat exports write null for an attachment's text: no text, as "" is
            continue
        if not isinstance(obj[tf], str):
            raise CorpusError(f"{p}:{no}: field {tf!r} must be a string")
        if isinstance(obj[uf], bool) or not isinstance(obj[uf], (str, int)):   # null, {}: not a name
            raise CorpusError(f"{p}:{no}: field {uf!r} must be a string or an integer (who wrote the text), "
                              f"not {json.dumps(obj[uf])[:40]}")
        if _SURROGATE.search(obj[tf]) or _SURROGATE.search(str(obj[uf])):   # a "\ud800" escape: no character
            raise CorpusError(f"{p}:{no}: a \\u escape that is half a character (an unpaired surrogate); "
                              "this text cannot be written as UTF-8")
        if obj[tf].strip():
            records.append(Record(str(obj[uf]), obj[tf].strip()))
    if not records:
        raise CorpusError(f"{p}: no records with text")
    return records


def first_line(path: str | Path) -> str:
    """The file's first non-blank line ("" if none): what the format is told by."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        return next((ln for ln in f if ln.strip()), "")


def sniff_format(path: str | Path) -> str:
    """How `read_corpus(path)` reads the file by default: "jsonl", "json" (one array) or "lines"
    (plain text)."""
    first = first_line(path)
    if first.lstrip().startswith("[") and _json_array(Path(path).read_text("utf-8-sig", errors="replace")) is not None:
        return "json"
    return _sniff(first)


def _sniff(first_line: str) -> str:
    """JSON Lines when the first line is an object, or an array of objects (which line 1's error
    then names: JSON Lines holds one object a line); plain text otherwise ("[Enter Hamlet]",
    a footnote's "[1]")."""
    line = first_line.strip()
    if line.startswith("{"):
        return "jsonl"
    return "jsonl" if _json_array(line) is not None else "lines"


def by_user(records: list[Record]) -> "OrderedDict[str, list[str]]":
    """Texts grouped by user, users and texts in file order."""
    out: OrderedDict[str, list[str]] = OrderedDict()
    for r in records:
        out.setdefault(r.user, []).append(r.text)
    return out


@dataclass(frozen=True)
class Split:
    train: "OrderedDict[str, list[str]]"
    validation: "OrderedDict[str, list[str]]"
    test: "OrderedDict[str, list[str]]"

    def part(self, name: str) -> "OrderedDict[str, list[str]]":
        if name not in ("train", "validation", "test"):
            raise CorpusError(f"unknown split {name!r}: use train, validation or test")
        return getattr(self, name)

    def texts(self, name: str) -> list[str]:
        return [t for texts in self.part(name).values() for t in texts]

    def leaked(self, name: str = "test", min_words: int = 1) -> tuple[int, int]:
        """The texts of part `name` of at least `min_words` words that a train user also has,
        verbatim, and their words: the central references train on them and read high on those
        users (quoted replies, forwarded mail, boilerplate)."""
        train = set(self.texts("train"))
        hits = [t for t in self.texts(name) if t in train and len(t.split()) >= min_words]
        return len(hits), sum(len(t.split()) for t in hits)


def split_users(records: list[Record], *, seed: int = 0, validation: float = 0.1, test: float = 0.1) -> Split:
    """Deterministic split by user: each user lands in one part by a seeded hash of its name.

    A hash (not a shuffle) keeps a user's part stable when other users are added. With a
    single user (plain text) the user's records are split instead, in order, so the test
    part is still text that training never saw.
    """
    users = by_user(records)
    if len(users) == 1:
        (user, texts), = users.items()
        n = len(texts)
        n_test = max(1, int(round(n * test))) if n >= 3 else 0
        n_val = max(1, int(round(n * validation))) if n >= 3 else 0
        cut1, cut2 = n - n_test - n_val, n - n_test
        mk = lambda a, b: OrderedDict([(user, texts[a:b])] if b > a else [])  # noqa: E731
        return Split(mk(0, cut1), mk(cut1, cut2), mk(cut2, n))
    parts: dict[str, OrderedDict[str, list[str]]] = {k: OrderedDict() for k in ("train", "validation", "test")}
    for user, texts in users.items():
        u = int.from_bytes(hashlib.sha256(f"{seed}:{user}".encode()).digest()[:8], "big") / 2**64
        part = "test" if u < test else "validation" if u < test + validation else "train"
        parts[part][user] = texts
    return Split(parts["train"], parts["validation"], parts["test"])
