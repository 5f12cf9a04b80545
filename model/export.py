"""Export to TFLite with builtin ops only, lint it, and write a model version directory.

The lint is the gate between TensorFlow and the devices: it lists the exported ops, refuses
any graph that would need the Flex delegate, and runs one `train` step and one `step` in the
slim interpreter before the version is declared good. The interpreter and the constant
patching are the device's own (`protocol.interpreter`), so the lint runs what a device runs.
"""

from __future__ import annotations

import datetime as _dt
import logging
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import tensorflow as tf

from model.lstm import NextWordLSTM, probe_weights, signature_functions
from protocol import artifact
from protocol.arch import SIG_INFER, SIG_STEP, SIG_TRAIN, SIGNATURES, Arch, InferPatches, ModelConfig
from protocol.interpreter import Model, patch_constants

log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """The model cannot be exported for on-device training."""


def convert(m: NextWordLSTM) -> bytes:
    """SavedModel with the five signatures -> TFLite flatbuffer, TFLITE_BUILTINS only."""
    sigs = signature_functions(m)
    with tempfile.TemporaryDirectory() as d:
        tf.saved_model.save(m, d, signatures=sigs)
        conv = tf.lite.TFLiteConverter.from_saved_model(d, signature_keys=list(SIGNATURES))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        conv.experimental_enable_resource_variables = True
        try:
            return conv.convert()
        except Exception as e:  # the converter raises ConverterError with the offending ops listed
            raise ExportError(f"conversion with builtin ops only failed: {e}") from e


