"""Version 0 as shipped in the repository (models/v0), checked before anything uses it.

A keyboard ships a pretrained model, so the demo and the simulation start from the committed
models/v0 instead of training one. `make v0` rebuilds it with pinned settings; this module
refuses a copy whose files do not match the sha256 sums in its own manifest (a half-finished
`make v0`, a bad merge, a Git LFS pointer in place of the file) with a one-line error.
"""

from __future__ import annotations

from pathlib import Path

from protocol.artifact import ArtifactError, load_version
from tools._cli import REPO

SHIPPED_V0 = Path(REPO) / "models" / "v0"
REBUILD_HINT = "rebuild it with `make v0`, or restore it with `git checkout -- models/v0`"
OWN_HINT = "write it again (`tools.pretrain`, or `python -m coordinator export-version`)"


def _hint(d: Path) -> str:
    """How to get a good copy back: git and `make v0` restore only the checkout's own versions;
    for a folder of the user's, that advice would send them to restore a file they never named."""
    try:
        shipped = d.resolve().parent == SHIPPED_V0.resolve().parent
    except OSError:
        shipped = False
    return REBUILD_HINT if shipped else OWN_HINT


def check_version(directory: str | Path, what: str = "version 0") -> Path:
    """`directory` if every file matches its manifest's sha256; else ArtifactError (exit 2)."""
    d = Path(directory)
    if not (d / "manifest.json").is_file():
        raise ArtifactError(f"{what} is missing: no {d / 'manifest.json'}; {_hint(d)}")
    try:
        load_version(d, verify=True)
    except (ArtifactError, OSError) as e:
        raise ArtifactError(f"{what} at {d} does not match its manifest ({e}); {_hint(d)}") from e
    return d
