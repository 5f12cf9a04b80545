"""The device's identity file (``device.json``) and the coordinator key it carries.

Its own module because more than the device loop reads it: the keyboard and `notices` check
versions with the coordinator's key the device enrolled with, and they must not import the
loop (`agent`: the network client, the trainer, secure aggregation) to do so. `agent.enroll`
writes the identity; everything else only reads it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from edge_runtime.errors import EdgeError
from edge_runtime.paths import IDENTITY_FILE
from protocol.artifact import atomic_write


class IdentityError(EdgeError, RuntimeError):
    """The identity file is damaged; the message says to enroll again."""


@dataclass(frozen=True)
class Identity:
    device_id: str
    token: str
    coordinator: str
    public_key: str = ""          # hex; empty: manifests are checked by sha256 only

    def __repr__(self) -> str:   # never print the token by accident
        return f"Identity(device_id={self.device_id!r}, coordinator={self.coordinator!r})"


def save_identity(data_dir: Path, ident: Identity) -> None:
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = data_dir / IDENTITY_FILE
    atomic_write(path, json.dumps(asdict(ident), indent=1).encode())
    os.chmod(path, 0o600)


def load_identity(data_dir: Path) -> Identity | None:
    path = data_dir / IDENTITY_FILE
    try:
        d = json.loads(path.read_text())
        return Identity(device_id=str(d["device_id"]), token=str(d["token"]),
                        coordinator=str(d["coordinator"]), public_key=str(d.get("public_key") or ""))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise IdentityError(f"{path} is damaged ({e.__class__.__name__}); enroll again with --force") from e


def readable_identity(data_dir: Path) -> Identity | None:
    """`load_identity`, with None for a damaged file too: the keyboard and `notices` still run
    (unsigned), where enrolling and the device loop need the identity whole."""
    try:
        return load_identity(Path(data_dir))
    except IdentityError:
        return None


def coordinator_key(configured: str | None, ident: Identity | None) -> str | None:
    """The coordinator key that manifests and rollout states are checked with: the configured one,
    else the one the device enrolled with; None when there is neither (checked by sha256 only)."""
    return configured or (ident.public_key if ident is not None else "") or None
