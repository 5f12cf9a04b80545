"""A real coordinator process on a loopback port, for the tools and tests that drive one.

The simulator, the emulated-board end-to-end run, the load benchmark and several tests all need
the same thing: `python -m coordinator serve` (or gunicorn, as in production) on a free loopback
port with its own data directory, waited for until /healthz answers, spoken to through the admin
CLI and the admin API, and stopped (or restarted on the same port, so enrolled devices keep
their URL). Before this module each of them carried its own copy of that supervisor, with its
own timeouts and its own `free_port`; now there is one.

`requests` is imported when a health check or an admin call needs it, so importing `free_port`
costs nothing.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from protocol import wire

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
HEALTH_TIMEOUT_S = 120.0          # a cold start imports Flask, SQLAlchemy and runs migrations
ENV_PREFIX = "FEDKEYS_COORDINATOR_"


class CoordinatorProcessError(RuntimeError):
    """The coordinator process did not start, exited, or refused an admin call; says why.

    Callers translate it into their own error at their boundary (SimulationError, LoadError, a
    failed end-to-end check), so each tool keeps one error tree. `reason` is the message without
    the pointer to the log, for a caller that quotes the log itself."""

    def __init__(self, reason: str, log_path: Path | None = None) -> None:
        super().__init__(reason + (f"; see {log_path}" if log_path else ""))
        self.reason, self.log_path = reason, log_path


def free_port(host: str = HOST) -> int:
    """A TCP port nothing listens on right now (the OS picks it; another process may take it
    before we bind, which on a test machine is rare enough to accept)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def repo_env(*, inherit_settings: bool = True, **extra: str) -> dict[str, str]:
    """The environment a repository module runs in: this checkout on PYTHONPATH, TensorFlow quiet.
    Modules are started with `python -P`, which keeps the working directory (the caller's, where
    its relative paths are) off the path: a `protocol.py` or `model/` of the caller's own project
    there would shadow this one's packages.

    `inherit_settings=False` drops inherited FEDKEYS_COORDINATOR_* variables, for runs whose
    results must not depend on the caller's shell."""
    env = {k: v for k, v in os.environ.items() if inherit_settings or not k.startswith(ENV_PREFIX)}
    return env | {"PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"} | extra


def wait_healthy(url: str, proc: subprocess.Popen, log_path: Path | None = None,
                 timeout_s: float = HEALTH_TIMEOUT_S) -> None:
    """Return once `url`/healthz answers 200; raise if `proc` exits first or `timeout_s` passes."""
    import requests

    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise CoordinatorProcessError(f"the coordinator exited (code {proc.returncode})", log_path)
        try:
            r = requests.get(url + wire.PATH_HEALTH, timeout=2)
            if r.status_code == 200:
                return
            if r.status_code == 503 and "MiB free" in r.text:   # up, on a disk too full to run rounds
                raise CoordinatorProcessError(r.json().get("message", r.text), log_path)
        except (requests.RequestException, ValueError):
            pass
        if time.monotonic() > deadline:
            raise CoordinatorProcessError(f"the coordinator did not come up in {timeout_s:.0f} s", log_path)
        time.sleep(0.1)


