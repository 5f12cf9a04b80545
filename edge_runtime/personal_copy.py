"""The user's own copy of the LSTM on disk: ``personal/<version_id>.safetensors``, checksummed.

Apart from `personalize` (which trains the copy, with the trainer) because the keyboard reads
it and a wipe deletes it: neither needs the training code, and the keyboard must not load it
to suggest. Nothing here leaves the data directory.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from edge_runtime.paths import PERSONAL_DIR

log = logging.getLogger(__name__)


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
    keep_only(data_dir, version_id)   # other versions' copies, and a copy a kill left half written
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
    """(weights, metadata) of a stored copy whose checksum holds (or an older release's, without one,
    whose weights are finite); None otherwise."""
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
    if "sha256" not in meta:   # saved by a release before 5 December 2026, which wrote no checksum:
        # kept (called damaged, it was dropped at the upgrade until the next idle, charging retrain),
        # unless a weight is not a finite number; its next save carries the checksum
        if all(np.isfinite(w).all() for w in weights.values()):
            return weights, meta
        if not quiet:
            log.warning("personal model damaged (a weight is not a number); suggesting with the global model")
        return None
    if meta["sha256"] != _digest(weights):   # a flipped bit in a weight reads as a number: checked
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
    """Delete the copies of other versions than `version_id` (every copy: None), and a copy a
    kill left half written (`save`'s .tmp, which only the next save deleted). Otherwise a
    long-lived device keeps a copy for a version it no longer runs and, with `personalize` turned
    off, one trained on text the cache has since deleted."""
    folder = Path(data_dir) / PERSONAL_DIR
    if not folder.is_dir():
        return
    keep = None if version_id is None else weights_path(data_dir, version_id)
    for old in folder.iterdir():
        if old != keep and old.suffix in (".safetensors", ".tmp"):
            old.unlink(missing_ok=True)


def forget(data_dir: str | Path) -> None:
    """Delete every personal copy (the user cleared what the keyboard learned)."""
    shutil.rmtree(Path(data_dir) / PERSONAL_DIR, ignore_errors=True)
