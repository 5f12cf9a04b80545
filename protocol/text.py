"""Text units the exporter, the device and the tools agree on: tokens, ids, training windows.

A text is split into words (letters, digits, apostrophes: ``know't``) and single punctuation
marks; each becomes one id of the word vocabulary (unknown ones <unk>). Each text becomes
``[BOS] ids... [EOS]``, cut into windows of T+1 tokens with stride T, every window starting
from a zero state, the same as the `train` signature sees. Pre-training (`model.pretrain`) and
the device's trainer cut windows with this one function, so a version trains on the device
exactly as it was trained centrally.

No TensorFlow; SentencePiece is imported only inside `load_tokenizer`, so the coordinator,
which imports `protocol`, never needs it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import threading
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

# Special token ids, fixed in the tokenizer trainer (`model.tokenizer.train_tokenizer`).
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3



def _marks() -> str:
    """Combining marks (Unicode's Mn and Mc) and the zero-width joiners, as a regex class body.
    They belong to the word they mark (Devanagari's virama, Thai's vowel signs, an accent typed
    as a separate character, Persian's ZWNJ), where ``\\w`` alone splits the word into fragments
    that were learned and suggested. Variation selectors (an emoji's U+FE0F) and enclosing marks
    (a keycap's U+20E3) are Mn/Me but belong to a symbol, not a word: left out. None of these
    marks occurs in the repository's corpora (the word list is built by its own, older rule:
    `protocol.vocab`). Planes 0 and 1: ~13 ms at import."""
    selectors = {*range(0xFE00, 0xFE10)}
    cps = [c for c in range(0x300, 0x20000)
           if c not in selectors and unicodedata.category(chr(c)) in ("Mn", "Mc")]
    runs: list[list[int]] = []
    for c in cps:
        if runs and runs[-1][1] == c - 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in runs) + "\\u200c\\u200d"


# A word's characters: letters, digits, "_", apostrophes and the marks above.
WORD_CLASS = rf"[\w'{_marks()}]"
# Words (with apostrophes) and single punctuation marks. `tokens` applies it after typing's
# quote normalisation; the base n-gram's `edge_runtime.ngram.words_of_chunk` applies it to raw
# text, as the shipped n-gram was fitted (its vocabulary holds the typographic quotes).
TOKEN_RE = re.compile(rf"{WORD_CLASS}+|[^\w\s]")
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"'})  # typographic -> typed
WORD_START = "\u2581"  # SentencePiece's word-boundary mark: vocabulary entries are "\u2581" + token


def nfc(text: str) -> str:
    """`text` in Unicode NFC, as the word list spells its words. A keyboard or a paste can send
    "café" as "cafe" and a combining accent (NFD): the user's own words then held a second "café"
    that the strip showed beside the list's, and a typed prefix was never completed past its accent."""
    return text if unicodedata.is_normalized("NFC", text) else unicodedata.normalize("NFC", text)


# Invisible format characters that a paste brings (a web page, a PDF, a messenger). A soft hyphen,
# a word joiner and a zero-width no-break space never separate words; a zero-width space does (Thai,
# Khmer and Burmese mark word boundaries with it); a zero-width (non-)joiner touching a Latin letter
# joins nothing (Persian and Indic scripts keep theirs). Read as text, they would make "Zimbab" and "we"
# of "Zimbab\u00adwe", and a "wor\u200dld" that looks like "world" and, tapped, puts an invisible
# character into what the user wrote: the user's words would learn and offer all three.
_FORMAT = re.compile("[\u00ad\u2060\ufeff\u200b\u200c\u200d]")
_INVISIBLE = str.maketrans({"\u00ad": None, "\u2060": None, "\ufeff": None, "\u200b": " "})
_LATIN = "A-Za-z\u00c0-\u024f"
_LATIN_JOINER = re.compile(f"(?<=[{_LATIN}])[\u200c\u200d]+|[\u200c\u200d]+(?=[{_LATIN}])")


def unformatted(text: str) -> str:
    """`text` with the invisible format characters above read as what they mean: dropped, or a
    space for a zero-width space. Not character for character: positions move."""
    if _FORMAT.search(text) is None:   # the rule: a keystroke pays one search
        return text
    return _LATIN_JOINER.sub("", text.translate(_INVISIBLE))


def tokens(text: str) -> list[str]:
    """Words and single punctuation marks of `text` (read in NFC, `unformatted`), in order (the
    model's units)."""
    return TOKEN_RE.findall(unformatted(nfc(text)).translate(_QUOTES))


def plain_quotes(text: str) -> str:
    """`text` with typographic quotes as typed ones ("don\u2019t" -> "don't"), character for
    character: what `tokens` reads, and what a phone's smart punctuation types."""
    return text.translate(_QUOTES)


def typed_chunks(text: str) -> tuple[list[str], str]:
    """The text before the cursor as a keyboard sees it: the completed whitespace chunks, and the
    chunk still being typed ("" right after a space). Every keyboard session's `update` splits
    its input this way."""
    parts = text.split()
    return (parts, "") if not text or text[-1].isspace() else (parts[:-1], parts[-1])


_WORD_CHAR = re.compile(WORD_CLASS)
# The word at a chunk's end, found on the chunk reversed: `WORD_CLASS*\Z` searched forwards tries
# every start in a run of word characters followed by a mark, and "x" * 16,000 + "." (a pasted key, then a
# full stop) would take 1.4 s on every keystroke after it.
_LEADING_WORD = re.compile(rf"{WORD_CLASS}*")
OPENING_MARKS = frozenset('"([{\u201c')   # marks a word follows with no space between


# What `word_being_typed` reads as a word's characters beyond WORD_CLASS: the invisible ones that
# `unformatted` drops inside a word (a soft hyphen, a word joiner), so "Zimbab\u00adwe" is one word
# being typed, completed (through `unformatted`) and replaced whole, not "we" after "Zimbab".
_TYPED = {**_QUOTES, 0xAD: "x", 0x2060: "x", 0xFEFF: "x"}


def word_being_typed(chunk: str) -> tuple[str, str] | None:
    """The chunk being typed as (lead, prefix): `prefix` the word at its end that the next letter
    would extend, `lead` what comes before it in the chunk ('"' in '"hel', "hello," in
    "hello,wor"); a keyboard completes the prefix after the lead, and replaces only the prefix.
    A chunk of opening marks alone ('"', "(") or none ("") has prefix "": the next word.
    None when the chunk ends in any other mark ("lord,"): the next word comes after a space; so
    does a single quote after such a mark ("yes.'", "lord,'"), which closes a quotation there.
    None inside an e-mail address or a web address too ("bob@exa", "https://exa"): a word
    completed there ("bob@exactly") is never what is typed."""
    start = len(chunk) - _LEADING_WORD.match(chunk.translate(_TYPED)[::-1]).end()
    lead, prefix = chunk[:start], chunk[start:]
    if "@" in lead or "://" in lead:
        return None
    if not all(c in OPENING_MARKS for c in lead) and not prefix.strip(_SINGLE_QUOTES):
        return None
    return lead, prefix


def quote_led(prefix: str) -> bool:
    """Whether a word being typed opens with a single quote and goes on after it ("'hel", "‘Tw"):
    a quotation mark or an elision ("'tis"), which `tokens` cannot tell apart, so a keyboard
    completes it both ways (`edge_runtime.predictor.Predictor.suggest`)."""
    return len(prefix) > 1 and prefix[0] in _SINGLE_QUOTES and prefix[1] not in _SINGLE_QUOTES


_SINGLE_QUOTES = "'\u2018\u2019"
_ALNUM = re.compile(r"[^\W_]")   # a letter or digit (what `str.isalnum` accepts), found in C


MAX_WORD_CHARS = 48   # the word list's longest is 24; uncapped, a user's 16,000-letter "word" is offered


def suggestable(word: str) -> bool:
    """Whether a token may be offered as a word: at most `MAX_WORD_CHARS` long (a tap must not
    insert a pasted blob, and the user's words index every prefix of each), it holds a letter or
    digit (not "____" or "'"), and its apostrophes are a word's (``don't``, ``'tis``, ``goin'``),
    not a run of quotes (``''Tis``, ``cooker''``) or a quotation around it (``'Wuthering'``),
    which text and the word list hold as tokens."""
    return (len(word) <= MAX_WORD_CHARS and _ALNUM.search(word) is not None and "''" not in word
            and not (len(word) > 2 and word[0] == "'" and word[-1] == "'"))


_DIGIT = re.compile(r"\d")
_LETTER = re.compile(r"[^\W\d_]")


def learnable(word: str) -> bool:
    """Whether a token the user typed may come back as one of their words: `suggestable`, and no
    digit in it. Door codes, card and phone numbers and passwords (`80417`, `77qz3x9w`) typed in a
    message field would be offered back to whoever uses the device next; a field's kind cannot
    tell them, so no token with four digits or more, or with two
    and a letter, is learned as a word. Shorter numbers and one-digit words (`555`, `2nd`,
    `hunter2`) still are: e-mail senders type ports and versions again, and a rule against every
    digit cost 0.18 of top-3 there (docs/quality.md). The word list's own words are not affected."""
    digits = len(_DIGIT.findall(word))
    return suggestable(word) and digits < 4 and not (digits >= 2 and _LETTER.search(word) is not None)


def complete_tokens(chunk: str) -> list[str]:
    """The tokens of a chunk still being typed that no character typed after it can change:
    `tokens(chunk)` but a word token at its end, which the next letter would extend (a
    punctuation mark is one token, so "lord," has both of its tokens complete). A keyboard can
    feed them before the space."""
    toks = tokens(chunk)
    return toks[:complete_count(chunk, toks)]


def complete_count(chunk: str, toks: list[str]) -> int:
    """How many of `toks`, the tokens of `chunk`, are complete (`complete_tokens`), without
    tokenizing it again: all but a word token at its end."""
    read = unformatted(chunk)
    return len(toks) - (1 if toks and read and _WORD_CHAR.fullmatch(read[-1].translate(_QUOTES)) else 0)


def load_tokenizer(path: str | os.PathLike):
    """A version's word list (`tokenizer.model`) as a SentencePieceProcessor."""
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(path))


class Vocab:
    """Token <-> id for a word-level SentencePiece model, without SentencePiece's own splitting
    (it would merge adjacent unknown tokens into one <unk>).

    The tokenizer holds the keyboard's whole word list, most frequent first (SentencePiece's
    `word` model orders pieces by frequency and scores them with their log frequency); the
    LSTM models the first `limit` ids. Rarer list words are <unk> to the LSTM, and the
    predictor shares <unk>'s probability among them by frequency (a class-based output).
    """

    def __init__(self, sp, limit: int | None = None) -> None:
        n = sp.get_piece_size()
        self.limit = n if limit is None else min(limit, n)
        ids = list(range(n))   # SentencePiece's list forms: one call each, not one per piece (150k of them)
        special = [c or u for c, u in zip(sp.is_control(ids), sp.is_unknown(ids))]
        self.words = ["" if x else p.removeprefix(WORD_START) for p, x in zip(sp.id_to_piece(ids), special)]
        self.log_freq = np.array(sp.get_score(ids), np.float32)
        self.index = {w: i for i, w in enumerate(self.words) if w}

    def __len__(self) -> int:
        return len(self.words)

    @functools.cached_property
    def suggestable(self) -> tuple[list[str], np.ndarray]:
        """(words, ids) of the list's words (not punctuation or control pieces), sorted by word so
        that a typed prefix is an index range. Sorted once per tokenizer, not per predictor."""
        words = self.words
        ids = [i for i, w in enumerate(words) if w and suggestable(w)]
        ids.sort(key=words.__getitem__)
        return [words[i] for i in ids], np.array(ids, dtype=np.int64)

    @functools.cached_property
    def offered(self) -> tuple[list[str], np.ndarray]:
        """`suggestable` without the blocked words (`is_blocked`): what a keyboard offers
        people who did not type those words themselves."""
        words, ids = self.suggestable
        keep = ~blocked_mask(words)
        return [w for w, k in zip(words, keep.tolist()) if k], ids[keep]

    def ids(self, toks: Iterable[str]) -> list[int]:
        """The LSTM's ids of `toks`: <unk> for words outside its first `limit`."""
        get, lim = self.index.get, self.limit
        return [i if i < lim else UNK_ID for i in (get(t, UNK_ID) for t in toks)]


@functools.cache
def _blocklist() -> tuple[frozenset[str], re.Pattern | None]:
    """(whole words, a pattern of the stems) of `protocol/data/blocked_en.txt`."""
    text = (Path(__file__).parent / "data" / "blocked_en.txt").read_text(encoding="utf-8")
    lines = [w.strip().lower() for w in text.splitlines() if w.strip() and not w.startswith("#")]
    stems = [re.escape(w[1:]) for w in lines if w.startswith("*")]
    return frozenset(w for w in lines if not w.startswith("*")), re.compile("|".join(stems)) if stems else None


def blocked_words() -> frozenset[str]:
    """The whole words of the block list (`is_blocked` also blocks their endings and its stems)."""
    return _blocklist()[0]


_STRETCHED = re.compile(r"(.)\1{2,}")   # a letter three times or more: "fuuuck", "shiiit"


def _folded(word: str) -> str:
    """A word as the block list holds it: lower case, typographic apostrophes typed, a letter
    stretched three times or more written once (no listed word has one; few words do)."""
    w = word.lower()
    w = w.translate(_QUOTES) if "\u2019" in w else w
    return _STRETCHED.sub(r"\1", w) if len(w) > 2 else w


def _listed(w: str, listed: frozenset[str]) -> bool:
    """A folded word is on the list, or is a listed word with an ending after an apostrophe, or
    a listed word with a plural s ("dickwads")."""
    return w in listed or ("'" in w and w.split("'", 1)[0] in listed) or (w[-1:] == "s" and w[:-1] in listed)


@functools.lru_cache(maxsize=1 << 14)
def is_blocked(word: str) -> bool:
    """Whether a keyboard should not offer `word` to someone who has not typed it: a slur, strong
    profanity or explicit slang (`protocol/data/blocked_en.txt`), in any casing, with any ending
    after an apostrophe (`bitch's`), or holding one of the list's stems (`clusterfuck`). The
    words stay in the word list, so the model still reads them in a context; they are not shown.
    Cached: a strip asks it of each candidate of every part, the same few thousand words over and
    over (a quarter of a keystroke's time at its p99, tools.bench keystroke)."""
    listed, stems = _blocklist()
    w = _folded(word)
    return _listed(w, listed) or (stems is not None and stems.search(w) is not None)


def blocked_mask(words: Sequence[str]) -> np.ndarray:
    """`is_blocked` of each word, for a whole word list at once (~0.1 s for 150,000 words where a
    loop of `is_blocked` takes 0.4: the stems are searched in one joined string)."""
    listed, stems = _blocklist()
    low = [_folded(w) for w in words]
    hit = np.array([_listed(w, listed) for w in low], bool)
    if stems is not None and low:
        text = "\n".join(low)   # a stem holds no newline, so a match lies inside one word
        starts = np.cumsum([0] + [len(w) + 1 for w in low[:-1]])
        found = [m.start() for m in stems.finditer(text)]
        if found:
            hit[np.searchsorted(starts, found, side="right") - 1] = True
    return hit


_VOCABS: dict[tuple[bytes, int | None], Vocab] = {}
_VOCABS_KEPT = 4   # word lists kept (a device holds its stable and candidate versions' at most)
_VOCABS_LOCK = threading.Lock()   # the device's agent loop and its keyboard's threads both load versions


def vocab_of(sp, limit: int | None = None) -> Vocab:
    """The `Vocab` of a loaded tokenizer for an LSTM over its first `limit` ids, built once per
    word list. Keyed by a hash of the tokenizer's content (~10 ms for a 150,000-word list), not
    by the object: every predictor loads its own `SentencePieceProcessor`, and an `id()` can be
    reused by a later one with another list of the same size (a discovery round's candidate)."""
    key = (hashlib.blake2b(sp.serialized_model_proto(), digest_size=16).digest(), limit)
    with _VOCABS_LOCK:
        v = _VOCABS.pop(key, None)
        if v is not None:
            _VOCABS[key] = v                 # most recently used last
            return v
    v = Vocab(sp, limit)                     # built outside the lock (~0.1 s for 150,000 words)
    with _VOCABS_LOCK:
        v = _VOCABS.pop(key, v)              # another thread's copy, if one landed meanwhile
        _VOCABS[key] = v
        while len(_VOCABS) > _VOCABS_KEPT:
            _VOCABS.pop(next(iter(_VOCABS)))
    return v


def encode_texts(sp, texts: Iterable[str], limit: int | None = None) -> list[list[int]]:
    """Token ids of each text with BOS/EOS, for an LSTM over the first `limit` ids of `sp`."""
    v = vocab_of(sp, limit)
    return [[BOS_ID, *v.ids(tokens(t)), EOS_ID] for t in texts]


def windows(token_lists: Iterable[list[int]], seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (x, y, mask) windows, shapes (N,T); padding positions have mask 0."""
    xs, ys, ms = [], [], []
    for ids in token_lists:
        for start in range(0, max(len(ids) - 1, 1), seq_len):
            chunk = ids[start:start + seq_len + 1]
            if len(chunk) < 2:
                continue
            n = len(chunk) - 1
            x = np.zeros(seq_len, np.int32)
            y = np.zeros(seq_len, np.int32)
            m = np.zeros(seq_len, np.float32)
            x[:n], y[:n], m[:n] = chunk[:-1], chunk[1:], 1.0
            xs.append(x)
            ys.append(y)
            ms.append(m)
    if not xs:
        z = np.zeros((0, seq_len))
        return z.astype(np.int32), z.astype(np.int32), z.astype(np.float32)
    return np.stack(xs), np.stack(ys), np.stack(ms)
