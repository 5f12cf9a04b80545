"""TensorFlow and the exported TFLite graph agree; the exporter refuses Flex graphs."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="model tests need the full environment")  # noqa: F841

from model.export import ExportError, lint, list_ops, load_module  # noqa: E402
from protocol import artifact  # noqa: E402
from protocol.arch import SIG_EVALUATE, SIG_STEP, SIG_TRAIN  # noqa: E402
from protocol.interpreter import Model  # noqa: E402

STEP_ATOL = 1e-4   # log-probabilities: float32 reassociation between TF and TFLite kernels
WEIGHT_ATOL = 1e-5  # weights after one SGD step with lr 0.5


@pytest.fixture(scope="module")
def pair(exported_version):
    m, manifest = load_module(exported_version)
    return m, Model.load(exported_version, backend="ai_edge_litert"), manifest.architecture().model


def _batch(cfg, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(4, cfg.vocab_size, (cfg.train_batch, cfg.seq_len)).astype(np.int32)
    mask = np.ones_like(x, dtype=np.float32)
    mask[-1, cfg.seq_len // 2:] = 0.0
    return x, np.roll(x, -1, axis=1), mask


def test_graph_has_builtin_ops_only_and_all_signatures(exported_version):
    graph = (exported_version / artifact.GRAPH).read_bytes()
    ops = list_ops(graph)
    assert ops and not [o for o in ops if o.startswith("Flex")]
    assert "READ_VARIABLE" in ops and "ASSIGN_VARIABLE" in ops  # resource variables, trained in place
    m = Model(graph, backend="ai_edge_litert")
    sigs = m._interp.get_signature_list()
    assert set(sigs) == {"step", "infer", "train", "evaluate", "get_weights", "set_weights"}


def test_step_matches_tensorflow(pair):
    tfm, lite, cfg = pair
    tokens = np.array([2, 17, 40, 5, 99], np.int32)
    h = np.zeros((1, cfg.hidden_dim), np.float32)
    c = np.zeros_like(h)
    th, tc = tf.constant(h), tf.constant(c)
    for t in tokens:
        out = lite.runner(SIG_STEP)(tokens=np.array([t], np.int32), h=h, c=c)
        ref = tfm.step(tf.constant([t]), th, tc)
        np.testing.assert_allclose(out["logprobs"], ref["logprobs"].numpy(), atol=STEP_ATOL)
        h, c, th, tc = out["h"], out["c"], ref["h"], ref["c"]


def test_infer_with_patched_constants_matches_step_and_tensorflow(pair, exported_version):
    """The fast keystroke signature holds the version's weights as patched constants."""
    tfm, lite, cfg = pair
    manifest, _ = artifact.load_version(exported_version)
    assert set(manifest.architecture().infer_patches) == {n for n, _ in cfg.weight_shapes()}
    tokens = np.array([2, 17, 40], np.int32)
    h = np.zeros((3, cfg.hidden_dim), np.float32)
    args = dict(tokens=tokens, h=h, c=h)
    fast = lite.runner("infer")(**args)
    slow = lite.runner(SIG_STEP)(**args)
    ref = tfm.step(tf.constant(tokens), tf.constant(h), tf.constant(h))
    np.testing.assert_allclose(fast["logprobs"], slow["logprobs"], atol=STEP_ATOL)
    np.testing.assert_allclose(fast["logprobs"], ref["logprobs"].numpy(), atol=STEP_ATOL)
    unpatched = Model((exported_version / artifact.GRAPH).read_bytes(), backend="ai_edge_litert")
    assert not np.allclose(unpatched.runner("infer")(**args)["logprobs"], fast["logprobs"], atol=1e-2)


