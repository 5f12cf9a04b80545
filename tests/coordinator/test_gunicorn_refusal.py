"""A setting the service refuses, under gunicorn as deployed (deploy/gunicorn.conf.py): the master
says why in one line and exits, instead of each worker printing gunicorn's traceback around it."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers.front import DEPLOY, ROOT, gunicorn_env
from tools.coordinator_process import free_port


def test_a_refused_setting_stops_gunicorn_in_one_line(tmp_path):
    env = gunicorn_env(tmp_path, free_port(), FEDKEYS_COORDINATOR_ADMIN_TOKEN="short")
    assert subprocess.run([sys.executable, "-m", "coordinator", "init"], env=env, cwd=ROOT,
                          capture_output=True, timeout=120).returncode == 0
    done = subprocess.run([sys.executable, "-m", "gunicorn", "-c", str(DEPLOY / "gunicorn.conf.py"),
                           "coordinator.app:create_app()"], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert "admin_token must be at least 16 characters" in out, out
    assert out.count("admin_token must be") == 1, out      # once, from the master: no worker started
    assert "Traceback" not in out and "Booting worker" not in out, out


def test_a_bad_gunicorn_variable_stops_it_in_one_line(tmp_path):
    """FEDKEYS_WORKERS=abc was gunicorn's "Failed to read config file" traceback, a port past 65535
    an OverflowError traceback, and FEDKEYS_WORKERS=0 a server that answered nothing and said
    nothing: each is one "refused to start" line, exit 2."""
    for name, value in (("FEDKEYS_WORKERS", "abc"), ("FEDKEYS_WORKERS", "0"), ("FEDKEYS_THREADS", "-1"),
                        ("FEDKEYS_BIND", "127.0.0.1:99999"), ("FEDKEYS_BIND", "nohost")):
        env = gunicorn_env(tmp_path, free_port()) | {name: value}
        done = subprocess.run([sys.executable, "-m", "gunicorn", "-c", str(DEPLOY / "gunicorn.conf.py"),
                               "--check-config", "coordinator.app:create_app()"], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        out = done.stdout + done.stderr
        assert done.returncode == 2 and f"refused to start: {name}={value!r}" in out, (name, value, out)
        assert "Traceback" not in out, out


def test_a_token_refused_at_a_reload_stops_gunicorn_in_one_line(tmp_path):
    """`systemctl reload` (SIGHUP) after a too-short token was written into the data directory: the
    master reloaded, each new worker died printing gunicorn's traceback around the reason, and
    gunicorn stopped with "Worker failed to boot". The master now checks first and stops in one line."""
    import signal
    import time

    import requests

    port = free_port()
    # one worker: with two, the token was sometimes written while the second still booted, which
    # then read it and died with its traceback before the reload (a CI run)
    env = gunicorn_env(tmp_path, port) | {"FEDKEYS_WORKERS": "1"}
    del env["FEDKEYS_COORDINATOR_ADMIN_TOKEN"]   # the generated token file, which the operator replaces
    assert subprocess.run([sys.executable, "-m", "coordinator", "init"], env=env, cwd=ROOT,
                          capture_output=True, timeout=120).returncode == 0
    log = tmp_path / "gunicorn.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(DEPLOY / "gunicorn.conf.py"),
                                 "coordinator.app:create_app()"], env=env, cwd=ROOT, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.3)
        (tmp_path / "coord" / "admin_token").write_text("short")
        proc.send_signal(signal.SIGHUP)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert proc.returncode != 0, text
    assert text.count("must be at least 16 characters") == 1 and "refused to reload" in text, text
    assert "Traceback" not in text and "Worker failed to boot" not in text, text
