"""Give words their own softmax rows: a new version of the same graph with a new word list.

Why: the LSTM's softmax covers the word list's first `vocab_size` entries; any other word is
<unk> to it and can only be completed, never predicted, and a word outside the list cannot even be
completed. Swapping the rarest softmax rows for words users type raises keystroke savings by 1.0 to
1.6 points on both device corpora (docs/quality.md, "Device words as softmax rows"). The words
come from a public source: an operator's list (`tools.add_words`) or a discovery round, whose
noised vote counts over the word list's own tail the coordinator thresholds (`protocol.discovery`);
nothing here reads device text.

The graph does not change (same architecture hash), so `coordinator import-version` (or the
coordinator itself, after a discovery round) takes the result as a canary candidate and devices
fetch only the new tokenizer and weights. The rarest `len(words)` softmax words move to the
word list's tail (still completed, and predicted through <unk>'s share like every tail word);
each new row starts as <unk>'s row with its bias lowered by log(len(words)), so the untrained
swap spreads <unk>'s probability over the new words instead of raising it. No TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from protocol.artifact import GRAPH, TOKENIZER, load_version, sha256_file, write_version
from protocol.text import EOS_ID, UNK_ID, WORD_START
from protocol.wire import is_safe_id

MAX_SHARE = 0.2   # at most this share of the softmax is given away in one version


class VocabError(ValueError):
    """The word list cannot be applied (bad words, too many, or nothing to add)."""


@dataclass(frozen=True)
class AddedWords:
    version_id: str
    added: list[str]         # now softmax rows, in row order
    displaced: list[str]     # moved from the softmax to the word list's tail
    already: list[str]       # already had a row; unchanged


def read_words(path: str | Path) -> list[str]:
    """One word per line; blank lines and lines starting with '#' are skipped."""
    return [w.strip() for _, w in _lines(path)]


# A notice rides in every manifest a device downloads: a licence file, not a book.
MAX_NOTICE_BYTES = 64 * 1024


def read_notice(path: str | Path) -> str:
    """A licence notice file's text, whole ('#' lines too: they are headings there)."""
    text = _read_text(path).strip()
    if not text:
        raise VocabError(f"{path}: the notice is empty")
    if len(text.encode()) > MAX_NOTICE_BYTES:
        raise VocabError(f"{path}: a notice of {len(text.encode()):,} bytes is too large to ride in every "
                         f"manifest (at most {MAX_NOTICE_BYTES:,}); point to the full licence instead")
    return text


def _lines(path: str | Path) -> list[tuple[int, str]]:
    """(line number, line) of a UTF-8 text file's lines that are not blank or '#' comments."""
    lines = _read_text(path).splitlines()
    return [(n, w) for n, w in enumerate(lines, 1) if w.strip() and not w.lstrip().startswith("#")]


def _read_text(path: str | Path) -> str:
    """A UTF-8 text file's text; VocabError with one line for what goes wrong."""
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise VocabError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise VocabError(f"{p}: is a directory, not a text file") from None
    except PermissionError:
        raise VocabError(f"{p}: not readable (permission denied)") from None
    except UnicodeDecodeError as e:
        raise VocabError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None


_LIST_WORD = re.compile(r"[\w']+")


def _one_word(w: str) -> bool:
    """One token of the word list: letters, digits and apostrophes, at least one letter or digit.
    Its own rule, not `tokens`': typed text reads combining marks as part of a word, but the list
    is built of precomposed words, and `make v0` must rebuild the shipped list exactly (the
    frequency list holds a few decomposed or emoji-marked entries, "i\u0307stanbul", "i\ufe0f")."""
    return _LIST_WORD.fullmatch(w) is not None and any(ch.isalnum() for ch in w)


