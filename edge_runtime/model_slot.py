"""The keyboard's model: the predictor for the version in use, reloaded when the device swaps it.

Split from `keyboard` (the HTTP side). Versions of the device are loaded through the
`VersionStore` with the coordinator's key, so a version whose weights were altered and whose
manifest hash was recomputed is refused here as in the device loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edge_runtime import channel as channels
from edge_runtime.agent import AgentError, load_identity
from edge_runtime.predictor import Predictor
from edge_runtime.versions import VersionError, VersionStore
from protocol.artifact import TOKENIZER
from protocol.interpreter import Model
from protocol.text import load_tokenizer

log = logging.getLogger(__name__)

MODEL_CHECK_S = 2.0           # how often the device's current version is looked up


def device_public_key(data_dir: Path) -> str | None:
    """The coordinator key the device enrolled with (None for a device that never enrolled)."""
    try:
        ident = load_identity(Path(data_dir))
    except AgentError:
        return None
    return (ident.public_key or None) if ident else None


class ModelSlot:
    """The predictor for the version in use: a fixed version directory, or the device's
    current version (reloaded when the device loop swaps it). Interpreters are not
    thread-safe, so every use goes through `lock`."""

    def __init__(self, *, data_dir: Path | None, model_dir: Path | None, channel: str | None,
                 loader: Callable[[Path], Predictor] | None = None, public_key: str | None = None) -> None:
        self.data_dir, self.model_dir, self.fixed_channel = data_dir, model_dir, channel
        self.lock = threading.RLock()
        self._loader = loader or load_predictor
        # The device's versions are signature-checked with the coordinator's key whenever loaded,
        # so tampered weights with a recomputed hash are refused here too.
        self._store = (VersionStore(data_dir, public_key=public_key or device_public_key(data_dir))
                       if (data_dir is not None and model_dir is None) else None)
        self._dir: Path | None = None
        self._checked = float("-inf")
        self.version_id: str | None = None
        self.predictor: Predictor | None = None
        self.generation = 0     # bumps on every swap, so sessions of the old model are dropped

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
            wanted = self._wanted()
            if wanted == self._dir:
                return
            if wanted is None:
                self.predictor, self.version_id, self._dir = None, None, None
            else:
                t0 = time.monotonic()
                self.predictor = self._loader(wanted)
                manifest = self.predictor.model.manifest
                self.version_id = manifest.version_id if manifest else wanted.name
                self._dir = wanted
                log.info("keyboard: model version %s loaded in %.2fs", self.version_id, time.monotonic() - t0)
            self.generation += 1

    @property
    def channel(self) -> str:
        if self.fixed_channel:
            return self.fixed_channel
        if self.data_dir is None:
            return channels.UNKNOWN
        return channels.read_channel(self.data_dir, self.version_id)


def load_predictor(version_dir: Path) -> Predictor:
    from edge_runtime.base_ngram import load_base_ngram

    return Predictor(Model.load(version_dir), load_tokenizer(Path(version_dir) / TOKENIZER), base=load_base_ngram())
