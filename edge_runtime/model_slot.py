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
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge_runtime import channel as channels
from edge_runtime import personalize
from edge_runtime.agent import coordinator_key, readable_identity
from edge_runtime.collector import release_freed
from edge_runtime.predictor import Predictor
from edge_runtime.versions import VersionError, VersionStore
from protocol.artifact import TOKENIZER, ArtifactError
from protocol.interpreter import Model
from protocol.text import load_tokenizer

log = logging.getLogger(__name__)

MODEL_CHECK_S = 2.0           # how often the device's current version is looked up


class ModelSlot:
    """The predictor for the version in use: a fixed version directory, or the device's
    current version (reloaded when the device loop swaps it). Interpreters are not
    thread-safe, so every use goes through `lock`."""

    def __init__(self, *, data_dir: Path | None, model_dir: Path | None, channel: str | None,
                 loader: Callable[..., Predictor] | None = None, public_key: str | None = None,
                 block_offensive: bool = True, base_ngram: str = "") -> None:
        self.data_dir, self.model_dir, self.fixed_channel = data_dir, model_dir, channel
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

    def _personal_stamp(self, version_dir: Path | None) -> float | None:
        """mtime of the user's own copy of `version_dir`'s model (None: none, or a fixed model dir)."""
        if version_dir is None or self.data_dir is None or self.model_dir is not None:
            return None
        try:
            return personalize.weights_path(self.data_dir, version_dir.name).stat().st_mtime_ns
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

    def refresh(self) -> None:
        """Load the wanted version if it changed (looked up at most every MODEL_CHECK_S)."""
        with self.lock:
            now = time.monotonic()
            if self.predictor is not None and now - self._checked < MODEL_CHECK_S:
                return
            self._checked = now
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

    def _swap(self, wanted: Path | None, stamp: float | None) -> None:
        if wanted is None:
            self.predictor, self.version_id, self._dir, self.personal = None, None, None, False
        else:
            t0 = time.monotonic()
            self.predictor = self._load(wanted, stamp)
            manifest = self.predictor.model.manifest
            self.version_id = manifest.version_id if manifest else wanted.name
            self._dir = wanted
            log.info("keyboard: model version %s loaded in %.2fs%s", self.version_id, time.monotonic() - t0,
                     " (the user's own copy)" if self.personal else "")
        self._stamp = stamp
        self.generation += 1
        release_freed()   # the old predictor's interpreter is freed; glibc kept its pages

    def _load(self, version_dir: Path, stamp: float | None) -> Predictor:
        """The version's predictor on the user's own copy of its weights when there is a usable one."""
        self.personal = False
        weights = personalize.load(self.data_dir, version_dir.name) if stamp is not None and self.data_dir else None
        if weights is not None:
            try:
                predictor = self._loader(version_dir, weights)
                self.personal = True
                return predictor
            except ArtifactError:
                log.warning("personal model does not fit version %s; suggesting with the global model",
                            version_dir.name)
        return self._loader(version_dir)

    def forget_personal(self) -> None:
        """Delete the user's own copy and fall back to the global model at once. The copy's weights
        were learned from the user's text, so they leave memory first: if the global model cannot
        be loaded now (its folder pruned mid-load by a rollback, no memory), the strip waits for a
        later refresh instead of suggesting from them."""
        with self.lock:
            if self.data_dir is not None:
                personalize.forget(self.data_dir)
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