def _check_words(words: Sequence[str]) -> list[str]:
    for w in words:
        if not _one_word(w):
            shown = repr(w) if len(w) <= 60 else f"{w[:40]!r}... ({len(w):,} characters)"   # a whole file's line
            raise VocabError(f"{shown} is not one word (letters, digits and apostrophes, no spaces or punctuation)")
    return list(dict.fromkeys(words))   # first occurrence of each, in order


def _parse(tokenizer: bytes):
    from google.protobuf.message import DecodeError
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    try:
        proto.ParseFromString(tokenizer)
    except DecodeError:
        raise VocabError("the version's tokenizer is not a SentencePiece model") from None
    return proto


def dictionary(tokenizer: bytes, vocab_size: int) -> list[str]:
    """The word list's words that have no softmax row (its tail), in word-list order: the public
    dictionary a discovery round votes over (`protocol.discovery`). Through the SentencePiece
    runtime, not its protobuf schema, so a device needs no protobuf package for it."""
    import sentencepiece as spm

    try:
        sp = spm.SentencePieceProcessor(model_proto=tokenizer)
    except (RuntimeError, OSError, TypeError):
        raise VocabError("the version's tokenizer is not a SentencePiece model") from None
    return [sp.id_to_piece(i).removeprefix(WORD_START) for i in range(vocab_size, sp.get_piece_size())]


