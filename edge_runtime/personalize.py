"""The user's own copy of the global LSTM, fine-tuned on this device's text cache only.

Gboard's personalization (Wang et al. 2019): after federated training, each device fine-tunes
the global model on its own text and suggests with that copy. Here the copy starts from the
version in use and takes a few SGD steps of the version's own `train` signature
(`trainer.sgd`, the loop federated rounds run) over the newest cached text. It runs only when
the device is eligible to train (idle, charging: `Eligibility`), is stored beside the cache as
``personal/<version_id>.safetensors`` and never leaves the data directory: no update, report or
log line carries it, federated training always starts from the version's own weights, and
`forget` deletes it with the cache. A new version makes it stale; it is rebuilt from the new one.

Measured on held-out users (docs/quality.md, "Personalization"): the first half of each user's
text fine-tunes the copy, the second half is scored.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from edge_runtime import trainer
from edge_runtime.paths import PERSONAL_DIR
from protocol.artifact import load_version

log = logging.getLogger(__name__)


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


# --- the copy on disk ---------------------------------------------------------------------------

def weights_path(data_dir: str | Path, version_id: str) -> Path:
    return Path(data_dir) / PERSONAL_DIR / f"{version_id}.safetensors"


def save(data_dir: str | Path, version_id: str, weights: dict[str, np.ndarray], stamp: str) -> Path:
    """Store the copy of `version_id` (replacing any other version's); `stamp` says which cache
    state it was trained on (counts only)."""
    path = weights_path(data_dir, version_id)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    arrays = {k: np.ascontiguousarray(v, np.float32) for k, v in weights.items()}
    try:
        save_file(arrays, str(tmp), metadata={"version_id": version_id, "stamp": stamp, "sha256": _digest(arrays)})
    except SafetensorError as e:   # its write failing ("No space left on device") is not an OSError
        tmp.unlink(missing_ok=True)
        raise OSError(f"cannot save the personal model: {str(e)[:200]}") from e
    tmp.replace(path)
    for old in path.parent.iterdir():   # other versions' copies, and a copy a kill left half written
        if old != path and old.suffix in (".safetensors", ".tmp"):
            old.unlink(missing_ok=True)
    return path


def stamp_of(data_dir: str | Path, version_id: str) -> str | None:
    """The cache state the stored copy of `version_id` was trained on (None: no usable copy, so
    the next refresh trains one: a damaged copy is not "up to date")."""
    got = _read(weights_path(data_dir, version_id), quiet=True)
    return got[1].get("stamp") if got is not None and got[1].get("version_id") == version_id else None


def load(data_dir: str | Path, version_id: str) -> dict[str, np.ndarray] | None:
    """The stored copy of `version_id`'s weights, or None (none, or unreadable: the global model)."""
    got = _read(weights_path(data_dir, version_id))
    return None if got is None else got[0]


def _read(path: Path, *, quiet: bool = False) -> tuple[dict[str, np.ndarray], dict[str, str]] | None:
    """(weights, metadata) of a stored copy whose checksum holds; None otherwise."""
    if not path.exists():
        return None
    try:
        with safe_open(str(path), "np") as f:
            meta = f.metadata() or {}
            weights = {k: f.get_tensor(k) for k in f.keys()}   # noqa: SIM118 - safe_open has no iterator
    except (OSError, SafetensorError) as e:
        if not quiet:
            log.warning("personal model unreadable (%s); suggesting with the global model", e.__class__.__name__)
        return None
    if meta.get("sha256") != _digest(weights):   # a flipped bit in a weight reads as a number: checked
        if not quiet:
            log.warning("personal model damaged (its checksum differs); suggesting with the global model")
        return None
    return weights, meta


def _digest(weights: dict[str, np.ndarray]) -> str:
    """sha256 over the tensors' names, shapes and float32 bytes, in name order."""
    h = hashlib.sha256()
    for k in sorted(weights):
        a = np.ascontiguousarray(weights[k], np.float32)
        h.update(f"{k}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def keep_only(data_dir: str | Path, version_id: str | None) -> None:
    """Delete the copies of other versions than `version_id` (every copy: None). A copy stayed
    for a version the device no longer runs, and with `personalize` turned off, trained on text
    the cache has since deleted (a probe of a long-lived device)."""
    folder = Path(data_dir) / PERSONAL_DIR
    if not folder.is_dir():
        return
    keep = None if version_id is None else weights_path(data_dir, version_id)
    for old in folder.iterdir():
        if old != keep and old.suffix == ".safetensors":
            old.unlink(missing_ok=True)


def forget(data_dir: str | Path) -> None:
    """Delete every personal copy (the user cleared what the keyboard learned)."""
    shutil.rmtree(Path(data_dir) / PERSONAL_DIR, ignore_errors=True)


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
