"""The update: delta, L2 clipping, CSPRNG Gaussian noise statistics, float16 encoding cost."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_runtime.update import (
    NoiseSource,
    build_update,
    clip_l2,
    decode_delta,
    encode_delta,
    encoding_error,
    privatize,
    relative_error,
    weight_delta,
)
from protocol.artifact import Manifest, TensorSpec, decode_weights, flatten

TENSORS = [TensorSpec("a", (30, 40)), TensorSpec("b", (40,)), TensorSpec("c", (7, 3, 2))]
N = sum(int(np.prod(t.shape)) for t in TENSORS)


def manifest() -> Manifest:
    return Manifest(version_id="v7", arch={}, arch_hash="x", tensors=TENSORS, graph_sha256="g",
                    tokenizer_sha256="t", weights_sha256="w")


def weights(rng: np.random.Generator, scale: float = 1.0) -> dict[str, np.ndarray]:
    return {t.name: (scale * rng.standard_normal(t.shape)).astype(np.float32) for t in TENSORS}


def test_delta_is_trained_minus_base_in_manifest_order():
    rng = np.random.default_rng(0)
    base, trained = weights(rng), weights(rng)
    d = weight_delta(trained, base, TENSORS)
    assert d.shape == (N,) and d.dtype == np.float32
    np.testing.assert_allclose(d[:1200], (trained["a"] - base["a"]).ravel())
    np.testing.assert_allclose(d[1200:1240], trained["b"] - base["b"])


def test_clip_scales_long_vectors_to_the_bound_and_leaves_short_ones():
    v = np.full(100, 1.0, np.float32)          # norm 10
    c = clip_l2(v, 2.0)
    assert c.clipped and c.norm == pytest.approx(10.0)
    assert np.linalg.norm(c.vector) == pytest.approx(2.0, rel=1e-6)
    np.testing.assert_allclose(c.vector / np.linalg.norm(c.vector), v / 10.0, rtol=1e-6)  # direction kept
    short = clip_l2(v * 0.01, 2.0)
    assert not short.clipped
    np.testing.assert_array_equal(short.vector, v * 0.01)


def test_clip_refuses_non_finite_and_bad_bounds():
    with pytest.raises(ValueError):
        clip_l2(np.array([np.nan, 1.0], np.float32), 1.0)
    with pytest.raises(ValueError):
        clip_l2(np.ones(3, np.float32), 0.0)


def test_noise_source_is_standard_normal():
    z = NoiseSource(b"fixed key: moments cannot flake.").normal(200_001)
    assert z.shape == (200_001,)
    assert abs(z.mean()) < 0.01                 # sd of the mean ~ 0.0022
    assert z.std() == pytest.approx(1.0, abs=0.01)
    assert abs(float(np.mean(z ** 3))) < 0.03   # symmetric
    assert float(np.mean(z ** 4)) == pytest.approx(3.0, abs=0.06)  # Gaussian kurtosis
    assert np.mean(np.abs(z) > 1.96) == pytest.approx(0.05, abs=0.003)
    assert abs(float(np.corrcoef(z[:-1], z[1:])[0, 1])) < 0.01  # no serial correlation


def test_noise_is_fresh_per_source_and_reproducible_with_a_key():
    assert not np.array_equal(NoiseSource().normal(10), NoiseSource().normal(10))
    key = bytes(range(32))
    np.testing.assert_array_equal(NoiseSource(key).normal(10), NoiseSource(key).normal(10))
    s = NoiseSource(key)
    assert not np.array_equal(s.normal(10), s.normal(10))  # the stream moves on
    u = NoiseSource().uniform(100_000)
    assert u.min() > 0.0 and u.max() < 1.0


def test_privatize_noise_std_is_multiplier_times_clip():
    delta = np.zeros(100_000, np.float32)
    noised, c = privatize(delta, clip_norm=0.5, noise_multiplier=1.2, source=NoiseSource())
    assert not c.clipped
    assert noised.std() == pytest.approx(0.6, rel=0.01)
    assert abs(noised.mean()) < 0.01


def test_privatize_clips_before_noising():
    delta = np.full(10_000, 3.0, np.float32)
    noised, c = privatize(delta, clip_norm=1.0, noise_multiplier=0.0)
    assert c.clipped
    assert np.linalg.norm(noised) == pytest.approx(1.0, rel=1e-5)


def test_float16_round_trip_error_is_measured_and_small():
    rng = np.random.default_rng(1)
    v = (0.01 * rng.standard_normal(N)).astype(np.float32)
    err = encoding_error(v, TENSORS, "float16")
    assert 0 < err < 1e-3
    assert encoding_error(v, TENSORS, "float32") == 0.0
    data = encode_delta(v, TENSORS, "float16")
    assert {str(a.dtype) for a in decode_weights(data).values()} == {"float16"}
    assert len(data) < 0.6 * len(encode_delta(v, TENSORS, "float32"))
    assert relative_error(v, decode_delta(data, TENSORS)) == pytest.approx(err)


def test_relative_error_edge_cases():
    z = np.zeros(4, np.float32)
    assert relative_error(z, z) == 0.0
    assert math.isinf(relative_error(z, np.ones(4, np.float32)))


def test_build_update_float16_when_accurate():
    rng = np.random.default_rng(2)
    base = weights(rng)
    trained = {k: v + 0.05 * rng.standard_normal(v.shape).astype(np.float32) for k, v in base.items()}
    up = build_update(trained, base, manifest(), example_count=12, clip_norm=1.0, noise_multiplier=0.5,
                      source=NoiseSource(bytes(32)))
    assert up.encoding == "float16" and up.rel_error < 1e-3
    assert up.base_version_id == "v7" and up.example_count == 12
    assert up.clipped and up.norm_before_clip > 1.0
    d = decode_delta(up.delta, TENSORS)
    assert d.std() == pytest.approx(0.5, rel=0.05)  # noise std = 0.5 * C dominates the clipped delta


def test_build_update_falls_back_to_float32_for_tiny_deltas():
    rng = np.random.default_rng(3)
    base = weights(rng)
    trained = {k: v + 1e-7 * rng.standard_normal(v.shape).astype(np.float32) for k, v in base.items()}
    up = build_update(trained, base, manifest(), example_count=1, clip_norm=1.0, noise_multiplier=0.0)
    assert up.encoding == "float32" and up.rel_error == 0.0
    expected = flatten(trained, TENSORS) - flatten(base, TENSORS)
    np.testing.assert_array_equal(decode_delta(up.delta, TENSORS), expected)


def test_build_update_needs_an_example():
    rng = np.random.default_rng(4)
    w = weights(rng)
    with pytest.raises(ValueError):
        build_update(w, w, manifest(), example_count=0, clip_norm=1.0, noise_multiplier=1.0)
