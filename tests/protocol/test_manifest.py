"""The manifest's typed architecture and its one signature check (protocol.artifact)."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from protocol import artifact
from protocol.arch import SIGNATURES, Arch, ModelConfig

CFG = ModelConfig(vocab_size=64, embed_dim=8, hidden_dim=16, train_batch=4, seq_len=8)
PATCHES = {"embedding": [[128, 0]], "out_proj": [[4096, 1]]}


def manifest(arch: dict) -> artifact.Manifest:
    return artifact.Manifest(version_id="v1", arch=arch, arch_hash=artifact.arch_hash(arch),
                             tensors=[artifact.TensorSpec(n, s) for n, s in CFG.weight_shapes()],
                             graph_sha256="g", tokenizer_sha256="t", weights_sha256="w")


def test_arch_record_is_the_exporters_dict_and_reads_back_typed():
    arch = Arch(CFG, infer_patches=PATCHES)
    d = arch.to_dict()
    # The exact record model.export has always written: its hash (signed) must not move.
    assert d == {"model": CFG.to_dict(), "signatures": list(SIGNATURES), "infer_patches": PATCHES}
    m = artifact.Manifest.from_dict(manifest(d).to_dict())
    assert m.architecture() == arch
    assert m.architecture().model.hidden_dim == 16 and m.architecture().infer_patches == PATCHES


def test_an_arch_without_patches_has_none():
    assert manifest({"model": CFG.to_dict()}).architecture().infer_patches == {}


@pytest.mark.parametrize("arch", [{}, {"test": True}, {"train_batch": 4, "seq_len": 8}, {"model": 3},
                                  {"model": {"hidden_dim": 16, "colour": "red"}},
                                  {"model": CFG.to_dict(), "infer_patches": {"embedding": [[1]]}}])
def test_an_arch_that_is_not_an_exporters_record_is_an_artifact_error(arch):
    with pytest.raises(artifact.ArtifactError, match="manifest of v1"):
        manifest(arch).architecture()


@pytest.mark.parametrize("key, value", [("vocab_size", "big"), ("hidden_dim", -16), ("seq_len", 8.5),
                                        ("embed_dim", True), ("clip_norm", float("nan")), ("tie_embeddings", 1)])
def test_a_model_config_of_the_wrong_type_or_sign_is_named(key, value):
    arch = {"model": {**CFG.to_dict(), key: value}}
    with pytest.raises(artifact.ArtifactError, match=f"manifest of v1: model config {key} must be"):
        manifest(arch).architecture()


def test_checked_architecture_refuses_a_hash_or_tensors_that_do_not_match_the_arch():
    good = manifest(Arch(CFG).to_dict())
    assert artifact.checked_architecture(good) == Arch(CFG)
    edited = manifest(Arch(CFG).to_dict())
    edited.arch["model"]["vocab_size"] = 128          # edited after the hash was taken
    with pytest.raises(artifact.ArtifactError, match="arch_hash is not the hash"):
        artifact.checked_architecture(edited)
    rehashed = manifest(Arch(ModelConfig(**{**CFG.to_dict(), "vocab_size": 128})).to_dict())   # tensors of 64
    with pytest.raises(artifact.ArtifactError, match="not the ones its architecture trains"):
        artifact.checked_architecture(rehashed)


@pytest.mark.parametrize("doc, match", [([], "not a JSON object"), ("v1", "not a JSON object"),
                                        ({"version_id": 7}, "version_id of the wrong type"),
                                        ({"arch": [1]}, "arch of the wrong type"),
                                        ({"arch": None}, "malformed manifest: no arch$"),
                                        ({"tensors": None, "graph_sha256": None}, "no tensors, graph_sha256$")])
def test_a_manifest_that_is_not_an_object_or_holds_wrong_types_is_an_artifact_error(doc, match):
    d = manifest(Arch(CFG).to_dict()).to_dict()
    if isinstance(doc, dict):   # None: the field left out
        doc = {k: v for k, v in ({**d, **doc}).items() if v is not None or k not in doc}
    with pytest.raises(artifact.ArtifactError, match=match):
        artifact.Manifest.from_dict(doc)


def test_one_verifier_for_every_key_and_signature_encoding():
    key = Ed25519PrivateKey.generate()
    pub = key.public_key()
    m = artifact.sign_manifest(manifest(Arch(CFG).to_dict()), key)
    raw = pub.public_bytes(Encoding.Raw, PublicFormat.Raw)
    for k in (pub, raw, raw.hex(), pub.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)):
        artifact.verify_manifest(m, k)
    m.signature = base64.b64encode(bytes.fromhex(m.signature)).decode()
    artifact.verify_manifest(m, raw.hex())


@pytest.mark.parametrize("mangle, match", [
    (lambda s: None, "not signed"),
    (lambda s: s[:-2], "bad signature"),                        # 63 bytes of hex
    (lambda s: " ".join([s[:64], s[64:]]), "bad signature"),    # hex with a space: not 128 characters
    (lambda s: s[:-2] + ("00" if s[-2:] != "00" else "01"), "bad signature"),
])
def test_unsigned_malformed_or_wrong_signatures_are_refused(mangle, match):
    key = Ed25519PrivateKey.generate()
    m = artifact.sign_manifest(manifest(Arch(CFG).to_dict()), key)
    m.signature = mangle(m.signature)
    with pytest.raises(artifact.SignatureError, match=match):
        artifact.verify_manifest(m, key.public_key())


def test_a_signature_by_another_key_is_refused():
    m = artifact.sign_manifest(manifest(Arch(CFG).to_dict()), Ed25519PrivateKey.generate())
    with pytest.raises(artifact.SignatureError):
        artifact.verify_manifest(m, Ed25519PrivateKey.generate().public_key())
    with pytest.raises(artifact.SignatureError):
        artifact.verify_manifest(m, "short")


def test_a_newer_writers_fields_are_kept_and_signed_so_older_readers_still_verify():
    # Keys this code does not know are read into `extra` and written back as they were: a
    # manifest signed by a newer coordinator verifies here, and a tampered unknown key does not.
    key = Ed25519PrivateKey.generate()
    newer = artifact.Manifest.from_dict({**manifest(Arch(CFG).to_dict()).to_dict(), "colour": {"a": [1, 2]}})
    assert newer.extra == {"colour": {"a": [1, 2]}} and newer.to_dict()["colour"] == {"a": [1, 2]}
    signed = artifact.sign_manifest(newer, key).to_dict()
    read = artifact.Manifest.from_dict(signed)
    artifact.verify_manifest(read, key.public_key())
    read.extra["colour"] = "red"
    with pytest.raises(artifact.SignatureError):
        artifact.verify_manifest(read, key.public_key())
    # A manifest without notices or unknown keys serialises exactly as before they existed.
    assert set(manifest(Arch(CFG).to_dict()).to_dict()) == {
        "version_id", "arch", "arch_hash", "tensors", "graph_sha256", "tokenizer_sha256", "weights_sha256",
        "parent", "created_at", "metrics", "privacy", "signature", "format"}


@pytest.mark.parametrize("notices", [["x"], "CC BY", {"tokenizer.model": 3}, {1: "x"}])
def test_malformed_notices_are_an_artifact_error(notices):
    with pytest.raises(artifact.ArtifactError, match="notices must map file names to texts"):
        artifact.Manifest.from_dict({**manifest(Arch(CFG).to_dict()).to_dict(), "notices": notices})


def test_write_leftovers_names_what_a_kill_during_atomic_write_leaves(tmp_path):
    """A process killed between writing and renaming leaves a temporary file beside the target;
    `write_leftovers` is how deleters (a wipe, the pointer sweep) find it, glob characters and all."""
    import os
    import subprocess
    import sys
    target = tmp_path / "unsent[1].json"
    (tmp_path / "unsent[1].json.keep").write_bytes(b"not a leftover")
    script = ("import os, signal, sys\nfrom protocol import artifact\n"
              "os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)\n"
              "artifact.atomic_write(sys.argv[1], b'learned from the text')\n")
    from pathlib import Path
    env = {**os.environ, "PYTHONPATH": str(Path(artifact.__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", script, str(target)], env=env)
    assert done.returncode == -9
    left = artifact.write_leftovers(target)
    assert [p.read_bytes() for p in left] == [b"learned from the text"]
    assert not target.exists()
    assert artifact.write_leftovers(tmp_path / "other.json") == []
