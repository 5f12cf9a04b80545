"""One small adapter over whichever TFLite interpreter the device has.

Preference: `ai_edge_litert` (maintained, numpy 2), then `tflite_runtime` 2.14 (the last
release, still what many ARM boards run; numpy<2), then `tf.lite` when TensorFlow happens to
be installed. The rest of the runtime calls signatures by name and never knows which.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from model.config import SIG_GET_WEIGHTS, SIG_SET_WEIGHTS
from protocol import artifact

_BACKENDS = (("ai_edge_litert", "ai_edge_litert.interpreter"),
             ("tflite_runtime", "tflite_runtime.interpreter"),
             ("tensorflow", "tensorflow.lite"))


def _interpreter_class(prefer: str | None = None) -> tuple[str, Any]:
    order = _BACKENDS
    if prefer:
        order = tuple(b for b in _BACKENDS if b[0] == prefer)
        if not order:
            raise ValueError(f"unknown interpreter backend {prefer!r}")
    for name, module in order:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        return name, mod.Interpreter
    raise ImportError("no TFLite interpreter installed: pip install ai-edge-litert (or tflite-runtime on ARM)")


class Model:
    """A trainable TFLite graph with its weights loaded through `set_weights`.

    Variables are not stored as constants in the flatbuffer, so a fresh interpreter must be
    given its weights before use (`Model.load` does it from a version directory).
    """

    def __init__(self, tflite: bytes | str | os.PathLike, *, backend: str | None = None, num_threads: int = 1):
        self.backend, cls = _interpreter_class(backend or os.environ.get("FEDKEYS_INTERPRETER") or None)
        content = tflite if isinstance(tflite, bytes) else Path(tflite).read_bytes()
        self._interp = cls(model_content=content, num_threads=num_threads)
        self._runners: dict[str, Callable[..., dict[str, np.ndarray]]] = {}
        self.manifest: artifact.Manifest | None = None

    @classmethod
    def load(cls, version_dir: str | os.PathLike, *, verify: bool = True, **kw: Any) -> Model:
        """Open a version directory (sha256s verified) and load its weights."""
        manifest, weights = artifact.load_version(version_dir, verify=verify)
        m = cls(Path(version_dir) / artifact.GRAPH, **kw)
        m.set_weights(weights)
        m.manifest = manifest
        return m

    def runner(self, name: str) -> Callable[..., dict[str, np.ndarray]]:
        """The signature `name` as a callable taking keyword arrays, returning a dict of arrays."""
        if name not in self._runners:
            self._runners[name] = self._interp.get_signature_runner(name)
        return self._runners[name]

    def get_weights(self) -> dict[str, np.ndarray]:
        return {k: np.array(v, copy=True) for k, v in self.runner(SIG_GET_WEIGHTS)().items()}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        self.runner(SIG_SET_WEIGHTS)(**{k: np.asarray(v, np.float32) for k, v in weights.items()})
