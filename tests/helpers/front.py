"""The production front on loopback, for the deploy tests: a self-signed certificate, nginx with
deploy/nginx/fedkeys.conf (only paths, ports and the upstream rewritten), and the coordinator under
gunicorn with deploy/gunicorn.conf.py."""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from tools.coordinator_process import CoordinatorProcessError, free_port, wait_healthy

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
FRONT_ADMIN_TOKEN = "front-test-admin-token"   # gunicorn_env's


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """(fullchain.pem, privkey.pem) for CN/SAN localhost, valid one day."""
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


@dataclass
class Front:
    https_url: str
    http_port: int
    https_port: int
    crt: Path
    proc: subprocess.Popen


@contextmanager
def nginx_front(tmp: Path, upstream: str) -> Iterator[Front]:
    """nginx (foreground, its own prefix under `tmp`) with the repo's site config in front of
    `upstream` (host:port); yields once /healthz answers through TLS. The surrounding nginx.conf
    is Debian's shape (one worker, 768 connections), as on the production host."""
    assert Path(NGINX).exists(), "nginx missing (make system-deps installs nginx-light)"
    tmp.mkdir(parents=True, exist_ok=True)
    crt, pem = self_signed(tmp)
    http_port, https_port = free_port(), free_port()
    site = (DEPLOY / "nginx" / "fedkeys.conf").read_text()
    site = (site.replace("/etc/fedkeys/tls/fullchain.pem", str(crt)).replace("/etc/fedkeys/tls/privkey.pem", str(pem))
            .replace("127.0.0.1:8400", upstream).replace("listen 80;", f"listen 127.0.0.1:{http_port};")
            .replace("listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;"))
    site = "\n".join(ln for ln in site.splitlines() if "listen [::]" not in ln)
    (tmp / "site.conf").write_text(site)
    for d in ("client", "proxy", "logs"):
        (tmp / d).mkdir(exist_ok=True)
    (tmp / "nginx.conf").write_text(f"""
daemon off; pid {tmp}/nginx.pid; error_log {tmp}/logs/error.log;
events {{ worker_connections 768; }}
http {{ access_log off; client_body_temp_path {tmp}/client; proxy_temp_path {tmp}/proxy;
        fastcgi_temp_path {tmp}/proxy; uwsgi_temp_path {tmp}/proxy; scgi_temp_path {tmp}/proxy;
        include {tmp}/site.conf; }}
""")
    args = [NGINX, "-p", str(tmp), "-e", str(tmp / "logs" / "error.log"), "-c", str(tmp / "nginx.conf")]
    t = subprocess.run([*args, "-t"], capture_output=True, text=True, timeout=30, check=False)
    assert t.returncode == 0, t.stderr
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"https://localhost:{https_port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                requests.get(url + "/healthz", verify=str(crt), timeout=5)
                break
            except requests.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp / "logs" / "error.log").read_text()
                time.sleep(0.1)
        yield Front(url, http_port, https_port, crt, proc)
    finally:
        proc.terminate()
        proc.wait(10)


def gunicorn_env(tmp: Path, port: int, **settings: str) -> dict[str, str]:
    """The environment of the systemd unit, pointed at `tmp`: no inherited FEDKEYS_* settings, except
    that the test database (FEDKEYS_TEST_DATABASE_URL: PostgreSQL in CI, emptied first) becomes the
    coordinator's, so gunicorn's workers also run against the database a deployment uses."""
    from tests.helpers.coordinator_fakes import TEST_DB_ENV, database_url

    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDKEYS_")}
    db = {"FEDKEYS_COORDINATOR_DATABASE_URL": database_url(tmp)} if os.environ.get(TEST_DB_ENV) else {}
    return env | {"PYTHONPATH": str(ROOT), "FEDKEYS_COORDINATOR_DATA_DIR": str(tmp / "coord"),
                  "FEDKEYS_COORDINATOR_ADMIN_TOKEN": FRONT_ADMIN_TOKEN, "FEDKEYS_BIND": f"127.0.0.1:{port}",
                  "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics")} | db | settings


@contextmanager
def gunicorn_coordinator(tmp: Path, env: dict[str, str]) -> Iterator[str]:
    """`gunicorn -c deploy/gunicorn.conf.py 'coordinator.app:create_app()'` on env's FEDKEYS_BIND
    (the data directory must be initialised); yields its http:// URL once /healthz answers."""
    log = open(tmp / "gunicorn.log", "wb")      # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(DEPLOY / "gunicorn.conf.py"),
                             "coordinator.app:create_app()"], cwd=ROOT, env=env, stdout=log, stderr=log)
    url = "http://" + env["FEDKEYS_BIND"]
    try:
        try:
            wait_healthy(url, proc, tmp / "gunicorn.log", timeout_s=90)
        except CoordinatorProcessError as e:
            raise AssertionError(f"{e}\n{(tmp / 'gunicorn.log').read_text()[-3000:]}") from e
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
