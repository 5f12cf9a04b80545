"""Model versions on the device: download, verify, swap atomically, keep one for rollback.

Layout under ``<data_dir>/models``::

    <version_id>/          complete, verified version directories (never modified in place)
    current.json           {"current": id, "previous": id | null}, replaced atomically
    .incoming-*/           a download in progress (deleted on the next start)

A version directory only ever appears under its final name by one `rename` of a fully
written, fsynced and verified staging directory, and `current.json` only ever changes by
write-fsync-rename. So a crash (kill -9, power loss) at any point leaves `current.json`
naming a complete version: the old one until the very last rename, the new one after it.

Trust: every file's sha256 must match the manifest, and when the coordinator's Ed25519
public key is configured the manifest must carry a valid signature over
`Manifest.signing_bytes()` (`protocol.artifact.verify_manifest`); unsigned or tampered
manifests are refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_runtime import rollout_guard
from edge_runtime.config import ConfigError
from edge_runtime.errors import EdgeError
from edge_runtime.file_lock import file_lock
from edge_runtime.paths import (
    CURRENT_POINTER,
    IDENTITY_FILE,
    MODELS_DIR,
    ROLLOUT_STATE_FILE,
    STAGING_LOCK,
    STAGING_PREFIX,
)
from protocol import artifact
from protocol.artifact import (
    GRAPH,
    MANIFEST,
    TOKENIZER,
    WEIGHTS,
    WEIGHTS_Q8,
    ArtifactError,
    Manifest,
    atomic_write,
    checked_architecture,
    load_public_key,
    load_version,
    read_manifest,
    sha256_bytes,
    sha256_file,
    verify_manifest,
    write_leftovers,
)
from protocol.wire import is_safe_id

log = logging.getLogger(__name__)


# fetch(version_id, filename) -> bytes, filename one of MANIFEST, WEIGHTS, WEIGHTS_Q8, GRAPH, TOKENIZER.
Fetch = Callable[[str, str], bytes]


class VersionError(EdgeError, RuntimeError):
    """A model version cannot be installed or used (bad hash, bad signature, none present)."""


class SignatureError(VersionError):
    """A manifest is unsigned, or its signature does not verify with the configured key."""


def _check_signature(manifest: Manifest, public_key: Ed25519PublicKey) -> None:
    """`verify_manifest`, its refusal translated into the device's VersionError tree."""
    try:
        verify_manifest(manifest, public_key)
    except artifact.SignatureError as e:
        raise SignatureError(str(e)) from e


def directory_fetch(root: str | os.PathLike) -> Fetch:
    """A fetch that reads `<root>/<filename>` (a bundled version, a USB stick, tests)."""
    root = Path(root)

    def fetch(version_id: str, filename: str) -> bytes:
        return (root / filename).read_bytes()

    return fetch


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_hashes(manifest: Manifest) -> dict[str, str]:
    """sha256 of each file a version directory can hold, by file name."""
    return {WEIGHTS: manifest.weights_sha256, WEIGHTS_Q8: manifest.weights_q8_sha256,
            GRAPH: manifest.graph_sha256, TOKENIZER: manifest.tokenizer_sha256}


