"""Secure-aggregation building blocks: masks cancel, dropouts are recovered from shares,
shares stay private, quantization stays inside its stated bound, Skellam noise has its variance."""

from __future__ import annotations

import math

import numpy as np
import pytest

from protocol import ddp, secagg


def _simulate(n: int, d: int, dropped: set[int], round_id: int = 7, dropout: float = 0.3):
    """A whole protocol run in memory, the way devices and coordinator do it (no transport)."""
    k, t = secagg.graph_degree(n, dropout)
    graph = secagg.neighbours(n, k, b"\x01" * 32)
    keys = [secagg.generate_keypair() for _ in range(n)]
    seeds = [bytes([i % 256]) * 32 for i in range(n)]
    inputs = [np.random.default_rng(i).integers(0, 2**32, d, dtype=np.uint32) for i in range(n)]
    # each device shares its self seed and mask key among its neighbours
    shares_of_seed = {i: dict(zip(graph[i], secagg.share_secret(seeds[i], t, k), strict=True)) for i in range(n)}
    shares_of_key = {i: dict(zip(graph[i], secagg.share_secret(keys[i][0], t, k), strict=True)) for i in range(n)}
    masked = {}
    for i in range(n):
        if i in dropped:
            continue
        y = inputs[i].copy()
        secagg.add_mask(y, seeds[i], +1)
        for j in graph[i]:
            secagg.add_mask(y, secagg.agree(keys[i][0], keys[j][1], b"mask", round_id, i, j), secagg.pair_sign(i, j))
        masked[i] = y
    total = np.zeros(d, np.uint32)
    for y in masked.values():
        total += y
    survivors = set(masked)
    self_seeds = {i: secagg.recover_secret([shares_of_seed[i][j] for j in graph[i] if j in survivors], t)
                  for i in survivors}
    dropped_keys = {j: secagg.recover_secret([shares_of_key[j][i] for i in graph[j] if i in survivors], t)
                    for j in dropped}
    out = secagg.unmask_sum(total, self_seeds, dropped_keys, {i: keys[i][1] for i in survivors}, graph, round_id)
    expect = np.zeros(d, np.uint32)
    for i in survivors:
        expect += inputs[i]
    return out, expect, masked, inputs


def test_masks_cancel_without_dropouts():
    out, expect, masked, inputs = _simulate(8, 1000, set())
    assert np.array_equal(out, expect)
    # no masked vector looks like its input
    assert all(np.mean(masked[i] == inputs[i]) < 0.01 for i in masked)


@pytest.mark.parametrize("n,dropped", [(10, {1, 4, 7}), (40, set(range(0, 40, 3)))])
def test_survivor_sum_recovered_after_dropouts(n, dropped):
    assert len(dropped) / n >= 0.3
    out, expect, _, _ = _simulate(n, 257, dropped)
    assert np.array_equal(out, expect)


def test_shamir_threshold():
    secret = bytes(range(32))
    shares = secagg.share_secret(secret, 3, 5)
    assert secagg.recover_secret(shares[2:], 3) == secret
    assert secagg.recover_secret([shares[4], shares[0], shares[2]], 3) == secret
    with pytest.raises(secagg.SecAggError):
        secagg.recover_secret(shares[:2] + shares[:1], 3)           # a repeated share is not a third
    with pytest.raises(secagg.SecAggError):
        secagg.recover_secret(shares[:2], 3)
    # two shares of a threshold-3 secret say nothing: any secret fits them (wrong guess != secret)
    mixed = shares[:2] + [secagg.share_secret(bytes(32), 3, 5)[2]]
    try:
        assert secagg.recover_secret(mixed, 3) != secret
    except secagg.SecAggError:
        pass                                             # (most often: not even a 32-byte value)


def test_share_encryption_binds_round_and_parties():
    a_sk, a_pk = secagg.generate_keypair()
    b_sk, b_pk = secagg.generate_keypair()
    k_ab = secagg.agree(a_sk, b_pk, b"enc", 3, 1, 2)
    assert k_ab == secagg.agree(b_sk, a_pk, b"enc", 3, 2, 1)
    assert k_ab != secagg.agree(a_sk, b_pk, b"mask", 3, 1, 2)
    ct = secagg.encrypt_share(k_ab, 3, 1, 2, b"x" * secagg.PLAINTEXT_BYTES)
    assert len(ct) == secagg.CIPHERTEXT_BYTES
    assert secagg.decrypt_share(k_ab, 3, 1, 2, ct) == b"x" * secagg.PLAINTEXT_BYTES
    for rid, s, r in ((4, 1, 2), (3, 2, 1), (3, 1, 3)):
        with pytest.raises(secagg.SecAggError):
            secagg.decrypt_share(k_ab, rid, s, r, ct)


