"""Content-addressed file store: bytes are named by their sha256 under <data_dir>/blobs.

Writing is atomic (write, fsync, rename) and idempotent, so a blob that a database row points
to is always complete, and storing the same bytes twice costs nothing.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from protocol.artifact import atomic_write, sha256_bytes, sha256_file

# Under this, the data directory's disk is said to be short (/healthz 503, the dashboard's banner):
# a few updates (5.4 MB each at 1.36M weights) and a version (about 16 MB).
MIN_FREE_BYTES = 64 * 2**20


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes on `path`'s file system, None if it cannot be told."""
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def disk_short(free: int | None) -> str | None:
    """What /healthz and the dashboard say of a disk with `free` bytes under MIN_FREE_BYTES, else None."""
    if free is None or free >= MIN_FREE_BYTES:
        return None
    return (f"the data directory's disk has {free // 2**20} MiB free (under {MIN_FREE_BYTES // 2**20} MiB): "
            "uploads and new versions fail until there is room")


class BlobStore:
    def __init__(self, root: str | os.PathLike, *, create: bool = True) -> None:
        self.root = Path(root)
        if create:   # not for a read-only inspection
            # Its own only: devices' updates pass through it (a hand-run `serve` has umask 022).
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / _checked(digest)

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

    def intact(self, digest: str) -> bool:
        """Whether the blob exists and its bytes still hash to its name (a disk error or a hand
        edit is otherwise found by every device's download, one by one)."""
        try:
            return sha256_file(self.path(digest)) == digest
        except FileNotFoundError:
            return False


class UploadStore:
    """What single devices send one round (plain updates, secure rounds' masked vectors), under
    <data_dir>/uploads/<round id>/<sha256>: apart from the content-addressed `BlobStore`, whose
    files versions share (a device can upload a version's own weights as its update), so that
    deleting a round's uploads when it ends (`round_end.forget_contributions`) never deletes
    anything else. An upload stored before this store existed is read from `legacy`."""

    def __init__(self, root: str | os.PathLike, legacy: BlobStore, *, create: bool = True) -> None:
        self.root, self.legacy = Path(root), legacy
        if create:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)

    LEGACY_SWEPT = ".legacy-swept"   # `round_end.forget_ended_uploads` has swept `legacy` once

    def path(self, round_id: int, digest: str) -> Path:
        return self.root / str(int(round_id)) / _checked(digest)

    def put(self, round_id: int, data: bytes) -> str:
        digest = sha256_bytes(data)
        atomic_write(self.path(round_id, digest), data)
        return digest

    ROOM_MARGIN = 2**20   # the database's rows and the log also need a little

    def room_for(self, n: int) -> None:
        """Raise ENOSPC if `n` more bytes would not fit on this store's disk: an upload on a full
        disk would be read whole before its write failed (megabytes per device per retry), so
        the route asks before it reads the body."""
        if (free := free_bytes(self.root)) is None:   # cannot tell: the write says
            return
        if free < n + self.ROOM_MARGIN:
            raise OSError(errno.ENOSPC, f"No space left on device: {free} bytes free for an upload of {n}")

    def get(self, round_id: int, digest: str) -> bytes:
        try:
            return self.path(round_id, digest).read_bytes()
        except FileNotFoundError:
            return self.legacy.get(digest)

    def exists(self, round_id: int, digest: str) -> bool:
        """Whether `get` finds it: in the round's folder, or among `legacy`'s blobs."""
        return self.path(round_id, digest).exists() or self.legacy.exists(digest)

    def discard(self, round_id: int, digest: str) -> None:
        self.path(round_id, digest).unlink(missing_ok=True)

    def discard_round(self, round_id: int) -> None:
        shutil.rmtree(self.root / str(int(round_id)), ignore_errors=True)

    def rounds(self) -> list[int]:
        """The rounds with uploads kept."""
        return sorted(int(d.name) for d in self.root.iterdir() if d.is_dir() and d.name.isdigit())

    def legacy_swept(self) -> bool:
        return (self.root / self.LEGACY_SWEPT).exists()

    def mark_legacy_swept(self) -> None:
        (self.root / self.LEGACY_SWEPT).touch()


def _checked(digest: str) -> str:
    """`digest`, if it is a sha256 hex digest (it names a file: nothing else may)."""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"not a sha256 hex digest: {digest!r}")
    return digest
