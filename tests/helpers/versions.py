"""Variants of a test model version for tests that need one detail changed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from protocol.arch import Arch, ModelConfig
from protocol.artifact import MANIFEST

# A real exporter's architecture, tiny: the coordinator refuses a manifest whose tensors are not
# the ones its arch trains (`artifact.checked_architecture`), and so do devices. Here, not in
# coordinator_fakes, so the slim edge tests (no Flask) can use it.
TINY_ARCH = Arch(ModelConfig(vocab_size=8, embed_dim=4, hidden_dim=2, train_batch=2, seq_len=20))
SHAPES = dict(TINY_ARCH.model.weight_shapes())


def with_notices(src: Path, dst: Path, notices: dict[str, str]) -> Path:
    """A copy of version `src` whose manifest carries `notices` (unsigned, as the fixture's is)."""
    shutil.copytree(src, dst)
    m = json.loads((dst / MANIFEST).read_text())
    (dst / MANIFEST).write_text(json.dumps({**m, "notices": notices}))
    return dst


def renamed(src: Path, dst: Path, version_id: str) -> Path:
    """A copy of version `src` under another version id (unsigned, as the fixture's is)."""
    shutil.copytree(src, dst)
    m = json.loads((dst / MANIFEST).read_text())
    (dst / MANIFEST).write_text(json.dumps({**m, "version_id": version_id}))
    return dst
