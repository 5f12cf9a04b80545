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
