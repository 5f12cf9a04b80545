"""The demo keyboard page: a loopback HTTP server for one static page and a small JSON API.

The page (``static/keyboard.html`` + ``.js`` + ``.css``, no CDN, no build step) asks for
suggestions on every keystroke and commits finished sentences into the device's text cache,
exactly as an on-device keyboard would. API (JSON in, JSON out; POSTs need
``Content-Type: application/json``)::

    GET  /api/status   -> {"model": {"version_id", "channel"}, "cache": {"sentences"}, "paused"}
                       (channel: "stable", "canary", or "unknown" before the device's first check-in)
    GET  /api/notices  -> {"version_id", "notices": [{"file", "text"}]}: the version's licence notices
    POST /api/suggest  {"client": id, "text": text before the cursor}
                       -> {"suggestions": [best, second, third], "version_id": ...}
    POST /api/commit   {"text": ..., "field_kind": "message", "private": false, "client": id (optional),
                        "commit_id": id (optional: a commit sent again with the same id is not stored twice)}
                       -> {"cached": bool, "reason": ..., ...status}
    POST /api/pause    {"paused": bool} -> status
    POST /api/clear    {} -> status (all cached text wiped)
    POST /api/remove-word {"word": ...} -> {"removed": word, ...status}: never suggested again until
                       typed again (a long press on a suggestion)

Errors are ``{"error": code, "message": ...}`` with a 4xx/5xx status. Suggestions come
best-first; the page puts the best one in the middle of its strip.

Privacy: typed text lives only in request bodies and in the text cache (whose own rules
refuse sensitive or private fields and anything while learning is paused). The page never
sends its private field's text anywhere. Log lines carry method, route, status and timing
(answers at DEBUG: a line a keystroke is the typing's rhythm), never a body, query string or
unknown path. The server binds to loopback unless told
otherwise explicitly. On every bind it refuses requests whose Host is a name other than its
own (DNS rebinding), cross-origin POSTs, and POSTs without the page's key
(``X-Keyboard-Token``) that only the printed page URL carries (``#token=...``), so neither a
web page nor another local process can commit, wipe or unpause. The key is kept in the data
directory (``keyboard_token``, 0600) so that an open page survives a restart; deleting that
file gives the next start a new one (do so if the URL was seen by someone else).

`start_keyboard(...)` runs the server in a thread and returns a handle (`.url`, `.stop()`);
`serve_keyboard(...)` blocks until stopped.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge_runtime import channel as channels
from edge_runtime import unsent
from edge_runtime.cache import (
    CacheError,
    DamagedCacheError,
    TextCache,
    capitalised,
    disk_full,
    open_cache,
    wipe_in_place,
)
from edge_runtime.collector import settle
from edge_runtime.config import EdgeConfig
from edge_runtime.eligibility import ActivityClock
from edge_runtime.errors import EdgeError, failure, frames
from edge_runtime.idle_worker import IdleWorker
from edge_runtime.model_slot import MODEL_CHECK_S, ModelSlot, load_predictor  # noqa: F401  (API)
from edge_runtime.paths import ACTIVITY_FILE, KEYBOARD_TOKEN_FILE
from edge_runtime.personal import BOS, PersonalModel
from edge_runtime.predictor import Predictor
from edge_runtime.session import Session
from protocol.artifact import atomic_write
from protocol.cli import url_host
from protocol.text import plain_quotes, tokens, typed_chunks

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
STATIC_FILES = {  # route -> (file, content type); nothing else is ever served from disk
    "/": ("keyboard.html", "text/html; charset=utf-8"),
    "/keyboard.html": ("keyboard.html", "text/html; charset=utf-8"),
    "/static/keyboard.js": ("keyboard.js", "text/javascript; charset=utf-8"),
    "/static/keyboard.css": ("keyboard.css", "text/css; charset=utf-8"),
}
API_GET = frozenset({"/api/status", "/api/notices"})
API_POST = frozenset({"/api/suggest", "/api/commit", "/api/pause", "/api/clear", "/api/remove-word"})
MAX_BODY = 64 * 1024          # bytes; a request body larger than this is refused (413)
MAX_TEXT = 16 * 1024          # characters of text before the cursor / committed text
WARM_CLIENTS = 4              # clients whose text a new version is fed before it goes in (`_warm`)
MAX_WORD = 100               # characters of a word removed from the suggestions
MAX_CLIENTS = 32              # suggestion sessions kept (one per open page), least recent dropped
# The strip's words. One name for the keystroke's and the prefetch's: a session reuses what
# `prefetch` readied only for the same k, so two literals that drifted apart would recompute every
# readied strip on the keystroke, silently (a contributor's probe).
STRIP_WORDS = 3
MAX_COMMIT_IDS = 256          # commits remembered by id, so a page's retry is not stored twice
WIPE_CHECK_S = 1.0            # how often keystrokes look for a wipe run by another process
BUILD_WAIT_S = 0.25           # a count of the user's words just begun is waited for this long
SYNC_COUNT_BYTES = 64 * 1024  # a larger cache is never counted on a keystroke (`_words_for_keystroke`)
# At most this often, the user's words are counted again once texts left the cache: a cache older
# than the retention period loses texts at almost every commit, and a count of a full one is
# seconds of the idle thread (words of a text past its 60 days stay at most an hour longer).
REBUILD_EVERY_S = 3600.0
TOKEN_HEADER = "X-Keyboard-Token"
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class KeyboardError(EdgeError, RuntimeError):
    """The keyboard server cannot start (bad bind address, no data directory)."""


class ApiError(EdgeError):
    """A request the API refuses; becomes a JSON error with `status`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def check_bind_host(host: str, *, allow_remote: bool = False) -> None:
    """Refuse a non-loopback bind address unless `allow_remote` (an explicit --keyboard-host)."""
    if not is_loopback(host) and not allow_remote:
        raise KeyboardError(f"refusing to serve the keyboard on non-loopback address {host!r}: "
                            "typed text would be reachable from the network (pass --keyboard-host explicitly)")


# --- suggestions ------------------------------------------------------------------------------

