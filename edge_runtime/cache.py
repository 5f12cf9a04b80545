"""Local text cache: the only place typed text is kept, and it never leaves the device.

Committed text (a sent message, a finished note) is stored in SQLite inside the device's
data directory, with its timestamp and the kind of field it was typed into. It is the
training material for on-device fine-tuning; the newest part of it is held out for local
evaluation (the canary), so a version is never scored on text this device trained on.

Privacy rules enforced here, not by callers:
- only text from field kinds on an allow-list of free-text kinds (`LEARNABLE_FIELD_KINDS`)
  is written; passwords, codes, numbers, addresses, unknown kinds and anything marked
  private never are, and neither is any text while learning is paused (the pause flag is
  persisted, so it survives restarts);
- old text expires (default 60 days) and the cache has a size cap;
- `wipe()` removes everything, with SQLite's secure_delete so freed pages are zeroed;
- nothing in this module logs text; log lines carry counts only.

Durability: WAL journal, `synchronous=FULL`. WAL with NORMAL already survives kill -9 (the
WAL is written before commit returns; only an OS crash or power loss can drop the last
commits). FULL also fsyncs the WAL on every commit, which makes a pause or a wipe durable
across power loss too (losing a "pause" would mean caching text the user asked us not to).
Commits are rare (one per committed text, not per keystroke), so FULL's cost is negligible.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Self

from edge_runtime.eligibility import ActivityClock
from edge_runtime.errors import EdgeError
from edge_runtime.file_lock import LockBusy, file_lock
from edge_runtime.paths import ACTIVITY_FILE, CACHE_DB, CACHE_OPEN_LOCK, PAUSE_AFTER_WIPE
from protocol.text import nfc, quote_led, tokens

if TYPE_CHECKING:   # settings only name the cache's own parameters: no import at run time
    from edge_runtime.config import EdgeConfig

log = logging.getLogger(__name__)

DEFAULT_RETENTION_DAYS = 60.0
DEFAULT_MAX_BYTES = 4 * 1024 * 1024   # ~ months of typing; caps disk use and training time
DEFAULT_HOLDOUT_FRACTION = 0.1
MAX_TEXT = 16 * 1024   # characters of one commit (the page's and `type`'s) and of the text before the cursor

# Field kinds whose text may be learned: an allow-list, so anything else (passwords, one-time
# codes, card numbers, phone numbers, addresses, names, IBANs, kinds nobody anticipated, a
# missing kind) is never stored. The vocabulary follows Android's text input variations
# (TYPE_TEXT_VARIATION_NORMAL, SHORT_MESSAGE, LONG_MESSAGE, EMAIL_SUBJECT, WEB_EDIT_TEXT,
# FILTER) and the free-text HTML controls (text, search, textarea); every HTML `autocomplete`
# token (name, tel, email, cc-*, one-time-code, new-password, street-address, ...) names
# personal data and is left out on purpose.
LEARNABLE_FIELD_KINDS = frozenset({
    "text", "normal", "textarea", "message", "short_message", "long_message", "chat", "email_subject",
    "subject", "note", "notes", "comment", "post", "caption", "search", "filter", "web_edit_text",
})
_ANDROID_PREFIX = "type_text_variation_"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS texts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: ids never reused, so order = age
    ts REAL NOT NULL,                      -- unix seconds when committed
    field_kind TEXT NOT NULL,
    text TEXT NOT NULL,
    nbytes INTEGER NOT NULL                -- utf-8 size, for the size cap
);
CREATE INDEX IF NOT EXISTS texts_ts ON texts (ts);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


REMOVED_KEY = "removed_words"   # the settings row of the words removed from the suggestions
COMMITS_KEY = "commit_ids"      # the settings row of the keyboard page's newest commit ids (no text)
BUSY_TIMEOUT_MS = 5000          # how long a connection waits for another's lock
DELETIONS_KEY = "deletions"      # texts deleted for their age and over the size cap, counted (`deletions`)
MAX_COMMIT_IDS = 64
TYPED_TO_RETURN = 2   # texts a removed word is committed in before it is suggested again: not the
                      # sentence it was removed from while being typed, but a word the user keeps typing
OPEN_WAIT_S = 30.0   # how long opening the cache waits for a wipe replacing its file


@contextlib.contextmanager
def _open_lock(data_dir: Path, *, exclusive: bool) -> Iterator[None]:
    """A process that opened the cache while `wipe_in_place` had deleted the file and not yet
    renamed the new one in made a new, unpaused file there, whose WAL SQLite then applied to the
    wipe's paused one: the cache came back unpaused, holding what was typed meanwhile. Opening
    takes this lock shared, the replacement exclusive (`file_lock`: released if the process dies).
    Opening waits OPEN_WAIT_S at most (a wipe stuck on a failing disk), then says to try again.
    The lock is the cache's, not the wipe's: a wipe that cannot take it (a lock file it cannot
    open, no locks on this file system) wipes all the same, unlocked; an open that cannot, opens
    as before."""
    with contextlib.ExitStack() as stack:
        try:
            held = stack.enter_context(file_lock(data_dir / CACHE_OPEN_LOCK, exclusive=exclusive,
                                                 wait=None if exclusive else OPEN_WAIT_S))
        except LockBusy:
            raise CacheError("the text cache is being replaced by a wipe: try again") from None
        if not held:   # a read-only data directory (a mounted backup) has nothing to race
            log.log(logging.WARNING if exclusive else logging.DEBUG, "text cache: %s without its lock",
                    "replaced" if exclusive else "opened")
        yield


class CacheError(EdgeError, RuntimeError):
    """The text cache cannot be opened or used."""

    says_no_text = True   # built from `_said`: the path and SQLite's reason, never a row


class DamagedCacheError(CacheError):
    """The cache file is not a readable SQLite database (a bad disk, a half-copied file)."""


def destroy_files(data_dir: str | os.PathLike) -> list[Path]:
    """Overwrite with zeros, then delete, the cache's database and its WAL/journal files: what
    `wipe` does when the cache is too damaged to open, so its text cannot be deleted row by row.
    Returns the files removed."""
    removed = []
    for suffix in ("", "-wal", "-shm", "-journal"):
        f = Path(data_dir) / (CACHE_DB + suffix)
        if not f.is_file():
            continue
        size = f.stat().st_size
        with open(f, "r+b") as fh:
            for start in range(0, size, 1 << 20):
                fh.write(bytes(min(1 << 20, size - start)))
            fh.flush()
            os.fsync(fh.fileno())
        f.unlink()
        removed.append(f)
    return removed


CLOCK_UNSET_BEFORE = 1_600_000_000.0   # September 2020: a device clock before it was never set


def _said(e: BaseException) -> str:
    """A database error as the cache may log or answer it: never with the text it quotes. Python's
    sqlite3 quotes a row it cannot decode whole ("Could not decode to UTF-8 column 'text' with
    text 'secret plan ...'"), and one flipped bit on storage put a user's sentence in the
    keyboard's log and in its 503 answers. SQLite's own messages quote no row."""
    said = str(e)
    cut = said.find(" with text ")
    if cut >= 0:
        said = said[:cut]
    return "database or disk is full" if "disk is full" in said else said


def _cause(path: Path) -> str:
    """What the disk says of a failed open, in words: SQLite names only its own symptom ("disk
    I/O error" for a full disk, "unable to open database file" for a read-only one), which the
    device's owner cannot act on. Empty when the folder looks fine."""
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return ""
    if st.f_flag & os.ST_RDONLY:
        return " (its folder is on a read-only file system)"
    if st.f_bavail == 0:
        return " (the disk is full)"
    return ""


def _identity_or_none(path: Path) -> tuple[int, int] | None:
    """Which file `path` names now (device, inode), None when none: a wipe elsewhere that made a
    new one changes it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CacheError(f"cannot read the text cache at {path}: {e}") from e
    return st.st_dev, st.st_ino


def disk_full(e: CacheError) -> bool:
    """SQLite on a full disk: "database or disk is full", or "disk I/O error" when it cannot even
    make the WAL files to open the cache."""
    return any(s in str(e) for s in ("disk is full", "disk I/O error"))   # I/O error: full, or failing


def wipe_in_place(data_dir: str | os.PathLike) -> tuple[list[Path], bool]:
    """The wipe for a cache that cannot be emptied row by row: too damaged to open, or on a disk
    too full for SQLite to delete rows (it needs room for the WAL), where the text stayed. The
    files are overwritten in place (no new space) and deleted, the wipe being the privacy action
    that must not wait; then a new, empty cache, paused (the user's pause went with the old file)
    and with a new wipe mark (so a process still holding the old file forgets what it learned
    from it), if there is room for one; if not, the next cache made starts paused. The new file
    is made complete in a private directory and renamed into place, so a process following the
    path (`TextCache._held`) never sees it unpaused. Returns (the files removed, whether the new
    cache was made)."""
    marker = Path(data_dir) / PAUSE_AFTER_WIPE
    with _open_lock(Path(data_dir), exclusive=True):
        with contextlib.suppress(OSError):   # first: a kill before the new file is in leaves the next one paused
            marker.touch()                   # (an empty file needs no data block, on a full disk too)
        gone = destroy_files(data_dir)
        try:
            make_paused(data_dir)
        except (CacheError, OSError):
            return gone, False
        with contextlib.suppress(OSError):
            marker.unlink()
    return gone, True


def make_paused(data_dir: str | os.PathLike) -> None:
    """A new, empty, paused cache with a new wipe mark in place of none (`wipe_in_place`)."""
    tmp = Path(tempfile.mkdtemp(prefix=".new-cache-", dir=data_dir))
    try:
        with TextCache(tmp) as fresh:
            fresh.set_paused(True)
            fresh.wipe()   # the mark; no other reader can hold this file, so the WAL is checkpointed
        os.replace(tmp / CACHE_DB, Path(data_dir) / CACHE_DB)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass(frozen=True)
class CachedText:
    id: int
    ts: float
    field_kind: str
    text: str


def capitalised(word: str) -> str | None:
    """A lowercase word as at a sentence's start ("teh" -> "Teh", "'teh" -> "'Teh"); None for one
    that is not lowercase ("May", a name). A removed word hides this form too (`user_words._hidden`)."""
    i = int(quote_led(word))   # the letter after a leading quote
    return word[:i] + word[i].upper() + word[i + 1:] if word[i:i + 1].islower() else None


def _count_typed(removed: dict[str, list], typed: Iterable[str]) -> bool:
    """Count the removed words among `typed` (a committed text's) in `removed` (`_removed_locked`),
    bringing back one committed in TYPED_TO_RETURN texts since its removal; whether any counted.
    A lowercase word counts in its capitalised form too, which it hides: typed at a sentence's
    start ("Wobblesnatch parade today") it did not count, and stayed hidden."""
    typed = set(typed)
    back = [w for w in removed if w in typed or capitalised(w) in typed]
    for w in back:
        removed[w][0] += 1
        if removed[w][0] >= TYPED_TO_RETURN:
            del removed[w]
    return bool(back)


def normalize_kind(kind: str) -> str:
    """camelCase, kebab-case and spaces to snake_case; Android's variation prefix dropped."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", kind.strip())
    k = re.sub(r"[^a-z0-9]+", "_", spaced.lower()).strip("_")
    return k[len(_ANDROID_PREFIX):] if k.startswith(_ANDROID_PREFIX) else k


def is_sensitive(field_kind: str | None, *, private: bool = False) -> bool:
    """True unless text typed in this kind of field may be learned (allow-list, fail closed)."""
    if private or not isinstance(field_kind, str):
        return True
    return normalize_kind(field_kind) not in LEARNABLE_FIELD_KINDS


def holdout_count(n: int, fraction: float) -> int:
    """How many of the newest `n` records are held out: ceil(n*fraction), at least one.

    n - holdout_count(n) never decreases as n grows, and expiry only removes the oldest
    records, so the train/held-out boundary only moves forward: text once trained on is
    never held out later.
    """
    if n <= 0:
        return 0
    return min(n, max(1, math.ceil(n * fraction)))


class TextCache:
    """SQLite-backed cache of committed text. Thread-safe (one connection behind a lock)."""

    def __init__(
        self,
        data_dir: str | os.PathLike,
        *,
        retention_days: float = DEFAULT_RETENTION_DAYS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
        clock: Callable[[], float] = time.time,
        damaged_ok: bool = False,
    ) -> None:
        """`damaged_ok`: a file too damaged to open (its header) opens all the same, every call
        then raising DamagedCacheError as a file damaged past its header does, until a wipe
        replaces it: the keyboard keeps suggesting and its Clear can delete the file (the
        command line's callers keep refusing at open, with the wipe command to run)."""
        if retention_days <= 0:
            raise ValueError(f"retention_days must be > 0, got {retention_days}")
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0, got {max_bytes}")
        if not 0.0 < holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
        self.data_dir = Path(data_dir)
        self.retention_days = retention_days
        self.max_bytes = max_bytes
        self._said_dropped = False   # `add` warned of texts deleted to make room
        self.last_id: int | None = None   # id of the text `add` stored last through this object
        self.holdout_fraction = holdout_fraction
        self._clock = clock
        self._lock = threading.Lock()
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = self.data_dir / CACHE_DB
        self._damaged: DamagedCacheError | None = None   # opened damaged (`damaged_ok`), not yet replaced
        self._pin: int | None = None   # the damaged file, held open (`_hold_damaged`)
        with _open_lock(self.data_dir, exclusive=False):
            for _ in range(3):   # the file a stat names before and after connecting is the one opened
                before = _identity_or_none(self.path)
                try:
                    self._db: sqlite3.Connection | None = self._connect(create=True)
                except DamagedCacheError as e:
                    if not damaged_ok:
                        raise
                    self._db, self._damaged = None, e
                    self._hold_damaged()
                self._file = _identity_or_none(self.path)
                if before is None or before == self._file:
                    break
                if self._db is not None:
                    self._db.close()
            else:
                raise CacheError(f"the text cache at {self.path} is being replaced: try again")

    def _connect(self, *, create: bool) -> sqlite3.Connection:
        """A connection to the cache file with the module's settings; `create=False` opens only a
        file that exists (another process's wipe made it), never a new one beside a vanished file."""
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so every write is
            # exactly one transaction.
            db = sqlite3.connect(self.path if create else self.path.absolute().as_uri() + "?mode=rw",
                                 uri=not create, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise self._cannot_open(_said(e)) from e
        try:
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            if create and os.stat(self.path).st_mode & 0o777 != 0o600:
                os.chmod(self.path, 0o600)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA secure_delete=ON")
            # Left alone, the log of a 4 MiB cache grows to 4 MB whatever max_cache_bytes says, and
            # fills a small disk after a few dozen texts: checkpointed every 64 pages, and cut
            # back to 256 KiB after each checkpoint.
            db.execute("PRAGMA wal_autocheckpoint=64")
            db.execute("PRAGMA journal_size_limit=262144")
            new = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'texts'").fetchone() is None
            db.executescript(_SCHEMA)
            if new and create:
                self._born(db)
        except sqlite3.OperationalError as e:   # locked, unreadable, a full disk: not the file's content
            db.close()
            raise self._cannot_open(_said(e)) from e
        except sqlite3.DatabaseError as e:      # "file is not a database", "disk image is malformed"
            db.close()
            raise DamagedCacheError(f"cannot open text cache at {self.path}: {_said(e)} (the file is damaged; "
                                    f"`python -m edge_runtime wipe --data-dir {self.data_dir}` deletes it)") from e
        except sqlite3.Error as e:
            db.close()
            raise CacheError(f"cannot open text cache at {self.path}: {_said(e)}") from e
        except OSError as e:   # the chmod: a read-only file system (a mounted backup) is said as the cache's
            db.close()
            raise self._cannot_open(str(e.strerror or e)) from e
        return db

    def _cannot_open(self, said: str) -> CacheError:
        """The open failed for a reason the disk may explain: `said`, and what the folder's file
        system reports (`_cause`: full, or read-only)."""
        return CacheError(f"cannot open text cache at {self.path}: {said}{_cause(self.path)}")

    def _born(self, db: sqlite3.Connection) -> None:
        """A cache file made now gets a wipe mark of its own: one made after a wipe that could not
        make it (a full disk, `wipe_in_place`) had none, the same None as a cache never wiped, so
        an update trained before that wipe was not seen as learned from wiped text. And after such
        a wipe it starts paused, as the wipe's own new cache would have (`PAUSE_AFTER_WIPE`)."""
        db.execute("INSERT OR IGNORE INTO settings (key, value) VALUES ('wiped', ?)", (os.urandom(8).hex(),))
        marker = self.data_dir / PAUSE_AFTER_WIPE
        if marker.exists():
            db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES ('paused', '1')")
            with contextlib.suppress(OSError):
                marker.unlink()

    @contextlib.contextmanager
    def _held(self) -> Iterator[None]:
        """The lock, on the cache file that is there now: `wipe` run in another process on a cache
        too damaged to open deletes the file and makes a new one (`__main__._wipe_damaged`), and a
        process that kept the old one open (the keyboard, the device loop) must follow it instead
        of failing on every call until it is restarted."""
        with self._lock:
            now = _identity_or_none(self.path)
            if now is None:
                raise CacheError(f"the text cache at {self.path} is gone (a wipe in another process is making a "
                                 "new one?): try again")
            if now != self._file:
                db = self._connect(create=False)
                if _identity_or_none(self.path) != now:   # replaced again meanwhile: either file's connection
                    db.close()
                    raise CacheError(f"the text cache at {self.path} is being replaced: try again")
                old, self._db, self._file, self._damaged = self._db, db, now, None
                self._release_damaged()
                if old is not None:
                    with contextlib.suppress(sqlite3.Error):
                        old.close()
                log.warning("the text cache file was replaced by another process (a wipe): reopened")
            elif self._damaged is not None:
                cause = self._damaged.__cause__
                raise (self._failure(cause) if isinstance(cause, sqlite3.DatabaseError) else self._damaged)
            try:
                yield
            except sqlite3.DatabaseError as e:
                raise self._failure(e) from e

    def _failure(self, e: sqlite3.DatabaseError) -> CacheError:
        """A query's error as the caller can act on it. A file damaged past its header opens, then
        fails the first query that reads a bad page ("database disk image is malformed"), and a
        cache of another layout lacks a table or column: both are damaged caches, which `wipe`
        (`python -m edge_runtime wipe`, the page's Clear) destroys. Locked or out of disk: try later."""
        said = _said(e)
        if isinstance(e, sqlite3.OperationalError) and not said.startswith(("no such", "Could not decode")):
            return CacheError(f"the text cache at {self.path} cannot be used now: {said}")
        return DamagedCacheError(f"the text cache at {self.path} is damaged ({said}); `python -m edge_runtime wipe "
                                 f"--data-dir {self.data_dir}` (or Clear on the keyboard page) deletes it")

    # -- lifecycle -------------------------------------------------------------------------

    def _hold_damaged(self) -> None:
        """Keep the damaged file open. A replacement is seen by the (device, inode) the path names,
        and with nothing holding the old file a wipe's unlink freed its inode, which the new file
        then often took (4 times in 10 on ext4): the cache stayed damaged after Clear or `wipe`.
        What a wipe leaves in the held file is zeros (`destroy_files`)."""
        self._release_damaged()
        with contextlib.suppress(OSError):
            self._pin = os.open(self.path, os.O_RDONLY)

    def _release_damaged(self) -> None:
        if self._pin is not None:
            with contextlib.suppress(OSError):
                os.close(self._pin)
            self._pin = None

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
            self._release_damaged()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- pause -----------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        with self._held():
            return self._setting("paused") == "1"

    def set_paused(self, paused: bool) -> None:
        """Pause or resume learning; persisted so a restart keeps the user's choice."""
        with self._held():
            self._put_setting("paused", "1" if paused else "0")
        log.info("learning %s", "paused" if paused else "resumed")

    def removed_words(self) -> frozenset[str]:
        """Words the user asked the keyboard not to suggest (a typo it learned, a name), until they
        commit one in TYPED_TO_RETURN texts; kept here, in the device's data directory, for the
        retention period at most, and deleted by `wipe`."""
        with self._held():
            return frozenset(self._removed_locked())

    def change_removed(self, *, mark: str | None, add: str | None = None, back: str | None = None,
                       typed: Iterable[str] = ()) -> frozenset[str] | None:
        """Remove `add` from the suggestions, bring `back` back (a removal undone), and count the
        removed words among `typed` (a committed text's), bringing back one committed in
        TYPED_TO_RETURN texts since its removal: in one transaction, and only if no wipe ran since
        `mark` (the caller's `wipe_mark`): a removal racing a wipe must not write the words back.
        The removed words after it, or None after a wipe."""
        with self._held(), self._transaction():
            if self._setting("wiped") != mark:
                return None
            removed = self._removed_locked()
            if add is not None:
                removed[nfc(add)] = [0, time.time()]
            returned = back is not None and removed.pop(nfc(back), None) is not None
            if _count_typed(removed, typed) or add is not None or returned:
                self._put_setting(REMOVED_KEY, json.dumps(removed, ensure_ascii=False))
            return frozenset(removed)

    def _removed_locked(self) -> dict[str, list]:
        """word -> [texts committed with it since its removal, when it was removed] (lock held). In
        NFC, as committed text is counted and the strip spells its words (a word removed in
        decomposed form before text was read in NFC counts, and hides its word, too)."""
        raw = self._setting(REMOVED_KEY)
        try:
            record = json.loads(raw) if raw else {}
            if isinstance(record, list):   # a release of 4 December 2026 kept the words alone: read as
                # damaged, they all came back; each is removed as of now, typed in no text since
                record = {w: [0, time.time()] for w in record if isinstance(w, str)}
            return {nfc(str(w)): [int(n), float(t)] for w, (n, t) in record.items()}
        except (ValueError, TypeError, AttributeError):
            log.warning("the record of words removed from the suggestions is damaged: it starts empty")
            return {}

    def _setting(self, key: str) -> str | None:
        """A row of the settings table (the caller holds the lock)."""
        row = self._db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _put_setting(self, key: str, value: str) -> None:
        self._db.execute("INSERT INTO settings (key, value) VALUES (?, ?) "
                         "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction (the caller holds the lock): committed, or rolled back on any error."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            # SQLite has already rolled back after a full disk: a second ROLLBACK would fail with
            # "no transaction is active", and that message replace "database or disk is full".
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    # -- writing ---------------------------------------------------------------------------

    @staticmethod
    def _refused(text: str, field_kind: str | None, private: bool) -> str | None:
        """What of `add`'s rules keeps a text out whatever the cache holds; None: none does."""
        if is_sensitive(field_kind, private=private):
            if private or not isinstance(field_kind, str):
                return "private field" if private else "sensitive field"
            return f"sensitive field ({normalize_kind(field_kind)})"
        if not text or not any(ch.isalnum() for ch in text):   # no word at all ("...", a lone emoji)
            return "no words in it"
        return None

    def why_not(self, text: str, field_kind: str, *, private: bool = False) -> str:
        """Why `add` stored nothing, for the user (after it returned False), by the same rules."""
        refused = self._refused(text, field_kind, private)
        if refused is not None:
            return refused
        if len(text.encode("utf-8", "replace")) > self.max_bytes:
            return "larger than the whole cache"
        return "learning paused" if self.paused else "not stored"

    def add(self, text: str, field_kind: str, *, private: bool = False, ts: float | None = None,
            commit_id: str | None = None, typed: Iterable[str] = ()) -> bool:
        """Store committed text; returns False (and stores nothing) when the rules forbid it.
        `commit_id` (the keyboard page's id of this commit) is kept with it, in the same
        transaction, so a resend after a restart of the device process is known (`has_commit`);
        and `typed` (its words) counted towards the removed words' return (`change_removed`), so
        a keyboard that reads the text sees the count too."""
        if self._refused(text, field_kind, private) is not None:
            return False   # nothing to learn from, or a field never cached
        now = self._clock() if ts is None else ts
        try:
            nbytes = len(text.encode("utf-8"))
        except UnicodeEncodeError:   # bytes a terminal in another encoding sent, or a "\ud800" JSON escape
            raise ValueError("the text holds characters that are not valid Unicode (a terminal in another "
                             "encoding?): nothing cached") from None
        if nbytes > self.max_bytes:
            return False  # one record larger than the whole cache: not typing, skip it
        with self._held():
            with self._transaction():
                # Checked inside the write transaction, so a concurrent pause cannot race it.
                if self._setting("paused") == "1":
                    return False
                self.last_id = self._db.execute(
                    "INSERT INTO texts (ts, field_kind, text, nbytes) VALUES (?, ?, ?, ?)",
                    (now, field_kind.strip().lower(), text, nbytes),
                ).lastrowid   # this connection's newest text: the keyboard tells its own from others' (`texts_after`)
                if commit_id is not None:
                    self._put_setting(COMMITS_KEY, json.dumps([*self._commit_ids()[1 - MAX_COMMIT_IDS:], commit_id]))
                if typed and _count_typed(removed := self._removed_locked(), typed):
                    self._put_setting(REMOVED_KEY, json.dumps(removed, ensure_ascii=False))
                dropped = self._expire_locked(now)
            if dropped:
                self._flush_deleted()
        if dropped:   # said: a one-off smaller max_cache_bytes must not empty a cache without a word;
            # once a process: a full cache deletes its oldest text at every commit, and a warning
            # each time would fill the log (1,076 in 2,000 commits on a long-lived device)
            log.log(logging.DEBUG if self._said_dropped else logging.WARNING,
                    "text cache: deleted the %d oldest text(s) to keep within %d days and %d bytes "
                    "(retention_days, max_cache_bytes)", dropped, self.retention_days, self.max_bytes)
            self._said_dropped = True
        return True

    def has_commit(self, commit_id: str) -> bool:
        """Whether text of this keyboard commit is stored: the page resends a commit whose answer
        it lost, and one stored just before the device process was killed would be stored twice
        (the ids the keyboard remembers die with it)."""
        with self._held():
            return commit_id in self._commit_ids()

    def _commit_ids(self) -> list[str]:
        try:
            ids = json.loads(self._setting(COMMITS_KEY) or "[]")
        except ValueError:
            return []
        return [i for i in ids if isinstance(i, str)] if isinstance(ids, list) else []

    def enforce_retention(self) -> int:
        """Drop text older than the retention period and the oldest text over the size cap."""
        with self._held():
            with self._transaction():
                n = self._expire_locked(self._clock())
            if n:
                self._flush_deleted()
        if n:
            log.info("text cache: expired %d records", n)
        return n

    def _flush_deleted(self) -> None:
        """After texts were deleted (the lock held, no transaction): their pages are zeroed in
        the database (secure_delete), but the write-ahead log keeps them readable for hundreds of
        commits. A checkpoint empties it, unless a reader holds an older snapshot:
        then a later one does. Best effort: nothing depends on it."""
        try:   # without waiting for a reader (the busy timeout would hold the lock up to 5 s)
            with self._waiting(0.0):
                self._checkpoint()
        except sqlite3.Error:
            pass

    @contextlib.contextmanager
    def _waiting(self, seconds: float) -> Iterator[None]:
        """This connection waits at most `seconds` for another's lock (the lock held), then the
        usual BUSY_TIMEOUT_MS again."""
        self._db.execute(f"PRAGMA busy_timeout={int(seconds * 1000)}")
        try:
            yield
        finally:
            self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    def _expire_locked(self, now: float) -> int:
        # A text stamped before CLOCK_UNSET_BEFORE was typed while the clock was not set (a board
        # without a real-time clock boots in 1970): its time is unknown, not old. It is stamped
        # with the first set clock, and kept until then: stamped in 1970, it would look 56 years old once
        # the clock is set, and the next retention check would delete it with all that was typed offline.
        n = aged = 0
        if now >= CLOCK_UNSET_BEFORE:   # the size cap below holds whatever the clock says
            self._db.execute("UPDATE texts SET ts = ? WHERE ts < ?", (now, CLOCK_UNSET_BEFORE))
            cutoff = now - self.retention_days * 86400.0
            n = aged = self._db.execute("DELETE FROM texts WHERE ts < ?", (cutoff,)).rowcount
            removed = self._removed_locked()   # words of the user's text: kept no longer than the text
            if any(t < cutoff for _, t in removed.values()):   # (one removed while the clock was unset: now)
                kept = {w: [v[0], now if v[1] < CLOCK_UNSET_BEFORE else v[1]] for w, v in removed.items()}
                self._put_setting(REMOVED_KEY, json.dumps({w: v for w, v in kept.items() if v[1] >= cutoff},
                                                          ensure_ascii=False))
        total = self._db.execute("SELECT COALESCE(SUM(nbytes), 0) FROM texts").fetchone()[0]
        if total > self.max_bytes:
            # Oldest first: walk ids until what remains fits, then delete the prefix.
            excess, last_id = total - self.max_bytes, None
            for rid, nb in self._db.execute("SELECT id, nbytes FROM texts ORDER BY id"):
                excess -= nb
                last_id = rid
                if excess <= 0:
                    break
            n += self._db.execute("DELETE FROM texts WHERE id <= ?", (last_id,)).rowcount
        if n:
            was = self._deletions()
            self._put_setting(DELETIONS_KEY, json.dumps([was[0] + aged, was[1] + n - aged]))
        return n

    def wipe(self, *, wait_s: float = 2.0) -> str:
        """Delete all cached text and shrink the files, so nothing readable remains on disk.

        In WAL mode the deleted (zeroed) pages reach the main file only at a checkpoint, which
        cannot complete while another connection (the keyboard page, the device loop) still
        reads an older snapshot. Then the text is deleted for every reader but still on disk:
        CacheError says so (and a later wipe finishes the job), instead of reporting success."""
        mark = os.urandom(8).hex()
        with self._held():
            with self._transaction():   # the text and the mark go together, or neither
                self._db.execute("DELETE FROM texts")
                self._db.execute("DELETE FROM sqlite_sequence WHERE name = 'texts'")
                self._db.execute("DELETE FROM settings WHERE key = ?", (REMOVED_KEY,))   # words of the user's text
                self._db.execute("DELETE FROM settings WHERE key = ?", (COMMITS_KEY,))
                self._put_setting("wiped", mark)
            with self._waiting(wait_s):
                done = self._checkpoint()
                if done:
                    try:
                        self._db.execute("VACUUM")
                    except sqlite3.OperationalError:
                        done = False
                    done = done and self._checkpoint()
        if not done:
            log.warning("text cache emptied, but another reader keeps old pages on disk")
            err = CacheError("the cached text is deleted, but another process still has the cache open, so it "
                             "remains on disk until that process lets go: close it and wipe again")
            err.mark = mark   # the delete and its mark were committed (`wipe_mark`)
            raise err
        log.info("text cache wiped")
        return mark

    def wipe_mark(self) -> str | None:
        """A value every wipe changes, by whichever process runs it: one that keeps what it learned
        from the cache in memory (the keyboard's user words) compares it to see a wipe run elsewhere."""
        with self._held():
            return self._setting("wiped")

    def _checkpoint(self) -> bool:
        """TRUNCATE checkpoint; True when it completed (no reader blocked it)."""
        busy, _log, _done = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return busy == 0

    # -- reading ---------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Counts and sizes only (safe to log)."""
        with self._held():
            n, nbytes = self._db.execute("SELECT COUNT(*), COALESCE(SUM(nbytes), 0) FROM texts").fetchone()
        k = holdout_count(n, self.holdout_fraction)
        return {"records": n, "bytes": nbytes, "training": n - k, "heldout": k}

    def _boundary_id(self) -> int | None:
        """Largest id of the training part (None when there is no training part)."""
        n = self._db.execute("SELECT COUNT(*) FROM texts").fetchone()[0]
        n_train = n - holdout_count(n, self.holdout_fraction)
        if n_train <= 0:
            return None
        return self._db.execute("SELECT id FROM texts ORDER BY id LIMIT 1 OFFSET ?", (n_train - 1,)).fetchone()[0]

    def _select(self, train: bool) -> list[CachedText]:
        with self._held():
            self._db.execute("BEGIN")  # one snapshot for the boundary and the rows
            try:
                b = self._boundary_id()
                if train:
                    rows = [] if b is None else self._db.execute(
                        "SELECT id, ts, field_kind, text FROM texts WHERE id <= ? ORDER BY id", (b,)).fetchall()
                else:
                    rows = self._db.execute(
                        "SELECT id, ts, field_kind, text FROM texts WHERE id > ? ORDER BY id",
                        (-1 if b is None else b,)).fetchall()
            finally:
                self._db.execute("COMMIT")
        return [CachedText(*r) for r in rows]

    def deletions(self) -> tuple[int, int]:
        """(texts deleted for their age, texts deleted to keep within the size cap), counted since
        the cache was made (a wipe does not count): a reader that keeps what it counted from the texts (the
        keyboard's user's words) compares them to see texts go, whatever their ids (one typed
        while the clock ran behind is deleted before older ids)."""
        with self._held():
            return self._deletions()

    def _deletions(self) -> tuple[int, int]:
        try:
            aged, capped = json.loads(self._setting(DELETIONS_KEY) or "[0, 0]")
            return int(aged), int(capped)
        except (ValueError, TypeError):
            return 0, 0

    def texts_after(self, text_id: int) -> list[CachedText]:
        """Texts stored after the one of id `text_id`, oldest first: what another process (`type`)
        cached while a keyboard was serving."""
        with self._held():
            rows = self._db.execute("SELECT id, ts, field_kind, text FROM texts WHERE id > ? ORDER BY id",
                                    (text_id,)).fetchall()
        return [CachedText(*r) for r in rows]

    def training_records(self) -> Iterator[CachedText]:
        """Records for local training: everything but the newest held-out part, oldest first."""
        return iter(self._select(train=True))

    def heldout_records(self) -> Iterator[CachedText]:
        """The newest part of the cache, used only for local evaluation."""
        return iter(self._select(train=False))


def open_cache(config: EdgeConfig, *, damaged_ok: bool = False) -> TextCache:
    """The device's text cache, opened with its settings (the device loop's, the keyboard's and
    the command line's). `damaged_ok` for the long-running parts (the device loop, the
    keyboard): a cache too damaged to open must not stop them checking in or suggesting; every
    call on it fails as on a cache damaged past its header, until a wipe makes a new one."""
    return TextCache(config.require_data_dir(), retention_days=config.retention_days,
                     max_bytes=config.max_cache_bytes, holdout_fraction=config.holdout_fraction,
                     damaged_ok=damaged_ok)


def type_text(config: EdgeConfig, text: str, field_kind: str, *, private: bool = False) -> bool:
    """What the keyboard does on commit (`python -m edge_runtime type`): note the keystroke, for the
    idle rule, and cache the text if the rules allow."""
    ActivityClock(config.require_data_dir() / ACTIVITY_FILE).note_keystroke()
    with open_cache(config) as cache:   # a removed word typed again counts towards its return, as on the page
        return cache.add(text, field_kind, private=private, typed=tokens(text))
