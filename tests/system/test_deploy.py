"""deploy/ as shipped: the systemd units pass `systemd-analyze verify`, the env example holds
only real settings, and nginx with deploy/nginx/fedkeys.conf really terminates TLS in front of
a coordinator (self-signed certificate, free ports; docker does not run on this machine)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from coordinator.config import load_config
from tests.helpers.coordinator_fakes import ADMIN_TOKEN, make_config, serve
from tests.helpers.front import DEPLOY, nginx_front


@pytest.mark.parametrize("unit", ["fedkeys-coordinator.service", "fedkeys-device.service"])
def test_systemd_units_verify(tmp_path, unit):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze missing (Debian package systemd)"
    text = (DEPLOY / "systemd" / unit).read_text()
    # Only the install paths change: the executables must exist for verify.
    bindir = Path(sys.executable).parent
    text = text.replace("/opt/fedkeys/.venv/bin/gunicorn", str(bindir / "gunicorn"))
    text = text.replace("/opt/fedkeys/.venv-edge/bin/fedkeys-device", sys.executable)
    (tmp_path / unit).write_text(text)
    r = subprocess.run([analyze, "verify", "--man=no", str(tmp_path / unit)], capture_output=True, text=True,
                       timeout=60, check=False)
    problems = [ln for ln in (r.stdout + r.stderr).splitlines()
                if ln.strip() and "postgresql.service" not in ln]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr


def _systemd_env(text: str) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile reads them: quotes removed, nothing expanded
    (a `$` stays a `$`, in double quotes too)."""
    env = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            k, _, v = line.partition("=")
            env[k] = v[1:-1] if len(v) > 1 and v[0] == v[-1] and v[0] in "'\"" else v
    return env


def test_env_example_names_only_real_settings():
    env = _systemd_env((DEPLOY / "coordinator.env.example").read_text())
    cfg = load_config(environ={k: v for k, v in env.items() if k.startswith("FEDKEYS_COORDINATOR_")})
    assert cfg.resolved_database_url.startswith("postgresql+psycopg://") and cfg.log_format == "json"
    assert cfg.proxy_hops == 1                                 # nginx's X-Forwarded-For names the client
    assert env["FEDKEYS_BIND"].startswith("127.0.0.1:")       # gunicorn only on loopback, nginx in front


def test_env_file_reads_the_same_in_systemd_and_in_the_shell(tmp_path):
    """deploy/README loads the env file into the shell (`set -a; . FILE`) for admin commands, and
    systemd reads it for the service. Unquoted, a database URL with a second parameter
    (`&connect_timeout=5`) ended the shell's line at `&`: the variable was never set, and init
    quietly made a SQLite database while the service looked for PostgreSQL."""
    text = (DEPLOY / "coordinator.env.example").read_text().replace("host=/run/postgresql",
                                                                    "host=/run/postgresql&connect_timeout=5")
    q = next(v[0] for k, v in (ln.partition("=")[::2] for ln in text.splitlines())   # the example's quote
             if k == "FEDKEYS_COORDINATOR_DATABASE_URL")
    text += f"FEDKEYS_COORDINATOR_ADMIN_TOKEN={q}pa$sword & more-than-16{q}\n"   # quoted as the example quotes
    (tmp_path / "coordinator.env").write_text(text)
    shell = subprocess.run(["bash", "-c", f"set -a; . {tmp_path / 'coordinator.env'}; set +a; env -0"],
                           env={"PATH": os.environ["PATH"]}, capture_output=True, text=True, timeout=30, check=True)
    got = dict(item.partition("=")[::2] for item in shell.stdout.split("\0") if item.startswith("FEDKEYS_"))
    assert got == _systemd_env(text)
    assert got["FEDKEYS_COORDINATOR_DATABASE_URL"].endswith("&connect_timeout=5")


def test_nginx_config_terminates_tls_in_front_of_the_coordinator(tmp_path):
    cfg = make_config(tmp_path, proxy_hops=1, admin_failures_per_minute=1.0, admin_failures_burst=2)
    with serve(cfg) as s, nginx_front(tmp_path, s.url.removeprefix("http://")) as front:
        url, crt = front.https_url, str(front.crt)
        r = requests.get(url + "/healthz", verify=crt, timeout=5)
        assert r.status_code == 200 and r.json() == {"ok": True}
        assert r.headers["Strict-Transport-Security"].startswith("max-age=")
        assert requests.get(url + "/v1/admin/status", verify=crt, timeout=5).status_code == 401
        assert requests.get(url + "/v1/admin/status", verify=crt, timeout=5,
                            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).status_code == 200
        # The address the coordinator limits is the one nginx saw, whatever X-Forwarded-For a client
        # writes: nginx appends the peer, and proxy_hops = 1 trusts only that last entry.
        codes = [requests.get(url + "/v1/admin/status", verify=crt, timeout=5,
                              headers={"Authorization": "Bearer a-wrong-guess", "X-Forwarded-For": f"192.0.2.{i}"}
                              ).status_code for i in range(3)]
        assert codes == [401, 401, 429], codes
        plain = requests.get(f"http://127.0.0.1:{front.http_port}/healthz", allow_redirects=False, timeout=5)
        assert plain.status_code == 301 and plain.headers["Location"].startswith("https://")
        # A device enrolled before it is given the self-signed certificate says so: it read only
        # "cannot connect", even with debug logs.
        env = {k: v for k, v in os.environ.items() if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
        enroll = subprocess.run([sys.executable, "-m", "edge_runtime", "enroll", "--data-dir", str(tmp_path / "dev"),
                                 "--coordinator", url, "--enrollment-key", "k" * 20], capture_output=True, text=True,
                                timeout=120, env=env | {"PYTHONPATH": str(DEPLOY.parent)}, check=False)
        assert enroll.returncode == 1 and "is not trusted (self-signed certificate)" in enroll.stderr, enroll.stderr
        assert "REQUESTS_CA_BUNDLE=/path/ca.pem" in enroll.stderr
    assert os.path.exists(tmp_path / "logs" / "error.log")