class CoordinatorProcess:
    """`python -m coordinator serve` (or gunicorn) on loopback, driven through its admin CLI and API.

    `settings` are coordinator settings (Config field names); they go on every command line as
    `--set key=value`, and into FEDKEYS_COORDINATOR_* for gunicorn, which takes no flags. The
    admin token is one of them: random unless given, so a stray process cannot be driven by a
    token guessed from the source."""

    def __init__(self, data_dir: Path, log_path: Path, settings: Mapping[str, object] | None = None, *,
                 admin_token: str | None = None, python: str = sys.executable, inherit_settings: bool = True,
                 admin_timeout_s: float = 120.0) -> None:
        # Absolute: the caller's relative --data-dir, whatever directory the process runs in.
        self.data_dir, self.log_path, self.python = Path(data_dir).resolve(), Path(log_path), python
        self.admin_token = admin_token or os.urandom(24).hex()
        self.settings: dict[str, str] = {"admin_token": self.admin_token,
                                         **{k: str(v) for k, v in (settings or {}).items()}}
        self.inherit_settings, self.admin_timeout_s = inherit_settings, admin_timeout_s
        self.proc: subprocess.Popen | None = None
        self.url = ""

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1]) if self.url else 0

    def _flags(self) -> list[str]:
        return [a for k, v in self.settings.items() for a in ("--set", f"{k}={v}")]

    def env(self) -> dict[str, str]:
        return repo_env(inherit_settings=self.inherit_settings)

    def cli(self, *args: str, timeout_s: float = 300.0) -> str:
        """`python -m coordinator ARGS` on this data directory (init, import-version, ...); its stdout."""
        r = subprocess.run([self.python, "-P", "-m", "coordinator", *args, "--data-dir", str(self.data_dir),
                            *self._flags()], env=self.env(), capture_output=True, text=True, timeout=timeout_s,
                           check=False)
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
            raise CoordinatorProcessError(f"coordinator {args[0]} failed: {last}")
        return r.stdout.strip()

    def start(self, port: int | None = None, *, timeout_s: float = HEALTH_TIMEOUT_S) -> str:
        """`coordinator serve` on `port` (default: a free one); its URL once healthy."""
        return self._launch(port, lambda p: [self.python, "-P", "-m", "coordinator", "serve", "--data-dir",
                                             str(self.data_dir), "--host", HOST, "--port", str(p), *self._flags()],
                            self.env(), timeout_s)

    def start_gunicorn(self, port: int | None = None, *, workers: int = 2, threads: int = 4,
                       timeout_s: float = HEALTH_TIMEOUT_S) -> str:
        """The production server (gunicorn, gthread workers) on `port`; its URL once healthy.

        gunicorn takes no coordinator flags: the settings, and the data directory, go through the
        environment."""
        env = self.env() | {ENV_PREFIX + k.upper(): v for k, v in self.settings.items()}
        env.setdefault(ENV_PREFIX + "DATA_DIR", str(self.data_dir))
        return self._launch(port, lambda p: [self.python, "-m", "gunicorn", "--bind", f"{HOST}:{p}",
                                             "--workers", str(workers), "--worker-class", "gthread",
                                             "--threads", str(threads), "--timeout", "120", "--log-level",
                                             "warning", "coordinator.app:create_app()"], env, timeout_s)

    def _launch(self, port: int | None, argv_for, env: dict[str, str], timeout_s: float) -> str:
        if self.proc is not None:
            raise CoordinatorProcessError("the coordinator is already running")
        port = port or free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:     # the child keeps its own descriptor
            self.proc = subprocess.Popen(argv_for(port), env=env, stdout=log, stderr=subprocess.STDOUT)
        self.url = f"http://{HOST}:{port}"
        try:
            wait_healthy(self.url, self.proc, self.log_path, timeout_s)
        except BaseException:
            self.stop()
            raise
        return self.url

    def stop(self) -> None:
        """SIGTERM (a graceful shutdown), SIGKILL if it has not exited within 20 s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def restart(self, **settings: object) -> None:
        """Stop, change `settings`, start again on the same port: the devices enrolled with this URL."""
        port = self.port
        self.stop()
        self.settings.update({k: str(v) for k, v in settings.items()})
        self.start(port)

    def admin(self, method: str, path: str, **kw: Any) -> Any:
        """An admin API call (`path` from /v1/admin/...) with the admin token; its JSON body."""
        import requests

        r = requests.request(method, self.url + path, headers={wire.AUTH_HEADER: f"Bearer {self.admin_token}"},
                             timeout=self.admin_timeout_s, **kw)
        if r.status_code >= 400:
            raise CoordinatorProcessError(f"coordinator {method} {path}: HTTP {r.status_code}: {r.text[:300]}")
        return r.json()

    def __enter__(self) -> CoordinatorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
