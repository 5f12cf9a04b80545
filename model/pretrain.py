"""Central training in TensorFlow: version 0 on proxy text, or a central reference model.

Uses Adam (central training is not bound by what the on-device `train` signature can do),
a validation pass per epoch, early stopping on validation loss, and keeps the best weights.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from model.lstm import NextWordLSTM
from protocol.arch import ModelConfig
from protocol.text import encode_texts, windows

log = logging.getLogger(__name__)


def batches(x: np.ndarray, y: np.ndarray, m: np.ndarray, batch: int, *, rng: np.random.Generator | None = None,
            fixed: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Batches in shuffled (rng) or file order. `fixed` pads the last batch with masked rows,
    because the TFLite signatures take one fixed batch shape."""
    order = rng.permutation(len(x)) if rng is not None else np.arange(len(x))
    for i in range(0, len(order), batch):
        idx = order[i:i + batch]
        bx, by, bm = x[idx], y[idx], m[idx]
        if fixed and len(idx) < batch:
            pad = batch - len(idx)
            bx = np.concatenate([bx, np.zeros((pad, x.shape[1]), np.int32)])
            by = np.concatenate([by, np.zeros((pad, x.shape[1]), np.int32)])
            bm = np.concatenate([bm, np.zeros((pad, x.shape[1]), np.float32)])
        yield bx, by, bm


QUIET_PROGRESS_S = 60.0   # without a bar (a log file), a line this often: an epoch of a large corpus is 10+ minutes


def quiet_progress(epoch: int, epochs: int, done: int, steps: int, loss: float, elapsed: float,
                   stage_elapsed: float) -> str:
    """The line said in place of a bar: without it, a simulation's log holds nothing through
    central training that can last 26 minutes or more. It says what is left of the whole stage
    too (`stage_elapsed`: since the first step, validation passes included), as the bar does: an
    epoch's ETA alone left the reader to multiply by the epochs to come."""
    left = elapsed / done * (steps - done)
    stage_done = epoch * steps + done
    stage_left = stage_elapsed / stage_done * (epochs * steps - stage_done)
    return (f"epoch {epoch + 1}/{epochs}: step {done:,}/{steps:,} ({done / steps:.0%}), loss {loss:.3f}, "
            f"{elapsed / 60:.1f} min in, about {left / 60:.0f} min left in this epoch, "
            f"{stage_left / 60:.0f} min left in all {epochs} epochs")


@dataclass
class TrainSettings:
    epochs: int = 3
    steps_per_epoch: int | None = None  # cap an epoch on large corpora (None: one full pass)
    batch_size: int = 64
    learning_rate: float = 2e-3
    lr_decay_to: float = 1.0            # cosine-decay the rate to this fraction by the last step (1: constant)
    dropout: float = 0.0                # on the LSTM's inputs and outputs while training (`NextWordLSTM.window_logits`)
    patience: int = 1                   # epochs without validation improvement before stopping
    val_windows: int = 2000             # validation windows evaluated per epoch (capped for speed)
    seed: int = 0
    progress: bool = True


@dataclass
class History:
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1
    tokens_seen: int = 0
    windows: int = 0            # training windows on offer each epoch
    windows_per_epoch: int = 0  # how many of them an epoch takes (fewer than all when capped)

    def to_dict(self) -> dict:
        return {"train_loss": self.train_loss, "val_loss": self.val_loss, "best_epoch": self.best_epoch,
                "tokens_seen": self.tokens_seen, "windows": self.windows, "windows_per_epoch": self.windows_per_epoch}


def validation_loss(m: NextWordLSTM, x: np.ndarray, y: np.ndarray, mask: np.ndarray, batch: int = 256) -> float:
    total, count = 0.0, 0.0
    for bx, by, bm in batches(x, y, mask, batch, fixed=False):
        nll, _, _ = m.token_nll(tf.constant(bx), tf.constant(by))
        w = bm.reshape(-1)
        total += float(tf.reduce_sum(nll * w))
        count += float(w.sum())
    return total / max(count, 1.0)


def train(m: NextWordLSTM, sp, train_texts: list[str], val_texts: list[str], s: TrainSettings) -> History:
    """Train `m` in place on `train_texts`; returns the loss history (best weights restored)."""
    cfg: ModelConfig = m.cfg
    return train_windows(m, windows(encode_texts(sp, train_texts, cfg.vocab_size), cfg.seq_len),
                         windows(encode_texts(sp, val_texts, cfg.vocab_size), cfg.seq_len), s)