_MARK_UNREAD = object()   # KeyboardApp._wipe_mark when the cache could not be read at start


class KeyboardApp:
    """The API's logic, independent of HTTP (tests call it directly too)."""

    def __init__(self, *, cache: TextCache, slot: ModelSlot, activity: ActivityClock | None = None) -> None:
        self.cache, self.slot, self.activity = cache, slot, activity
        slot.follow(self._warm, self._swapped)   # a new version: the text being typed goes along
        self._sessions: OrderedDict[str, tuple[int, Session]] = OrderedDict()
        self._personal: PersonalModel | None = None
        self._learning = threading.Lock()   # commits learn one at a time (`_learn`)
        self._counting = False   # `_learn` is counting a commit's words (idle work waits for it)
        self._committed: OrderedDict[str, tuple[bool, str | None]] = OrderedDict()   # id -> (cached, reason)
        self._commit_ids = threading.Lock()   # commits one at a time, so an id is looked up after its first try
        self._seen_id = 0        # the newest cached text the user's words hold (`_see_outside_texts`)
        self._deleted = (0, 0)   # the cache's deletions when they were counted (`_recount_if_expired`)
        self._recounted_at = time.monotonic()
        self._drops = 0          # times the user's words were dropped (a wipe): a count read before is stale
        self._building = False   # the idle thread counts the user's words off the lock (`_build_words`)
        self._build_started = 0.0
        self._built = threading.Event()
        self._texts_checked = float("-inf")   # when `_see_outside_texts` last looked
        self._own_ids: set[int] = set()   # texts this keyboard cached after it: learned by `_learn`
        self._cache_failing = False   # `_cache_trouble` said once
        self._cache_unusable = False   # `cache_unusable` said once
        try:
            self._wipe_mark: str | None | object = cache.wipe_mark()
        except CacheError as e:   # damaged or locked: suggest without the user's words for now
            self._wipe_mark = _MARK_UNREAD   # the first mark read is taken, not seen as a wipe (nothing learned yet)
            self._cache_trouble(e)
        self._wipe_checked = time.monotonic()
        self._forgotten_for: str | None | object = _MARK_UNREAD   # the wipe elsewhere whose memory is dropped

    def personal(self) -> PersonalModel:
        """The user's own words, built from the text cache once, then kept up to date by commits.
        Once built they are moved out of the garbage collector's walks (`collector.settle`: one
        collection, at each build: after a start, a wipe, a failed learn or a commit that raced
        a build): they are kept, and a full collection walking them would stall whatever
        keystroke it fell on."""
        if self._personal is None:
            self._install(*self._count_cache())
            settle()
        return self._personal

    def _words_for_keystroke(self) -> PersonalModel:
        """Under the slot's lock: the user's words for a strip. A large cache is never counted on
        a keystroke (5 s for 4 MiB on x86, 22,000 short texts or 500 e-mails; after a start, a
        drop, or a cache that failed to read): the strip goes without them, and the idle thread,
        submitted after each answer, counts them off the lock (`_build_words`). A small one is
        counted here, as it always was."""
        if self._personal is None and (self._building or self.cache.stats()["bytes"] > SYNC_COUNT_BYTES):
            return PersonalModel()   # not kept: the idle thread installs its own
        return self.personal()

    def _build_words(self) -> None:
        """On the idle thread: the user's words when they are not built (at start, after a wipe),
        counted off the slot's lock. Counted under it, a full cache (4 MiB, 22,000 texts) held
        the first keystroke after a start for 5 s on x86 (a probe); keystrokes meanwhile are
        answered without the user's words (`suggest`); `_count_and_install` does the count."""
        with self.slot.lock:
            if self._personal is not None or self._building:
                return
            self._building, drops, self._build_started = True, self._drops, time.monotonic()
            self._built.clear()
        try:
            built = self._count_and_install(None, drops)
        finally:
            with self.slot.lock:
                self._building = False
            self._built.set()
        if built:
            settle()

    def _count_and_install(self, current: PersonalModel | None, drops: int) -> bool:
        """Count the user's words off the slot's lock, then install them under it unless they are
        no longer `current` (None: not built), a drop (`_drops` past `drops`) or a wipe came
        meanwhile: that count is not the cache's any more. Texts cached meanwhile are added; the
        mixture's evidence is the user's, not the texts', and carries over. Whether installed."""
        mark = self.cache.wipe_mark()
        pm, seen, deleted = self._count_cache()
        with self.slot.lock:
            if self._personal is not current or self._drops != drops or self.cache.wipe_mark() != mark:
                return False
            for rec in self.cache.texts_after(seen):   # cached meanwhile (commits learned into `current`)
                pm.add(tokens(rec.text))
                seen = rec.id
            if current is not None:
                pm.mix, pm.mix_by_seen = current.mix, current.mix_by_seen
            self._install(pm, seen, deleted)
            if current is not None and self.slot.predictor is not None and self.slot.predictor.personal is current:
                self.slot.predictor.personal = pm
                self.slot.predictor.forget_warm()   # strips readied from the old words
        return True

    def _count_cache(self) -> tuple[PersonalModel, int, tuple[int, int]]:
        """The user's words counted from every cached text: (words, the newest text's id, the
        cache's deletions before the read). One read: `type` may add a text meanwhile."""
        deleted = self.cache.deletions()
        pm, seen = PersonalModel(), 0
        for rec in self.cache.texts_after(0):
            pm.add(tokens(rec.text))
            seen = rec.id
        pm.removed = _hidden(self.cache.removed_words())
        return pm, seen, deleted

    def _install(self, pm: PersonalModel, seen: int, deleted: tuple[int, int]) -> None:
        """Under the slot's lock: `pm` becomes the user's words. The ids of texts learned here were
        learned into the words this replaces (and a wipe starts the ids again from 1): none is
        this keyboard's own any more."""
        self._personal, self._seen_id, self._own_ids = pm, seen, set()
        self._deleted, self._recounted_at = deleted, time.monotonic()

    def _recount_if_expired(self) -> None:
        """Texts the cache deleted (60 days old, or the oldest over its size cap) stayed in the
        user's words of a keyboard that ran on: it offered a word of a sentence gone from the
        cache, and its memory grew with every text ever typed (3 MB per 1,000 texts; a probe of
        a device running for months). Once the cache deleted texts since they were counted (its
        `deletions`, whatever the texts' ids), they are counted again, at most every
        REBUILD_EVERY_S, on the idle thread and off the slot's lock (seconds for a full cache):
        keystrokes go on with the old words meanwhile (`_count_and_install`)."""
        if time.monotonic() - self._recounted_at < REBUILD_EVERY_S:
            return
        with self.slot.lock:
            old, (aged, capped), drops = self._personal, self._deleted, self._drops
        if old is None:
            return
        now_aged, now_capped = self.cache.deletions()
        # Texts past the retention period, at once; those the size cap pushed out, once they are a
        # tenth of what the cache holds: a full cache deletes one at every commit, and a count of
        # 22,000 texts every few minutes would cost seconds of the idle thread while the user types.
        if now_aged == aged and now_capped - capped < max(1, self.cache.stats()["records"] // 10):
            return
        self._recounted_at = time.monotonic()
        if self._count_and_install(old, drops):
            log.info("keyboard: the user's words counted again without the texts the cache deleted")
            settle()

    def _see_outside_texts(self) -> None:
        """Texts another process cached while this keyboard serves (`python -m edge_runtime type`)
        join the user's words, which were otherwise built from the cache only at start or after a
        wipe; and words another process removed or brought back are read again. Their words only:
        the mixture weights learn the texts typed here. On the idle thread (`prefetch`), at most
        every WIPE_CHECK_S, one text per hold of the lock: 63 texts `type` stored at once held
        every keystroke for 1.4 s when they were learned in one. Not while a commit here is under
        way (its text is not told from another's until it is stored and noted)."""
        t = time.monotonic()
        if t - self._texts_checked < WIPE_CHECK_S or not self._commit_ids.acquire(blocking=False):
            return
        self._texts_checked = t
        try:
            with self.slot.lock:
                personal, seen = self._personal, self._seen_id
            if personal is None:   # built from the whole cache when next asked
                return
            outside = 0
            for rec in self.cache.texts_after(seen):
                time.sleep(0)   # let a waiting keystroke take the lock between two texts
                with self.slot.lock:
                    if self._personal is not personal:
                        return
                    if rec.id in self._own_ids:
                        self._own_ids.discard(rec.id)
                    else:
                        personal.add(tokens(rec.text))
                        outside += 1
                    self._seen_id = rec.id   # each as it is counted: none twice if one fails
            removed = _hidden(self.cache.removed_words())   # `type` counts them in the cache, and so
            with self.slot.lock:                           # does another keyboard on this data directory
                if self._personal is personal and personal.removed != removed:
                    personal.removed = removed
            if outside:
                log.info("keyboard: learned the words of %d text(s) cached by another process", outside)
        finally:
            self._commit_ids.release()

    def _see_outside_wipe(self, *, now: bool = False) -> None:
        """`python -m edge_runtime wipe` run while this process serves emptied the cache, but the
        user's words, the personal LSTM and the texts being typed lived on in this process's
        memory and kept being suggested. Forget them as `clear` does. Looked for on status and
        commit, and at most every WIPE_CHECK_S on keystrokes (not under the slot's lock)."""
        t = time.monotonic()
        if not now and t - self._wipe_checked < WIPE_CHECK_S:
            return
        self._wipe_checked = t
        mark = self.cache.wipe_mark()
        if self._wipe_mark is _MARK_UNREAD:   # unread at start: whether a wipe ran since cannot be told,
            self._wipe_mark = mark            # so what memory holds is read again (the disk is not touched:
            self._drop_memory()               # a wipe elsewhere deletes the personal model itself)
        elif mark != self._wipe_mark:
            if self._forgotten_for != mark:   # once per wipe: a reload tried again keeps the texts typed since
                log.info("keyboard: the text cache was wiped elsewhere; forgetting what was learned from it")
                self._drop_memory()
                self._forgotten_for = mark
            try:
                self.slot.forget_personal()   # reloads the model on the global weights
            except Exception as e:   # what was learned is gone already; the reload is tried again next time
                log.warning("keyboard: the model could not be reloaded after a wipe elsewhere (%s); trying again",
                            failure(e))
                return
            self._wipe_mark = mark   # only once forgotten: a reload that failed is tried again

    def _cache_trouble(self, e: CacheError) -> None:
        """The cache cannot be read on a keystroke (damaged, its directory gone, locked): the strip
        is still answered, from the model and the base n-gram, without the user's words, which
        are built again from the cache once it reads. Only memory is dropped: the personal LSTM on
        disk stays (a wipe elsewhere deletes it itself), and so do the texts being typed. Said
        once until the cache reads again."""
        if not self._cache_failing:
            log.warning("keyboard: suggesting without the user's words: %s", e)
        self._cache_failing = True
        with self.slot.lock:
            self._personal = None
            self._drops += 1
            if self.slot.predictor is not None:
                self.slot.predictor.personal = PersonalModel()
                self.slot.predictor.forget_warm()

    def cache_unusable(self, e: CacheError) -> None:
        """A call the cache must answer failed (the API says 503). Said once until the cache
        answers again: an open page polls the status every few seconds, and each poll logged the
        same warning."""
        if self._cache_unusable:
            log.debug("keyboard: the text cache cannot be used (%s)", e)
        else:
            log.warning("keyboard: the text cache cannot be used (%s)", e)
        self._cache_unusable = True

    def _forget(self) -> None:
        """Drop everything in memory learned from the cache or typed, and the personal LSTM: after a
        wipe. Memory first: the reload of the global model can fail, and must not leave them."""
        with self.slot.lock:
            self._drop_memory()
            unsent.discard(self.cache.data_dir)   # an update learned from the text and not yet delivered
            self.slot.forget_personal()   # reloads the model on the global weights

    def _drop_memory(self) -> None:
        with self.slot.lock:
            self._personal = None
            self._drops += 1
            self._sessions.clear()   # the text being typed, and what prefetch readied from it
            self.slot.invalidate()   # and a load under way, which fed that text through its version
            if self.slot.predictor is not None:
                self.slot.predictor.personal = PersonalModel()
                self.slot.predictor.forget_warm()

    def status(self) -> dict[str, Any]:
        self._see_outside_wipe(now=True)
        self.slot.refresh(wait=False)
        self.slot.settle()   # a new version's load under way: answered as it will be in a moment
        answer = {"model": {"version_id": self.slot.version_id, "channel": self.slot.channel},
                  "cache": {"sentences": self.cache.stats()["records"]},
                  "paused": self.cache.paused}
        self._cache_unusable = False
        return answer

    def notices(self) -> dict[str, Any]:
        """The licence notices of the version in use (e.g. CC BY-SA 4.0 for its word list): shown
        where its suggestions are, as that licence asks of whoever shares the list."""
        with self.slot.lock:
            self.slot.refresh(wait=False)
            return {"version_id": self.slot.version_id,
                    "notices": [{"file": name, "text": text} for name, text in sorted(self.slot.notices.items())]}

    def suggest(self, body: dict[str, Any]) -> dict[str, Any]:
        client = _str_field(body, "client", max_len=64)
        text = _str_field(body, "text", max_len=MAX_TEXT, allow_empty=True)
        if self.activity is not None:
            self.activity.note_keystroke()
        try:
            self._see_outside_wipe()
        except CacheError as e:   # whether a wipe ran cannot be told: nothing learned outlives one
            self._cache_trouble(e)
        # The first keystrokes of a count just begun wait for it a moment (a small cache is counted
        # in moments: its words are in this strip); later ones do not.
        if self._building and (left := BUILD_WAIT_S - (time.monotonic() - self._build_started)) > 0:
            self._built.wait(left)
        with self.slot.lock:
            self.slot.refresh(wait=False)   # a new version loads on a thread; this strip is the old one's
            if self.slot.predictor is None:
                return {"suggestions": [], "version_id": None}
            try:
                self.slot.predictor.personal = self._words_for_keystroke()
                self._cache_failing = False
            except CacheError as e:   # the strip goes on without the user's words (`_cache_trouble`)
                self._cache_trouble(e)
            gen, session = self._sessions.pop(client, (None, None))
            if session is None or gen != self.slot.generation:
                session = self.slot.predictor.session()
            self._sessions[client] = (self.slot.generation, session)
            while len(self._sessions) > MAX_CLIENTS:
                self._sessions.popitem(last=False)
            words = session.update(text, k=STRIP_WORDS)
        return {"suggestions": words, "version_id": self.slot.version_id}

    def prefetch(self, client: str | None = None) -> None:
        """After the strip is sent, before the next keystroke: ready this client's session for a
        space (`Session.prefetch`), so the keystroke after a word is answered without a model step;
        after a space, ready the next word's first letters. The server runs it on its idle thread
        (`IdleWorker`), one `Session.prefetch` call per hold of the lock: a keystroke that arrives
        meanwhile waits for the call under way, and the work stops once the session has moved on
        (that keystroke's own prefetch takes over).

        It runs again after a commit: the page commits a finished sentence or a sent message while
        it asks for the next strip, so the commit's `learn` usually lands after that strip's
        prefetch and re-ranks the user's words under it (the empty field's first letters lose
        their cut, a readied space its strip). The commit names its page's client; without one,
        (`client` None) the session that asked last is readied, the one most likely typed in.

        The user's words are built here too when they are not yet (the server submits idle work
        as it starts, and a wipe drops them): from a large cache that takes a second or more,
        which the first keystroke would otherwise wait for."""
        try:
            self._build_words()
        except CacheError as e:   # said once by `_cache_trouble`, not on every idle call
            self._cache_trouble(e)
            return
        try:
            self._see_outside_texts()
            self._recount_if_expired()
        except CacheError as e:
            self._cache_trouble(e)
            return
        with self.slot.lock:
            if client is None or client not in self._sessions:
                if not self._sessions:
                    return
                client = next(reversed(self._sessions))
            gen, session = self._sessions.get(client, (None, None))
            text = session.text if session is not None else None
        if text is None:   # no session, or one a new version's thread built: the next keystroke places it
            return
        while True:
            if self._counting:   # a commit's words are being counted in parts, each changing the
                return           # strips: ready after it (`commit` submits idle work when done)
            with self.slot.lock:
                if (session is None or gen != self.slot.generation or self.slot.predictor is None
                        or self._sessions.get(client, (None, None))[1] is not session or session.text != text):
                    return
                if not session.prefetch(k=STRIP_WORDS):
                    return
            time.sleep(0)   # let a waiting keystroke take the lock between two calls

    def _warm(self, predictor: Predictor) -> dict[str, Session]:
        """On the thread that loaded a new version, before it is swapped in (`ModelSlot.warm`):
        each client's text being typed, fed through it into a new session. Its interpreter is
        this thread's alone until then, so no keystroke waits; without this the first keystroke
        on the new version fed the whole text (0.85 s for the page's 16,384 characters on x86)."""
        with self.slot.lock:   # the clients that typed last (a page left open elsewhere stays a client)
            texts = {client: session.text for client, (_, session) in list(self._sessions.items())[-WARM_CLIENTS:]
                     if session.text}
        warmed = {}
        for client, text in texts.items():
            warmed[client] = session = predictor.session()
            chunks, partial = typed_chunks(text)
            session.feed_chunks(chunks)
            session.feed_partial(partial)
        return warmed

    def _swapped(self, warmed: dict[str, Session]) -> None:
        """Under the slot's lock, as the new version goes in: the warmed sessions replace the old
        version's. A text typed on meanwhile is fed from where the warmed one stopped."""
        for client, session in warmed.items():
            if client in self._sessions:
                self._sessions[client] = (self.slot.generation, session)

    def commit(self, body: dict[str, Any]) -> dict[str, Any]:
        text = _str_field(body, "text", max_len=MAX_TEXT, allow_empty=True)
        kind = _str_field(body, "field_kind", max_len=64)
        if "client" in body:
            _str_field(body, "client", max_len=64)
        commit_id = _str_field(body, "commit_id", max_len=64) if "commit_id" in body else None
        private = body.get("private", False)
        if not isinstance(private, bool):
            raise ApiError(400, "bad_request", "'private' must be true or false")
        if self.activity is not None:
            self.activity.note_keystroke()
        self._see_outside_wipe(now=True)   # before learning the text into words that were wiped
        with self._commit_ids:   # a retry waits for its first try, then answers as it did
            if commit_id is not None and commit_id in self._committed:   # its answer was lost: the same again
                cached, reason = self._committed[commit_id]
                return {"cached": cached, "reason": reason, **self.status()}
            if commit_id is not None and self.cache.has_commit(commit_id):   # stored before a restart
                return {"cached": True, "reason": None, **self.status()}
            cached, reason = self._store(text, kind, private, commit_id)
            if commit_id is not None:
                self._committed[commit_id] = (cached, reason)
                while len(self._committed) > MAX_COMMIT_IDS:
                    self._committed.popitem(last=False)
        return {"cached": cached, "reason": reason, **self.status()}

    def _store(self, text: str, kind: str, private: bool, commit_id: str | None = None) -> tuple[bool, str | None]:
        """`commit`'s work: cache the text and learn it; (cached, why not)."""
        if private:
            cached, reason = False, "private field"
        else:
            with self.slot.lock:   # the user's words as they are before this text is cached
                personal = self._personal
            cached = self.cache.add(text, kind, commit_id=commit_id)
            text_id = self.cache.last_id
            if cached:
                self._typed_again(text)
            if cached and personal is None:
                with self.slot.lock:   # built from the cache meanwhile, with or without the text: again
                    self._personal = None
            elif cached:
                try:
                    self._learn(text, personal)
                except Exception as e:   # the text is cached: the user's words are rebuilt from it
                    # the type only: an exception's message may quote the text
                    log.warning("keyboard: learning a commit failed (%s)", type(e).__name__)
                    with self.slot.lock:
                        if self._personal is personal:
                            self._personal = None
                with self.slot.lock:   # learned into the words in use: `_see_outside_texts` skips it
                    if self._personal is personal and text_id is not None:
                        self._own_ids.add(text_id)
            reason = None if cached else self.cache.why_not(text, kind)
        return cached, reason

    def _learn(self, text: str, personal: PersonalModel) -> None:
        """The mixture weights and the user's words (`personal`, as they were before the text was
        cached) learn a committed text, one model step per hold of the lock
        (`Predictor.learning`): a keystroke that arrives meanwhile waits for one step, not for the
        whole text. Commits learn one at a time; a wipe or a new version before or between two
        steps is seen at the next one. A model step that fails leaves the user's words and the
        mixture as they were, and the words learn the text alone; a failure in the steps that
        count the words is raised, and `commit` has them rebuilt from the cache."""
        with self._learning:
            try:
                self._learn_steps(text, personal)
            finally:
                self._counting = False

    def _learn_steps(self, text: str, personal: PersonalModel) -> None:
        """`_learn`'s steps (under `_learning`)."""
        with self.slot.lock:
            predictor = self.slot.predictor
            if self._personal is not personal:   # wiped since, or rebuilt from the cache (with the text)
                return
            toks = tokens(text)
            if predictor is None or predictor.personal is not personal:
                personal.add(toks)   # no model to weigh the mixture with: the words only
                return
            steps = predictor.learning(text)
        done, counted = 0, 0   # steps taken; tokens the words have counted
        while True:
            time.sleep(0)   # let a waiting keystroke take the lock between two steps
            with self.slot.lock:
                if self._personal is not personal:   # wiped meanwhile: the text is forgotten too
                    steps.close()
                    return
                if self.slot.predictor is not predictor or predictor.personal is not personal:
                    steps.close()   # another version came in: the user's words still learn the rest
                    # (the mixture does not: its steps ran on the old one)
                    personal.add(toks[counted:], tuple([BOS, BOS, *toks[:counted]][-2:]))
                    return
                try:
                    counted = next(steps)
                    done += 1
                    self._counting = counted > 0
                except StopIteration:
                    return
                except Exception as e:
                    if done >= len(toks):   # counting the words: they may be half-counted
                        raise
                    steps.close()   # a model step: nothing changed yet
                    log.warning("keyboard: a model step failed while learning a commit (%s)", type(e).__name__)
                    personal.add(toks)
                    return

    def remove_word(self, body: dict[str, Any]) -> dict[str, Any]:
        """Stop suggesting a word (a typo the keyboard learned, a name): whichever part proposes it,
        until the user commits it in `cache.TYPED_TO_RETURN` texts. Kept in the cache's settings, so
        a restart keeps it; a wipe that races it wins (409)."""
        word = _str_field(body, "word", max_len=MAX_WORD)
        if word != word.strip() or any(c.isspace() for c in word):
            raise ApiError(400, "bad_request", "'word' must be one word, without spaces")
        self._see_outside_wipe(now=True)
        # As the strip ranks it and `_typed_again` counts it: "don\u2019t" is "don't" typed again
        # (and a decomposed "café" the composed one: the cache keeps removed words in NFC).
        self._change_removed(add=plain_quotes(word))
        return {"removed": word, **self.status()}

    def _change_removed(self, *, add: str | None = None, typed: list[str] | None = None) -> None:
        """One change of the removed words, in the cache first (atomically, unless a wipe came in
        since this process last looked), then in the user's words in memory."""
        removed = self.cache.change_removed(mark=self._wipe_mark, add=add, typed=typed or ())
        if removed is None:   # wiped meanwhile: forget as after any wipe; nothing was written
            self._see_outside_wipe(now=True)
            if add is not None:
                raise ApiError(409, "wiped", "the history was cleared meanwhile: there is nothing to remove")
            return
        with self.slot.lock:   # read again: a change that wrote after this one must not be undone here
            if self._personal is not None:
                self._personal.removed = _hidden(self.cache.removed_words())

    def _typed_again(self, text: str) -> None:
        """A committed text with removed words in it counts towards their return."""
        if self.cache.removed_words():
            self._change_removed(typed=tokens(text))

    def pause(self, body: dict[str, Any]) -> dict[str, Any]:
        paused = body.get("paused")
        if not isinstance(paused, bool):
            raise ApiError(400, "bad_request", "'paused' must be true or false")
        self.cache.set_paused(paused)
        return self.status()

    def clear(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            self._wipe_mark = self.cache.wipe()   # its own mark: a wipe elsewhere after it is still seen
        except CacheError as e:
            damaged = isinstance(e, DamagedCacheError)
            if not (damaged or disk_full(e)):
                self._wipe_mark = getattr(e, "mark", None)   # committed all the same (TextCache.wipe)
                raise ApiError(409, "wipe_incomplete", str(e)) from e
            # It cannot be emptied row by row (the rows unreadable, or no room for the WAL to delete
            # them) and the text stayed: its files overwritten in place, as `python -m edge_runtime
            # wipe` does, and a new one, paused.
            gone, made = wipe_in_place(self.cache.data_dir)
            log.warning("keyboard: the text cache was %s: its %d files were overwritten in place and deleted%s",
                        "damaged" if damaged else "on a full disk", len(gone), ", and made again, paused" if made
                        else "; no room for a new one yet (it will start paused)")
            if not made:   # done, though no cache can say so yet (it answered 503 "gone ... try again")
                self._wipe_mark = None
                return {"model": {"version_id": self.slot.version_id, "channel": self.slot.channel},
                        "cache": {"sentences": 0}, "paused": True}
            # the new file's mark (the cache follows it: TextCache._held); on a full disk not read
            self._wipe_mark = self.cache.wipe_mark() if damaged else None
        finally:   # whatever the wipe managed, the words in memory and the personal LSTM are forgotten now
            self._forget()
        return self.status()


def _hidden(removed: frozenset[str]) -> frozenset[str]:
    """What the strip must not show for the words a user removed: each word, and a lowercase
    one's capitalised form too (the same word at a sentence's start: "teh" hides "Teh", "'teh"
    hides "'Teh"); a capitalised one alone ("May", a name, leaves "may")."""
    return frozenset(removed) | {c for w in removed if (c := capitalised(w)) is not None}


def _str_field(body: dict[str, Any], name: str, *, max_len: int, allow_empty: bool = False) -> str:
    v = body.get(name)
    if not isinstance(v, str) or (not v and not allow_empty):
        raise ApiError(400, "bad_request", f"'{name}' must be a{'' if allow_empty else ' non-empty'} string")
    if len(v) > max_len:
        raise ApiError(413, "too_large", f"'{name}' is longer than {max_len} characters")
    return v


# --- HTTP -------------------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "FedKeysKeyboard/1"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle's algorithm on, the body of an answer to a
    # request that came in while the last one's was unacknowledged waited for the page's delayed
    # ACK: about 40 ms on a keystroke (measured in Chromium: 47 ms against 5 ms round trips).
    disable_nagle_algorithm = True

    # The base class logs request lines (which may carry a query string) and error messages
    # (which may quote the request line): all of that is replaced by `_log_access`.
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002
        log.info("keyboard: malformed request refused")

    def _route(self) -> str:
        path = urlsplit(self.path).path
        known = path in STATIC_FILES or path in API_GET or path in API_POST
        return path if known else "<other>"

    def _log_access(self, status: int, t0: float) -> None:
        """One line a request, at DEBUG for an answer: at INFO the default log held a line a
        keystroke with its time, the typing's rhythm, 6.8 MB in 15 minutes (a probe)."""
        log.log(logging.DEBUG if status < 400 else logging.INFO, "keyboard: %s %s %d %.1fms", self.command,
                self._route(), status, (time.monotonic() - t0) * 1e3)

    def _send(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy",
                         "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                         "connect-src 'self'; frame-ancestors 'none'; form-action 'none'; base-uri 'none'")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        if self.close_connection:   # say so: a client would otherwise send its next request into it
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _error(self, e: ApiError) -> None:
        self._json(e.status, {"error": e.code, "message": e.message})

    def _check_host(self) -> None:
        """On every bind: Host must be a loopback name, an IP address or the name bound to. A
        DNS-rebinding page reaches us under its own domain name, which none of these is."""
        host = self.headers.get("Host", "")
        try:
            name = (urlsplit("//" + host).hostname or "").lower()
        except ValueError:   # "[zz": not an address at all
            name = ""
        if not (is_loopback(name) or is_ip_literal(name) or name == self.server.bind_name):
            raise ApiError(421, "bad_host", "this server only answers requests for its own address")

    def _check_origin_and_token(self) -> None:
        """State-changing calls: same-origin only, and the page's key the page was opened with
        (printed with its URL), so neither another site nor another local process can commit,
        wipe or unpause."""
        origin = self.headers.get("Origin")
        try:
            elsewhere = bool(origin) and urlsplit(origin).netloc.lower() != self.headers.get("Host", "").lower()
        except ValueError:   # "http://[": no origin this server has
            elsewhere = True
        if elsewhere:
            raise ApiError(403, "forbidden_origin", "cross-site requests are refused")
        token = self.headers.get(TOKEN_HEADER, "")
        if not hmac.compare_digest(token.encode(), self.server.token.encode()):
            raise ApiError(403, "bad_token", f"missing or wrong {TOKEN_HEADER}: open the page from the URL "
                                             "the keyboard printed")

    def _handle(self, fn: Callable[[], None]) -> None:
        t0 = time.monotonic()
        status = 500
        self._after: Callable[[], None] | None = None   # idle work once the response is sent and logged
        self._body_read = False
        # A body this handler will not read (a GET's, a chunked one, or a request refused before
        # reading it: a wrong token, too large, a wrong route) must not be parsed as the next
        # request on this connection: it was (the page's next keystroke got "501 Unsupported
        # method ('{\"client\":...POST')"). Such a connection is closed after the answer.
        body = (self.headers.get("Content-Length", "0").strip() not in ("", "0")
                or "Transfer-Encoding" in self.headers)
        if body and (self.command != "POST" or "Transfer-Encoding" in self.headers):
            self.close_connection = True
        try:
            try:
                self._check_host()
                status = fn() or 200
            except ApiError as e:
                if body and not self._body_read:
                    self.close_connection = True
                status = e.status
                self._error(e)
            except (ConnectionResetError, BrokenPipeError):   # the page closed, or its request timed out
                status = 499                                   # (nginx's code): logged as such, not as an error
                self.close_connection = True
            except CacheError as e:   # the disk, a damaged file, the data directory gone: said, retried later
                self.server.app.cache_unusable(e)
                status = 503
                self.close_connection = True
                self._error(ApiError(503, "cache_unavailable", str(e)))
            except Exception as e:   # the type only: its message may quote the text of the request
                log.error("keyboard: internal error on %s %s: %s", self.command, self._route(), failure(e))
                log.debug("keyboard: internal error at\n%s", frames(e))
                status = 500
                self.close_connection = True
                self._error(ApiError(500, "internal", "internal error (see the device log)"))
        finally:
            self._log_access(status, t0)
        if self._after is not None:
            self._after()

    def do_GET(self) -> None:
        self._handle(self._get)

    def do_HEAD(self) -> None:
        self._handle(self._get)

    def do_POST(self) -> None:
        self._handle(self._post)

    def do_PUT(self) -> None:
        self._handle(self._not_allowed)

    do_DELETE = do_PATCH = do_OPTIONS = do_PUT

    def _not_allowed(self) -> int:
        raise ApiError(405, "method_not_allowed", f"{self.command} is not supported here")

    def _get(self) -> int:
        path = urlsplit(self.path).path
        if path in STATIC_FILES:
            name, ctype = STATIC_FILES[path]
            self._send(200, (STATIC_DIR / name).read_bytes(), ctype)
            return 200
        if path == "/api/status":
            self._json(200, self.server.app.status())
            idle = self.server.idle   # the page polls it: texts `type` stored are learned while nobody types
            self._after = lambda: idle.submit(None)
            return 200
        if path == "/api/notices":
            self._json(200, self.server.app.notices())
            return 200
        if path in API_POST:
            raise ApiError(405, "method_not_allowed", "use POST")
        raise ApiError(404, "not_found", "no such page")

    def _post(self) -> int:
        path = urlsplit(self.path).path
        if path not in API_POST:
            if path in API_GET or path in STATIC_FILES:
                raise ApiError(405, "method_not_allowed", "use GET")
            raise ApiError(404, "not_found", "no such endpoint")
        self._check_origin_and_token()
        if "Transfer-Encoding" in self.headers:
            raise ApiError(411, "length_required", "send the body with a Content-Length, not chunked")
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise ApiError(415, "unsupported_media_type", "send Content-Type: application/json")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise ApiError(411, "length_required", "a Content-Length header is required") from None
        if length < 0 or length > MAX_BODY:
            raise ApiError(413, "too_large", f"request body over {MAX_BODY} bytes")
        raw = self.rfile.read(length)
        self._body_read = True
        try:
            body = json.loads(raw.decode("utf-8")) if raw else {}
        except (ValueError, RecursionError):   # UnicodeDecodeError, JSONDecodeError, an int of 5,000 digits
            raise ApiError(400, "bad_json", "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "bad_json", "the request body must be a JSON object")
        try:  # JSON allows a lone surrogate ("\ud800"); SQLite and the tokenizer do not
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(400, "bad_json", "the request body holds text that is not valid Unicode") from None
        app = self.server.app
        handler = {"/api/suggest": app.suggest, "/api/commit": app.commit, "/api/pause": app.pause,
                   "/api/clear": app.clear, "/api/remove-word": app.remove_word}[path]
        result = handler(body)
        self._json(200, result)
        idle = self.server.idle   # the idle work runs on its own thread: this one reads the next request
        if path == "/api/suggest":   # once the strip is on the wire: use the time until the next keystroke
            self._after = lambda: idle.submit(body["client"])
        elif path == "/api/commit" and result["cached"]:   # the user's words changed: ready again
            self._after = lambda: idle.submit(body.get("client"))
        elif path == "/api/clear":   # the user's words are gone: build them again (empty) now
            self._after = lambda: idle.submit(None)
        return 200


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], app: KeyboardApp, token: str) -> None:
        if ":" in addr[0]:
            import socket

            self.address_family = socket.AF_INET6
        super().__init__(addr, _Handler)
        self.app = app
        self.idle = IdleWorker(app.prefetch)
        self.idle.submit(None)   # builds the user's words now, before the first keystroke
        self.bind_name = addr[0].strip("[]").lower()
        self.token = token   # shown only in the printed URL

    def handle_error(self, request: object, client_address: object) -> None:
        """A browser gone mid-request (a tab closed, a reset keep-alive connection) is not an
        error; anything else is one line in the log, not the standard library's traceback on the
        user's terminal."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        log.error("keyboard request failed: %s", failure(exc))
        log.debug("keyboard request failed at\n%s", frames(exc))


# --- public entry points ----------------------------------------------------------------------

@dataclass
class KeyboardServer:
    """A running keyboard server (from `start_keyboard`)."""

    url: str          # the server's base URL (API calls: url + "api/...")
    host: str
    port: int
    app: KeyboardApp
    token: str        # the page's key state-changing calls send in X-Keyboard-Token (kept across restarts)
    page_url: str     # what a person opens: url + "#token=..." (the fragment never leaves the browser)
    _server: _Server
    _thread: threading.Thread
    _owned_cache: TextCache | None

    def stop(self) -> None:
        """Stop serving and release what `start_keyboard` opened. Safe to call twice."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=10)
        self._server.idle.stop()
        self._server.server_close()
        if self._owned_cache is not None:
            self._owned_cache.close()
            self._owned_cache = None

    def __enter__(self) -> KeyboardServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _build(data_dir: str | os.PathLike, *, model_dir: str | os.PathLike | None, host: str, port: int,
           config: EdgeConfig | None, cache: TextCache | None, channel: str | None,
           allow_remote: bool) -> tuple[_Server, TextCache | None]:
    check_bind_host(host, allow_remote=allow_remote)
    if channel is not None and channel not in channels.CHANNELS:
        raise KeyboardError(f"channel must be one of {list(channels.CHANNELS)}, got {channel!r}")
    if not data_dir:
        raise KeyboardError("the keyboard needs the device's data directory")
    data_dir = Path(data_dir)
    config = config or EdgeConfig(data_dir=str(data_dir))
    if config.data_dir != str(data_dir):
        config = config.with_overrides({"data_dir": str(data_dir)})
    owned = None
    if cache is None:
        cache = owned = open_cache(config, damaged_ok=True)
    try:
        slot = ModelSlot(data_dir=data_dir, model_dir=Path(model_dir) if model_dir else None, channel=channel,
                         public_key=config.public_key or None, block_offensive=config.block_offensive,
                         base_ngram=config.base_ngram, personalize=config.personalize)
        slot.refresh()   # load now: the first keystroke should not wait for it, and errors show at start
        if slot.predictor is None:   # else every strip is empty with nothing saying why
            log.warning("keyboard: no model version in %s yet: the strip stays empty until the device loop "
                        "(`run`) installs one, or pass --model DIR; typed text is still cached", data_dir)
        app = KeyboardApp(cache=cache, slot=slot, activity=ActivityClock(data_dir / ACTIVITY_FILE))
        try:
            server = _Server((host, port), app, _page_token(data_dir))
        except OSError as e:   # one line, the user's choice to change (was "OSError: [Errno 98] ...", exit 1)
            if e.errno == errno.EADDRINUSE:
                raise KeyboardError(f"port {port} on {host} is in use by another program: choose another "
                                    "(--port for `keyboard`, --keyboard-port for `run`)") from None
            if isinstance(e, socket.gaierror) or e.errno == errno.EADDRNOTAVAIL:
                raise KeyboardError(f"cannot serve the keyboard on {host!r}: {e.strerror or e} (--keyboard-host "
                                    "must be an address or name of this machine, e.g. 127.0.0.1)") from None
            raise
    except BaseException:
        if owned is not None:
            owned.close()
        raise
    return server, owned


def _page_token(data_dir: Path) -> str:
    """The page's key, kept in the data directory (0600) so that a page left open across a restart
    of the device process still reaches it: with a new key per process every call of that page
    was refused, and the sentences it had queued while the process was down were dropped. The
    key guards against other local processes and other sites, as before; it holds no text."""
    path = data_dir / KEYBOARD_TOKEN_FILE
    try:
        kept = path.read_text(encoding="ascii").strip()
        if re.fullmatch(r"[A-Za-z0-9_-]{32}", kept):
            return kept
    except (OSError, UnicodeDecodeError):
        pass
    token = secrets.token_urlsafe(24)
    try:
        return _keep_token(path, token)
    except OSError as e:   # a read-only data directory: a key for this process only
        log.warning("keyboard: cannot keep the page's key in %s (%s): a page left open will need the new "
                    "link after a restart", data_dir, e.strerror or e)
    return token


def _keep_token(path: Path, token: str) -> str:
    """Keep `token` at `path` unless another process kept one there meanwhile (`keyboard` and `run
    --keyboard-port` started at once each wrote its own, and one page's link broke at the next
    restart): the key kept. Written whole and linked into place, so a reader never sees half."""
    try:
        atomic_write(path, token.encode(), replace=False)   # only where there is none
        return token
    except FileExistsError:
        kept = path.read_text(encoding="ascii", errors="replace").strip()
        if re.fullmatch(r"[A-Za-z0-9_-]{32}", kept):
            return kept
    atomic_write(path, token.encode())   # a damaged key: replaced, as before
    return token


def _url(server: _Server, host: str) -> str:
    port = server.server_address[1]
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
    return f"http://{url_host(shown)}:{port}/"


def start_keyboard(data_dir: str | os.PathLike, *, model_dir: str | os.PathLike | None = None,
                   host: str = "127.0.0.1", port: int = 0, config: EdgeConfig | None = None,
                   cache: TextCache | None = None, channel: str | None = None,
                   allow_remote: bool = False) -> KeyboardServer:
    """Serve the keyboard page in a background thread; returns a handle with `.url`, `.stop()`.

    `model_dir`: a version directory to use; default the device's current version (followed
    as the device loop swaps it). `port=0` picks a free port. `cache`: share an open cache
    (the device loop's); otherwise one is opened from `data_dir` and closed by `stop()`.
    `channel`: "stable" or "canary" when the caller knows it; default what the device loop
    recorded. Non-loopback `host` raises KeyboardError unless `allow_remote`.
    """
    server, owned = _build(data_dir, model_dir=model_dir, host=host, port=port, config=config, cache=cache,
                           channel=channel, allow_remote=allow_remote)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name="keyboard-server", daemon=True)
    thread.start()
    url = _url(server, host)
    log.info("keyboard page at %s (open it with the token URL printed by the command)", url)
    return KeyboardServer(url=url, host=host, port=server.server_address[1], app=server.app, token=server.token,
                          page_url=f"{url}#token={server.token}", _server=server, _thread=thread,
                          _owned_cache=owned)


def serve_keyboard(data_dir: str | os.PathLike, *, model_dir: str | os.PathLike | None = None,
                   host: str = "127.0.0.1", port: int = 0, config: EdgeConfig | None = None,
                   cache: TextCache | None = None, channel: str | None = None, allow_remote: bool = False,
                   stop: threading.Event | None = None, on_ready: Callable[[str], Any] | None = None) -> None:
    """Serve the keyboard page until `stop` is set (or KeyboardInterrupt). Blocking.

    `on_ready(url)` is called once the socket is listening (e.g. to print the URL)."""
    handle = start_keyboard(data_dir, model_dir=model_dir, host=host, port=port, config=config, cache=cache,
                            channel=channel, allow_remote=allow_remote)
    try:
        if on_ready is not None:
            on_ready(handle.page_url)
        (stop or threading.Event()).wait()
    finally:
        handle.stop()