def swap_rows(tokenizer: bytes, weights: Mapping[str, np.ndarray], vocab_size: int,
              words: Sequence[str]) -> tuple[bytes, dict[str, np.ndarray], AddedWords]:
    """(new tokenizer, new weights, what moved) with `words` given softmax rows (the module doc).
    Pure: the coordinator calls it on blobs, `add_words` on a version directory. The result's
    `version_id` is left empty for the caller to name."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    V = vocab_size
    proto = _parse(tokenizer)
    pieces = list(proto.pieces)
    names = [p.piece.removeprefix(WORD_START) for p in pieces]
    index = {w: i for i, w in enumerate(names)}
    wanted = _check_words(words)
    if not wanted:
        raise VocabError("the word list is empty")
    already = [w for w in wanted if index.get(w, V) < V]
    new = [w for w in wanted if index.get(w, V) >= V]
    if not new:
        raise VocabError("every word already has a softmax row: nothing to add")
    K = len(new)
    if K > MAX_SHARE * V:
        raise VocabError(f"{K} words would displace more than {MAX_SHARE:.0%} of the {V} softmax rows; "
                         f"add at most {int(MAX_SHARE * V)} per version")
    lowest = min((p.score for p in pieces[EOS_ID + 1:]), default=0.0)   # past the control pieces
    moved, added_pieces = set(), []
    for w in new:
        if w in index:
            moved.add(index[w])
            added_pieces.append(pieces[index[w]])
        else:
            p = pb.ModelProto.SentencePiece(piece=WORD_START + w, score=lowest - 1.0,
                                            type=pb.ModelProto.SentencePiece.NORMAL)
            added_pieces.append(p)
    keep = list(range(V - K))                       # old ids that keep their rows (and ids)
    displaced = list(range(V - K, V))
    tail = [i for i in range(V, len(pieces)) if i not in moved]
    del proto.pieces[:]
    proto.pieces.extend([pieces[i] for i in keep] + added_pieces + [pieces[i] for i in displaced + tail])

    new_weights = {}
    for name, w in weights.items():
        if w.shape[:1] != (V,):           # only the tied embedding and the output bias are per word
            new_weights[name] = w
            continue
        rows = np.concatenate([w[keep], np.repeat(w[UNK_ID][None], K, axis=0)])
        if rows.ndim == 1:                # the output bias: the new words share <unk>'s mass
            rows[V - K:] -= math.log(K)
        new_weights[name] = rows.astype(np.float32)
    return proto.SerializeToString(), new_weights, AddedWords("", new, [names[i] for i in displaced], already)


def add_words(src: str | Path, words: Sequence[str], out: str | Path, *, version_id: str | None = None) -> AddedWords:
    """Write to `out` a version of `src` in which `words` have softmax rows (see the module doc)."""
    src = Path(src)
    _check_out(out, version_id)
    manifest, weights = load_version(src, verify=True)
    if version_id == manifest.version_id:
        raise VocabError(f"{version_id!r} is {src}'s own id: new softmax rows change the weights, so they "
                         "make a new version (leave out --version-id, or give a new one)")
    tokenizer, new_weights, result = swap_rows((src / TOKENIZER).read_bytes(), weights,
                                               manifest.architecture().model.vocab_size, words)
    K = len(result.added)
    vid = _derive(src, out, manifest, tokenizer, new_weights, version_id, f"w{K}",
                  {"added_words": {"from": manifest.version_id, "added": K, "displaced": K}}, replace_metrics=True)
    return dataclasses.replace(result, version_id=vid)


def read_frequencies(path: str | Path) -> list[tuple[str, float]]:
    """`word<TAB>frequency` lines (`corpora/wordfreq_en.tsv`; '#' starts a comment), most frequent
    first (a stable sort, so an already sorted file keeps its order); a word listed twice keeps
    its first line."""
    out: dict[str, float] = {}
    for n, line in _lines(path):
        word, _, freq = line.partition("\t")
        try:
            f = float(freq)
        except ValueError:
            f = -1.0
        word = word.strip()
        if not word or not f > 0 or not math.isfinite(f):
            raise VocabError(f"{path}: line {n} is not 'word<TAB>frequency' with a frequency > 0: {line[:60]!r}")
        out.setdefault(word, f)
    if not out:
        raise VocabError(f"{path}: no 'word<TAB>frequency' lines")
    return sorted(out.items(), key=lambda wf: -wf[1])


def extend_tail(tokenizer: bytes, words: Sequence[tuple[str, float]],
                limit: int) -> tuple[bytes, list[str], dict[str, int]]:
    """(new tokenizer, the words added, the entries skipped on the way, counted by why): `words`
    (word, frequency) the word list lacks, appended to its tail, at most `limit` of them in the
    order given. Nothing already in the list moves, so every id, the softmax and the weights stay
    as they are; the new words are completed (typed prefixes) and predicted through <unk>'s share
    like every tail word.

    Why: the proxy text's list misses words people type today (`server`, `install`); a public
    frequency list supplies them without any device text (docs/quality.md). A word's score is
    its log frequency moved onto the list's own scale, by the median difference over the words
    both hold, so a new word's share of <unk> sits where the proxy text would have put it.
    A word the list holds in another casing is left out: a lower-cased public list would add
    `london` beside `London`, scored with every casing's count (so above it). Words that are
    not one token (`_one_word`) are skipped, not refused: a public list holds some. Every entry
    not added is counted once, by why (`in_the_list`, `another_casing_added` for a second casing
    of a word this list itself added, `not_one_word`, `past_the_limit`), so whoever builds a
    version sees what the list gave."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    if limit < 1:
        raise VocabError(f"the number of words to add must be at least 1, not {limit}")
    proto = _parse(tokenizer)
    have = {p.piece.removeprefix(WORD_START): p.score for p in proto.pieces}
    folded = {w.lower() for w in have}
    shared = [have[w] - math.log(f) for w, f in words if w in have]
    if not shared:
        raise VocabError("the frequency list shares no word with the word list: cannot put it on its scale")
    offset = float(np.median(shared))
    added: list[str] = []
    new: set[str] = set()
    skipped = {"in_the_list": 0, "another_casing_added": 0, "not_one_word": 0, "past_the_limit": 0}
    for i, (w, f) in enumerate(words):
        if len(added) >= limit:
            skipped["past_the_limit"] = len(words) - i
            break
        if w.lower() in new:
            skipped["another_casing_added"] += 1
            continue
        if w.lower() in folded:
            skipped["in_the_list"] += 1
            continue
        if not _one_word(w):
            skipped["not_one_word"] += 1
            continue
        new.add(w.lower())
        proto.pieces.append(pb.ModelProto.SentencePiece(piece=WORD_START + w, score=math.log(f) + offset,
                                                        type=pb.ModelProto.SentencePiece.NORMAL))
        added.append(w)
    if not added:
        raise VocabError("every word of the frequency list is already in the word list (in some casing) "
                         "or is not one word: nothing to add")
    return proto.SerializeToString(), added, skipped


