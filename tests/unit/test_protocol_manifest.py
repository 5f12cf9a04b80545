"""The manifest's one signature check (protocol.artifact.verify_manifest)."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from protocol import artifact


def manifest(arch: dict) -> artifact.Manifest:
    return artifact.Manifest(version_id="v1", arch=arch, arch_hash=artifact.arch_hash(arch),
                             tensors=[artifact.TensorSpec("embedding", (8, 4))],
                             graph_sha256="g", tokenizer_sha256="t", weights_sha256="w")


def test_one_verifier_for_every_key_and_signature_encoding():
    key = Ed25519PrivateKey.generate()
    pub = key.public_key()
    m = artifact.sign_manifest(manifest({"model": {}}), key)
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
    m = artifact.sign_manifest(manifest({"model": {}}), key)
    m.signature = mangle(m.signature)
    with pytest.raises(artifact.SignatureError, match=match):
        artifact.verify_manifest(m, key.public_key())


def test_a_signature_by_another_key_is_refused():
    m = artifact.sign_manifest(manifest({"model": {}}), Ed25519PrivateKey.generate())
    with pytest.raises(artifact.SignatureError):
        artifact.verify_manifest(m, Ed25519PrivateKey.generate().public_key())
    with pytest.raises(artifact.SignatureError):
        artifact.verify_manifest(m, "short")
