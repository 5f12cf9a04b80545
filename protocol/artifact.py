"""Model version artifacts: one weight format (safetensors) and one manifest.

A *version directory* holds::

    manifest.json         names, shapes, dtypes, hashes, architecture, version id (+ signature)
    weights.safetensors   the trainable tensors, float32, in WEIGHT order of the manifest
    weights.q8.safetensors  or instead (what devices download): the same tensors quantized,
                          int8 matrices with a float32 scale per row, float16 vectors (`quantize`)
    model.tflite          the trainable graph (shared by every version of one architecture)
    tokenizer.model       the SentencePiece model (shared likewise)

A new version ships only new weights; graph and tokenizer are identified by their sha256 in
the manifest, so a device that already holds them downloads weights alone.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import glob
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from protocol.arch import Arch

MANIFEST_FORMAT = "fedkeys-model/1"
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
WEIGHTS_Q8 = "weights.q8.safetensors"
_SCALE = ".scale"
GRAPH = "model.tflite"
TOKENIZER = "tokenizer.model"


class ArtifactError(ValueError):
    """A version artifact is missing, malformed, or does not match its manifest."""


class SignatureError(ArtifactError):
    """A manifest is unsigned, or its signature does not verify with the coordinator's key."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"


@dataclass
class Manifest:
    """Describes one model version. `tensors` fixes the weight order used everywhere.

    `arch` is kept as the dict the exporter wrote (its hash and the signature cover those
    bytes, and the coordinator stores versions of any architecture); read it through
    `architecture()`."""

    version_id: str
    arch: dict[str, Any]
    arch_hash: str
    tensors: list[TensorSpec]
    graph_sha256: str
    tokenizer_sha256: str
    weights_sha256: str
    weights_q8_sha256: str = ""  # of `encode_weights_q8(weights)`, set by the coordinator before it signs
    parent: str | None = None
    created_at: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    privacy: dict[str, Any] = field(default_factory=dict)
    # A file of the version -> the licence notice that must travel with it (the word list's tail
    # comes from a CC BY-SA list: `tools.add_words --tail`); signed with the rest, kept by children.
    notices: dict[str, str] = field(default_factory=dict)
    signature: str | None = None
    format: str = MANIFEST_FORMAT
    # Keys this code does not know (a newer writer's), kept as read: they are written back and
    # signed with the rest, so a newer field never breaks an older reader's signature check.
    # (Readers from releases before 2 December 2026 drop them, so they refuse manifests with
    # `notices`: update devices before the coordinator signs such versions.)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tensors"] = [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in self.tensors]
        for key in ("weights_q8_sha256", "notices"):
            if not d[key]:
                del d[key]  # manifests without them read (and sign) as before
        return {**d.pop("extra"), **d}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        if not isinstance(d, Mapping):
            raise ArtifactError("malformed manifest: not a JSON object")
        if d.get("format") != MANIFEST_FORMAT:
            raise ArtifactError(f"unknown manifest format {d.get('format')!r}, expected {MANIFEST_FORMAT}")
        notices = d.get("notices", {})
        if not (isinstance(notices, dict) and all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in notices.items())):
            raise ArtifactError("malformed manifest: notices must map file names to texts")
        wrong = [k for k, kind in _FIELD_TYPES.items() if k in d and not isinstance(d[k], kind)]
        if wrong:
            raise ArtifactError(f"malformed manifest: {', '.join(wrong)} of the wrong type")
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in d and f.name != "extra"
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ArtifactError(f"malformed manifest: no {', '.join(missing)}")
        try:
            tensors = [TensorSpec(t["name"], tuple(int(s) for s in t["shape"]), t["dtype"]) for t in d["tensors"]]
            known = {f for f in cls.__dataclass_fields__} - {"extra"}
            kw = {k: v for k, v in d.items() if k in known and k != "tensors"}
            return cls(tensors=tensors, extra={k: v for k, v in d.items() if k not in known and k != "tensors"}, **kw)
        except (KeyError, TypeError) as e:
            raise ArtifactError(f"malformed manifest: {e}") from e

    def signing_bytes(self) -> bytes:
        """Canonical bytes that a signature covers: the manifest without its signature."""
        d = self.to_dict()
        d.pop("signature", None)
        return canonical_json(d)

    @property
    def num_params(self) -> int:
        return int(sum(int(np.prod(t.shape)) for t in self.tensors))

    def architecture(self) -> Arch:
        """The typed architecture (model config, signatures, `infer` patches); ArtifactError if
        `arch` is not an exporter's record."""
        try:
            return Arch.from_dict(self.arch)
        except ValueError as e:
            raise ArtifactError(f"manifest of {self.version_id}: {e}") from e


