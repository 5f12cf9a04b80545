"""A data directory nobody may write (a read-only mount, a backup) can be inspected: the
inspection commands open it read-only and change nothing; every other command is refused on
one line. Before, every command failed with "unable to open database file".

The directory is made read-only the way an operator meets it, by a read-only bind mount in a
private mount namespace (`unshare`), because file modes do not bind root, which runs CI."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSPECTIONS = ["status", "versions", "rounds", "canary", "rejections", "enrollment-keys", "public-key",
               "admin-token"]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FEDKEYS_")} | {"PYTHONPATH": str(ROOT)}


def coord(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "coordinator", *args], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=120, check=False)


def read_only(d: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m coordinator ARGS --data-dir d` with `d` mounted read-only over itself."""
    unshare = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]
    script = (f'mount --bind "{d}" "{d}" && mount -o remount,ro,bind "{d}" && '
              f'exec "{sys.executable}" -m coordinator "$@" --data-dir "{d}"')
    return subprocess.run([*unshare, "sh", "-c", script, "sh", *args], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=120, check=False)


def snapshot(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(d.rglob("*"))}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from tests.helpers.coordinator_fakes import make_version

    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux's unshare to mount a directory read-only")
    d = tmp_path_factory.mktemp("ro") / "coord"
    assert coord("init", "--data-dir", str(d)).returncode == 0
    make_version(d.parent / "v0")
    r = coord("import-version", str(d.parent / "v0"), "--data-dir", str(d))
    assert r.returncode == 0, r.stderr
    assert coord("create-enrollment-key", "--data-dir", str(d)).returncode == 0
    probe = read_only(d, "--help")
    if probe.returncode != 0 and "coordinator" not in probe.stdout:
        pytest.skip(f"cannot mount read-only here: {probe.stderr.strip()[:200]}")
    return d


@pytest.mark.parametrize("command", INSPECTIONS)
def test_an_inspection_reads_a_read_only_data_dir_and_writes_nothing(data_dir, command):
    before = snapshot(data_dir)
    r = read_only(data_dir, command, "--format", "json") if command in ("versions", "rounds", "enrollment-keys") \
        else read_only(data_dir, command)
    assert r.returncode == 0, r.stderr
    if command == "status":
        assert '"stable_version_id": "v0000"' in r.stdout
    if command == "versions":
        assert '"v0000"' in r.stdout
    if command == "public-key":
        assert r.stdout.strip() == coord("public-key", "--data-dir", str(data_dir)).stdout.strip()
    assert snapshot(data_dir) == before


@pytest.mark.parametrize("command", [["tick"], ["create-enrollment-key"], ["start-round"], ["serve", "--port", "8"]])
def test_a_command_that_changes_state_is_refused_on_one_line(data_dir, command):
    before = snapshot(data_dir)
    r = read_only(data_dir, *command)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot be written" in lines[0] and "status" in lines[0], lines
    assert snapshot(data_dir) == before


def test_commits_left_in_the_write_ahead_log_are_named(tmp_path, data_dir):
    """A copy taken while the service ran can hold commits in coordinator.db-wal, which a
    read-only open cannot replay: the command says so rather than show an older state in silence."""
    d = tmp_path / "copy"
    shutil.copytree(data_dir, d)
    with sqlite3.connect(d / "coordinator.db") as conn:   # a commit that stays in the log, as mid-service
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute("CREATE TABLE scratch (x)")
        shutil.copy(d / "coordinator.db-wal", tmp_path / "wal")
    shutil.copy(tmp_path / "wal", d / "coordinator.db-wal")
    r = read_only(d, "status")
    assert r.returncode == 0, r.stderr
    assert "not yet in coordinator.db" in r.stderr