def train_windows(m: NextWordLSTM, train_xym: tuple[np.ndarray, np.ndarray, np.ndarray],
                  val_xym: tuple[np.ndarray, np.ndarray, np.ndarray], s: TrainSettings) -> History:
    """`train` on windows already encoded (`protocol.text.windows`), e.g. a benchmark's own word ids."""
    cfg: ModelConfig = m.cfg
    rng = np.random.default_rng(s.seed)
    x, y, mask = train_xym
    vx, vy, vm = val_xym
    if len(x) == 0:
        raise ValueError("no training text: the training split is empty")
    if len(vx) > s.val_windows:
        keep = rng.choice(len(vx), s.val_windows, replace=False)
        vx, vy, vm = vx[keep], vy[keep], vm[keep]
    full = math.ceil(len(x) / s.batch_size)
    steps = min(full, s.steps_per_epoch) if s.steps_per_epoch else full
    tqdm.write(f"{len(x):,} training windows: {steps:,} steps of {s.batch_size} per epoch, {s.epochs} epochs"
               + (f" (capped: each epoch a fresh random {steps / full:.0%} of them)" if steps < full else ""))
    rate = s.learning_rate
    if s.lr_decay_to < 1.0:  # a decayed end settles what a constant rate leaves noisy (v0: see docs/quality.md)
        rate = tf.keras.optimizers.schedules.CosineDecay(s.learning_rate, s.epochs * steps, alpha=s.lr_decay_to)
    opt = tf.keras.optimizers.Adam(rate)
    variables = m.variables_in_order

    @tf.function
    def step(bx, by, bm):
        with tf.GradientTape() as tape:
            loss = m.loss(bx, by, bm, s.dropout)
        grads, _ = tf.clip_by_global_norm(tape.gradient(loss, variables), cfg.clip_norm)
        opt.apply_gradients(zip(grads, variables))
        return loss

    hist = History(windows=len(x), windows_per_epoch=min(len(x), steps * s.batch_size))
    best, best_weights, bad = math.inf, None, 0
    # One bar over every epoch's steps: its ETA is the whole stage's (early stopping can end it sooner).
    bar = tqdm(total=s.epochs * steps, unit="step", disable=not s.progress, leave=False)
    start = time.monotonic()
    for epoch in range(s.epochs):
        losses = []
        bar.set_description(f"epoch {epoch + 1}/{s.epochs}")
        t0 = said = time.monotonic()
        for i, (bx, by, bm) in enumerate(batches(x, y, mask, s.batch_size, rng=rng, fixed=False)):
            if i >= steps:
                break
            losses.append(float(step(bx, by, bm)))
            hist.tokens_seen += int(bm.sum())
            bar.update(1)
            if i % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            if not s.progress and time.monotonic() - said >= QUIET_PROGRESS_S:
                said = time.monotonic()
                tqdm.write(quiet_progress(epoch, s.epochs, i + 1, steps, float(np.mean(losses[-20:])), said - t0,
                                          said - start))
        val = validation_loss(m, vx, vy, vm) if len(vx) else float(np.mean(losses))
        hist.train_loss.append(float(np.mean(losses)))
        hist.val_loss.append(val)
        judged = f"validation loss {val:.3f}" if len(vx) else "no validation users: stopping on the train loss"
        msg = f"epoch {epoch + 1}: train loss {hist.train_loss[-1]:.3f}, {judged}"
        log.info(msg)
        tqdm.write(msg)  # one line per epoch even without a progress bar
        if val < best - 1e-4:
            best, bad, hist.best_epoch = val, 0, epoch
            best_weights = [v.numpy() for v in variables]
        else:
            bad += 1
            if bad > s.patience - 1 and s.patience >= 0:
                tqdm.write(f"early stop: no {'validation' if len(vx) else 'train loss'} improvement for {bad} epoch(s)")
                break
    bar.close()
    if best_weights is not None:
        for v, w in zip(variables, best_weights):
            v.assign(w)
    return hist


if __name__ == "__main__":   # `python -m model.pretrain --help` printed nothing: this is a library
    import sys

    print("model.pretrain is a library; its command is python -m tools.pretrain "
          "(see --help; python -m tools lists all)",
          file=sys.stderr)
    sys.exit(2)
