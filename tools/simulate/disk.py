"""What the simulated devices keep on disk, said before the rounds and measured after them.

Each simulated device keeps what a phone keeps: the version in use and the previous one, for
rollback (`edge_runtime.versions`), each a full copy of the graph, the word list and the
weights. That is right for a phone and costs a simulation on one disk 32 x 2 versions (1 GB
at 16 MB a version): the user is told up front rather than finding out from `du`."""

from __future__ import annotations

import os
from pathlib import Path

KEPT_VERSIONS = 2   # the one in use and the previous one (`VersionStore.prune` keeps both)


def version_bytes(v0: Path) -> int:
    """Bytes one installed version takes on a device: the graph, the word list, the manifest,
    and the weights in the quantized form devices download (the same size for every version)."""
    from protocol.artifact import GRAPH, MANIFEST, TOKENIZER, encode_weights_q8, load_version

    _, weights = load_version(v0, verify=False)
    return sum((v0 / f).stat().st_size for f in (GRAPH, TOKENIZER, MANIFEST)) + len(encode_weights_q8(weights))


def bytes_on_disk(root: Path) -> int:
    """The size of the files under `root`, a file linked twice counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for d, _, files in os.walk(root):
        for f in files:
            try:
                st = os.lstat(os.path.join(d, f))
            except OSError:   # removed meanwhile (a staging directory swept)
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def size(n: float) -> str:
    """1.01 GB, 15.8 MB: as the console and the report print a size."""
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def disk_note(name: str, devices: int, per_version: int, where: Path, workers: int = 0) -> str:
    """The line said before the devices enroll: how much disk their versions will take at most.
    A device also holds a third version for a moment, while it installs a new one (before the
    oldest is pruned) or evaluates a canary candidate; the devices run in `workers` processes, so
    at most that many at once."""
    peak = devices * KEPT_VERSIONS + min(workers, devices)
    moment = (f"; one at a time per worker process ({workers}) also holds a third while it installs a version "
              "or evaluates a candidate" if workers else "")
    return (f"{name}: each device keeps {KEPT_VERSIONS} versions of {size(per_version)} (the one in use and the "
            f"previous one, as a phone keeps it for rollback{moment}): up to {size(peak * per_version)} "
            f"under {where}")