def _downloads(manifest: Manifest) -> dict[str, str]:
    """The files to fetch, with their sha256: the weights in their quantized form when the
    coordinator signed one (a quarter of the bytes; `protocol.artifact.quantize`), else float32."""
    weights = WEIGHTS_Q8 if manifest.weights_q8_sha256 else WEIGHTS
    return {f: sha for f, sha in _file_hashes(manifest).items() if f in (weights, GRAPH, TOKENIZER)}


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _lock(staging: Path) -> int | None:
    """Hold `staging`'s lock while downloading into it (None where the filesystem has no such
    lock, e.g. flock over NFS: then only the age rule of `_in_use` protects it)."""
    fd = os.open(staging, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd
    except OSError:
        os.close(fd)
        return None


def _in_use(staging: Path) -> bool:
    """Whether a process is downloading into `staging` (it holds the directory's lock; where
    locks do not work, a directory changed in the last hour counts as in use)."""
    try:
        fd = os.open(staging, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    except OSError:
        return time.time() - os.fstat(fd).st_mtime < 3600
    finally:
        os.close(fd)


def _share(local: Path, dest: Path) -> None:
    """A file another installed version holds already (the graph, the word list: 14 MB of the
    shipped version): copied while the disk has room for it twice over, so each version keeps
    its own (a damaged copy leaves the previous version to fall back on); linked when it does
    not, as an update would otherwise need the space of a whole version and a device with room
    for only the new weights could never update. Version files are never written in place."""
    try:
        tight = shutil.disk_usage(dest.parent).free < 2 * local.stat().st_size
    except OSError:
        tight = False
    if tight:
        try:
            os.link(local, dest)
            return
        except OSError:   # a filesystem without hard links: copy, and a full disk says so
            pass
    shutil.copyfile(local, dest)
    with open(dest, "rb+") as f:
        os.fsync(f.fileno())


SETTLED_NS = 2_000_000_000   # files younger than this are hashed again (as git treats "racily clean" ones)


def _files_stat(d: Path) -> tuple | None:
    """What identifies the state of a version folder's files: each one's name, inode, size,
    modification and change times (None: unreadable). The change time cannot be set back, so a
    file rewritten in place with its mtime restored is hashed again."""
    try:
        return (os.stat(d).st_ino, *sorted((e.name, e.inode(), st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                                           for e in os.scandir(d) for st in (e.stat(),)))
    except OSError:
        return None


def _check_runnable(manifest: Manifest) -> None:
    """Signed is not enough to run a version: its tensors must be the ones its architecture
    trains (`checked_architecture`), as the coordinator checks on import. A signed embedding of
    100 rows was installed and patched into the keyboard's graph over the first 100 of its
    10,000, leaving the others as the exporter's placeholders: suggestions quietly garbled."""
    try:
        checked_architecture(manifest)
    except ArtifactError as e:
        raise VersionError(f"version {manifest.version_id} cannot run here: {e}"[:500]) from e


def coordinator_public_key(key: Ed25519PublicKey | bytes | str) -> Ed25519PublicKey:
    """The coordinator's key that versions are checked with; `ConfigError` naming the key, where it
    comes from and the fix when it is not one ("Non-hexadecimal digit found" said none of that)."""
    try:
        return load_public_key(key)
    except ValueError as e:
        raise ConfigError(f"the coordinator's public key (the public_key setting, else the one in "
                          f"{IDENTITY_FILE} from enrollment) cannot be read: {e}; set the right one, or "
                          "enroll again") from None


class VersionStore:
    """The device's model versions. Construct one at start: it cleans up after a crash."""

    def __init__(self, data_dir: str | os.PathLike, *,
                 public_key: Ed25519PublicKey | bytes | str | None = None, remember_verified: bool = False) -> None:
        """`remember_verified`: hash a version again only when its files' stat changes (the
        keyboard's store, which asks every 2 s); the device loop's hashes every time, so bit rot
        is found and the version fetched again."""
        self.root = Path(data_dir) / MODELS_DIR
        self.root.mkdir(parents=True, exist_ok=True)
        self.public_key = None if public_key is None else coordinator_public_key(public_key)
        self._verified: dict[str, tuple] | None = {} if remember_verified else None   # id -> files' stat
        self._recover()

    # -- pointer ---------------------------------------------------------------------------

    def _read_pointer(self) -> dict[str, str | None]:
        p = self.root / CURRENT_POINTER
        try:
            d = json.loads(p.read_bytes())
            if not isinstance(d, dict) or not all(v is None or (isinstance(v, str) and is_safe_id(v))
                                                  for v in (d.get("current"), d.get("previous"))):
                raise ValueError("not a pointer")
            return {"current": d.get("current"), "previous": d.get("previous")}
        except FileNotFoundError:
            return {"current": None, "previous": None}
        except (OSError, ValueError):
            # atomic_write never leaves a torn pointer; this is disk corruption. Recover below.
            log.error("model pointer %s unreadable; falling back to the version the coordinator last named", p)
            return {"current": None, "previous": None}

    def _pointer_lost(self, ptr: dict[str, str | None] | None = None) -> bool:
        """The pointer (`ptr`, read already, or read now) is unreadable, or missing while versions
        are installed: damage (it is written before the first version's install returns and never
        removed)."""
        return (ptr or self._read_pointer())["current"] is None and (
            (self.root / CURRENT_POINTER).exists() or bool(self.installed()))

    def _fallback(self) -> str | None:
        """The version to use when the pointer is lost: the one the coordinator's last signed
        rollout statement named (`rollout_guard`), if it verifies, and no other, so a version the
        coordinator rolled back is never picked (the newest valid one was: a rejected canary).
        A device without statements (no coordinator key) takes the newest valid version."""
        last = rollout_guard.last_state(self.root.parent)
        if last is not None:
            return last.version_id if is_safe_id(last.version_id) and self.is_valid(last.version_id) else None
        if (self.root.parent / ROLLOUT_STATE_FILE).exists():   # statements are kept, this one unreadable: no guess
            return None

        def mtime(v: str) -> float:
            try:
                return (self.path(v) / MANIFEST).stat().st_mtime
            except OSError:   # pruned meanwhile
                return 0.0

        return next((v for v in sorted(self.installed(), key=mtime, reverse=True) if self._valid(v)), None)

    def _write_pointer(self, current: str, previous: str | None) -> None:
        atomic_write(self.root / CURRENT_POINTER, json.dumps({"current": current, "previous": previous}).encode())

    def _recover(self) -> None:
        """Remove what a killed install left. Not another process's install under way: every
        `VersionStore` recovers, and `status` or the keyboard started during the device loop's
        download deleted its staging directory (the install failed, on every try of a slow link).
        A download holds a lock on its staging directory, made and locked under STAGING_LOCK held
        shared, which the sweep holds exclusive (another start between the two deleted a download
        about to begin); a pointer being written is recent."""
        with file_lock(self.root / STAGING_LOCK, exclusive=True):
            for p in self.root.glob(STAGING_PREFIX + "*"):
                if p.is_dir() and not p.is_symlink():
                    if not _in_use(p):
                        shutil.rmtree(p, ignore_errors=True)
                else:   # a file of that name (rmtree ignored it, so it stayed for good)
                    with contextlib.suppress(OSError):
                        p.unlink()
        for p in write_leftovers(self.root / CURRENT_POINTER):  # left by a kill during a write
            with contextlib.suppress(OSError):
                if time.time() - p.stat().st_mtime > 60:
                    p.unlink(missing_ok=True)
        if self._pointer_lost() and (found := self._fallback()) is not None and self._pointer_lost():
            # Written again, so the device reports the version it uses: with none reported, the
            # coordinator's move back off a rejected candidate would be refused as a downgrade for good.
            # (Read again after the fallback's hashing: the device loop may have installed meanwhile.)
            with contextlib.suppress(OSError):
                self._write_pointer(found, None)
                log.warning("model pointer repaired: %s in use", found)

    @property
    def current_id(self) -> str | None:
        return self._read_pointer()["current"]

    @property
    def previous_id(self) -> str | None:
        return self._read_pointer()["previous"]

    def path(self, version_id: str) -> Path:
        if not is_safe_id(version_id):
            raise VersionError(f"version id {version_id!r} is not a safe name")
        return self.root / version_id

    def has(self, version_id: str) -> bool:
        return (self.path(version_id) / MANIFEST).is_file()

    def installed(self) -> list[str]:
        """Version folders (a name no version id has, `v1 (copy)`, is someone else's: left alone)."""
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and is_safe_id(p.name) and not p.name.startswith(".") and (p / MANIFEST).is_file())

    def current(self) -> Path:
        """Directory of the version in use: current, else previous (if current is damaged)."""
        ptr = self._read_pointer()
        for vid in (ptr["current"], ptr["previous"]):
            if vid and self._valid(vid):
                return self.path(vid)
        if self._pointer_lost(ptr) and (found := self._fallback()) is not None:
            return self.path(found)   # else nothing falls back and the strip stays empty
        raise VersionError("no usable model version on this device")

    def in_use(self) -> str | None:
        """The version actually serving suggestions: current if it verifies, else previous."""
        try:
            return self.current().name
        except VersionError:
            return None

    def is_valid(self, version_id: str) -> bool:
        """Installed, hashes match and (with a key) the signature verifies."""
        return self.has(version_id) and self._valid(version_id)

    def _valid(self, version_id: str) -> bool:
        """Verified (hashes, signature), once per state of its files in this process: the keyboard
        asks every 2 s which version is in use, and hashing its 16 MB each time held the keyboard's
        lock for 18 ms on a desktop core (far more on a Pi), stalling the keystroke it fell on.
        A write, a replacement or a truncation of any file changes the stat, and it is hashed again."""
        known = self._verified
        stat = _files_stat(self.path(version_id)) if known is not None else None
        if stat is not None and known.get(version_id) == stat:
            return True
        try:
            self._verify_dir(self.path(version_id), version_id)
        except (VersionError, ArtifactError, OSError) as e:
            if known is not None:
                known.pop(version_id, None)
            log.error("model version %s failed verification: %s", version_id, e)
            return False
        if stat is not None and time.time_ns() - max((max(f[-2:]) for f in stat[1:]), default=0) > SETTLED_NS:
            if version_id not in known:   # a new version: forget those deleted since (else a keyboard that runs
                for gone in [v for v in known if not self.path(v).is_dir()]:   # on keeps one per version, for good)
                    del known[gone]
            known[version_id] = stat   # a file changed within a clock tick of its write keeps its times
        return True

    def _verify_dir(self, d: Path, version_id: str) -> Manifest:
        try:   # hashes, and weights that are numbers (a NaN or a damaged q8 file is an ArtifactError)
            manifest, _ = load_version(d, verify=True)
        except ArtifactError as e:
            raise VersionError(f"version {version_id} is not usable: {e}"[:500]) from e
        if manifest.version_id != version_id:
            raise VersionError(f"{d} holds version {manifest.version_id!r}, expected {version_id!r}")
        if self.public_key is not None:
            _check_signature(manifest, self.public_key)
        _check_runnable(manifest)
        return manifest

    # -- installing ------------------------------------------------------------------------

    def ensure(self, version_id: str, fetch: Fetch) -> Path:
        """Make `version_id` present and verified (downloading what is missing); not activated."""
        target = self.path(version_id)
        if target.exists():
            if self._valid(version_id):
                return target
            self._discard(target)
        manifest_bytes = fetch(version_id, MANIFEST)
        try:
            manifest = Manifest.from_dict(json.loads(manifest_bytes))
        except ValueError as e:
            raise VersionError(f"manifest of {version_id} is not valid: {e}") from e
        if manifest.version_id != version_id:
            raise VersionError(f"asked for {version_id!r}, manifest says {manifest.version_id!r}")
        if self.public_key is not None:  # before downloading anything else
            _check_signature(manifest, self.public_key)
        _check_runnable(manifest)
        wanted = _downloads(manifest)

        with file_lock(self.root / STAGING_LOCK, exclusive=False):   # no sweep between the two
            staging = Path(tempfile.mkdtemp(dir=self.root, prefix=STAGING_PREFIX))
            held = _lock(staging)   # "in use" to every other process's `_recover`
        try:
            for fname, sha in wanted.items():
                local = self._find_local(fname, sha)
                if local is not None:
                    _share(local, staging / fname)
                    continue
                data = fetch(version_id, fname)
                got = sha256_bytes(data)
                if got != sha:
                    raise VersionError(f"{fname} of {version_id}: sha256 {got[:12]}… != manifest {sha[:12]}…")
                _write_synced(staging / fname, data)
            _write_synced(staging / MANIFEST, manifest_bytes)  # last: a manifest means "complete"
            self._verify_dir(staging, version_id)
            _fsync_dir(staging)
            os.rename(staging, target)
            _fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            if held is not None:
                os.close(held)
        log.info("installed model version %s", version_id)
        return target

    def _find_local(self, fname: str, sha: str) -> Path | None:
        """A file with this hash in an installed version (graph and tokenizer are shared)."""
        for vid in self.installed():
            try:
                m = read_manifest(self.root / vid)
            except ArtifactError:
                continue
            own = _file_hashes(m)[fname]
            p = self.root / vid / fname
            if own == sha and p.is_file() and sha256_file(p) == sha:
                return p
        return None

    def activate(self, version_id: str, *, abandon: bool = False) -> None:
        """Switch suggestions to an installed version; the one in use becomes `previous`, the
        fallback if this one is damaged, unless `abandon`: a rollback leaves the version it
        leaves (a rejected candidate) no place, so damage never brings it back."""
        if not self._valid(version_id):
            raise VersionError(f"version {version_id} is not installed and valid")
        cur = self.current_id
        if cur == version_id:
            return
        self._write_pointer(version_id, None if abandon else cur)
        log.info("model version %s active (previous %s)", version_id, None if abandon else cur)

    def install(self, version_id: str, fetch: Fetch, *, abandon: bool = False) -> Path:
        """Download, verify and activate `version_id`, then drop versions no longer needed."""
        path = self.ensure(version_id, fetch)
        self.activate(version_id, abandon=abandon)
        self.prune()
        return path

    def rollback(self) -> str:
        """Go back to the previous version; returns its id."""
        ptr = self._read_pointer()
        prev, cur = ptr["previous"], ptr["current"]
        if not prev or not self._valid(prev):
            raise VersionError("no previous version to roll back to")
        self._write_pointer(prev, None)   # what it leaves is no fallback (`activate`'s abandon)
        log.warning("rolled back model version %s -> %s", cur, prev)
        return prev

    def prune(self, keep: Iterable[str] = ()) -> None:
        """Delete versions other than current, previous and `keep`."""
        ptr = self._read_pointer()
        if self._pointer_lost(ptr):   # it names nothing to keep: pruning would delete every version
            log.warning("model pointer lost: nothing pruned")
            return
        wanted = {v for v in (ptr["current"], ptr["previous"], *keep) if v}
        for vid in self.installed():
            if vid not in wanted:
                self._discard(self.root / vid)
        for d in self.root.iterdir():   # a version folder that lost its manifest is no version: never pruned
            if d.is_dir() and not d.is_symlink() and not d.name.startswith(".") and not (d / MANIFEST).exists():
                self._discard(d)

    def _discard(self, d: Path) -> None:
        # Rename first so a crash mid-delete leaves a staging leftover, not a half version.
        tomb = self.root / f"{STAGING_PREFIX}{d.name}.deleted"
        shutil.rmtree(tomb, ignore_errors=True)
        os.rename(d, tomb)
        shutil.rmtree(tomb, ignore_errors=True)