def test_graph_is_sparse_symmetric_and_deterministic():
    k, t = secagg.graph_degree(500, 0.3)
    assert k < 499 and k % 2 == 0 and t == k // 2 + 1
    g = secagg.neighbours(500, k, b"s" * 32)
    assert g == secagg.neighbours(500, k, b"s" * 32) and g != secagg.neighbours(500, k, b"r" * 32)
    assert all(len(nb) == k and i not in nb for i, nb in enumerate(g))
    assert all(i in g[j] for i, nb in enumerate(g) for j in nb)
    assert secagg.graph_degree(10, 0.3) == (9, 5)          # small cohorts: complete graph
    k2, _ = secagg.graph_degree(5000, 0.3)
    assert k2 < 2 * k                                       # degree grows like log n, not n


def test_quantization_error_within_stated_bound():
    rng = np.random.default_rng(0)
    d, n, clip = 5000, 20, 1.0
    xs = [rng.normal(size=d) for _ in range(n)]
    xs = [x * min(1.0, clip / np.linalg.norm(x)) for x in xs]
    scale = ddp.choose_scale(clip, n, 0.0, d, n)
    total = np.zeros(d, np.uint32)
    for i, x in enumerate(xs):
        total += ddp.encode(x, scale, 0.0, seed=i)
    mean = ddp.decode_sum(total, scale, n)
    err = np.abs(mean - np.mean(xs, axis=0))
    assert err.max() <= ddp.mean_error_bound(scale) + 1e-6
    assert err.max() > 0                                    # it really was rounded
    # the sum of n devices at the largest values cannot wrap
    assert n * (scale * clip + 1) < 2**31


def test_stochastic_rounding_is_unbiased():
    rng = np.random.default_rng(1)
    x = np.full(200_000, 0.3)
    q = ddp.stochastic_round(x, 1.0, rng)
    assert set(np.unique(q)) == {0, 1}
    assert abs(q.mean() - 0.3) < 0.005


def test_distributed_skellam_noise_sums_to_the_central_variance():
    d, n_min, z, clip = 20000, 10, 1.0, 1.0
    scale = 50.0
    mu = ddp.skellam_mu(z, scale, clip, d, n_min)
    total = np.zeros(d, np.uint32)
    for i in range(n_min):
        total += ddp.encode(np.zeros(d), scale, mu, seed=100 + i)
    noise = total.view(np.int32).astype(np.float64)
    want = z * ddp.sensitivity_l2(scale, clip, d)
    assert math.isclose(noise.std(), want, rel_tol=0.03)
    assert abs(noise.mean()) < 0.05 * want


def test_the_scale_keeps_each_devices_skellam_where_numpy_samples_it_exactly():
    """A discovery round of 2 devices at z = 2 gave each device mu 2.4e15, where numpy's Poisson
    draws std 22% high with tails far too heavy: 57 words "found" that no device voted for."""
    from protocol import discovery

    for n, z, d in ((2, 2.0, 140_000), (8, 0.5, 140_000), (2, 0.5, 1_356_048), (100, 1.0, 1_356_048)):
        scale = ddp.choose_scale(discovery.SENSITIVITY, n, z, d, n)
        assert ddp.skellam_mu(z, scale, discovery.SENSITIVITY, d, n) <= ddp.MAX_SAMPLED_MU * 1.0001
        assert 1 / scale < 1e-6                      # the rounding this costs stays negligible
    scale = ddp.choose_scale(discovery.SENSITIVITY, 2, 2.0, 140_000, 2)
    mu = ddp.skellam_mu(2.0, scale, discovery.SENSITIVITY, 140_000, 2)
    noise = ddp.skellam(mu, 140_000, np.random.default_rng(3)).astype(np.float64) / math.sqrt(2 * mu)
    assert abs(noise.std() - 1) < 0.01 and np.count_nonzero(np.abs(noise) > 4.5) < 6   # ~1 expected


