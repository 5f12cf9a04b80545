"""deploy/ as shipped: the systemd units pass `systemd-analyze verify`, the env example holds
only real settings, and nginx with deploy/nginx/fedkeys.conf really terminates TLS in front of
a coordinator (self-signed certificate, free ports; docker does not run on this machine)."""

from __future__ import annotations

import datetime
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from coordinator_fakes import make_config, serve

from coordinator.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def test_env_example_names_only_real_settings():
    env = {}
    for line in (DEPLOY / "coordinator.env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            k, _, v = line.partition("=")
            env[k] = v
    cfg = load_config(environ={k: v for k, v in env.items() if k.startswith("FEDKEYS_COORDINATOR_")})
    assert cfg.resolved_database_url.startswith("postgresql+psycopg://") and cfg.log_format == "json"
    assert env["FEDKEYS_BIND"].startswith("127.0.0.1:")       # gunicorn only on loopback, nginx in front


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    crt, pem = tmp / "fullchain.pem", tmp / "privkey.pem"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return crt, pem


def test_nginx_config_terminates_tls_in_front_of_the_coordinator(tmp_path):
    assert Path(NGINX).exists(), "nginx missing (make system-deps installs nginx-light)"
    crt, pem = _self_signed(tmp_path)
    http_port, https_port = _free_port(), _free_port()
    with serve(make_config(tmp_path)) as s:
        upstream = s.url.removeprefix("http://")
        site = (DEPLOY / "nginx" / "fedkeys.conf").read_text()
        site = (site.replace("/etc/fedkeys/tls/fullchain.pem", str(crt)).replace("/etc/fedkeys/tls/privkey.pem",
                                                                                   str(pem))
                .replace("127.0.0.1:8400", upstream).replace("listen 80;", f"listen 127.0.0.1:{http_port};")
                .replace("listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;"))
        site = "\n".join(ln for ln in site.splitlines() if "listen [::]" not in ln)
        (tmp_path / "site.conf").write_text(site)
        for d in ("client", "proxy", "logs"):
            (tmp_path / d).mkdir()
        (tmp_path / "nginx.conf").write_text(f"""
daemon off; pid {tmp_path}/nginx.pid; error_log {tmp_path}/logs/error.log;
events {{ worker_connections 64; }}
http {{ access_log off; client_body_temp_path {tmp_path}/client; proxy_temp_path {tmp_path}/proxy;
        fastcgi_temp_path {tmp_path}/proxy; uwsgi_temp_path {tmp_path}/proxy; scgi_temp_path {tmp_path}/proxy;
        include {tmp_path}/site.conf; }}
""")
        args = [NGINX, "-p", str(tmp_path), "-e", str(tmp_path / "logs" / "error.log"), "-c",
                str(tmp_path / "nginx.conf")]
        t = subprocess.run([*args, "-t"], capture_output=True, text=True, timeout=30, check=False)
        assert t.returncode == 0, t.stderr
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"https://localhost:{https_port}"
            deadline = time.monotonic() + 20
            while True:
                try:
                    r = requests.get(url + "/healthz", verify=str(crt), timeout=5)
                    break
                except requests.ConnectionError:
                    assert proc.poll() is None and time.monotonic() < deadline, \
                        (tmp_path / "logs" / "error.log").read_text()
                    time.sleep(0.1)
            assert r.status_code == 200 and r.json() == {"ok": True}
            assert r.headers["Strict-Transport-Security"].startswith("max-age=")
            assert requests.get(url + "/v1/admin/status", verify=str(crt), timeout=5).status_code == 401
            assert requests.get(url + "/v1/admin/status", verify=str(crt), timeout=5,
                                headers={"Authorization": "Bearer admin-secret"}).status_code == 200
            plain = requests.get(f"http://127.0.0.1:{http_port}/healthz", allow_redirects=False, timeout=5)
            assert plain.status_code == 301 and plain.headers["Location"].startswith("https://")
        finally:
            proc.terminate()
            proc.wait(10)
    assert os.path.exists(tmp_path / "logs" / "error.log")