# What a manifest's JSON must hold where it holds these keys (a string id, not a number; a dict arch).
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "version_id": str, "arch": dict, "arch_hash": str, "tensors": list, "graph_sha256": str,
    "tokenizer_sha256": str, "weights_sha256": str, "weights_q8_sha256": str, "parent": (str, type(None)),
    "created_at": str, "metrics": dict, "privacy": dict, "signature": (str, type(None))}


def checked_architecture(manifest: Manifest) -> Arch:
    """`manifest.architecture()`, refused (ArtifactError) unless the manifest is whole: its
    `arch_hash` is its arch record's and its tensors are the ones that architecture trains. A
    version from outside (an operator's directory) passes this before it is signed and shipped:
    devices trust what is signed, so a bad size must stop at the coordinator."""
    if manifest.arch_hash != arch_hash(manifest.arch):
        raise ArtifactError(f"manifest of {manifest.version_id}: arch_hash is not the hash of its arch record "
                            "(edited by hand?)")
    arch = manifest.architecture()
    want = [(n, tuple(shape)) for n, shape in arch.model.weight_shapes()]
    got = [(t.name, t.shape) for t in manifest.tensors]
    if got != want:
        raise ArtifactError(f"manifest of {manifest.version_id}: its tensors {got} are not the ones its "
                            f"architecture trains {want}")
    return arch


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def arch_hash(arch: Mapping[str, Any]) -> str:
    return sha256_bytes(canonical_json(dict(arch)))


def encode_weights(weights: Mapping[str, np.ndarray], dtype: str | None = None) -> bytes:
    """Serialize named arrays as safetensors bytes (optionally cast, e.g. to float16)."""
    arrays = {k: np.ascontiguousarray(v.astype(dtype) if dtype else v) for k, v in weights.items()}
    return st_save(arrays)


def decode_weights(data: bytes) -> dict[str, np.ndarray]:
    try:
        return dict(st_load(data))
    except Exception as e:  # safetensors raises its own error types for every malformation
        raise ArtifactError(f"not a valid safetensors body: {e}") from e