def add_tail_words(src: str | Path, words: Sequence[tuple[str, float]], out: str | Path, *, limit: int,
                   version_id: str | None = None, notice: str = "") -> tuple[str, list[str], dict[str, int]]:
    """Write to `out` a version of `src` whose word list's tail also holds `words` (`extend_tail`);
    the same weights. With `version_id` equal to the source's, the result is the same version
    built further (`make v0`: parent and metrics kept); else a child version, a canary candidate.
    `notice`, the frequency list's licence notice, goes into the manifest's `notices` for the
    tokenizer, so it travels with every copy of the word list (CC BY-SA asks that it does).
    Returns the new version's id, the words added and the entries skipped (`extend_tail`)."""
    src = Path(src)
    _check_out(out, version_id)
    manifest, weights = load_version(src, verify=True)
    tokenizer, added, skipped = extend_tail((src / TOKENIZER).read_bytes(), words, limit)
    notice, had = notice.strip(), manifest.notices.get(TOKENIZER, "")
    if notice and notice not in had:   # a second list's notice joins the first's: both lists' words stay
        manifest.notices = {**manifest.notices, TOKENIZER: f"{had}\n\n{notice}" if had else notice}
    vid = _derive(src, out, manifest, tokenizer, weights, version_id, f"t{len(added)}",
                  {"tail_words": {"added": len(added), "pieces": len(_parse(tokenizer).pieces)}})
    return vid, added, skipped


def _check_out(out: str | Path, version_id: str | None) -> None:
    """Refuse a bad id or a used output directory before any work is done."""
    out = Path(out)
    if version_id is not None and not is_safe_id(version_id):
        raise VocabError(f"version id {version_id!r} must be letters, digits, '.', '_' or '-'")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise VocabError(f"{out} exists and is not an empty directory; choose a new one")


def _derive(src: Path, out: str | Path, manifest, tokenizer: bytes, weights: Mapping[str, np.ndarray],
            version_id: str | None, tag: str, metrics: dict, *, replace_metrics: bool = False) -> str:
    """Write `out`: `src`'s graph, a new tokenizer and `weights`, under a new manifest; returns its id.
    A new id makes a child of `src` (default `<id>-<tag>-<tokenizer hash>`); `src`'s own id keeps
    its parent and metrics (the same version, built further). The callers have checked `out` and
    the id (`_check_out`) before their work."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copyfile(src / GRAPH, out / GRAPH)
        (out / TOKENIZER).write_bytes(tokenizer)
        same = version_id == manifest.version_id
        if not same:
            manifest.parent = manifest.version_id
        manifest.tokenizer_sha256 = sha256_file(out / TOKENIZER)
        manifest.version_id = version_id or f"{manifest.version_id}-{tag}-{manifest.tokenizer_sha256[:8]}"
        manifest.weights_q8_sha256, manifest.signature = "", None
        if not same:
            manifest.privacy = {}
        manifest.created_at = datetime.now(UTC).isoformat(timespec="seconds")
        manifest.metrics = metrics if replace_metrics or not same else {**manifest.metrics, **metrics}
        write_version(out, manifest, dict(weights))
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)   # it was empty or absent: leave no half a version
        raise
    return manifest.version_id


def summary(result: AddedWords) -> str:
    return json.dumps({"version_id": result.version_id, "added": len(result.added),
                       "displaced": len(result.displaced), "already_in_softmax": result.already,
                       "first_displaced": result.displaced[:10]}, indent=2)
