"""Pure decision functions: update validation, privacy accounting, canary cohort and decision."""

from __future__ import annotations

import math

import numpy as np
import pytest

from coordinator import privacy, rollout
from coordinator.validation import UpdateRejected, norm_bound, validate_update
from protocol import wire
from protocol.artifact import TensorSpec

TENSORS = [TensorSpec("a", (4, 4)), TensorSpec("b", (4,))]
PLAN = wire.TrainPlan(round_id=1, epochs=1, batch_size=8, learning_rate=0.1, clip_norm=1.0, noise_multiplier=0.0,
                      max_examples=50)


def _upd(scale: float, dtype=np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {t.name: (scale * rng.normal(size=t.shape) / 20).astype(dtype) for t in TENSORS}


def test_validate_update_accepts_and_returns_vector_and_norm():
    u = _upd(1.0)
    vec, norm = validate_update(u, TENSORS, encoding="float32", example_count=10, plan=PLAN)
    assert vec.shape == (20,) and norm == pytest.approx(float(np.linalg.norm(vec)))
    vec16, _ = validate_update(_upd(1.0, np.float16), TENSORS, encoding="float16", example_count=1, plan=PLAN)
    assert vec16.dtype == np.float32


@pytest.mark.parametrize("weights,kw,code", [
    (_upd(1.0), {"example_count": 0}, wire.E_EXAMPLE_COUNT),
    (_upd(1.0), {"example_count": 51}, wire.E_EXAMPLE_COUNT),
    (_upd(1.0), {"encoding": "float16"}, wire.E_MALFORMED),
    ({"a": np.zeros((4, 4), np.float32)}, {}, wire.E_MALFORMED),
    (_upd(1.0) | {"b": np.zeros(5, np.float32)}, {}, wire.E_MALFORMED),
    (_upd(1.0) | {"b": np.array([0, np.inf, 0, 0], np.float32)}, {}, wire.E_MALFORMED),
    (_upd(100.0), {}, wire.E_NORM),
])
def test_validate_update_rejects_with_code(weights, kw, code):
    args = {"encoding": "float32", "example_count": 10, "plan": PLAN} | kw
    with pytest.raises(UpdateRejected) as e:
        validate_update(weights, TENSORS, **args)
    assert e.value.code == code and e.value.message


def test_norm_bound_allows_honest_noise_only():
    d, clip, sigma = 20_000, 1.0, 0.5
    bound = norm_bound(clip, sigma, d)
    rng = np.random.default_rng(0)
    for _ in range(20):   # an honest clipped + noised update is always inside
        g = rng.normal(size=d)
        honest = clip * g / np.linalg.norm(g) + rng.normal(scale=sigma * clip, size=d)
        assert np.linalg.norm(honest) < bound
    assert norm_bound(clip, 0.0, d) == pytest.approx(1.001)
    assert bound < 2 * sigma * clip * math.sqrt(d)                    # but not arbitrarily loose


def test_privacy_accounting():
    r = privacy.RoundPrivacy(0.01, 1.0)
    assert privacy.epsilon([], 1e-6) == 0.0
    assert privacy.epsilon([privacy.RoundPrivacy(0.01, 0.0)], 1e-6) == math.inf
    e1000 = privacy.epsilon([r] * 1000, 1e-6)
    assert e1000 == pytest.approx(2.44, abs=0.01)                     # the figure checked in libraries.md
    assert privacy.epsilon([r] * 10, 1e-6) < privacy.epsilon([r] * 100, 1e-6) < e1000
    s = privacy.summarize([privacy.RoundPrivacy(0.1, 1.0)] * 3, 1e-6)
    assert 0 < s["epsilon"] < s["epsilon_local"] and s["rounds"] == 3 and "RDP" in s["accountant"]
    with pytest.raises(ValueError):
        privacy.RoundPrivacy(0.0, 1.0)
    with pytest.raises(ValueError):
        privacy.epsilon([r], 0.0)


@pytest.mark.parametrize("sigma", [1e-160, 1e-170, 1e-300])
def test_a_noise_multiplier_too_small_to_account_is_no_noise(sigma):
    """dp-accounting's RDP of 1 / sigma**2 overflows there: a round at 1e-160 read epsilon 0.0,
    one at 1e-170 divided by zero (and a manifest with it crashed import-version)."""
    for q in (0.5, 1.0):
        assert privacy.epsilon([privacy.RoundPrivacy(q, sigma)], 1e-6) == math.inf
    s = privacy.summarize([privacy.RoundPrivacy(0.5, sigma)], 1e-6)
    assert s["epsilon"] == s["epsilon_local"] == math.inf
    assert privacy.epsilon([privacy.RoundPrivacy(0.5, 1e-100)], 1e-6) > 1e199   # still accounted


def _m(vid: str, top3: float, words: int = 100, count: float = 100.0, loss: float = 200.0) -> wire.VersionMetrics:
    """Metrics whose word-level top-3 is `top3` hits of `words` (next-piece figures alongside)."""
    return wire.VersionMetrics(vid, loss_sum=loss, top1=min(top3, count) / 2, top3=min(top3, count), count=count,
                               words=words, word_top1=int(top3 // 2), word_top3=int(top3), saved=0, typed=words)


def test_canary_cohort_is_stable_and_sized():
    ids = [f"d-{i}" for i in range(4000)]
    share = sum(rollout.in_canary(i, 0.1) for i in ids) / len(ids)
    assert 0.08 < share < 0.12
    assert [rollout.in_canary(i, 0.1) for i in ids[:50]] == [rollout.in_canary(i, 0.1) for i in ids[:50]]
    assert all(rollout.in_canary(i, 0.2) for i in ids if rollout.in_canary(i, 0.1))   # cohorts nest
    assert all(rollout.in_canary(i, 1.0) for i in ids[:100])


def test_canary_decision():
    good = [(_m("c", 41), _m("s", 40)), (_m("c", 40), _m("s", 40))]
    d = rollout.decide(good, min_reports=2, tolerance=0.005)
    assert d.action == rollout.PROMOTE and d.numbers["candidate"]["word_top3_acc"] == pytest.approx(0.405)
    assert d.numbers["word_top3_diff"] == pytest.approx(0.005)
    assert rollout.decide(good[:1], min_reports=2, tolerance=0.005).action == rollout.WAIT
    bad = [(_m("c", 30), _m("s", 40))] * 3
    d = rollout.decide(bad, min_reports=2, tolerance=0.05)
    assert d.action == rollout.REJECT and d.numbers["word_top3_diff"] == pytest.approx(-0.1)
    # Exactly at the tolerance still promotes; just beyond rejects.
    assert rollout.decide([(_m("c", 39), _m("s", 40))] * 2, min_reports=2, tolerance=0.01).action == rollout.PROMOTE
    assert rollout.decide([(_m("c", 38), _m("s", 40))] * 2, min_reports=2, tolerance=0.01).action == rollout.REJECT
    # The bar is never finer than one word of a canary's text: one word worse on 150 words passes
    # a 0.5-point tolerance, two words do not.
    assert rollout.decide([(_m("c", 39, words=150), _m("s", 40, words=150))] * 3, min_reports=3,
                          tolerance=0.005).action == rollout.PROMOTE
    worse = rollout.decide([(_m("c", 38, words=150), _m("s", 40, words=150))] * 3, min_reports=3, tolerance=0.005)
    assert worse.action == rollout.REJECT
    # and the verdict says why its bar is not the tolerance (a report read "< -0.0067" under a
    # tolerance of 0.005 with nothing saying why)
    assert "-0.0067 (one word of a canary's 150 scored words, above the tolerance 0.005)" in worse.reason
    assert "one word" not in d.reason   # a bar that is the tolerance needs no word
    # Devices that scored no words have no vote.
    assert rollout.decide([(_m("c", 0, 0), _m("s", 0, 0))] * 3, min_reports=2, tolerance=0).action == rollout.WAIT
    with pytest.raises(ValueError):
        rollout.decide(good, min_reports=0, tolerance=0.0)


def test_canary_decision_is_per_device_and_robust_to_a_minority():
    """Failed on the old sum-of-counts pool: one device claiming a huge count carried the vote."""
    honest = [(_m("c", 30), _m("s", 40))] * 8                      # every honest canary: 10 points worse
    liar = (_m("c", 10**6, words=10**6, count=10**6), _m("s", 0, words=10**6, count=10**6))
    assert rollout.decide(honest + [liar], min_reports=5, tolerance=0.01).action == rollout.REJECT
    sybils = [(_m("c", 100), _m("s", 0))] * 2                       # 20 % of 10 canaries
    assert rollout.decide(honest + sybils, min_reports=5, tolerance=0.01).action == rollout.REJECT
    # ... and a minority cannot veto an honest improvement either.
    better = [(_m("c", 45), _m("s", 40))] * 8
    assert rollout.decide(better + [(_m("c", 0), _m("s", 100))] * 2, min_reports=5,
                          tolerance=0.01).action == rollout.PROMOTE
    assert rollout.trimmed_mean([0, 1, 2, 3, 4, 5, 6, 7, 8, 1000]) == pytest.approx(4.5)


def test_a_candidate_with_a_broken_lstm_is_rejected_whatever_its_strip_measured():
    """A random-weights candidate was promoted: on a canary's ~10 words the
    keyboard's n-gram and the user's own words keep its strip within one word of the stable one's,
    and the bar is never finer than a word. Its next-token loss (50.1 against 3.4) says it is
    broken: past BROKEN_LOSS_RATIO times the stable's, the median device rejects it first."""
    def m(vid, word_top3, loss_per_token, count=30.0, words=10):
        return wire.VersionMetrics(vid, loss_sum=loss_per_token * count, top1=0.0, top3=0.0, count=count,
                                   words=words, word_top1=0, word_top3=word_top3, saved=0, typed=50)

    broken = [(m("c", 1, 50.1), m("s", 2, 3.4))] * 3
    assert rollout.decide([(m("c", 1, 3.4), m("s", 2, 3.4))] * 3, min_reports=3, tolerance=0.005).action \
        == rollout.PROMOTE                                   # one word of ten worse: passes, as before
    d = rollout.decide(broken, min_reports=3, tolerance=0.005)
    assert d.action == rollout.REJECT and "next-token loss 14.74 times" in d.reason, d.reason
    # an honest round's few percent pass; one liar of three cannot sink a good candidate
    assert rollout.decide([(m("c", 2, 3.5), m("s", 2, 3.4))] * 3, min_reports=3, tolerance=0.005).action \
        == rollout.PROMOTE
    assert rollout.decide(broken[:1] + [(m("c", 2, 3.3), m("s", 2, 3.4))] * 2, min_reports=3,
                          tolerance=0.005).action == rollout.PROMOTE
    # a device that measured no next-token loss has no vote on it
    assert rollout.decide([(m("c", 1, 0.0, count=0.0), m("s", 2, 0.0, count=0.0))] * 3, min_reports=3,
                          tolerance=0.005).action == rollout.PROMOTE


def test_rollout_statements_go_on_increasing_when_the_clock_is_set_back(tmp_path, monkeypatch, caplog):
    """The statements' numbers were the signing time: a service run an hour fast, then right,
    signed numbers below those devices had seen, and every device refused every switch, a
    rollback too, for that hour, with nothing said on the coordinator. A
    lease in the database carries the numbers over the step back, across a restart too."""
    import logging
    import time as real_time

    from coordinator import rollout_signing
    from tests.helpers.coordinator_fakes import FakeDevice, make_config, make_version, serve

    cfg = make_config(tmp_path)
    ahead = real_time.time() + 3600
    clock = {"t": ahead}
    monkeypatch.setattr(rollout_signing.time, "time", lambda: clock["t"])
    seen = []
    with serve(cfg) as s:
        make_version(tmp_path / "v0")
        s.coord.import_version(tmp_path / "v0")
        d = FakeDevice(s.url, s.coord.create_enrollment_key())
        for _ in range(3):
            seen.append(d.checkin().rollout.seq)
            clock["t"] += 1.0
        clock["t"] = ahead - 3600   # set right while it runs
        seen.append(d.checkin().rollout.seq)
    caplog.set_level(logging.WARNING, logger="coordinator.rollout_signing")
    with serve(cfg) as s:           # and after a restart on the right clock
        d2 = FakeDevice.__new__(FakeDevice)
        d2.__dict__.update(d.__dict__, url=s.url)
        for _ in range(2):
            clock["t"] += 1.0
            seen.append(d2.checkin().rollout.seq)
    assert seen == sorted(seen) and len(set(seen)) == len(seen), seen
    assert seen[3] > seen[2] >= int(ahead * 1000) and seen[-1] - seen[0] < 600_000   # not a jump ahead
    assert any("behind the rollout statements" in r.getMessage() for r in caplog.records)


def test_rollout_numbers_of_two_workers_stay_above_each_others_after_a_step_back(tmp_path, monkeypatch):
    """Two processes on one database (gunicorn's workers): one that last renewed before the other
    signed later, then saw the clock go back 40 s, signed below the other's numbers.
    Each process notices its host's step against the monotonic clock and goes on from the lease
    the database holds, which no number signed reaches."""
    import types

    from coordinator import rollout_signing
    from coordinator.rollout_signing import SequenceClock
    from tests.helpers.coordinator_fakes import make_config, serve

    wall, mono = {"t": 1_000_000.0}, {"t": 50.0}
    monkeypatch.setattr(rollout_signing, "time", types.SimpleNamespace(time=lambda: wall["t"],
                                                                       monotonic=lambda: mono["t"]))

    def tick(seconds):
        wall["t"] += seconds
        mono["t"] += seconds

    def sign(clock):
        if clock.due():
            clock.renew(s.coord)
        return clock.next()

    with serve(make_config(tmp_path)) as s:
        a, c = SequenceClock(), SequenceClock()
        seen = [sign(c)]
        for _ in range(11):   # a signs for 55 s; c signs nothing meanwhile
            tick(5.0)
            seen.append(sign(a))
        wall["t"] -= 40.0     # the host's clock set back 40 s
        seen += [sign(c), sign(a)]
        tick(1.0)
        seen += [sign(c), sign(a)]
    assert seen == sorted(seen), str([x - seen[0] for x in seen])   # devices refuse lower, not equal
    assert seen[-1] - seen[0] < 80_000   # carried over the step, not thrown far ahead
