"""The keyboard's service object, `KeyboardApp`: what each API call does, apart from HTTP.

Its own module because the server (`keyboard_http`) only reads requests and writes answers: the
work is here, where tests and tools (`tools.bench.swap`) call it directly. It keeps one typing
session per open page (the text before the cursor, fed through the model version in use, and
what the idle thread readied for the next keystroke), commits text into the cache, pauses and
clears, removes words from the strip, notices a wipe or texts from another process on the same
data directory, and carries the sessions over to a new model version. Counting the user's own
words is its base class, `user_words.UserWords`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Any

from edge_runtime.cache import MAX_TEXT, CacheError, DamagedCacheError, TextCache, disk_full, wipe_in_place
from edge_runtime.eligibility import ActivityClock
from edge_runtime.errors import EdgeError, failure
from edge_runtime.model_slot import ModelSlot
from edge_runtime.personal import PersonalModel
from edge_runtime.predictor import Predictor
from edge_runtime.session import Session
from edge_runtime.user_words import UserWords, _hidden
from protocol.text import plain_quotes, tokens, typed_chunks

log = logging.getLogger(__name__)

WARM_CLIENTS = 4              # clients whose text a new version is fed before it goes in (`_warm`)
MAX_WORD = 100               # characters of a word removed from the suggestions
MAX_CLIENTS = 32              # suggestion sessions kept (one per open page), least recent dropped
# The strip's words. One name for the keystroke's and the prefetch's: a session reuses what
# `prefetch` readied only for the same k, so two literals that drifted apart would recompute every
# readied strip on the keystroke, silently.
STRIP_WORDS = 3
MAX_COMMIT_IDS = 256          # commits remembered by id, so a page's retry is not stored twice
WIPE_CHECK_S = 1.0            # how often keystrokes look for a wipe run by another process


class ApiError(EdgeError):
    """A request the API refuses; becomes a JSON error with `status`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


_MARK_UNREAD = object()   # KeyboardApp._wipe_mark when the cache could not be read at start


class KeyboardApp(UserWords):
    """The API's logic, independent of HTTP (tests call it directly too)."""

    def __init__(self, *, cache: TextCache, slot: ModelSlot, activity: ActivityClock | None = None) -> None:
        self.cache, self.slot, self.activity = cache, slot, activity
        slot.follow(self._warm, self._swapped)   # a new version: the text being typed goes along
        self._sessions: OrderedDict[str, tuple[int, Session]] = OrderedDict()
        # client -> the number of its newest keystroke (`suggest`): an older one still waiting for
        # the model is answered without it
        self._asked: OrderedDict[str, int] = OrderedDict()
        self._asks = 0
        self._asked_lock = threading.Lock()
        self._init_words()
        self._committed: OrderedDict[str, tuple[bool, str | None]] = OrderedDict()   # id -> (cached, reason)
        self._commit_ids = threading.Lock()   # commits one at a time, so an id is looked up after its first try
        self._texts_checked = float("-inf")   # when `_see_outside_texts` last looked
        self._cache_failing = False   # `_cache_trouble` said once
        self._cache_unusable = False   # `cache_unusable` said once
        try:
            self._wipe_mark: str | None | object = cache.wipe_mark()
        except CacheError as e:   # damaged or locked: suggest without the user's words for now
            self._wipe_mark = _MARK_UNREAD   # the first mark read is taken, not seen as a wipe (nothing learned yet)
            self._cache_trouble(e)
        self._wipe_checked = time.monotonic()
        self._forgotten_for: str | None | object = _MARK_UNREAD   # the wipe elsewhere whose memory is dropped

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
            self.slot.forget_personal()   # and the update not yet delivered; reloads the model on the global weights

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
        mine = self._ask(client)
        try:
            self._see_outside_wipe()
        except CacheError as e:   # whether a wipe ran cannot be told: nothing learned outlives one
            self._cache_trouble(e)
        self._wait_for_count()
        with self.slot.lock:
            if self._asked.get(client) != mine:   # a newer keystroke of this client waits behind it
                return {"suggestions": [], "version_id": self.slot.version_id, "superseded": True}
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

    def _ask(self, client: str) -> int:
        """Number this keystroke of `client`'s as its newest. A page waits for one strip before it
        asks the next, but gives up on one after 10 s: on a device that slow, the keystrokes it
        gave up on would each still run the model, and the new one would wait behind them all."""
        with self._asked_lock:
            self._asks += 1
            self._asked[client] = self._asks
            self._asked.move_to_end(client)
            while len(self._asked) > 4 * MAX_CLIENTS:
                self._asked.popitem(last=False)
            return self._asks

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

    def remove_word(self, body: dict[str, Any]) -> dict[str, Any]:
        """Stop suggesting a word (a typo the keyboard learned, a name): whichever part proposes it,
        until the user commits it in `cache.TYPED_TO_RETURN` texts. Kept in the cache's settings, so
        a restart keeps it; a wipe that races it wins (409). With `"undo": true`, a removal taken
        back (the page's Undo: a long press is easy to make by mistake)."""
        word = _str_field(body, "word", max_len=MAX_WORD)
        if word != word.strip() or any(c.isspace() for c in word):
            raise ApiError(400, "bad_request", "'word' must be one word, without spaces")
        undo = body.get("undo", False)
        if not isinstance(undo, bool):
            raise ApiError(400, "bad_request", "'undo' must be true or false")
        self._see_outside_wipe(now=True)
        # As the strip ranks it and `_typed_again` counts it: "don\u2019t" is "don't" typed again
        # (and a decomposed "café" the composed one: the cache keeps removed words in NFC).
        if undo:
            self._change_removed(back=plain_quotes(word))
            return {"restored": word, **self.status()}
        self._change_removed(add=plain_quotes(word))
        return {"removed": word, **self.status()}

    def _change_removed(self, *, add: str | None = None, back: str | None = None,
                        typed: list[str] | None = None) -> None:
        """One change of the removed words, in the cache first (atomically, unless a wipe came in
        since this process last looked), then in the user's words in memory."""
        removed = self.cache.change_removed(mark=self._wipe_mark, add=add, back=back, typed=typed or ())
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


def _str_field(body: dict[str, Any], name: str, *, max_len: int, allow_empty: bool = False) -> str:
    v = body.get(name)
    if not isinstance(v, str) or (not v and not allow_empty):
        raise ApiError(400, "bad_request", f"'{name}' must be a{'' if allow_empty else ' non-empty'} string")
    if len(v) > max_len:
        raise ApiError(413, "too_large", f"'{name}' is longer than {max_len} characters")
    return v
