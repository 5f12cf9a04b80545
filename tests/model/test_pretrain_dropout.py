"""Dropout is a central-pretraining regulariser only: it changes training, never the exported model."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="model tests need the full environment")

from model.lstm import NextWordLSTM  # noqa: E402
from model.pretrain import TrainSettings, train_windows, validation_loss  # noqa: E402
from protocol.arch import ModelConfig  # noqa: E402

CFG = ModelConfig(vocab_size=64, embed_dim=8, hidden_dim=16, train_batch=4, seq_len=6)


def _windows(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.integers(4, CFG.vocab_size, (n, CFG.seq_len)).astype(np.int32)
    return x, np.roll(x, -1, axis=1), np.ones_like(x, dtype=np.float32)


def test_no_dropout_is_deterministic_and_dropout_changes_the_logits():
    m = NextWordLSTM(CFG, seed=0)
    x = tf.constant(_windows(4)[0])
    plain = m.window_logits(x).numpy()
    np.testing.assert_array_equal(plain, m.window_logits(x, 0.0).numpy())
    dropped = m.window_logits(x, 0.5).numpy()
    assert dropped.shape == plain.shape
    assert not np.allclose(dropped, plain)


def test_training_with_dropout_learns_and_leaves_evaluation_untouched():
    data = _windows(64)
    before = NextWordLSTM(CFG, seed=0)
    start = before.loss(*map(tf.constant, data)).numpy()
    m = NextWordLSTM(CFG, seed=0)
    hist = train_windows(m, data, data, TrainSettings(epochs=3, batch_size=16, learning_rate=1e-2, dropout=0.3,
                                                      progress=False, patience=3))
    assert hist.val_loss[-1] < start                       # it trained
    # validation is scored without dropout: the best epoch's recorded loss is the restored
    # weights' loss recomputed, and recomputing it gives the same number again
    again = validation_loss(m, *data)
    assert again == pytest.approx(hist.val_loss[hist.best_epoch], rel=1e-6)
    assert validation_loss(m, *data) == again


def test_an_epoch_cap_takes_a_share_of_the_windows_and_the_history_records_it(capsys):
    """`steps_per_epoch` (tools.simulate's central cap) trains on that many batches per epoch and
    records how many windows an epoch took out of how many, which the simulation report prints."""
    data = _windows(64)
    capped = train_windows(NextWordLSTM(CFG, seed=0), data, data,
                           TrainSettings(epochs=2, steps_per_epoch=2, batch_size=16, progress=False, patience=3))
    assert (capped.windows, capped.windows_per_epoch) == (64, 32)
    assert capped.tokens_seen == 2 * 32 * CFG.seq_len
    assert "capped: each epoch a fresh random 50% of them" in capsys.readouterr().out
    full = train_windows(NextWordLSTM(CFG, seed=0), data, data,
                         TrainSettings(epochs=1, steps_per_epoch=10, batch_size=16, progress=False, patience=3))
    assert (full.windows, full.windows_per_epoch) == (64, 64)
    assert "capped" not in capsys.readouterr().out


def test_without_a_bar_an_epoch_says_how_far_it_is_every_minute(capsys, monkeypatch):
    """Under a log file (no bar) a simulation's central training said nothing for 26 minutes."""
    import model.pretrain as pretrain

    data = _windows(64)
    monkeypatch.setattr(pretrain, "QUIET_PROGRESS_S", 0.0)    # a minute, compressed
    train_windows(NextWordLSTM(CFG, seed=0), data, data, TrainSettings(epochs=1, batch_size=16, progress=False))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("epoch 1/1: step")]
    assert len(lines) == 4 and lines[-1].startswith("epoch 1/1: step 4/4 (100%), loss ") and "min left" in lines[0]
    monkeypatch.setattr(pretrain, "QUIET_PROGRESS_S", 3600.0)
    train_windows(NextWordLSTM(CFG, seed=0), data, data, TrainSettings(epochs=1, batch_size=16, progress=False))
    assert "epoch 1/1: step" not in capsys.readouterr().out    # not on every step of a short one


def test_progress_says_what_is_left_of_every_epoch_not_only_this_one(capsys, monkeypatch):
    """A simulation's central reference trains 4 epochs for 35 minutes: its lines and its bar said
    only what was left of the epoch at hand, so nobody could tell when the stage would end."""
    import model.pretrain as pretrain

    # halfway through epoch 2 of 4 of 10 steps: 15 steps in 3 min (validation included), 12 s a step
    line = pretrain.quiet_progress(1, 4, 5, 10, 3.5, 60.0, 180.0)
    assert line.endswith("about 1 min left in this epoch, 5 min left in all 4 epochs"), line
    data = _windows(64)
    monkeypatch.setattr(pretrain, "QUIET_PROGRESS_S", 0.0)
    train_windows(NextWordLSTM(CFG, seed=0), data, data,
                  TrainSettings(epochs=2, batch_size=16, progress=False, patience=3))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ": step " in ln]
    assert len(lines) == 8 and all(ln.endswith("left in all 2 epochs") for ln in lines), lines
    assert lines[-1].endswith(" 0 min left in all 2 epochs")
    # the bar counts every epoch's steps (4 a epoch here), so its ETA is the whole stage's
    train_windows(NextWordLSTM(CFG, seed=0), data, data,
                  TrainSettings(epochs=2, batch_size=16, progress=True, patience=3))
    bar = capsys.readouterr().err
    assert "epoch 2/2" in bar and "8/8" in bar and "/4 " not in bar, bar[-500:]
