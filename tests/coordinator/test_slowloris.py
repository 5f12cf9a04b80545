"""Slowloris against the production front (issue 12, item 10): gunicorn with deploy/gunicorn.conf.py
(gthread, 2 workers x 4 threads) on loopback behind nginx with deploy/nginx/fedkeys.conf (TLS).

60 connections finish the TLS handshake, then send a request's headers a few bytes a second and
never finish them. nginx holds them itself (it only opens an upstream connection once the request
header is complete), so /healthz through nginx keeps answering. The control: the same attack on
gunicorn's own port takes every worker thread (a gthread thread reads a request's headers with a
blocking read), and /healthz there stops answering until the slow sockets close. nginx also
drops the slow connections at its client_header_timeout."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.helpers.front import ROOT, gunicorn_coordinator, gunicorn_env, nginx_front
from tools.coordinator_process import free_port

SLOW = 60          # slow connections per attack (gunicorn's threads in all: 2 x 4 = 8)
CHECKS = 4         # /healthz probes while they are held
LIMIT_S = 2.0      # "answers": 200 within this
HEADER_TIMEOUT_S = 10   # client_header_timeout in deploy/nginx/fedkeys.conf


class Slowloris:
    """`n` connections to 127.0.0.1:`port` (TLS if `tls`, handshake done) that send an unfinished
    request header a few bytes per second from a background thread, until close()."""

    def __init__(self, port: int, n: int, tls: ssl.SSLContext | None = None) -> None:
        self.socks: list[socket.socket] = []
        self.dropped = 0
        self._stop = threading.Event()
        try:
            for _ in range(n):
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                if tls is not None:
                    s = tls.wrap_socket(s, server_hostname="localhost")
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
                self.socks.append(s)
        except BaseException:
            self.close()
            raise
        self.opened = time.monotonic()
        self._thread = threading.Thread(target=self._drip, daemon=True)
        self._thread.start()

    def _drip(self) -> None:
        tick = 0
        while not self._stop.wait(1.0):
            tick += 1
            for s in list(self.socks):
                try:
                    s.sendall(b"X-%d: %d\r\n" % (tick, tick))   # a few bytes; never the empty line
                except OSError:
                    self.socks.remove(s)
                    s.close()
                    self.dropped += 1

    @property
    def held(self) -> int:
        return len(self.socks)

    def close(self) -> None:
        self._stop.set()
        if getattr(self, "_thread", None) is not None:
            self._thread.join(5)
        for s in self.socks:
            s.close()
        self.socks.clear()


def _probe(url: str, **kw) -> tuple[int | None, float]:
    """(status or None if no answer within LIMIT_S, seconds)."""
    t0 = time.monotonic()
    try:
        return requests.get(url + "/healthz", timeout=LIMIT_S, **kw).status_code, time.monotonic() - t0
    except requests.Timeout:
        return None, time.monotonic() - t0


@pytest.fixture
def coordinator_under_gunicorn(tmp_path: Path):
    port = free_port()
    env = gunicorn_env(tmp_path, port)
    r = subprocess.run([sys.executable, "-m", "coordinator", "init"], env=env, cwd=ROOT, capture_output=True,
                       timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    with gunicorn_coordinator(tmp_path, env) as url:
        yield url


def test_slowloris_nginx_keeps_answering_gunicorn_direct_does_not(tmp_path, coordinator_under_gunicorn):
    started = time.monotonic()
    direct = coordinator_under_gunicorn
    with nginx_front(tmp_path / "nginx", direct.removeprefix("http://")) as front:
        tls = ssl.create_default_context(cafile=str(front.crt))
        # 1. Through nginx: every probe answers 200 within 2 s while all 60 are held.
        attack = Slowloris(front.https_port, SLOW, tls)
        try:
            via_nginx = []
            for _ in range(CHECKS):
                time.sleep(1.0)
                via_nginx.append(_probe(front.https_url, verify=str(front.crt)))
                assert attack.held == SLOW, f"nginx dropped {attack.dropped} slow connections early"
            # ... and nginx lets them go at client_header_timeout (10 s), not when they choose.
            deadline = attack.opened + HEADER_TIMEOUT_S + 5
            while attack.held and time.monotonic() < deadline:
                time.sleep(0.2)
            dropped_after = time.monotonic() - attack.opened
            assert attack.held == 0, f"{attack.held} slow connections still held after {dropped_after:.1f} s"
        finally:
            attack.close()
    print(f"\nthrough nginx, {SLOW} slow TLS connections held: /healthz",
          [(c, round(t, 3)) for c, t in via_nginx], f"all dropped by nginx after {dropped_after:.1f} s")
    assert all(code == 200 and t < LIMIT_S for code, t in via_nginx), via_nginx

    # 2. Control, gunicorn's own port: the same attack takes every thread; /healthz does not answer.
    assert _probe(direct)[0] == 200
    attack = Slowloris(int(direct.rsplit(":", 1)[1]), SLOW)
    try:
        # Until the workers have taken the held connections (1 s on an idle machine; a probe still
        # answered after 1 s on a loaded one), then every probe must go unanswered.
        saturated = time.monotonic() + 15
        while time.monotonic() < saturated and _probe(direct)[0] == 200:
            time.sleep(0.5)
        direct_probes = [_probe(direct) for _ in range(CHECKS)]
        held = attack.held
    finally:
        attack.close()
    print(f"direct to gunicorn, {held} slow connections held: /healthz",
          [(c, round(t, 3)) for c, t in direct_probes])
    assert held == SLOW
    assert all(code is None for code, _ in direct_probes), direct_probes
    # Once they close, gunicorn answers again: the control measured the attack, not a dead server.
    deadline = time.monotonic() + 10
    while (after := _probe(direct))[0] != 200:
        assert time.monotonic() < deadline, after
    print(f"after closing them: /healthz {after[0]} in {after[1]:.3f} s; whole test {time.monotonic() - started:.1f} s")
