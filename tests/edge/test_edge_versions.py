"""Model versions on the device: verified download, signatures, atomic swap, crash safety."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edge_runtime import versions as versions_mod
from edge_runtime.paths import MODELS_DIR, STAGING_PREFIX
from edge_runtime.versions import (
    SignatureError,
    VersionError,
    VersionStore,
    directory_fetch,
)
from protocol.artifact import (
    GRAPH,
    MANIFEST,
    TOKENIZER,
    WEIGHTS,
    Manifest,
    TensorSpec,
    arch_hash,
    encode_weights,
    load_public_key,
    load_version,
    sha256_bytes,
    write_version,
)
from tests.helpers.versions import SHAPES, TINY_ARCH

ROOT = Path(__file__).resolve().parents[2]
TENSORS = [TensorSpec(name, shape) for name, shape in SHAPES.items()]   # what TINY_ARCH trains
GRAPH_BYTES = b"not really a flatbuffer, but hashed like one"
TOKENIZER_BYTES = b"not really sentencepiece"


def make_version(root: Path, vid: str, seed: int, key: Ed25519PrivateKey | None = None,
                 sig_encoding: str = "hex", notices: dict[str, str] | None = None) -> Path:
    d = root / vid
    d.mkdir(parents=True)
    (d / GRAPH).write_bytes(GRAPH_BYTES)
    (d / TOKENIZER).write_bytes(TOKENIZER_BYTES)
    rng = np.random.default_rng(seed)
    weights = {t.name: rng.standard_normal(t.shape).astype(np.float32) for t in TENSORS}
    m = Manifest(version_id=vid, arch=TINY_ARCH.to_dict(), arch_hash=arch_hash(TINY_ARCH.to_dict()), tensors=TENSORS,
                 graph_sha256=sha256_bytes(GRAPH_BYTES), tokenizer_sha256=sha256_bytes(TOKENIZER_BYTES),
                 weights_sha256="", notices=dict(notices or {}))
    write_version(d, m, weights)
    if key is not None:
        m.weights_sha256 = json.loads((d / MANIFEST).read_text())["weights_sha256"]
        sig = key.sign(m.signing_bytes())
        m.signature = sig.hex() if sig_encoding == "hex" else base64.b64encode(sig).decode()
        (d / MANIFEST).write_text(json.dumps(m.to_dict(), indent=2, sort_keys=True))
    return d


class CountingFetch:
    def __init__(self, root: Path) -> None:
        self.inner = directory_fetch(root)
        self.calls: list[str] = []

    def __call__(self, version_id: str, filename: str) -> bytes:
        self.calls.append(filename)
        return self.inner(version_id, filename)


@pytest.fixture
def server(tmp_path: Path) -> Path:
    """A directory standing in for the coordinator: one subdirectory per version."""
    root = tmp_path / "server"
    make_version(root, "v1", 1)
    make_version(root, "v2", 2)
    make_version(root, "v3", 3)
    return root


def fetch_from(server: Path):
    return lambda vid, fname: (server / vid / fname).read_bytes()


def weights_of(path: Path) -> np.ndarray:
    return load_version(path)[1]["out_bias"]


def test_install_activate_and_rollback(tmp_path: Path, server: Path):
    store = VersionStore(tmp_path / "dev")
    with pytest.raises(VersionError):
        store.current()
    store.install("v1", fetch_from(server))
    assert store.current() == store.path("v1")
    store.install("v2", fetch_from(server))
    assert (store.current_id, store.previous_id) == ("v2", "v1")
    np.testing.assert_array_equal(weights_of(store.current()), weights_of(server / "v2"))
    assert store.rollback() == "v1"
    assert store.current() == store.path("v1")


def test_keeps_only_current_and_previous(tmp_path: Path, server: Path):
    store = VersionStore(tmp_path / "dev")
    for v in ("v1", "v2", "v3"):
        store.install(v, fetch_from(server))
    assert store.installed() == ["v2", "v3"]
    store.ensure("v1", fetch_from(server))
    store.prune(keep=["v1"])
    assert store.installed() == ["v1", "v2", "v3"]


def test_shared_graph_and_tokenizer_are_not_downloaded_twice(tmp_path: Path, server: Path):
    store = VersionStore(tmp_path / "dev")
    store.install("v1", fetch_from(server))
    f = CountingFetch(server / "v2")
    store.install("v2", f)
    assert sorted(f.calls) == sorted([MANIFEST, WEIGHTS])


def test_files_a_version_shares_are_linked_only_when_the_disk_is_tight(tmp_path: Path, server: Path,
                                                                      monkeypatch):
    """Copies made an update need the space of a whole version (14 MB of the shipped one's 15.4
    are its graph and word list): a device with room for the new weights alone never updated.
    With room, each version keeps its own copy: a damaged one leaves the previous to fall back on."""
    import shutil
    from collections import namedtuple

    store = VersionStore(tmp_path / "dev")
    store.install("v1", fetch_from(server))
    store.install("v2", fetch_from(server))
    inode = lambda v, name: (store.path(v) / name).stat().st_ino   # noqa: E731
    assert inode("v1", GRAPH) != inode("v2", GRAPH)
    (store.path("v2") / GRAPH).write_bytes(b"bit rot")
    assert store.current() == store.path("v1")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(100, 100, 10))   # a nearly full disk
    store = VersionStore(tmp_path / "tight")
    store.install("v1", fetch_from(server))
    store.install("v2", fetch_from(server))
    for name in (GRAPH, TOKENIZER):
        assert inode("v1", name) == inode("v2", name)
    assert inode("v1", WEIGHTS) != inode("v2", WEIGHTS)


def test_another_process_opening_the_store_leaves_a_download_under_way_alone(tmp_path: Path, server: Path,
                                                                              monkeypatch):
    """Every VersionStore removed every staging directory: `status` or the keyboard started while
    the device loop downloaded deleted its download, and the install failed; also when it started
    between the staging directory's making and its lock."""
    dev = tmp_path / "dev"
    VersionStore(dev)
    left = dev / MODELS_DIR / (STAGING_PREFIX + "killed")    # what a killed install left: removed
    left.mkdir()
    os.utime(left, (time.time() - 120, time.time() - 120))   # ... once a minute old
    inner = fetch_from(server)

    def slow(vid: str, fname: str) -> bytes:
        if fname == WEIGHTS:
            VersionStore(dev)                                # `status` in another process, mid-download
        return inner(vid, fname)

    real_mkdtemp, other = versions_mod.tempfile.mkdtemp, []

    def recovered_before_the_lock(*a, **kw) -> str:          # another process's start, between the
        made = real_mkdtemp(*a, **kw)                         # staging directory and its lock
        other.append(threading.Thread(target=VersionStore, args=(dev,)))
        other[0].start()
        other[0].join(timeout=0.3)                            # it waits for the lock, or sweeps now
        return made

    monkeypatch.setattr(versions_mod.tempfile, "mkdtemp", recovered_before_the_lock)
    VersionStore(dev).install("v1", slow)
    monkeypatch.undo()
    other[0].join(timeout=10)
    assert not left.exists() and not other[0].is_alive()
    assert VersionStore(dev).current() == dev / MODELS_DIR / "v1"


