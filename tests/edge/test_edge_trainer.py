"""Training and evaluation tasks against a fake signature model (the real one is in tests/edge)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.trainer import TrainingAborted, Windows, evaluate, fixed_batch, train
from edge_runtime.update import NoiseSource, decode_delta
from model.tokenizer import train_tokenizer
from protocol.artifact import (
    GRAPH,
    TOKENIZER,
    Manifest,
    TensorSpec,
    sha256_file,
    write_version,
)
from protocol.text import PAD_ID
from protocol.wire import TrainPlan

B, T = 4, 6
TENSORS = [TensorSpec("embedding", (3, 2)), TensorSpec("out_bias", (5,))]
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards",
         "quietly", "hum"]


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))) for _ in range(n)]


@pytest.fixture(scope="module")
def version_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("v1")
    train_tokenizer(sentences(400), d / TOKENIZER, vocab_size=60)
    (d / GRAPH).write_bytes(b"fake graph")
    m = Manifest(version_id="v1", arch={"model": {"train_batch": B, "seq_len": T}}, arch_hash="h", tensors=TENSORS,
                 graph_sha256=sha256_file(d / GRAPH), tokenizer_sha256=sha256_file(d / TOKENIZER),
                 weights_sha256="")
    write_version(d, m, {"embedding": np.ones((3, 2), np.float32), "out_bias": np.zeros(5, np.float32)})
    return d


class FakeModel:
    """Each train step adds lr * (number of real tokens) to out_bias, so effects are countable."""

    def __init__(self) -> None:
        self.w: dict[str, np.ndarray] = {}
        self.batches: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def set_weights(self, weights):
        self.w = {k: np.array(v, np.float32) for k, v in weights.items()}

    def get_weights(self):
        return {k: v.copy() for k, v in self.w.items()}

    def runner(self, name: str):
        def train_sig(*, x, y, mask, lr):
            assert x.shape == y.shape == mask.shape == (B, T) and lr.shape == (1,)
            assert x.dtype == y.dtype == np.int32 and mask.dtype == np.float32 and lr.dtype == np.float32
            self.batches.append((x, y, mask))
            self.w["out_bias"] += lr[0] * mask.sum() / 100.0
            return {"loss": np.array([1.0 / len(self.batches)], np.float32)}

        def evaluate_sig(*, x, y, mask):
            n = float(mask.sum())
            return {"loss_sum": np.array([2.0 * n], np.float32), "top1": np.array([0.25 * n], np.float32),
                    "top3": np.array([0.5 * n], np.float32), "count": np.array([n], np.float32)}

        return {"train": train_sig, "evaluate": evaluate_sig}[name]


def plan(**kw) -> TrainPlan:
    base = {"round_id": 1, "epochs": 1, "batch_size": B, "learning_rate": 0.1, "clip_norm": 10.0,
            "noise_multiplier": 0.0, "max_examples": 1000}
    return TrainPlan(**{**base, **kw})


def test_fixed_batch_pads_with_masked_rows():
    w = Windows(np.ones((3, T), np.int32), np.ones((3, T), np.int32), np.ones((3, T), np.float32))
    x, _, m = fixed_batch(w, np.array([0, 2]), B)
    assert x.shape == (B, T) and m[:2].all() and not m[2:].any() and (x[2:] == PAD_ID).all()
    with pytest.raises(ValueError):
        fixed_batch(w, np.arange(5) % 3, B)


def test_train_runs_the_plan_and_returns_the_update(version_dir: Path):
    fake = FakeModel()
    res = train(version_dir, sentences(30, seed=1), plan(epochs=2), loader=lambda d: fake, shuffle_seed=0,
                noise=NoiseSource(bytes(32)))
    per_epoch = -(-res.examples // B)
    assert res.steps == 2 * per_epoch == len(fake.batches)
    assert res.examples >= 30                       # at least one window per text
    assert res.last_loss < res.first_loss
    up = res.update
    assert up.base_version_id == "v1" and up.example_count == res.examples
    delta = decode_delta(up.delta, TENSORS)
    tokens = sum(float(m.sum()) for _, _, m in fake.batches)
    np.testing.assert_allclose(delta[6:], 0.1 * tokens / 100.0, rtol=1e-3)   # out_bias moved
    np.testing.assert_allclose(delta[:6], 0.0, atol=1e-6)                    # embedding did not


def test_windows_follow_bos_eos_and_mask(version_dir: Path):
    fake = FakeModel()
    train(version_dir, ["the quick brown fox"], plan(), loader=lambda d: fake)
    (x, y, m), = fake.batches
    assert x[0, 0] == 2  # BOS starts the window
    n = int(m[0].sum())
    assert y[0, n - 1] == 3  # EOS is the last target
    np.testing.assert_array_equal(x[0, 1:n], y[0, :n - 1])
    assert not m[1:].any()


def test_max_examples_and_small_plan_batches(version_dir: Path):
    fake = FakeModel()
    res = train(version_dir, sentences(50, seed=2), plan(batch_size=2, max_examples=7), loader=lambda d: fake)
    assert res.examples == 7 and res.steps == 4
    assert all(m[2:].sum() == 0 for _, _, m in fake.batches)   # only 2 of B rows used per step


def test_training_stops_when_eligibility_lapses(version_dir: Path):
    fake = FakeModel()
    answers = itertools.chain([True] * 4, itertools.repeat(False))
    with pytest.raises(TrainingAborted) as e:
        train(version_dir, sentences(40, seed=3), plan(epochs=3), loader=lambda d: fake,
              eligible=lambda: next(answers))
    assert e.value.steps_done == 3 and len(fake.batches) == 3  # checked once before loading, then per step


def test_abort_reason_comes_from_the_decision(version_dir: Path):
    from edge_runtime.eligibility import Decision

    with pytest.raises(TrainingAborted, match="not on mains power"):
        train(version_dir, sentences(5), plan(), loader=lambda d: FakeModel(),
              eligible=lambda: Decision(False, ("not on mains power",)))


def test_time_limit_aborts(version_dir: Path):
    with pytest.raises(TrainingAborted, match="time limit"):
        train(version_dir, sentences(40), plan(epochs=50), loader=lambda d: FakeModel(), time_limit_s=0.0)


def test_no_text_means_no_update(version_dir: Path):
    with pytest.raises(TrainingAborted, match="no training text"):
        train(version_dir, [], plan(), loader=lambda d: FakeModel())


def test_non_finite_loss_aborts(version_dir: Path):
    class Exploding(FakeModel):
        def runner(self, name):
            return lambda **kw: {"loss": np.array([np.nan], np.float32)}

    with pytest.raises(TrainingAborted, match="not finite"):
        train(version_dir, sentences(5), plan(), loader=lambda d: Exploding())


def test_evaluate_returns_only_aggregates(version_dir: Path):
    held = sentences(9, seed=4)
    [m] = evaluate([version_dir], held, loader=lambda d: FakeModel())
    assert m.version_id == "v1"
    assert m.count > 0 and m.loss_sum == pytest.approx(2 * m.count)
    assert m.top1 == pytest.approx(0.25 * m.count) and m.top3 == pytest.approx(0.5 * m.count)
    assert set(m.to_dict()) == {"version_id", "loss_sum", "top1", "top3", "count", "words", "word_top1", "word_top3",
                                "saved", "typed"}   # numbers only
    [few] = evaluate([version_dir], held, max_examples=2, loader=lambda d: FakeModel())
    assert 0 < few.count < m.count