def list_ops(tflite: bytes) -> Counter:
    """Op names in every subgraph of a flatbuffer (custom ops, e.g. Flex*, by their custom code)."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(tflite, 0))
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for oc in model.operatorCodes:
        code = max(oc.builtinCode, oc.deprecatedBuiltinCode)
        if code == schema.BuiltinOperator.CUSTOM:
            codes.append(oc.customCode.decode() if isinstance(oc.customCode, bytes) else str(oc.customCode))
        else:
            codes.append(names.get(code, f"op{code}"))
    ops: Counter = Counter()
    for sg in model.subgraphs:
        for op in sg.operators or []:
            ops[codes[op.opcodeIndex]] += 1
    return ops


def find_patches(tflite: bytes, cfg: ModelConfig) -> InferPatches:
    """Where the `infer` signature's placeholder constants sit in the flatbuffer, by their bytes.

    The converter may store a matrix transposed (FULLY_CONNECTED wants [out, in]), so both
    layouts are searched; every weight must be found, or the device could not patch it.
    """
    patches: InferPatches = {}
    for name, probe in probe_weights(cfg).items():
        layouts = [(probe.tobytes(), 0)]
        if probe.ndim == 2:
            layouts.append((np.ascontiguousarray(probe.T).tobytes(), 1))
        places = []
        for data, transposed in layouts:
            at = tflite.find(data)
            while at >= 0:
                places.append([at, transposed])
                at = tflite.find(data, at + 1)
        if not places:
            raise ExportError(f"the infer signature's constant for {name} was transformed by the converter; "
                              "the device could not patch it")
        patches[name] = places
    return patches


def lint(tflite: bytes, cfg: ModelConfig, weights: dict[str, np.ndarray],
         patches: InferPatches | None = None) -> Counter:
    """Refuse Flex/custom ops; run one train step and one step in the slim interpreter, and check
    that `infer` with patched constants gives what `step` gives."""
    ops = list_ops(tflite)
    bad = sorted(op for op in ops if op.startswith("Flex") or not op.isupper())
    if bad:
        raise ExportError(f"exported graph needs ops outside TFLITE_BUILTINS (Flex delegate): {bad}")
    model = Model(patch_constants(tflite, patches, weights) if patches else tflite)
    if model.backend == "tensorflow":
        raise ExportError("no slim interpreter (ai-edge-litert or tflite-runtime) installed to lint with")
    model.set_weights(weights)
    B, T, H = cfg.train_batch, cfg.seq_len, cfg.hidden_dim
    rng = np.random.default_rng(0)
    x = rng.integers(4, cfg.vocab_size, (B, T)).astype(np.int32)
    out = model.runner(SIG_TRAIN)(x=x, y=np.roll(x, -1, axis=1), mask=np.ones((B, T), np.float32),
                                  lr=np.array([0.1], np.float32))
    if not np.isfinite(out["loss"]).all():
        raise ExportError("train step in the slim interpreter gave a non-finite loss")
    after = model.get_weights()
    if all(np.array_equal(after[k], weights[k]) for k in weights):
        raise ExportError("train step in the slim interpreter did not change the weights")
    o = model.runner(SIG_STEP)(tokens=np.array([2], np.int32), h=np.zeros((1, H), np.float32),
                               c=np.zeros((1, H), np.float32))
    if o["logprobs"].shape != (1, cfg.vocab_size) or abs(np.exp(o["logprobs"]).sum() - 1) > 1e-3:
        raise ExportError("step in the slim interpreter did not return a distribution over the vocabulary")
    if patches:
        model.set_weights(weights)  # the train step above moved the variables; infer holds `weights`
        args = dict(tokens=np.array([2, 7], np.int32), h=np.zeros((2, H), np.float32), c=np.zeros((2, H), np.float32))
        a, b = model.runner(SIG_STEP)(**args), model.runner(SIG_INFER)(**args)
        if not np.allclose(a["logprobs"], b["logprobs"], atol=1e-4):
            raise ExportError("infer with patched constants disagrees with step: the patch table is wrong")
    log.info("lint ok (%s): %d op kinds, %d ops", model.backend, len(ops), sum(ops.values()))
    return ops


def export_version(m: NextWordLSTM, tokenizer_path: str | Path, out_dir: str | Path, *, version_id: str = "v0",
                   parent: str | None = None, metrics: dict | None = None,
                   graph: bytes | None = None, notices: dict[str, str] | None = None) -> artifact.Manifest:
    """Write a complete, linted version directory: graph, tokenizer, weights, manifest; `notices`
    are the licence notices its files carry (a tokenizer copied from a version keeps that one's)."""
    cfg = m.cfg
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = {n: v.numpy() for n, v in m.vars.items()}
    tflite = graph if graph is not None else convert(m)
    patches = find_patches(tflite, cfg)
    lint(tflite, cfg, weights, patches)
    artifact.atomic_write(out / artifact.GRAPH, tflite, mode=artifact.VERSION_FILE_MODE)
    if Path(tokenizer_path).resolve() != (out / artifact.TOKENIZER).resolve():
        shutil.copyfile(tokenizer_path, out / artifact.TOKENIZER)
    arch = Arch(cfg, infer_patches=patches).to_dict()
    manifest = artifact.Manifest(
        version_id=version_id,
        arch=arch,
        arch_hash=artifact.arch_hash(arch),
        tensors=[artifact.TensorSpec(n, tuple(s)) for n, s in cfg.weight_shapes()],
        graph_sha256=artifact.sha256_bytes(tflite),
        tokenizer_sha256=artifact.sha256_file(out / artifact.TOKENIZER),
        weights_sha256="",
        parent=parent,
        created_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        metrics=metrics or {},
        notices=dict(notices or {}),
    )
    return artifact.write_version(out, manifest, weights)


def load_module(version_dir: str | Path) -> tuple[NextWordLSTM, artifact.Manifest]:
    """A TF module holding a version's weights (to continue training centrally)."""
    manifest, weights = artifact.load_version(version_dir)
    m = NextWordLSTM(manifest.architecture().model)
    for n, v in m.vars.items():
        v.assign(weights[n])
    return m, manifest


if __name__ == "__main__":   # `python -m model.export --help` printed nothing: this is a library
    import sys

    print("model.export is a library; its command is python -m tools.pretrain "
          "(see --help; python -m tools lists all)",
          file=sys.stderr)
    sys.exit(2)
