"""One small adapter over whichever TFLite interpreter the device has.

Preference: `ai_edge_litert` (maintained, numpy 2), then `tflite_runtime` 2.14 (the last
release, still what many ARM boards run; numpy<2), then `tf.lite` when TensorFlow happens to
be installed. The rest of the runtime calls signatures by name and never knows which.

It lives in `protocol` because the exporter's lint (`model.export.lint`) must run a new graph
in exactly the interpreter and with exactly the constant patching the device uses, without
importing the device. The interpreter module is imported only when a `Model` is created.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from protocol import artifact
from protocol.arch import SIG_GET_WEIGHTS, SIG_SET_WEIGHTS, InferPatches

_BACKENDS = (("ai_edge_litert", "ai_edge_litert.interpreter"),
             ("tflite_runtime", "tflite_runtime.interpreter"),
             ("tensorflow", "tensorflow.lite.python.interpreter"))   # `tensorflow.lite` itself lacks it in 2.21


def backend_refusal(prefer: str | None) -> str | None:
    """Why `prefer` (FEDKEYS_INTERPRETER) names no backend, or None: for a device's settings check,
    whose log may not quote an exception's message (edge_runtime.errors.failure)."""
    if not prefer or any(name == prefer for name, _ in _BACKENDS):
        return None
    return (f"unknown interpreter backend {prefer!r} (FEDKEYS_INTERPRETER): use one of "
            + ", ".join(name for name, _ in _BACKENDS))


def _interpreter_class(prefer: str | None = None) -> tuple[str, Any]:
    order = _BACKENDS
    if prefer:
        if (why := backend_refusal(prefer)) is not None:
            raise ValueError(why)
        order = tuple(b for b in _BACKENDS if b[0] == prefer)
    for name, module in order:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        if (cls := getattr(mod, "Interpreter", None)) is not None:   # a build without it counts as none
            return name, cls
    raise ImportError("no TFLite interpreter installed: pip install ai-edge-litert (or tflite-runtime on ARM)")


def patch_constants(graph: bytes, patches: InferPatches, weights: dict[str, np.ndarray]) -> bytes:
    """Write a version's weights over the `infer` signature's placeholder constants.

    `patches` (from the manifest's arch, found by the exporter) maps each weight name to
    ``[byte offset, transposed]`` pairs in the flatbuffer. Returns the patched graph bytes.
    """
    buf = bytearray(graph)
    for name, places in patches.items():
        w = np.asarray(weights[name], dtype=np.float32)
        for offset, transposed in places:
            data = (np.ascontiguousarray(w.T) if transposed else np.ascontiguousarray(w)).tobytes()
            if offset < 0 or offset + len(data) > len(buf):
                raise artifact.ArtifactError(f"infer patch for {name} lies outside the graph file")
            buf[offset:offset + len(data)] = data
    return bytes(buf)


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
    def load(cls, version_dir: str | os.PathLike, *, verify: bool = True,
             weights: dict[str, np.ndarray] | None = None, **kw: Any) -> Model:
        """Open a version directory (sha256s verified) and load its weights, or `weights` of the
        same names and shapes instead (a device's personal copy of the version's model)."""
        manifest, own = artifact.load_version(version_dir, verify=verify)
        if weights is None:
            weights = own
        else:
            try:
                artifact.check_weights(weights, manifest.tensors)
            except artifact.ArtifactError as e:
                raise artifact.ArtifactError(f"weights do not fit version {manifest.version_id}'s model: {e}") from e
        graph = (Path(version_dir) / artifact.GRAPH).read_bytes()
        patches = manifest.architecture().infer_patches
        if patches:
            graph = patch_constants(graph, patches, weights)
        m = cls(graph, **kw)
        m.set_weights(weights)
        m.manifest = manifest
        return m

    def has_signature(self, name: str) -> bool:
        return name in self._interp.get_signature_list()

    def runner(self, name: str) -> Callable[..., dict[str, np.ndarray]]:
        """The signature `name` as a callable taking keyword arrays, returning a dict of arrays."""
        if name not in self._runners:
            self._runners[name] = self._interp.get_signature_runner(name)
        return self._runners[name]

    def stepper(self, name: str, inputs: tuple[str, ...],
                outputs: tuple[str, ...]) -> Callable[..., tuple[np.ndarray, ...]]:
        """The signature `name` as a function of positional `inputs` returning `outputs` in order,
        for a signature called again and again with inputs of one shape (the keyboard's `infer`,
        once per token). It sets, invokes and reads the signature's tensors directly: the runner
        resizes and reallocates them on every call, a tenth of a one-token step. The first call,
        and any call after someone else resized them (SetTensor refuses the shape), goes through
        the runner, which allocates; the results are the same."""
        run = self.runner(name)
        try:  # the runner's own handles: the same in ai_edge_litert, tflite_runtime and tf.lite
            wrapper, graph = run._interpreter_wrapper, run._subgraph_index
            by_name = dict(run._outputs)
            ins, outs = [run._inputs[k] for k in inputs], [by_name[k] for k in outputs]
            set_tensor, invoke, get_tensor = wrapper.SetTensor, wrapper.Invoke, wrapper.GetTensor
        except (AttributeError, KeyError, TypeError):
            set_tensor = None
        allocated = False

        def via_runner(args: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
            out = run(**dict(zip(inputs, args)))
            return tuple(out[k] for k in outputs)

        def step(*args: np.ndarray) -> tuple[np.ndarray, ...]:
            nonlocal allocated
            if set_tensor is None or not allocated:
                allocated = True
                return via_runner(args)
            try:
                for i, a in zip(ins, args):
                    set_tensor(i, a, graph)
            except ValueError:
                return via_runner(args)
            invoke(graph)
            return tuple(get_tensor(o, graph) for o in outs)

        return step

    def get_weights(self) -> dict[str, np.ndarray]:
        return {k: np.array(v, copy=True) for k, v in self.runner(SIG_GET_WEIGHTS)().items()}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        self.runner(SIG_SET_WEIGHTS)(**{k: np.asarray(v, np.float32) for k, v in weights.items()})