def quantize(weights: Mapping[str, np.ndarray],
             parent: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The download form of float32 weights: each matrix as int8 with one float32 scale per row
    (symmetric, max |row| -> 127), each vector as float16.

    Why: a version's float32 weights are 5.4 MB; this is 1.4 MB (Gboard-scale budgets are ~2 MB)
    and costs no measurable accuracy (docs/quality.md). Deterministic, so a coordinator can
    sign its hash; the device dequantizes once, at install, and runs and trains in float32.

    `parent` (the parent version's quantized form) keeps its row scales wherever the row still
    fits them: a round moves weights by less than one int8 step, so fresh scales would re-round
    every weight and the canary, comparing candidate and stable on a device, would mostly see
    rounding noise. With shared scales the two differ only where the round moved a weight across
    a step."""
    out: dict[str, np.ndarray] = {}
    for name, w in weights.items():
        w = np.asarray(w, np.float32)
        if w.ndim == 2:
            scale = np.abs(w).max(axis=1) / 127.0
            scale[scale == 0] = 1.0
            old = None if parent is None else parent.get(name + _SCALE)
            if old is not None and old.shape == scale.shape:
                scale = np.maximum(scale, old)   # a row that outgrew its scale gets a new one
            out[name] = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
            out[name + _SCALE] = scale.astype(np.float32)
        else:
            out[name] = w.astype(np.float16)
    return out


def dequantize(q: Mapping[str, np.ndarray], tensors: list[TensorSpec]) -> dict[str, np.ndarray]:
    """float32 weights from `quantize`'s output, checked against the manifest's tensors."""
    expected = {t.name for t in tensors} | {t.name + _SCALE for t in tensors if len(t.shape) == 2}
    if set(q) != expected:
        raise ArtifactError(f"quantized weights hold {sorted(set(q) ^ expected)} unlike the manifest")
    out = {}
    for t in tensors:
        a = q[t.name]
        if len(t.shape) == 2:
            if a.dtype != np.int8 or q[t.name + _SCALE].shape != (t.shape[0],):
                raise ArtifactError(f"{t.name}: quantized as {a.dtype} with scale {q[t.name + _SCALE].shape}")
            out[t.name] = a.astype(np.float32) * q[t.name + _SCALE].astype(np.float32)[:, None]
        else:
            out[t.name] = a.astype(np.float32)
    check_weights(out, tensors)
    return out


def encode_weights_q8(weights: Mapping[str, np.ndarray], parent: bytes | None = None) -> bytes:
    """`quantize` as safetensors; `parent` is the parent version's encoded quantized form."""
    return encode_weights(quantize(weights, None if parent is None else decode_weights(parent)))


def check_weights(weights: Mapping[str, np.ndarray], tensors: list[TensorSpec], *,
                  dtypes: tuple[str, ...] | None = None) -> None:
    """Raise ArtifactError unless names and shapes match the manifest exactly and all values are finite."""
    expected = {t.name: t for t in tensors}
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        raise ArtifactError(f"tensor names differ from the manifest: missing {missing}, unexpected {extra}")
    for name, spec in expected.items():
        arr = weights[name]
        if tuple(arr.shape) != spec.shape:
            raise ArtifactError(f"{name}: shape {tuple(arr.shape)} != manifest {spec.shape}")
        allowed = dtypes or (spec.dtype,)
        if str(arr.dtype) not in allowed:
            raise ArtifactError(f"{name}: dtype {arr.dtype} not in {allowed}")
        if not np.all(np.isfinite(arr)):
            raise ArtifactError(f"{name}: contains NaN or Inf")


VERSION_FILE_MODE = 0o644   # a version's files are public (what every device downloads)


_TEMP_PREFIX = ".{}."


def write_leftovers(path: str | os.PathLike) -> list[Path]:
    """The temporary files `atomic_write(path, ...)` leaves beside `path` when killed before its
    rename: callers that delete `path` for privacy or space delete these too."""
    path = Path(path)
    return sorted(path.parent.glob(glob.escape(_TEMP_PREFIX.format(path.name)) + "*"))


def atomic_write(path: str | os.PathLike, data: bytes, *, mode: int | None = None, replace: bool = True) -> None:
    """Write, fsync, rename: a crash leaves either the old file or the new one, never half.
    The file is private (mkstemp's 0600) unless `mode` says otherwise. `replace=False` links the
    file into place only where there is none (FileExistsError, nothing changed, where there is)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TEMP_PREFIX.format(path.name))
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:   # inside: a file system that refuses it (vfat) left the temporary file
                os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
            os.unlink(tmp)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_version(directory: str | os.PathLike, manifest: Manifest, weights: Mapping[str, np.ndarray]) -> Manifest:
    """Write weights and manifest (graph and tokenizer must already be in `directory`).

    Fills in `weights_sha256`, checks graph and tokenizer hashes, and returns the manifest.
    """
    d = Path(directory)
    ordered = {t.name: np.asarray(weights[t.name], dtype=np.float32) for t in manifest.tensors}
    check_weights(ordered, manifest.tensors)
    data = encode_weights(ordered)
    manifest.weights_sha256 = sha256_bytes(data)
    for fname, want in ((GRAPH, manifest.graph_sha256), (TOKENIZER, manifest.tokenizer_sha256)):
        got = sha256_file(d / fname)
        if got != want:
            raise ArtifactError(f"{fname} in {d} has sha256 {got[:12]}…, manifest says {want[:12]}…")
    # Readable by others: a version built as one user is imported by the service's user (deploy/).
    atomic_write(d / WEIGHTS, data, mode=VERSION_FILE_MODE)
    atomic_write(d / MANIFEST, json.dumps(manifest.to_dict(), indent=2, sort_keys=True).encode(),
                 mode=VERSION_FILE_MODE)
    return manifest


def read_manifest(directory: str | os.PathLike) -> Manifest:
    p = Path(directory) / MANIFEST
    if Path(directory).is_file():   # models/v0/manifest.json given for models/v0
        raise ArtifactError(f"{directory} is a file: give the model version's folder ({Path(directory).parent})")
    if not p.exists():
        raise ArtifactError(f"no {MANIFEST} in {directory}: not a model version directory")
    try:
        d = json.loads(p.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:   # a flipped bit: damaged like bad JSON (it escaped every caller's handling)
        raise ArtifactError(f"{p}: not UTF-8 text at byte {e.start}") from e
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{p}: not valid JSON ({e})") from e
    if not isinstance(d, dict):
        raise ArtifactError(f"{p}: not a JSON object")
    return Manifest.from_dict(d)


def load_version(directory: str | os.PathLike, *, verify: bool = True) -> tuple[Manifest, dict[str, np.ndarray]]:
    """Read a version directory, verifying every sha256 in the manifest. The weights are
    `weights.safetensors` or, on a device that downloaded the quantized form, `weights.q8.safetensors`
    (dequantized here)."""
    d = Path(directory)
    manifest = read_manifest(d)
    quantized = not (d / WEIGHTS).exists() and (d / WEIGHTS_Q8).exists()
    wname, wsha = (WEIGHTS_Q8, manifest.weights_q8_sha256) if quantized else (WEIGHTS, manifest.weights_sha256)
    data = (d / wname).read_bytes()
    if verify:
        checks = ((wname, wsha, sha256_bytes(data)),
                  (GRAPH, manifest.graph_sha256, sha256_file(d / GRAPH)),
                  (TOKENIZER, manifest.tokenizer_sha256, sha256_file(d / TOKENIZER)))
        for fname, want, got in checks:
            if want != got:
                raise ArtifactError(f"{d / fname}: sha256 mismatch (manifest {want[:12]}…, file {got[:12]}…)")
    if quantized:
        return manifest, dequantize(decode_weights(data), manifest.tensors)
    weights = decode_weights(data)
    check_weights(weights, manifest.tensors)
    return manifest, {t.name: weights[t.name] for t in manifest.tensors}


def flatten(weights: Mapping[str, np.ndarray], tensors: list[TensorSpec]) -> np.ndarray:
    """Concatenate tensors in manifest order into one float32 vector (for norms and deltas)."""
    return np.concatenate([np.asarray(weights[t.name], dtype=np.float32).ravel() for t in tensors])


def unflatten(vector: np.ndarray, tensors: list[TensorSpec]) -> dict[str, np.ndarray]:
    out, i = {}, 0
    for t in tensors:
        n = int(np.prod(t.shape))
        out[t.name] = vector[i:i + n].reshape(t.shape).astype(np.float32)
        i += n
    if i != vector.size:
        raise ArtifactError(f"vector has {vector.size} values, manifest needs {i}")
    return out


# --- Signatures: the coordinator signs each manifest; devices refuse unsigned or tampered ones ---

def sign_manifest(manifest: Manifest, private_key: Any) -> Manifest:
    """Set `manifest.signature` to the hex Ed25519 signature over `signing_bytes()`.

    `private_key` is a `cryptography` Ed25519PrivateKey. The manifest carries the weights'
    sha256, so the signature covers the weights too.
    """
    manifest.signature = private_key.sign(manifest.signing_bytes()).hex()
    return manifest


def load_public_key(key: Ed25519PublicKey | bytes | str) -> Ed25519PublicKey:
    """An Ed25519 public key from raw 32 bytes, 64 hex characters (wire.SigningKey) or PEM."""
    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, str):
        key = key.strip().encode()
    if key.startswith(b"-----BEGIN"):
        pk = load_pem_public_key(key)
        if not isinstance(pk, Ed25519PublicKey):
            raise ValueError("PEM key is not an Ed25519 public key")
        return pk
    if len(key) == 64:
        key = binascii.unhexlify(key)
    if len(key) != 32:
        raise ValueError("an Ed25519 public key is 32 raw bytes or 64 hex characters")
    return Ed25519PublicKey.from_public_bytes(key)


def _decode_signature(manifest: Manifest) -> bytes:
    """Hex (128 characters) or base64 (88): unambiguous by length for a 64-byte signature."""
    sig = manifest.signature or ""
    try:
        raw = bytes.fromhex(sig) if len(sig) == 128 else base64.b64decode(sig, validate=True)
    except (ValueError, binascii.Error) as e:
        raise SignatureError(f"manifest of {manifest.version_id}: bad signature (not hex or base64: {e})") from e
    if len(raw) != 64:
        raise SignatureError(f"manifest of {manifest.version_id}: bad signature (not 64 bytes)")
    return raw


def verify_manifest(manifest: Manifest, public_key: Ed25519PublicKey | bytes | str) -> None:
    """Raise SignatureError unless `manifest.signature` signs `manifest.signing_bytes()` with the
    key (an Ed25519PublicKey, or raw, hex or PEM bytes; see `load_public_key`).

    The one verifier: the device refuses a version with it before downloading anything else,
    the tests check the coordinator's signatures with it."""
    if not manifest.signature:
        raise SignatureError(f"manifest of {manifest.version_id} is not signed")
    raw = _decode_signature(manifest)
    try:
        load_public_key(public_key).verify(raw, manifest.signing_bytes())
    except ValueError as e:
        raise SignatureError(f"manifest of {manifest.version_id}: unusable public key ({e})") from e
    except InvalidSignature as e:
        raise SignatureError(f"manifest of {manifest.version_id}: bad signature (does not verify)") from e
