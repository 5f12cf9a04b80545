"""Streaming FedAvg and the server optimizers against plain numpy."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator import aggregation as agg


def test_streaming_mean_equals_numpy_weighted_average():
    rng = np.random.default_rng(0)
    vecs = [rng.normal(size=1000).astype(np.float32) for _ in range(50)]
    weights = rng.integers(1, 500, size=50).astype(float)
    got = agg.weighted_average((v, w) for v, w in zip(vecs, weights, strict=True))   # a generator: streamed
    np.testing.assert_allclose(got, np.average(np.stack(vecs), axis=0, weights=weights), rtol=1e-5, atol=1e-7)
    assert got.dtype == np.float32


def test_streaming_mean_holds_one_accumulator():
    acc = agg.StreamingMean(10)
    for i in range(1000):
        acc.add(np.full(10, float(i), np.float32), 1.0)
    # O(model), not O(clients x model): an accumulator and one scratch vector.
    assert acc.count == 1000 and acc._sum.nbytes + acc._scratch.nbytes == 2 * 10 * 8
    np.testing.assert_allclose(acc.mean(), np.full(10, 499.5), rtol=1e-6)


def test_bounded_weight_and_preconditions():
    assert agg.bounded_weight(5, 100) == 5.0 and agg.bounded_weight(5000, 100) == 100.0
    for bad in ((0, 10), (5, 0)):
        with pytest.raises(ValueError):
            agg.bounded_weight(*bad)
    acc = agg.StreamingMean(3)
    with pytest.raises(ValueError, match="shape"):
        acc.add(np.zeros(4, np.float32), 1.0)
    with pytest.raises(ValueError, match="weight"):
        acc.add(np.zeros(3, np.float32), 0.0)
    with pytest.raises(ValueError, match="no updates"):
        acc.mean()
    with pytest.raises(ValueError, match="no updates"):
        agg.weighted_average(iter([]))


def test_fedavg_fedavgm_fedadam():
    w = np.array([1.0, -1.0], np.float32)
    d = np.array([0.5, 0.25], np.float32)
    np.testing.assert_allclose(agg.fedavg(w, d), [1.5, -0.75])
    np.testing.assert_allclose(agg.fedavg(w, d, lr=2.0), [2.0, -0.5])
    # FedAvgM: buf_1 = d, buf_2 = 0.9 d + d
    w1, buf = agg.fedavgm(w, d, None, lr=1.0, momentum=0.9)
    w2, buf2 = agg.fedavgm(w1, d, buf, lr=1.0, momentum=0.9)
    np.testing.assert_allclose(buf2, 1.9 * d, rtol=1e-6)
    np.testing.assert_allclose(w2, w + 2.9 * d, rtol=1e-6)
    # FedAdam step 1: m = 0.1 d, v = 0.01 d^2 -> step = lr * 0.1 d / (0.1 |d| + eps)
    w3, m, v = agg.fedadam(w, d, None, None, lr=0.1, beta1=0.9, beta2=0.99, eps=1e-3)
    np.testing.assert_allclose(w3, w + 0.1 * (0.1 * d) / (np.sqrt(0.01 * d * d) + 1e-3), rtol=1e-5)
    assert np.all(np.sign(w3 - w) == np.sign(d))
    np.testing.assert_allclose(m, 0.1 * d, rtol=1e-6)
    np.testing.assert_allclose(v, 0.01 * d * d, rtol=1e-5)


def test_apply_server_optimizer_dispatch_and_state():
    w, d = np.zeros(3, np.float32), np.ones(3, np.float32)
    new, state = agg.apply_server_optimizer("fedavg", w, d, {}, lr=1.0)
    assert state == {} and np.all(new == 1)
    new, state = agg.apply_server_optimizer("fedavgm", w, d, {}, lr=1.0, momentum=0.5)
    new2, _ = agg.apply_server_optimizer("fedavgm", new, d, state, lr=1.0, momentum=0.5)
    np.testing.assert_allclose(new2, 1 + 1.5)
    _, state = agg.apply_server_optimizer("fedadam", w, d, {}, lr=0.01)
    assert set(state) == {"m", "v"}
    with pytest.raises(ValueError, match="unknown"):
        agg.apply_server_optimizer("sgd", w, d, {}, lr=1.0)
    with pytest.raises(ValueError, match="shape"):
        agg.apply_server_optimizer("fedavg", w, np.ones(4, np.float32), {}, lr=1.0)


def test_robust_aggregators_bound_what_a_minority_at_the_norm_bound_can_do():
    rng = np.random.default_rng(1)
    honest = [rng.normal(0.0, 0.01, size=500).astype(np.float32) for _ in range(8)]
    boost = np.zeros(500, np.float32)
    boost[7] = 100.0                                             # the whole norm budget on one coordinate
    ups = [(v, 1.0) for v in honest] + [(boost, 1000.0)] * 2     # 2 of 10 claim a large weight
    mean = agg.aggregate("mean", iter(ups))
    median = agg.aggregate("median", iter(ups))
    trimmed = agg.aggregate("trimmed_mean", iter(ups), trim=0.2)
    assert mean[7] > 10                                          # the mean passes it through
    assert abs(median[7]) < 0.05 and abs(trimmed[7]) < 0.05     # a minority cannot move a coordinate
    stack = np.stack(honest + [boost, boost])
    np.testing.assert_allclose(median, np.median(stack, axis=0), rtol=1e-6)
    srt = np.sort(stack, axis=0)[2:8]
    np.testing.assert_allclose(trimmed, srt.mean(axis=0), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError):
        agg.aggregate("krum", iter(ups))


def test_robust_aggregators_hold_float16_updates_as_they_came_and_work_in_slices(monkeypatch):
    """Stacked whole in float32 they took three copies of every update: 1.6 GB for 100 updates of
    the default model, 7.4 GiB in a worker at 450, still 2.3 GiB after."""
    import tracemalloc

    import scipy.stats  # noqa: F401  (imported before memory is traced)

    monkeypatch.setattr(agg, "SLICE", 8192)              # the default model's ratio of slice to model
    rng = np.random.default_rng(2)
    d, n = 200_003, 24                                   # 25 slices and a ragged last one
    halves = [rng.normal(0.0, 0.01, size=d).astype(np.float16) for _ in range(n)]   # the wire form
    exact = np.stack([h.astype(np.float32) for h in halves])
    for name, whole in (("median", np.median(exact, axis=0)),
                        ("trimmed_mean", np.sort(exact, axis=0)[2:n - 2].mean(axis=0))):
        tracemalloc.start()
        got = agg.aggregate(name, ((h.astype(np.float32), 1.0) for h in halves), trim=2 / n)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        np.testing.assert_allclose(got, whole, rtol=1e-5, atol=1e-8)
        assert peak < 0.7 * exact.nbytes, (name, peak, exact.nbytes)   # 2 bytes a weight, not 12
    odd = np.full(d, 1 / 3, np.float32)                  # not a float16: kept exactly
    assert agg.aggregate("median", iter([(odd, 1.0)] * 3))[5] == np.float32(1 / 3)
    with pytest.raises(ValueError, match="size"):
        agg.aggregate("median", iter([(odd, 1.0), (odd[:5], 1.0)]))
