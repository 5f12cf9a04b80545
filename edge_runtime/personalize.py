"""The user's own copy of the global LSTM, fine-tuned on this device's text cache only.

Gboard's personalization (Wang et al. 2019): after federated training, each device fine-tunes
the global model on its own text and suggests with that copy. Here the copy starts from the
version in use and takes a few SGD steps of the version's own `train` signature
(`trainer.sgd`, the loop federated rounds run) over the newest cached text. It runs only when
the device is eligible to train (idle, charging: `Eligibility`), is stored beside the cache as
``personal/<version_id>.safetensors`` (`personal_copy`) and never leaves the data directory: no update, report or
log line carries it, federated training always starts from the version's own weights, and
`personal_copy.forget` deletes it with the cache. A new version makes it stale; it is rebuilt from the new one.

Measured on held-out users (docs/quality.md, "Personalization"): the first half of each user's
text fine-tunes the copy, the second half is scored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime import trainer
from edge_runtime.personal_copy import save, stamp_of, weights_path
from protocol.artifact import load_version


@dataclass(frozen=True)
class PersonalPlan:
    """How the personal copy is trained (EdgeConfig's personal_* settings)."""

    learning_rate: float = 0.2   # 0.5 (the federated rate) overfits one user's text: worse loss
    epochs: int = 1
    max_examples: int = 256      # the newest windows of the user's text (20 words each)
    min_examples: int = 2        # less text than this: the global model as it is


def fine_tune(version_dir: str | Path, texts: Sequence[str], plan: PersonalPlan = PersonalPlan(), *,
              model: trainer.SignatureModel | None = None, eligible: trainer.EligibilityCheck | None = None,
              loader: trainer.ModelLoader = trainer.load_model, seed: int | None = 0) -> dict[str, np.ndarray] | None:
    """Weights of `version_dir`'s model fine-tuned on `texts` (oldest first), or None when there
    is too little text. `model`, if given, is reused (its weights are reset to the version's
    first). Raises `trainer.TrainingAborted` when eligibility lapses."""
    version_dir = Path(version_dir)
    manifest, base = load_version(version_dir, verify=model is None)
    data = trainer.text_windows(version_dir, texts, manifest)
    if len(data) < plan.min_examples:
        return None
    if len(data) > plan.max_examples:   # the newest text says most about what comes next
        data = data.take(np.arange(len(data) - plan.max_examples, len(data)))
    model = model if model is not None else loader(version_dir)
    model.set_weights(base)
    batch = manifest.architecture().model.train_batch
    trainer.sgd(model, data, epochs=plan.epochs, rows=batch, batch=batch, learning_rate=plan.learning_rate,
                rng=np.random.default_rng(seed), eligible=eligible)
    return model.get_weights()


def refresh(data_dir: str | Path, version_dir: Path, version_id: str, read_texts: Callable[[], Sequence[str]],
            stamp: str, plan: PersonalPlan, *, eligible: trainer.EligibilityCheck | None = None,
            loader: trainer.ModelLoader = trainer.load_model, unchanged: Callable[[], bool] | None = None) -> str:
    """Retrain the copy of `version_id` when the cache changed since (`stamp`); the outcome, for the
    log. The text is read (`read_texts`) only when the copy is retrained. `unchanged()` false after
    training (the cache was wiped meanwhile) discards the result: saved, it would bring back what
    the wipe forgot. Too little text left deletes an older copy, for the same reason."""
    if stamp_of(data_dir, version_id) == stamp:
        return "up to date"
    try:
        weights = fine_tune(version_dir, read_texts(), plan, eligible=eligible, loader=loader)
    except trainer.TrainingAborted as e:
        return f"aborted ({e.reason})"
    if weights is None:
        weights_path(data_dir, version_id).unlink(missing_ok=True)
        return "too little text"
    if unchanged is not None and not _still(unchanged):
        return "discarded (the cache was wiped meanwhile)"
    save(data_dir, version_id, weights, stamp)
    if unchanged is not None and not _still(unchanged):   # a wipe between the check and the save: undo it
        weights_path(data_dir, version_id).unlink(missing_ok=True)
        return "discarded (the cache was wiped meanwhile)"
    return "trained"


def _still(unchanged: Callable[[], bool]) -> bool:
    """`unchanged()`, where a cache that cannot answer counts as changed: a wipe in place (a damaged
    cache, a full disk) leaves no file for a moment, and a copy saved then outlived the wipe."""
    try:
        return unchanged()
    except Exception:
        return False
