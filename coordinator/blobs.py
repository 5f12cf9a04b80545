"""Content-addressed file store: bytes are named by their sha256 under <data_dir>/blobs.

Writing is atomic (write, fsync, rename) and idempotent, so a blob that a database row points
to is always complete, and storing the same bytes twice costs nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from protocol.artifact import atomic_write, sha256_bytes


class BlobStore:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        # Its own only: devices' updates pass through it (a hand-run `serve` has umask 022).
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"not a sha256 hex digest: {digest!r}")
        return self.root / digest[:2] / digest

    def put(self, data: bytes) -> str:
        digest = sha256_bytes(data)
        p = self.path(digest)
        if not p.exists():
            atomic_write(p, data)
        return digest

    def get(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def discard(self, digest: str) -> None:
        """Delete a blob nothing else may keep (a discovery round's vote histogram). Content
        addressing shares equal blobs, so only for blobs no other row can name."""
        self.path(digest).unlink(missing_ok=True)

    def exists(self, digest: str) -> bool:
        return self.path(digest).exists()