def test_the_graph_degree_of_a_cohort_of_thousands_is_computed_not_an_overflow():
    """`comb(k, m) * p**m` overflowed a float past k of about 1,030: a cohort of 2,000 at design
    dropout 0.45 (a setting Config accepts) raised OverflowError in every request's maintenance."""
    assert secagg.graph_degree(2000, 0.45) == (1999, 1000)
    k, t = secagg.graph_degree(20000, 0.4)
    assert 1000 < k < 19999 and t == k // 2 + 1
    exact = sum(math.comb(40, m) * 0.3**m * 0.7 ** (40 - m) for m in range(21, 41))   # small k: exact
    assert secagg._binom_tail(40, 0.3, 21) == pytest.approx(exact, rel=1e-9)


def test_the_graph_degree_by_bisection_is_the_smallest_degree_that_suffices():
    """Found by bisection (a step through every even degree took seconds for large cohorts):
    it must be the first even degree whose failure bound holds, as the step found it."""
    def first(n: int, dropout: float) -> int:
        k = 2
        while k < n - 1 and n * secagg._binom_tail(k, dropout, k - (k // 2 + 1) + 1) > 2.0**secagg.MAX_FAILURE_LOG2:
            k += 2
        return max(min(k, n - 1), min(secagg.MIN_DEGREE, n - 1))

    for n in (2, 3, 10, 17, 18, 57, 200, 1001):
        for dropout in (0.0, 0.01, 0.1, 0.3, 0.45, 0.49):
            assert secagg.graph_degree(n, dropout)[0] == first(n, dropout), (n, dropout)


def test_a_design_dropout_of_zero_keeps_the_degree_floor():
    """At design dropout 0 the failure bound alone gave k = 2 in any cohort: two devices of the
    coordinator's own beside a device could unmask it (a privacy audit). The floor holds, an even
    degree (a Harary graph), or every other device in a cohort smaller than it."""
    assert secagg.graph_degree(200, 0.0) == (secagg.MIN_DEGREE, secagg.MIN_DEGREE // 2 + 1)
    assert secagg.MIN_DEGREE % 2 == 0
    assert secagg.graph_degree(10, 0.0) == (9, 5)
    assert secagg.graph_degree(200, 0.3)[0] > secagg.MIN_DEGREE   # the failure bound wins where larger


@pytest.mark.parametrize(("d", "n", "z"), [(1, 2, 1.0), (40, 3, 0.0), (5000, 8, 0.5), (5000, 20, 2.0)])
def test_honest_means_stay_inside_the_norm_bound_and_a_random_vector_does_not(d, n, z):
    """`mean_norm_bound` is what the coordinator checks a secure round's mean against: every honest
    sum, clipped updates at the clip norm with their Skellam shares, stays inside it, and one
    device's masked vector of random bytes (right length, not made by `encode`) lands outside: the
    scale fills the ring, so random bytes read as about (n + 10 z) / n clip norms per coordinate,
    against the noise's z / n."""
    rng = np.random.default_rng(d + n)
    clip = 3.0
    scale = ddp.choose_scale(clip, n, z, d, n)
    mu = ddp.skellam_mu(z, scale, clip, d, n) if z > 0 else 0.0
    bound = ddp.mean_norm_bound(clip, scale, mu, n, d)
    worst = 0.0
    for trial in range(30):
        xs = [rng.normal(size=d) for _ in range(n)]
        xs = [x * clip / np.linalg.norm(x) for x in xs]            # every update at the clip norm
        xs[0] = xs[1] = xs[0] * 0 + xs[1]                          # two alike: the mean's norm is largest
        encoded = [ddp.encode(x, scale, mu, seed=1000 * trial + i) for i, x in enumerate(xs)]
        honest = ddp.decode_sum(np.sum(encoded, axis=0, dtype=np.uint32), scale, n)
        worst = max(worst, float(np.linalg.norm(honest.astype(np.float64))))
        encoded[0] = rng.integers(0, 2**32, size=d, dtype=np.uint32)
        forged = ddp.decode_sum(np.sum(encoded, axis=0, dtype=np.uint32), scale, n)
        if d > 1:   # one coordinate of random bytes may fall anywhere; forty of them do not
            assert np.linalg.norm(forged.astype(np.float64)) > 3 * bound
    assert worst <= bound
    assert worst > 0.3 * clip   # a bound that honest sums come near: not vacuous at this noise
