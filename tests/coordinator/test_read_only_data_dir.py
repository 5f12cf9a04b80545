"""A data directory nobody may write (a read-only mount, a backup) can be inspected: the
inspection commands open it read-only and change nothing; every other command is refused on
one line. Before, every command failed with "unable to open database file".

The directory is made read-only the way an operator meets it: a read-only bind mount in a
private mount namespace (`unshare`), or a folder of mode 0555 read by root without the
capability that overrides file modes (`setpriv`); plain file modes do not bind root, which runs CI."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
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


def test_commits_left_in_the_write_ahead_log_are_read(tmp_path, data_dir):
    """A copy taken while the service ran holds its last commits in coordinator.db-wal. They are
    read (from a private copy: WAL needs a -shm file, which the read-only folder cannot get); an
    immutable open ignored them, and `canary` judged with settings the service never had."""
    d = tmp_path / "copy"
    shutil.copytree(data_dir, d)
    backup = tmp_path / "backup"
    shutil.copytree(data_dir, backup)
    conn = sqlite3.connect(d / "coordinator.db")
    try:
        conn.execute("PRAGMA wal_autocheckpoint=0")    # the commit stays in the log, as mid-service
        conn.execute("INSERT OR REPLACE INTO settings (key, value) VALUES ('service_settings', ?)",
                     ('{"canary_min_reports": 7}',))
        conn.commit()
        for name in ("coordinator.db", "coordinator.db-wal"):   # the backup, taken now
            shutil.copyfile(d / name, backup / name)
    finally:
        conn.close()
    r = read_only(backup, "canary")
    assert r.returncode == 0, r.stderr
    assert "judged with the serving coordinator's settings" in r.stderr and "canary_min_reports 7" in r.stderr
    assert not (backup / "coordinator.db-shm").exists()


def test_a_missing_admin_token_is_said_on_one_line(tmp_path, data_dir):
    d = tmp_path / "copy"
    shutil.copytree(data_dir, d)
    (d / "admin_token").unlink()
    r = read_only(d, "admin-token")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "admin_token" in lines[0], lines
    assert not (d / "admin_token").exists()


def test_a_live_database_is_read_consistently_by_one_who_may_not_write(tmp_path, data_dir):
    """The service's own directory, read by an operator who may not write it (here root without
    the capability that overrides file modes, in a folder of mode 0555) while the service commits.
    Read immutable, most reads failed as "malformed" or with a traceback."""
    if shutil.which("setpriv") is None:
        pytest.skip("needs util-linux's setpriv to drop root's override of file modes")
    d = tmp_path / "live"
    shutil.copytree(data_dir, d)
    stop = threading.Event()

    def commit_on() -> None:   # what a serving coordinator does to the file: commits, in WAL mode
        conn = sqlite3.connect(d / "coordinator.db", isolation_level=None)
        try:
            conn.execute("PRAGMA wal_autocheckpoint=5")   # the commits reach the database file too
            i = 0
            while not stop.is_set():
                conn.execute("BEGIN IMMEDIATE")
                for _ in range(20):
                    i += 1
                    conn.execute("INSERT INTO enrollment_keys (key_hash, label, uses_left, revoked, created_at) "
                                 "VALUES (?, ?, 5, 0, '2026-12-06 00:00:00')", (f"{i:064x}", "L" * 100))
                conn.execute("DELETE FROM enrollment_keys WHERE id % 5 = 0 AND id > 1 AND id < ?", (i - 50,))
                conn.execute("COMMIT")
        finally:
            conn.close()

    writer = threading.Thread(target=commit_on)
    writer.start()
    try:
        time.sleep(0.2)
        d.chmod(0o555)
        for _ in range(4):
            r = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-m",
                                "coordinator", "enrollment-keys", "--format", "json", "--data-dir", str(d)],
                               cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120, check=False)
            assert r.returncode == 0, r.stderr
            assert json.loads(r.stdout)[0]["label"] == ""   # the key made before, then the writer's
    finally:
        stop.set()
        writer.join()
        d.chmod(0o755)


def test_status_shows_a_due_round_as_it_was_left(tmp_path, data_dir):
    """`status` closes rounds past their deadline first; read-only, it cannot, and it failed."""
    d = tmp_path / "copy"
    shutil.copytree(data_dir, d)
    assert coord("start-round", "--data-dir", str(d)).returncode == 0
    with sqlite3.connect(d / "coordinator.db") as conn:
        conn.execute("UPDATE rounds SET deadline = '2000-01-01 00:00:00.000000'")
    conn.close()
    r = read_only(d, "status")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["latest_round"]["status"] == "open"


def test_a_full_disk_is_inspected_read_only_and_changes_are_refused_in_one_line(data_dir, tmp_path):
    """On a full disk SQLite cannot open a database in WAL mode (no room for its -shm and log):
    `status` answered only "disk I/O error" while the service failed for the same reason.
    Inspections now read it read-only, saying why, and a change is refused on one
    line naming the disk. A real full disk: a small tmpfs in a private mount namespace."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    unshare = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]
    script = (f'mount -t tmpfs -o size=16m tmpfs "{mnt}" && cp -a "{data_dir}" "{mnt}/c" && '
              f'(dd if=/dev/zero of="{mnt}/fill" bs=64k 2>/dev/null; true) && '
              f'"{sys.executable}" -m coordinator status --data-dir "{mnt}/c"; echo "rc=$?"; '
              f'"{sys.executable}" -m coordinator start-round --data-dir "{mnt}/c"; echo "rc=$?"')
    r = subprocess.run([*unshare, "sh", "-c", script], cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=120, check=False)
    if "rc=" not in r.stdout:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()[:200]}")
    assert r.stdout.count("rc=0") == 1 and "rc=2" in r.stdout, r.stdout + r.stderr
    assert '"stable_version_id": "v0000"' in r.stdout, r.stdout
    assert "note: the disk of" in r.stderr and "is full: reading it read-only" in r.stderr, r.stderr
    assert "is full, and `start-round` changes the coordinator's state: free space first" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "disk I/O error" not in r.stderr, r.stderr


def test_a_file_system_of_no_size_is_not_a_full_disk(tmp_path):
    """`init --data-dir /proc/x` said "the disk of /proc/x is full": /proc and /sys report no
    free space because they have no size. What fails there says why instead."""
    r = subprocess.run([sys.executable, "-m", "coordinator", "init", "--data-dir", "/proc/fedkeys-x"], cwd=ROOT,
                       env=_env(), capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode != 0 and "is full" not in r.stderr and "/proc/fedkeys-x" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
