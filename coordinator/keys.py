"""Secrets kept in the data directory: the Ed25519 signing key and the admin token.

Both are created on first start with mode 0600. The signing key signs every version manifest;
devices are configured with its public key (`python -m coordinator public-key`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.config import ConfigError
from protocol.artifact import atomic_write

log = logging.getLogger(__name__)

SIGNING_KEY_FILE = "signing_key.pem"
ADMIN_TOKEN_FILE = "admin_token"
# Where the serving coordinator's admin token came from and its sha256 (never the token), for
# `admin-token` to check what it prints against what the service accepts.
SERVED_TOKEN_FILE = "admin_token.served"


def _write_secret(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def is_initialised(data_dir: str | os.PathLike) -> bool:
    """A data dir made by `init` holds the signing key; anything else is a typo, not a new coordinator."""
    return (Path(data_dir) / SIGNING_KEY_FILE).is_file()


def load_or_create_signing_key(data_dir: str | os.PathLike) -> Ed25519PrivateKey:
    path = Path(data_dir) / SIGNING_KEY_FILE
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        try:
            _write_secret(path, pem)
        except FileExistsError:
            pass  # another worker won the race; use its key
    return load_signing_key(data_dir)


def load_signing_key(data_dir: str | os.PathLike) -> Ed25519PrivateKey:
    """The data directory's signing key, which must exist (a read-only inspection creates nothing)."""
    path = Path(data_dir) / SIGNING_KEY_FILE
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as e:   # damaged, or encrypted with a password
        raise ConfigError(f"{path} is not a readable private key ({e}); restore it from a backup: the "
                          f"versions this coordinator signed, and the devices that trust it, need this key") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 private key (the key `init` creates)")
    return key


def public_key_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def load_or_create_admin_token(data_dir: str | os.PathLike) -> str:
    path = Path(data_dir) / ADMIN_TOKEN_FILE
    if not path.exists():
        try:
            _write_secret(path, new_secret().encode())
        except FileExistsError:
            pass
    return _read_token(path)


def record_served_token(data_dir: str | os.PathLike, token: str, *, from_setting: bool) -> None:
    """Record the token a starting (or reloading) service accepts. Without it, `admin-token` run
    without the service's FEDKEYS_COORDINATOR_ADMIN_TOKEN made an admin_token file and printed a
    token the service refused."""
    path = Path(data_dir) / SERVED_TOKEN_FILE
    record = {"from": "setting" if from_setting else "file", "sha256": hash_secret(token)}
    try:   # private, and whole: gunicorn's workers write it at once
        atomic_write(path, json.dumps(record).encode())
    except OSError as e:   # it only informs: a full disk must not stop a worker's boot (the service answers there)
        log.warning("could not record which admin token the service takes in %s (%s): admin-token cannot "
                    "check what it prints", path, e.strerror or e)


def served_token(data_dir: str | os.PathLike) -> dict[str, str] | None:
    """What `record_served_token` recorded ({"from": "setting" or "file", "sha256": ...}), or None
    when no service has started here since (or the record is unreadable: it only informs)."""
    try:
        got = json.loads((Path(data_dir) / SERVED_TOKEN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(got, dict) and got.get("from") in ("setting", "file") and isinstance(got.get("sha256"), str)
    return got if ok else None


def load_admin_token(data_dir: str | os.PathLike) -> str | None:
    """The admin token file's token, None when there is none (a read-only inspection creates nothing)."""
    path = Path(data_dir) / ADMIN_TOKEN_FILE
    return _read_token(path) if path.exists() else None


def _read_token(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not a text token ({e}); write a new one there (at least 16 characters) "
                          f"or set admin_token") from e


def new_secret() -> str:
    """A URL-safe secret that never starts with '-', which a command line would read as a flag."""
    return "fk" + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """Tokens are high-entropy random strings, so one sha256 is enough (no password hashing)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, digest: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), digest)
