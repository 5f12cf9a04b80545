"""The user's own words for the keyboard's strip: counted from the text cache, kept up to date by commits.

Its own module because counting them is the keyboard's slow, lock-sensitive work, with rules of
its own: a large cache is counted off the slot's lock on the idle thread and never on a
keystroke (seconds for a full one), counted again once the cache deleted texts, and a commit is
learned one model step per hold of the lock. `UserWords` is `KeyboardApp`'s base class: the
state lives on the app, guarded by its slot's lock and dropped with the typing sessions on a
wipe (`keyboard_app`); the counting is here. `_hidden` is what the strip hides for the words the
user removed.
"""

from __future__ import annotations

import logging
import threading
import time

from edge_runtime.cache import TextCache, capitalised
from edge_runtime.collector import settle
from edge_runtime.model_slot import ModelSlot
from edge_runtime.personal import BOS, PersonalModel
from protocol.text import tokens

log = logging.getLogger(__name__)

BUILD_WAIT_S = 0.25           # a count of the user's words just begun is waited for this long
SYNC_COUNT_BYTES = 64 * 1024  # a larger cache is never counted on a keystroke (`_words_for_keystroke`)
# At most this often, the user's words are counted again once texts left the cache: a cache older
# than the retention period loses texts at almost every commit, and a count of a full one is
# seconds of the idle thread (words of a text past its 60 days stay at most an hour longer).
REBUILD_EVERY_S = 3600.0


class UserWords:
    """The user's words of a `KeyboardApp` (its base class): built, counted again, learned."""

    cache: TextCache
    slot: ModelSlot

    def _init_words(self) -> None:
        """None counted yet: the idle thread counts them as the server starts (`_build_words`), or
        the first strip asks (`personal`)."""
        self._personal: PersonalModel | None = None
        self._learning = threading.Lock()   # commits learn one at a time (`_learn`)
        self._counting = False   # `_learn` is counting a commit's words (idle work waits for it)
        self._seen_id = 0        # the newest cached text the user's words hold (`_see_outside_texts`)
        self._deleted = (0, 0)   # the cache's deletions when they were counted (`_recount_if_expired`)
        self._recounted_at = time.monotonic()
        self._drops = 0          # times the user's words were dropped (a wipe): a count read before is stale
        self._building = False   # the idle thread counts the user's words off the lock (`_build_words`)
        self._build_started = 0.0
        self._built = threading.Event()
        self._own_ids: set[int] = set()   # texts this keyboard cached after it: learned by `_learn`

    def _wait_for_count(self) -> None:
        """On a keystroke: the first keystrokes of a count just begun wait for it a moment (a small
        cache is counted in moments: its words are in this strip); later ones do not."""
        if self._building and (left := BUILD_WAIT_S - (time.monotonic() - self._build_started)) > 0:
            self._built.wait(left)

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
        counted off the slot's lock. Counted under it, a full cache (4 MiB, 22,000 texts) would
        hold the first keystroke after a start for 5 s on x86; keystrokes meanwhile are
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
        """Texts the cache deleted (60 days old, or the oldest over its size cap) would otherwise
        stay in the user's words of a keyboard that runs on: it would offer a word of a sentence
        gone from the cache, and its memory would grow with every text ever typed (3 MB per 1,000
        texts on a device running for months). Once the cache deleted texts since they were counted (its
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


def _hidden(removed: frozenset[str]) -> frozenset[str]:
    """What the strip must not show for the words a user removed: each word, and a lowercase
    one's capitalised form too (the same word at a sentence's start: "teh" hides "Teh", "'teh"
    hides "'Teh"); a capitalised one alone ("May", a name, leaves "may")."""
    return frozenset(removed) | {c for w in removed if (c := capitalised(w)) is not None}
