"""The quantized download form of a version's weights (protocol.artifact.quantize)."""

from __future__ import annotations

import numpy as np
import pytest

from protocol import artifact

TENSORS = [artifact.TensorSpec("embedding", (50, 8)), artifact.TensorSpec("bias", (8,))]


def weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = {t.name: rng.normal(0, 0.3, t.shape).astype(np.float32) for t in TENSORS}
    w["embedding"][3] = 0.0                      # an all-zero row keeps a usable scale
    return w


def test_round_trip_error_is_bounded_by_half_a_step_per_row():
    w = weights()
    back = artifact.dequantize(artifact.decode_weights(artifact.encode_weights_q8(w)), TENSORS)
    step = np.abs(w["embedding"]).max(axis=1) / 127.0
    assert np.all(np.abs(back["embedding"] - w["embedding"]) <= step[:, None] / 2 + 1e-7)
    assert np.array_equal(back["embedding"][3], np.zeros(8, np.float32))
    assert np.allclose(back["bias"], w["bias"], rtol=1e-3, atol=1e-4)
    assert all(v.dtype == np.float32 for v in back.values())


def test_download_form_is_about_a_quarter_of_float32():
    tensors = [artifact.TensorSpec("embedding", (1000, 96)), artifact.TensorSpec("bias", (1000,))]
    rng = np.random.default_rng(1)
    w = {t.name: rng.normal(0, 0.1, t.shape).astype(np.float32) for t in tensors}
    assert len(artifact.encode_weights_q8(w)) < 0.3 * len(artifact.encode_weights(w))


def test_quantized_weights_that_do_not_fit_the_manifest_are_refused():
    q = artifact.quantize(weights())
    with pytest.raises(artifact.ArtifactError):
        artifact.dequantize({k: v for k, v in q.items() if k != "embedding.scale"}, TENSORS)
    bad = dict(q, embedding=q["embedding"].astype(np.float32))
    with pytest.raises(artifact.ArtifactError):
        artifact.dequantize(bad, TENSORS)


def test_a_version_directory_holding_only_the_quantized_form_loads_and_is_verified(exported_version, tmp_path):
    import shutil

    manifest, w = artifact.load_version(exported_version)
    d = tmp_path / "v"
    shutil.copytree(exported_version, d)
    (d / artifact.WEIGHTS).unlink()
    data = artifact.encode_weights_q8(w)
    (d / artifact.WEIGHTS_Q8).write_bytes(data)
    manifest.weights_q8_sha256 = artifact.sha256_bytes(data)
    (d / artifact.MANIFEST).write_text(__import__("json").dumps(manifest.to_dict()))
    m2, back = artifact.load_version(d)
    assert m2.weights_q8_sha256 == manifest.weights_q8_sha256
    for name in w:
        assert np.allclose(back[name], w[name], atol=np.abs(w[name]).max() / 127)
    (d / artifact.WEIGHTS_Q8).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(artifact.ArtifactError, match="sha256"):
        artifact.load_version(d)


def test_manifest_without_a_download_form_serialises_as_before():
    m = artifact.Manifest(version_id="v", arch={}, arch_hash="", tensors=TENSORS, graph_sha256="g",
                          tokenizer_sha256="t", weights_sha256="w")
    assert "weights_q8_sha256" not in m.to_dict()
    m.weights_q8_sha256 = "q"
    assert artifact.Manifest.from_dict(m.to_dict()).weights_q8_sha256 == "q"


def test_a_child_version_on_its_parents_scales_differs_only_where_a_weight_moved_a_step():
    """A round moves weights by much less than one int8 step: on the parent's scales the child's
    int8 values equal the parent's almost everywhere (fresh scales would re-round them all), and
    a row that outgrew its scale gets a new one instead of being clipped."""
    rng = np.random.default_rng(3)
    parent_w = {"embedding": rng.normal(0, 0.3, (200, 16)).astype(np.float32)}
    child_w = {"embedding": parent_w["embedding"] + rng.normal(0, 1e-4, (200, 16)).astype(np.float32)}
    child_w["embedding"][7] *= 2.0                                  # one row grows past its scale
    parent = artifact.quantize(parent_w)
    shared = artifact.quantize(child_w, parent)
    fresh = artifact.quantize(child_w)
    same = shared["embedding"] == parent["embedding"]
    assert np.delete(same, 7, axis=0).mean() > 0.95 and not same[7].all()
    assert (fresh["embedding"] == parent["embedding"]).mean() < same.mean()
    assert shared["embedding.scale"][7] > parent["embedding.scale"][7]
    back = artifact.dequantize(shared, [artifact.TensorSpec("embedding", (200, 16))])["embedding"]
    step = shared["embedding.scale"][:, None]
    assert np.all(np.abs(back - child_w["embedding"]) <= step / 2 + 1e-7)   # nothing clipped
