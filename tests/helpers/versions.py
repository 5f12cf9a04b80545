"""Variants of a test model version for tests that need one detail changed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from protocol.artifact import MANIFEST


def with_notices(src: Path, dst: Path, notices: dict[str, str]) -> Path:
    """A copy of version `src` whose manifest carries `notices` (unsigned, as the fixture's is)."""
    shutil.copytree(src, dst)
    m = json.loads((dst / MANIFEST).read_text())
    (dst / MANIFEST).write_text(json.dumps({**m, "notices": notices}))
    return dst
