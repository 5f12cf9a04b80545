"""The keyboard's model: the predictor for the version in use, reloaded when the device swaps it.

Split from `keyboard` (the HTTP side). Versions of the device are loaded through the
`VersionStore` with the coordinator's key, so a version whose weights were altered and whose
manifest hash was recomputed is refused here as in the device loop.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime import channel as channels
from edge_runtime import personal_copy
from edge_runtime.collector import release_freed
from edge_runtime.errors import failure
from edge_runtime.forget import forget_learned
from edge_runtime.identity import coordinator_key, readable_identity
from edge_runtime.predictor import Predictor
from edge_runtime.versions import VersionError, VersionStore
from protocol.artifact import TOKENIZER, ArtifactError
from protocol.interpreter import Model
from protocol.text import load_tokenizer

log = logging.getLogger(__name__)

MODEL_CHECK_S = 2.0           # how often the device's current version is looked up
RETRY_FAILED_S = 30           # how long a version that failed to load on the thread is left before another try


class ModelSlot:
    """The predictor for the version in use: a fixed version directory, or the device's
    current version (reloaded when the device loop swaps it). Interpreters are not
    thread-safe, so every use goes through `lock`."""

    def __init__(self, *, data_dir: Path | None, model_dir: Path | None, channel: str | None,
                 loader: Callable[..., Predictor] | None = None, public_key: str | None = None,
                 block_offensive: bool = True, base_ngram: str = "", personalize: bool = True) -> None:
        self.data_dir, self.model_dir, self.fixed_channel = data_dir, model_dir, channel
        self.use_personal = personalize   # the device setting: false, the global model only
        self.lock = threading.RLock()
        self._loader = loader or functools.partial(load_predictor, block_offensive=block_offensive,
                                                   base_ngram=base_ngram)
        # The device's versions are signature-checked with the coordinator's key whenever loaded,
        # so tampered weights with a recomputed hash are refused here too.
        self._store = (VersionStore(data_dir, public_key=coordinator_key(public_key, readable_identity(data_dir)),
                                    remember_verified=True)   # asked every 2 s: hashed when its files change
                       if (data_dir is not None and model_dir is None) else None)
        self._dir: Path | None = None
        self._checked = float("-inf")
        self.version_id: str | None = None
        self.predictor: Predictor | None = None
        self.generation = 0     # bumps on every swap, so sessions of the old model are dropped
        self._stamp: float | None = None
        self.personal = False   # suggesting with the user's own copy of the LSTM (edge_runtime.personalize)
        self._changes = 0       # bumps on every swap and every forgetting: a load begun before either is dropped
        self._loading: threading.Thread | None = None   # `refresh(wait=False)`'s load, off the keystroke path
        self._load_lock = threading.Lock()   # one load at a time (the store and the loader are not shared)
        # The thread's hooks (`follow`): warm(predictor) before a loaded version goes in, outside
        # `lock` (the predictor is the thread's alone), and on_swap(what warm returned) under `lock`
        # once it is in. Weak: the keyboard holds the slot, and a cycle back to it kept a stopped
        # keyboard and its interpreter alive (`collector.settle` freezes what is live).
        self._warm: weakref.WeakMethod | None = None
        self._on_swap: weakref.WeakMethod | None = None
        # The version that failed to load on the thread, its copy's stamp, and when to try it again.
        self._failed: tuple[Path | None, float | None, float] | None = None

    def follow(self, warm: Callable[[Predictor], Any], on_swap: Callable[[Any], None]) -> None:
        """Have the thread that loads a version call `warm(predictor)` before it goes in and
        `on_swap(what warm returned)` under `lock` once it is in (bound methods, held weakly)."""
        self._warm, self._on_swap = weakref.WeakMethod(warm), weakref.WeakMethod(on_swap)

    def settle(self, timeout: float = 5.0) -> None:
        """Wait, without holding `lock`, for a load the thread has under way: what the version in
        use is and its channel read then as the device has them (the page's status badge read "not
        checked in" for the seconds a new version loaded). Keystrokes go on meanwhile."""
        loading = self._loading
        if loading is not None and loading.is_alive():
            loading.join(timeout)

    def invalidate(self) -> None:
        """A load under way is not swapped in: what its `warm` built came from what the caller
        has just dropped (the text being typed, after a wipe). The next refresh loads again."""
        with self.lock:
            self._changes += 1

    def _personal_stamp(self, version_dir: Path | None) -> float | None:
        """mtime of the user's own copy of `version_dir`'s model (None: none, or a fixed model dir)."""
        if version_dir is None or self.data_dir is None or self.model_dir is not None or not self.use_personal:
            return None
        try:
            return personal_copy.weights_path(self.data_dir, version_dir.name).stat().st_mtime_ns
        except OSError:
            return None

    def _wanted(self) -> Path | None:
        if self.model_dir is not None:
            return self.model_dir
        assert self._store is not None
        try:
            return self._store.current()
        except VersionError:
            return None

    def refresh(self, *, wait: bool = True) -> None:
        """Load the wanted version if it changed (looked up at most every MODEL_CHECK_S).

        `wait=False` is the keystroke's way: while a predictor is in use, the lookup and the load
        (0.07-0.4 s on x86, more on a Pi) run on a thread, and the strip is answered from the
        version in use until the new one is swapped in under `lock`. With no predictor yet there is
        nothing to answer from, so it loads here as `wait=True` does."""
        with self.lock:
            now = time.monotonic()
            if self.predictor is not None and now - self._checked < MODEL_CHECK_S:
                return
            self._checked = now
            if not wait and self.predictor is not None:
                if self._loading is None or not self._loading.is_alive():
                    self._loading = threading.Thread(target=self._load_behind, args=(self._changes,),
                                                     name="model-load", daemon=True)
                    self._loading.start()
                return
            with self._load_lock:
                for last in (False, True):
                    wanted = self._wanted()
                    stamp = self._personal_stamp(wanted)
                    if wanted == self._dir and stamp == self._stamp:
                        return
                    try:
                        self._swap(wanted, stamp)
                        return
                    except (ArtifactError, OSError):
                        # The device loop switched versions and pruned this one while it loaded (a
                        # rollback): the version in use now, once; else the error is real.
                        if last or self._wanted() == wanted:
                            raise

    def _load_behind(self, changes: int) -> None:
        """`refresh(wait=False)`'s work, on its own thread: look the wanted version up and load it
        outside `lock`, then swap it in unless the slot changed meanwhile. A wipe that forgot the
        user's own copy while it loaded counts as a change, so the copy never comes back; the next
        refresh looks again."""
        with self._load_lock:
            wanted = self._wanted()
            stamp = self._personal_stamp(wanted)
            if wanted == self._dir and stamp == self._stamp:
                return
            failed = self._failed
            if failed is not None and failed[:2] == (wanted, stamp) and time.monotonic() < failed[2]:
                return   # it failed a moment ago: a full load per look-up would cost a Pi a second each time
            t0 = time.monotonic()
            try:
                loaded = self._load(wanted, stamp) if wanted is not None else None
            except Exception as e:   # a version pruned mid-load, a damaged file: the one in use stays
                if failed is None or failed[:2] != (wanted, stamp):
                    log.warning("keyboard: model version %s could not be loaded (%s); suggesting with %s "
                                "meanwhile, trying again every %d s", wanted.name if wanted else None,
                                failure(e), self.version_id, RETRY_FAILED_S)
                self._failed = (wanted, stamp, time.monotonic() + RETRY_FAILED_S)
                return
        warmed = None   # outside both locks: `warm` takes `lock` to read the texts, and a waiting
        warm = self._warm() if self._warm is not None else None   # `refresh()` holds `lock` as it takes `_load_lock`
        if loaded is not None and warm is not None:
            try:
                warmed = warm(loaded[0])
            except Exception as e:   # the type only: what it fed is the text being typed
                log.warning("keyboard: the text being typed could not be fed through version %s ahead "
                            "(%s); the next keystroke feeds it", wanted.name if wanted else None, type(e).__name__)
        with self.lock:   # not under `_load_lock`: a waiting `refresh()` holds `lock` while it takes that
            # A wipe in another process deletes the user's own copy before this process sees the
            # wipe (and before `_changes` moves): a copy read before that is not put in use.
            swapped = self._changes == changes and self._personal_stamp(wanted) == stamp
            if swapped:
                self._install(wanted, stamp, loaded, time.monotonic() - t0)
                on_swap = self._on_swap() if self._on_swap is not None else None
                if warmed is not None and on_swap is not None:
                    on_swap(warmed)
        del loaded, warmed
        if swapped:
            release_freed()   # the old predictor's interpreter (and the old sessions) are freed; glibc kept its pages

    def _swap(self, wanted: Path | None, stamp: float | None) -> None:
        t0 = time.monotonic()
        loaded = self._load(wanted, stamp) if wanted is not None else None
        if loaded is not None and loaded[1] and self._personal_stamp(wanted) != stamp:
            stamp = self._personal_stamp(wanted)   # the copy went (a wipe elsewhere) or changed as it loaded
            loaded = self._load(wanted, stamp)
        self._install(wanted, stamp, loaded, time.monotonic() - t0)
        del loaded
        release_freed()   # the old predictor's interpreter is freed; glibc kept its pages

    def _install(self, wanted: Path | None, stamp: float | None, loaded: tuple[Predictor, bool] | None,
                 seconds: float) -> None:
        """Put a loaded version in use (under `lock`)."""
        if wanted is None or loaded is None:
            self.predictor, self.version_id, self._dir, self.personal = None, None, None, False
        else:
            self.predictor, self.personal = loaded
            manifest = self.predictor.model.manifest
            self.version_id = manifest.version_id if manifest else wanted.name
            self._dir = wanted
            log.info("keyboard: model version %s loaded in %.2fs%s", self.version_id, seconds,
                     " (the user's own copy)" if self.personal else "")
        self._stamp = stamp
        self._failed = None
        self.generation += 1
        self._changes += 1

    def _load(self, version_dir: Path, stamp: float | None) -> tuple[Predictor, bool]:
        """The version's predictor on the user's own copy of its weights when there is a usable
        one; and whether it is on that copy."""
        weights = personal_copy.load(self.data_dir, version_dir.name) if stamp is not None and self.data_dir else None
        if weights is not None:
            try:
                return self._loader(version_dir, weights), True
            except ArtifactError:
                log.warning("personal model does not fit version %s; suggesting with the global model",
                            version_dir.name)
        return self._loader(version_dir), False

    def forget_personal(self) -> None:
        """Delete the user's own copy, and all else learned from the text (`forget_learned`), and
        fall back to the global model at once. The copy's weights were learned from the user's
        text, so they leave memory first: if the global model cannot be loaded now (its folder
        pruned mid-load by a rollback, no memory), the strip waits for a later refresh instead of
        suggesting from them."""
        with self.lock:
            self._changes += 1   # a load under way may hold the copy: it is not swapped in
            if self.data_dir is not None:
                forget_learned(self.data_dir)
            if self.personal:
                self._swap(None, None)
            self._checked = float("-inf")
        self.refresh()

    @property
    def notices(self) -> dict[str, str]:
        """The licence notices of the loaded version's files, as its signed manifest carries them."""
        manifest = self.predictor.model.manifest if self.predictor is not None else None
        return dict(manifest.notices) if manifest else {}

    @property
    def channel(self) -> str:
        if self.fixed_channel:
            return self.fixed_channel
        if self.data_dir is None:
            return channels.UNKNOWN
        return channels.read_channel(self.data_dir, self.version_id)


def load_predictor(version_dir: Path, weights: dict[str, np.ndarray] | None = None, *,
                   block_offensive: bool = True, base_ngram: str = "") -> Predictor:
    """The keyboard's predictor on a version (on `weights` of its model, e.g. the user's own copy);
    `block_offensive` and `base_ngram` are the device's settings of those names (`EdgeConfig`)."""
    from edge_runtime.base_ngram import load_base_ngram

    return Predictor(Model.load(version_dir, weights=weights), load_tokenizer(Path(version_dir) / TOKENIZER),
                     base=load_base_ngram(base_ngram), block_offensive=block_offensive)