def test_tampered_weights_are_refused_and_current_kept(tmp_path: Path, server: Path):
    store = VersionStore(tmp_path / "dev")
    store.install("v1", fetch_from(server))

    def evil(vid: str, fname: str) -> bytes:
        data = (server / vid / fname).read_bytes()
        return data[:-4] + b"\0\0\0\0" if fname == WEIGHTS else data

    with pytest.raises(VersionError, match="sha256"):
        store.install("v2", evil)
    assert store.current_id == "v1" and store.installed() == ["v1"]
    assert not [p for p in store.root.iterdir() if p.name.startswith(".incoming")]


def test_manifest_for_another_version_is_refused(tmp_path: Path, server: Path):
    store = VersionStore(tmp_path / "dev")
    with pytest.raises(VersionError, match="manifest says"):
        store.install("v2", lambda vid, fname: (server / "v1" / fname).read_bytes())


def test_unsafe_version_ids_are_refused(tmp_path: Path, server: Path):
    store = VersionStore(tmp_path / "dev")
    with pytest.raises(VersionError):
        store.install("../etc", fetch_from(server))


@pytest.mark.parametrize("encoding", ["hex", "base64"])
def test_signed_versions_install_with_the_key(tmp_path: Path, encoding: str):
    key = Ed25519PrivateKey.generate()
    server = tmp_path / "server"
    make_version(server, "v1", 1, key, encoding)
    pub_hex = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    store = VersionStore(tmp_path / "dev", public_key=pub_hex)
    store.install("v1", fetch_from(server))
    assert store.current() == store.path("v1")


