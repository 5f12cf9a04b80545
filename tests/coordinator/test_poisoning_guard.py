"""Model poisoning guard: a few devices sending large, well-formed updates move the aggregate no
further than the norm bound and the per-update weight cap allow.

With weights w_i = min(example_count_i, max_example_weight) and every accepted update's norm at
most B = validation.norm_bound(clip, noise multiplier, d), the aggregate's mean delta is
m = (W_h m_h + W_a m_a) / W, so its distance from the honest devices' mean m_h is
(W_a / W) * ||m_a - m_h|| <= (W_a / W) * (B + ||m_h||). The test sends attackers that try the
largest influence the protocol could give them (norm just under B, all pointing the same way,
the largest example count) and some that try more (just over B, too many examples): the latter
are refused and the former stay within that bound.
"""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.validation import norm_bound
from protocol import artifact, wire
from tests.helpers.coordinator_fakes import SHAPES, FakeDevice, make_config, make_version, random_delta, serve

TENSORS = [artifact.TensorSpec(k, s) for k, s in SHAPES.items()]
D = sum(int(np.prod(s)) for s in SHAPES.values())
CLIP, HONEST, ATTACKERS, HONEST_EXAMPLES, MAX_EXAMPLES, CAP = 1.0, 8, 2, 20, 1000, 50


def _scaled(direction: np.ndarray, norm: float) -> dict[str, np.ndarray]:
    v = direction / np.linalg.norm(direction) * norm
    return artifact.unflatten(v.astype(np.float32), TENSORS)


@pytest.mark.parametrize("noise_multiplier", [0.0, 0.5])
def test_large_well_formed_updates_move_the_aggregate_only_as_far_as_the_bound_allows(tmp_path, noise_multiplier):
    cfg = make_config(tmp_path, goal_count=HONEST + ATTACKERS, min_count=HONEST, overselect=1.5, clip_norm=CLIP,
                      noise_multiplier=noise_multiplier, max_examples=MAX_EXAMPLES, max_example_weight=CAP)
    bound = norm_bound(CLIP, noise_multiplier, D)
    with serve(cfg) as s:
        _, base = make_version(tmp_path / "v0")
        s.coord.import_version(tmp_path / "v0")
        key = s.coord.create_enrollment_key()
        honest = [FakeDevice(s.url, key) for _ in range(HONEST)]
        attackers = [FakeDevice(s.url, key) for _ in range(ATTACKERS + 2)]
        rid = s.coord.start_round()
        for d in honest + attackers:
            assert d.checkin().kind == wire.TASK_TRAIN
        direction = np.ones(D, np.float64)                 # every attacker pushes the same way

        # Trying for more than the protocol gives: over the norm bound, or over max_examples.
        r = attackers[-1].upload(_scaled(direction, bound * 1.01), round_id=rid, base="v0000", examples=MAX_EXAMPLES)
        assert (r.status_code, r.json()["error"]) == (422, wire.E_NORM), r.text
        r = attackers[-2].upload(_scaled(direction, bound * 0.5), round_id=rid, base="v0000",
                                 examples=MAX_EXAMPLES + 1)
        assert (r.status_code, r.json()["error"]) == (422, wire.E_EXAMPLE_COUNT), r.text

        honest_deltas = []
        for i, d in enumerate(honest):
            delta = random_delta(i, scale=0.02)
            honest_deltas.append(artifact.flatten(delta, TENSORS).astype(np.float64))
            assert d.upload(delta, round_id=rid, base="v0000", examples=HONEST_EXAMPLES).status_code == 200
        # The most the protocol allows: norm just under the bound, the largest example count.
        for d in attackers[:ATTACKERS]:
            r = d.upload(_scaled(direction, bound * 0.999), round_id=rid, base="v0000", examples=MAX_EXAMPLES)
            assert r.status_code == 200, r.text
        rnd = s.coord.get_round(rid)
        assert rnd["status"] == "done" and rnd["accepted"] == HONEST + ATTACKERS, rnd
        got = artifact.decode_weights(s.coord.version_file(rnd["result_version_id"], "weights")[0])

    moved = artifact.flatten(got, TENSORS).astype(np.float64) - artifact.flatten(base, TENSORS)
    honest_mean = np.mean(honest_deltas, axis=0)
    w_h, w_a = HONEST * min(HONEST_EXAMPLES, CAP), ATTACKERS * min(MAX_EXAMPLES, CAP)
    shift = float(np.linalg.norm(moved - honest_mean))
    allowed = w_a / (w_h + w_a) * (bound + float(np.linalg.norm(honest_mean)))
    assert shift <= allowed * (1 + 1e-5), (shift, allowed)
    assert float(np.linalg.norm(moved)) <= bound * (1 + 1e-5)   # a mean of updates within B stays within B
    assert shift > 0.5 * allowed                                 # the attack did land: the bound is tight
    print(f"noise multiplier {noise_multiplier}: bound {bound:.3f}, attackers' shift {shift:.3f} "
          f"<= allowed {allowed:.3f} (weight share {w_a / (w_h + w_a):.2f})")


def test_median_aggregator_keeps_a_concentrated_attack_out_of_the_aggregate(tmp_path):
    """With aggregator=median the same two attackers, now spending the whole bound on one
    coordinate, move that coordinate by no more than the honest spread (the mean moves it by
    about bound / 5)."""
    cfg = make_config(tmp_path, goal_count=HONEST + ATTACKERS, min_count=HONEST, overselect=1.0, clip_norm=CLIP,
                      max_examples=MAX_EXAMPLES, max_example_weight=CAP, aggregator="median")
    bound = norm_bound(CLIP, 0.0, D)
    with serve(cfg) as s:
        _, base = make_version(tmp_path / "v0")
        s.coord.import_version(tmp_path / "v0")
        key = s.coord.create_enrollment_key()
        devices = [FakeDevice(s.url, key) for _ in range(HONEST + ATTACKERS)]
        rid = s.coord.start_round()
        for d in devices:
            assert d.checkin().kind == wire.TASK_TRAIN
        spike = np.zeros(D)
        spike[3] = 1.0
        honest = []
        for i, d in enumerate(devices[:HONEST]):
            delta = random_delta(i, scale=0.02)
            honest.append(artifact.flatten(delta, TENSORS))
            assert d.upload(delta, round_id=rid, base="v0000", examples=HONEST_EXAMPLES).status_code == 200
        for d in devices[HONEST:]:
            assert d.upload(_scaled(spike, bound * 0.999), round_id=rid, base="v0000",
                            examples=MAX_EXAMPLES).status_code == 200
        rnd = s.coord.get_round(rid)
        got = artifact.decode_weights(s.coord.version_file(rnd["result_version_id"], "weights")[0])
        version = next(v for v in s.coord.list_versions() if v["version_id"] == rnd["result_version_id"])
    moved = artifact.flatten(got, TENSORS) - artifact.flatten(base, TENSORS)
    honest = np.stack(honest)
    assert version["metrics"]["aggregator"] == "median"
    assert honest[:, 3].min() - 1e-6 <= moved[3] <= honest[:, 3].max() + 1e-6, moved[3]
    np.testing.assert_allclose(moved, np.median(np.vstack([honest] + [artifact.flatten(_scaled(spike, bound * 0.999),
                                                                                         TENSORS)] * 2), axis=0),
                               atol=1e-4)