def test_one_train_step_gives_the_same_weights(pair, exported_version):
    tfm, lite, cfg = pair
    x, y, mask = _batch(cfg)
    lr = np.array([0.5], np.float32)
    loss_lite = lite.runner(SIG_TRAIN)(x=x, y=y, mask=mask, lr=lr)["loss"]
    loss_tf = tfm.train_step(tf.constant(x), tf.constant(y), tf.constant(mask), tf.constant(lr))["loss"].numpy()
    np.testing.assert_allclose(loss_lite, loss_tf, rtol=1e-5)
    after = lite.get_weights()
    _, before = artifact.load_version(exported_version)
    moved = 0.0
    for name, v in tfm.vars.items():
        np.testing.assert_allclose(after[name], v.numpy(), atol=WEIGHT_ATOL)
        moved = max(moved, float(np.abs(after[name] - before[name]).max()))
    assert moved > 1e-4, "the train step did not change the weights"
    lite.set_weights(before)  # leave the shared fixture as it was
    for name, v in tfm.vars.items():
        v.assign(before[name])


def test_evaluate_matches_tensorflow_and_changes_nothing(pair):
    tfm, lite, cfg = pair
    x, y, mask = _batch(cfg, seed=1)
    before = lite.get_weights()
    out = lite.runner(SIG_EVALUATE)(x=x, y=y, mask=mask)
    ref = tfm.evaluate(tf.constant(x), tf.constant(y), tf.constant(mask))
    for k in ("loss_sum", "top1", "top3", "count"):
        np.testing.assert_allclose(out[k], ref[k].numpy(), rtol=1e-4)
    assert out["count"][0] == mask.sum()
    assert out["top1"][0] <= out["top3"][0] <= out["count"][0]
    after = lite.get_weights()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_lint_refuses_a_graph_that_needs_flex(pair):
    """Erf has no TFLite builtin: allowed SELECT_TF_OPS, the converter emits FlexErf."""
    _, _, cfg = pair
    f = tf.function(lambda x: {"y": tf.math.erf(x)}, input_signature=[tf.TensorSpec([3, 3], tf.float32)])
    conv = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()])
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    flex = conv.convert()
    assert "FlexErf" in list_ops(flex)
    with pytest.raises(ExportError, match="Flex"):
        lint(flex, cfg, {})


def test_manifest_hashes_and_weight_order(exported_version, tmp_path):
    manifest, weights = artifact.load_version(exported_version)
    cfg = manifest.architecture().model
    assert [t.name for t in manifest.tensors] == [n for n, _ in cfg.weight_shapes()]
    assert manifest.num_params == cfg.num_params
    assert manifest.arch_hash == artifact.arch_hash(manifest.arch)
    assert manifest.tokenizer_sha256 == artifact.sha256_file(exported_version / artifact.TOKENIZER)
    tampered = tmp_path / "copy"   # never inside the shared test version, which other tests copy whole
    tampered.mkdir()
    for f in (artifact.GRAPH, artifact.TOKENIZER, artifact.MANIFEST):
        (tampered / f).write_bytes((exported_version / f).read_bytes())
    data = bytearray((exported_version / artifact.WEIGHTS).read_bytes())
    data[-1] ^= 0xFF
    (tampered / artifact.WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(artifact.ArtifactError, match="sha256"):
        artifact.load_version(tampered)


def test_the_tensorflow_interpreter_runs_a_version_as_the_slim_one_does(pair, exported_version):
    """FEDKEYS_INTERPRETER=tensorflow raised AttributeError with TensorFlow 2.21: `tensorflow.lite`
    imported as a module no longer carries `Interpreter`. (TensorFlow says its interpreter is
    deprecated: the slim ones are the product's; this is the fallback where neither is installed.)"""
    _, lite, cfg = pair
    with pytest.warns(UserWarning, match="deprecated"):
        full = Model.load(exported_version, backend="tensorflow")
    assert full.backend == "tensorflow"
    args = dict(tokens=np.array([2], np.int32), h=np.zeros((1, cfg.hidden_dim), np.float32),
                c=np.zeros((1, cfg.hidden_dim), np.float32))
    np.testing.assert_allclose(full.runner(SIG_STEP)(**args)["logprobs"], lite.runner(SIG_STEP)(**args)["logprobs"],
                               atol=STEP_ATOL)