def test_the_licence_notices_of_the_version_in_use_are_signed_and_printed(tmp_path: Path, capsys):
    # `python -m edge_runtime notices`: what the word list's licence asks to travel with it.
    from edge_runtime.__main__ import main as cli_main

    key = Ed25519PrivateKey.generate()
    server = tmp_path / "server"
    make_version(server, "v1", 1, key, notices={TOKENIZER: "CC BY-SA 4.0: words from Someone (2022)"})
    make_version(server, "v2", 2, key, notices={TOKENIZER: "CC BY-SA 4.0: words from Someone (2022)"})
    m = json.loads((server / "v2" / MANIFEST).read_text())
    m["notices"] = {TOKENIZER: "public domain, trust me"}
    (server / "v2" / MANIFEST).write_text(json.dumps(m))
    store = VersionStore(tmp_path / "dev", public_key=key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    store.install("v1", fetch_from(server))
    with pytest.raises(SignatureError):
        store.install("v2", fetch_from(server))
    assert cli_main(["notices", "--data-dir", str(tmp_path / "dev")]) == 0
    assert capsys.readouterr().out == f"== {TOKENIZER} (version v1) ==\nCC BY-SA 4.0: words from Someone (2022)\n"
    (tmp_path / "empty").mkdir()
    assert cli_main(["notices", "--data-dir", str(tmp_path / "empty")]) == 2   # a typo, named as one
    assert "not a device data directory" in capsys.readouterr().err
    # Edited on the device's disk: with the coordinator's key (as the keyboard checks) it is refused.
    installed = store.path("v1") / MANIFEST
    installed.write_text(installed.read_text().replace("Someone", "Nobody"))
    pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    assert cli_main(["notices", "--data-dir", str(tmp_path / "dev"), "--set", f"public_key={pub}"]) == 1
    assert "no usable model version" in capsys.readouterr().err


def test_unsigned_or_wrongly_signed_or_tampered_manifests_are_refused(tmp_path: Path):
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    server = tmp_path / "server"
    make_version(server, "unsigned", 1)
    make_version(server, "foreign", 2, other)
    make_version(server, "tampered", 3, key)
    m = json.loads((server / "tampered" / MANIFEST).read_text())
    m["metrics"] = {"claimed": "better"}
    (server / "tampered" / MANIFEST).write_text(json.dumps(m))
    pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    store = VersionStore(tmp_path / "dev", public_key=pem)
    for vid in ("unsigned", "foreign", "tampered"):
        f = CountingFetch(server / vid)
        with pytest.raises(SignatureError):
            store.install(vid, f)
        assert f.calls == [MANIFEST]   # refused before downloading anything else
    assert store.installed() == []


def resigned(d: Path, key: Ed25519PrivateKey, edit) -> None:
    """`d`'s manifest changed by `edit` and signed again with `key`: what a coordinator holding
    the signing key (hostile, or mistaken) can ship."""
    m = Manifest.from_dict(json.loads((d / MANIFEST).read_text()))
    edit(m)
    m.signature = key.sign(m.signing_bytes()).hex()
    (d / MANIFEST).write_text(json.dumps(m.to_dict()))


def store_trusting(tmp_path: Path, key: Ed25519PrivateKey) -> VersionStore:
    return VersionStore(tmp_path / "dev", public_key=key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def test_a_signed_version_whose_architecture_cannot_run_is_refused(tmp_path: Path):
    # The coordinator refuses such a manifest at import; the device does not rely on that: it
    # once installed it and failed every check-in with a TypeError.
    key = Ed25519PrivateKey.generate()
    server = tmp_path / "server"
    d = make_version(server, "vx", 1, key)

    def big(m: Manifest) -> None:
        m.arch = {"model": {"train_batch": 2, "seq_len": 4, "vocab_size": "big"}}
        m.arch_hash = arch_hash(m.arch)

    resigned(d, key, big)
    store = store_trusting(tmp_path, key)
    with pytest.raises(VersionError, match="vx cannot run here: .*vocab_size must be a positive integer"):
        store.install("vx", fetch_from(server))
    assert store.installed() == []


def test_a_signed_version_whose_tensors_are_not_its_architectures_is_refused_before_download(tmp_path: Path):
    """A signed embedding of 3 rows where the architecture has 8 was installed, made current and
    patched into the keyboard's graph over its first 3 rows: suggestions quietly garbled. The
    device checks the manifest as the coordinator does on import (`checked_architecture`)."""
    key = Ed25519PrivateKey.generate()
    server = tmp_path / "server"
    d = make_version(server, "vx", 1, key)
    resigned(d, key, lambda m: setattr(m, "tensors", [TensorSpec(t.name, (3, 4)) if t.name == "embedding" else t
                                                      for t in m.tensors]))
    store = store_trusting(tmp_path, key)
    f = CountingFetch(server / "vx")
    with pytest.raises(VersionError, match=r"vx cannot run here: .*embedding', \(3, 4\)"):
        store.install("vx", f)
    assert f.calls == [MANIFEST] and store.installed() == []


def test_a_signed_version_with_a_nan_weight_is_a_version_error(tmp_path: Path):
    """load_version's ArtifactError (a NaN weight) escaped as an unexpected error: the agent's
    check-in failed and the round's task on the good version in use was dropped with it."""
    key = Ed25519PrivateKey.generate()
    server = tmp_path / "server"
    d = make_version(server, "vn", 1, key)
    weights = load_version(d)[1]
    weights["out_bias"][0] = np.nan   # written by hand: write_version refuses it
    (d / WEIGHTS).write_bytes(encode_weights(weights))
    resigned(d, key, lambda m: setattr(m, "weights_sha256", sha256_bytes((d / WEIGHTS).read_bytes())))
    store = store_trusting(tmp_path, key)
    with pytest.raises(VersionError, match="vn is not usable: out_bias: contains NaN"):
        store.install("vn", fetch_from(server))
    assert store.installed() == []


def test_a_configured_key_also_guards_versions_already_on_disk(tmp_path: Path, server: Path):
    VersionStore(tmp_path / "dev").install("v1", fetch_from(server))  # unsigned, no key then
    key = Ed25519PrivateKey.generate()
    store = VersionStore(tmp_path / "dev", public_key=key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    with pytest.raises(VersionError):
        store.current()


def test_public_key_formats():
    key = Ed25519PrivateKey.generate().public_key()
    raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    for form in (raw, raw.hex(), key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)):
        assert load_public_key(form).public_bytes(Encoding.Raw, PublicFormat.Raw) == raw
    with pytest.raises(ValueError):
        load_public_key(b"short")


def test_damaged_current_falls_back_to_previous(tmp_path: Path, server: Path):
    store = VersionStore(tmp_path / "dev")
    store.install("v1", fetch_from(server))
    store.install("v2", fetch_from(server))
    (store.path("v2") / WEIGHTS).write_bytes(b"bit rot")
    assert store.current() == store.path("v1")


def test_a_damaged_pointer_falls_back_to_the_newest_valid_version(tmp_path: Path, server: Path):
    """The log said "falling back to any valid version" and nothing did: no model until the next
    check-in."""
    import time

    store = VersionStore(tmp_path / "dev")
    store.install("v1", fetch_from(server))
    time.sleep(0.01)
    store.install("v2", fetch_from(server))
    (tmp_path / "dev" / MODELS_DIR / "current.json").write_text('{"current": "v2')
    assert store.current() == store.path("v2")
    (store.path("v2") / WEIGHTS).write_bytes(b"bit rot")
    assert store.current() == store.path("v1")


def _named_by_coordinator(dev: Path, version_id: str) -> None:
    """The device's last accepted rollout statement names `version_id` (as `rollout_guard.remember` keeps it)."""
    from edge_runtime.paths import ROLLOUT_STATE_FILE
    from protocol.rollout_state import RolloutState

    state = RolloutState(device_id="d", version_id=version_id, channel="stable", seq=2, version_seq=1,
                         rollback=True, expires_at=2**40, signature="00")
    (dev / ROLLOUT_STATE_FILE).write_text(json.dumps(state.to_dict()))


def test_a_rolled_back_version_never_comes_back_through_damage(tmp_path: Path, server: Path):
    """A canary device rolled back off a rejected candidate kept it as `previous`: damage to the
    stable version, or to the pointer (the newest valid version), put the rejected one back in use."""
    dev = tmp_path / "dev"
    store = VersionStore(dev)
    store.install("v1", fetch_from(server))
    store.install("v2", fetch_from(server))             # the canary
    store.install("v1", fetch_from(server), abandon=True)   # rejected: back to stable
    _named_by_coordinator(dev, "v1")
    assert (store.current_id, store.previous_id) == ("v1", None) and store.installed() == ["v1"]
    store.ensure("v2", fetch_from(server))              # still on disk (e.g. a kill before the prune)
    (dev / MODELS_DIR / "current.json").write_text('{"current": "v1')    # torn
    assert store.current() == store.path("v1")                            # the coordinator's, not the newest
    (store.path("v1") / WEIGHTS).write_bytes(b"bit rot")
    with pytest.raises(VersionError):                                     # none until the next check-in
        store.current()
    assert VersionStore(dev).in_use() is None


@pytest.mark.parametrize("pointer", ["null", "[]", '{"current": 7}', '{"current": "../x"}', None])
def test_a_lost_pointer_is_repaired_to_the_coordinators_version_and_nothing_is_pruned(tmp_path: Path, server: Path,
                                                                                      pointer: str | None):
    """JSON that is no pointer crashed every command (`.get` on a list); a missing pointer got no
    fallback at all, the device reported no version, and the coordinator's move back off a
    rejected candidate was then refused as a downgrade for good; and pruning with the pointer
    lost deleted every version."""
    dev = tmp_path / "dev"
    store = VersionStore(dev)
    store.install("v1", fetch_from(server))
    store.install("v2", fetch_from(server))
    ptr = dev / MODELS_DIR / "current.json"
    if pointer is None:
        ptr.unlink()
    else:
        ptr.write_text(pointer)
    store.prune()
    assert store.installed() == ["v1", "v2"]
    _named_by_coordinator(dev, "v1")
    assert store.current() == store.path("v1")
    repaired = VersionStore(dev)                      # a start repairs it: the device reports v1 again
    assert (repaired.current_id, repaired.previous_id) == ("v1", None)


def test_a_manifest_that_is_not_text_is_a_damaged_version(tmp_path: Path, server: Path):
    """One non-UTF-8 byte in a manifest escaped every handler: every iteration of the device loop
    failed before its check-in, the keyboard would not start, and with the byte in the previous
    version's manifest every later install failed."""
    store = VersionStore(tmp_path / "dev")
    store.install("v1", fetch_from(server))
    store.install("v2", fetch_from(server))
    manifest = store.path("v1") / "manifest.json"
    manifest.write_bytes(b"\xff" + manifest.read_bytes()[1:])
    assert not store.is_valid("v1") and store.current() == store.path("v2")
    store.install("v3", fetch_from(server))           # the previous version's damage does not stop it
    assert store.current_id == "v3"
    manifest = store.path("v3") / "manifest.json"
    manifest.write_bytes(b"\xff" + manifest.read_bytes()[1:])
    assert store.current() == store.path("v2")


def test_what_a_kill_or_damage_leaves_is_cleaned_up(tmp_path: Path, server: Path):
    """A version folder that lost its manifest was never pruned (16 MB for good), and a file named
    like a staging directory was never removed."""
    store = VersionStore(tmp_path / "dev")
    store.install("v1", fetch_from(server))
    store.install("v2", fetch_from(server))
    (store.path("v1") / MANIFEST).unlink()
    stray = store.root / f"{STAGING_PREFIX}v3"
    stray.write_bytes(b"a file where a directory goes")
    store.install("v3", fetch_from(server))
    assert not store.path("v1").exists() and sorted(p.name for p in store.root.iterdir() if p.is_dir()) == ["v2", "v3"]
    VersionStore(tmp_path / "dev")                       # a start's recovery
    assert not stray.exists()


def test_a_version_is_hashed_again_only_when_its_files_change(tmp_path: Path, server: Path, monkeypatch):
    """The keyboard asks every 2 s which version is in use, and each answer hashed its 16 MB under
    the keyboard's lock (18 ms on a desktop core), stalling the keystroke it fell on."""
    from edge_runtime import versions

    store = VersionStore(tmp_path / "dev", remember_verified=True)   # the keyboard's
    store.install("v1", fetch_from(server))
    monkeypatch.setattr(versions, "SETTLED_NS", 0)      # the files count as settled at once
    hashed = []
    real = versions.load_version
    monkeypatch.setattr(versions, "load_version", lambda d, **kw: hashed.append(d) or real(d, **kw))
    for _ in range(5):
        assert store.current() == store.path("v1")
    assert len(hashed) == 1
    weights = store.path("v1") / WEIGHTS
    mtime = weights.stat().st_mtime_ns
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    with open(weights, "r+b") as f:                      # in place: one byte, the same size and inode,
        f.write(bytes(data))
    os.utime(weights, ns=(mtime, mtime))                 # the mtime put back (the change time cannot be)
    with pytest.raises(VersionError):
        store.current()
    assert len(hashed) == 2
    # what it remembers goes with the versions deleted (a long-running keyboard kept an entry per version)
    for i in range(4, 8):
        make_version(server, f"v{i}", i)
    kept = VersionStore(tmp_path / "dev3", remember_verified=True)
    for i in range(1, 8):
        kept.install(f"v{i}", fetch_from(server))
        assert kept.current() == kept.path(f"v{i}")
    # the installed two, and at most the one deleted after the newest was first verified
    assert {"v6", "v7"} <= set(kept._verified) <= {"v5", "v6", "v7"}
    loop = VersionStore(tmp_path / "dev2")               # the device loop's store hashes every time
    loop.install("v1", fetch_from(server))
    n = len(hashed)
    assert loop.is_valid("v1") and loop.is_valid("v1") and len(hashed) == n + 2


def test_a_folder_no_version_id_names_is_left_alone(tmp_path: Path, server: Path):
    """With the pointer lost, a folder such as `v1 (copy)` holding a manifest made the store fail
    to open (its name is no version id): the device loop and the keyboard could not start."""
    import shutil

    store = VersionStore(tmp_path / "dev")
    store.install("v1", fetch_from(server))
    shutil.copytree(store.path("v1"), store.root / "v1 (copy)")
    (store.root / "current.json").unlink()
    again = VersionStore(tmp_path / "dev")
    assert again.installed() == ["v1"] and again.current() == again.path("v1")
    assert (again.root / "v1 (copy)").is_dir()


class Crash(BaseException):
    """Stands in for the process dying at one I/O call (BaseException: nothing catches it)."""


@pytest.mark.parametrize("op", ["fsync", "rename", "replace"])
def test_crash_at_every_durable_step_leaves_a_working_model(tmp_path: Path, server: Path,
                                                             monkeypatch: pytest.MonkeyPatch, op: str):
    """Kill the install at the k-th fsync/rename/replace for every k; the device always has v1 or v2."""
    real = getattr(os, op)
    k = 0
    while True:
        k += 1
        dev = tmp_path / f"dev-{op}-{k}"
        VersionStore(dev).install("v1", fetch_from(server))
        calls = [0]

        def dying(*args, _k=k, calls=calls, **kw):
            calls[0] += 1
            if calls[0] == _k:
                raise Crash()
            return real(*args, **kw)

        monkeypatch.setattr(os, op, dying)
        try:
            VersionStore(dev).install("v2", fetch_from(server))
            finished = True
        except Crash:
            finished = False
        finally:
            monkeypatch.setattr(os, op, real)
        after = VersionStore(dev)            # the next start
        current = after.current()
        assert current.name in ("v1", "v2")
        load_version(current)                # complete and verified
        if finished:
            assert current.name == "v2"
            break
        assert k < 50
    assert k >= 2  # the loop really crashed before finishing


def test_kill_9_during_swaps_leaves_a_working_model(tmp_path: Path, server: Path):
    """A real SIGKILL at arbitrary moments of repeated installs and rollbacks."""
    dev = tmp_path / "dev"
    VersionStore(dev).install("v1", fetch_from(server))
    child = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from edge_runtime.versions import VersionStore
        server = Path({str(server)!r})
        fetch = lambda vid, f: (server / vid / f).read_bytes()
        print("ready", flush=True)
        i = 0
        while True:
            store = VersionStore({str(dev)!r})
            store.install(("v2", "v3", "v1")[i % 3], fetch)
            i += 1
    """)
    for delay in (0.05, 0.11, 0.17, 0.23, 0.31):
        proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        proc.stdout.close()  # type: ignore[union-attr]
        assert proc.returncode == -signal.SIGKILL
        store = VersionStore(dev)
        load_version(store.current())
        assert not [p for p in store.root.iterdir() if p.name.startswith(".incoming")]


def with_q8(d: Path, key: Ed25519PrivateKey | None = None) -> Path:
    """Add the quantized download form to a served version, as the coordinator does before signing."""
    from protocol.artifact import WEIGHTS_Q8, encode_weights_q8

    m, w = load_version(d)
    data = encode_weights_q8(w)
    (d / WEIGHTS_Q8).write_bytes(data)
    m.weights_q8_sha256 = sha256_bytes(data)
    if key is not None:
        m.signature = key.sign(m.signing_bytes()).hex()
    (d / MANIFEST).write_text(json.dumps(m.to_dict(), indent=2, sort_keys=True))
    return d


def test_a_signed_quantized_form_is_what_is_downloaded_and_it_loads(tmp_path: Path):
    from protocol.artifact import WEIGHTS_Q8

    key = Ed25519PrivateKey.generate()
    server = tmp_path / "server"
    d = with_q8(make_version(server, "v1", 1, key=key), key=key)
    pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    store = VersionStore(tmp_path / "dev", public_key=load_public_key(pub))
    f = CountingFetch(d)
    store.install("v1", f)
    assert WEIGHTS_Q8 in f.calls and WEIGHTS not in f.calls
    _, got = load_version(store.current())
    _, want = load_version(d)
    for name, w in want.items():
        assert np.allclose(got[name], w, atol=np.abs(w).max() / 127)
    # The quantized bytes are covered by the signature: tampered ones are refused.
    store2 = VersionStore(tmp_path / "dev2", public_key=load_public_key(pub))

    def evil(vid: str, fname: str) -> bytes:
        data = (d / fname).read_bytes()
        return data[:-1] + bytes([data[-1] ^ 1]) if fname == WEIGHTS_Q8 else data

    with pytest.raises(VersionError, match="sha256"):
        store2.install("v1", evil)


def test_a_coordinator_key_that_cannot_be_read_is_said_not_checked(tmp_path, capsys):
    """A device.json whose coordinator key is not hex: `status` said "signature_checked": true, and
    `run` ended on "error: Non-hexadecimal digit found", naming neither the key nor a fix."""
    from edge_runtime.__main__ import main as cli_main
    from edge_runtime.identity import Identity, save_identity

    d = tmp_path / "d"
    save_identity(d, Identity("dev1", "t" * 40, "http://127.0.0.1:9", public_key="zz" * 32))
    assert cli_main(["status", "--data-dir", str(d)]) == 0
    said = json.loads(capsys.readouterr().out)
    assert said["signature_checked"] is False and "cannot be read" in said["signature_key_error"]
    assert cli_main(["run", "--data-dir", str(d), "--once"]) == 2
    err = capsys.readouterr().err
    assert "coordinator's public key" in err and "device.json" in err and "enroll again" in err
    good = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    save_identity(d, Identity("dev1", "t" * 40, "http://127.0.0.1:9", public_key=good))
    assert cli_main(["status", "--data-dir", str(d)]) == 0
    said = json.loads(capsys.readouterr().out)
    assert said["signature_checked"] is True and "signature_key_error" not in said
