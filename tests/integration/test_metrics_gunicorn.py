"""/metrics under real gunicorn with 2 workers (deploy/gunicorn.conf.py): counters add up over
workers (prometheus-client multiprocess mode) and the operator's gauges come from the database."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from protocol import wire
from tests.integration.coordinator_fakes import FakeDevice, make_version

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _value(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else r"(?:\{\})?") + r" (\S+)"
    found = re.findall("^" + pattern + "$", text, flags=re.M)
    assert len(found) == 1, (name, labels, [ln for ln in text.splitlines() if ln.startswith(name)])
    return float(found[0])


def test_metrics_add_up_over_two_gunicorn_workers(tmp_path):
    data, port = tmp_path / "coord", _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDKEYS_")}
    env |= {"PYTHONPATH": str(ROOT), "FEDKEYS_COORDINATOR_DATA_DIR": str(data),
            "FEDKEYS_COORDINATOR_ADMIN_TOKEN": "adm", "FEDKEYS_COORDINATOR_RATE_LIMIT_PER_MINUTE": "60000",
            "FEDKEYS_COORDINATOR_RATE_LIMIT_BURST": "1000", "FEDKEYS_BIND": f"127.0.0.1:{port}",
            "FEDKEYS_WORKERS": "2", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    cli = [sys.executable, "-m", "coordinator"]
    assert subprocess.run([*cli, "init"], env=env, cwd=ROOT, capture_output=True, timeout=120).returncode == 0
    make_version(tmp_path / "v0")
    assert subprocess.run([*cli, "import-version", str(tmp_path / "v0")], env=env, cwd=ROOT,
                          capture_output=True, timeout=120).returncode == 0
    key = subprocess.run([*cli, "create-enrollment-key"], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=120).stdout.strip()
    log = open(tmp_path / "gunicorn.log", "wb")      # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(ROOT / "deploy" / "gunicorn.conf.py"),
                             "coordinator.app:create_app()"], cwd=ROOT, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "gunicorn.log").read_text()[-3000:]
            try:
                if requests.get(url + wire.PATH_HEALTH, timeout=30).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "gunicorn did not come up"
            time.sleep(0.2)
        sent = 0
        with ThreadPoolExecutor(8) as pool:       # fresh connections, until both workers have served some
            # At least one batch: the start-up health checks may already have reached both workers.
            while sent == 0 or (len(list((tmp_path / "metrics").glob("counter_*.db"))) < 2 and sent < 800):
                codes = list(pool.map(lambda _: requests.get(url + "/openapi.json", timeout=30).status_code,
                                      range(40)))
                assert codes == [200] * 40
                sent += 40
        files = list((tmp_path / "metrics").glob("counter_*.db"))
        assert len(files) == 2, files          # one file per worker: both served
        for _ in range(6):                     # whichever worker answers, the same sum
            text = requests.get(url + wire.PATH_METRICS, timeout=10).text
            assert _value(text, "fedkeys_http_requests_total",
                          'endpoint="/openapi.json",method="GET",status="200"') == sent
        # The operator's gauges: state from the database.
        text = requests.get(url + wire.PATH_METRICS, timeout=10).text
        assert _value(text, "fedkeys_round_open") == 0
        assert _value(text, "fedkeys_version", 'role="stable",version="v0000"') == 1
        assert _value(text, "fedkeys_devices_enrolled") == 0
        dev = FakeDevice(url, key)
        rid = requests.post(url + "/v1/admin/rounds", json={"goal_count": 3, "min_count": 1, "selection_window_s": 0},
                            headers={wire.AUTH_HEADER: "Bearer adm"}, timeout=10).json()["round_id"]
        assert dev.checkin().kind == wire.TASK_TRAIN
        text = requests.get(url + wire.PATH_METRICS, timeout=10).text
        assert _value(text, "fedkeys_round_open") == 1 and _value(text, "fedkeys_round_id") == rid
        assert _value(text, "fedkeys_round_goal_updates") == 3 and _value(text, "fedkeys_round_accepted_updates") == 0
        assert _value(text, "fedkeys_devices_enrolled") == 1 and _value(text, "fedkeys_devices_active") == 1
        assert 'fedkeys_epsilon_local{role="stable",version="v0000"}' in text
        assert _value(text, "fedkeys_checkins_total", 'task="train"') == 1
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    # gunicorn's own log lines and the app's share one format: JSON lines.
    import json
    lines = [ln for ln in (tmp_path / "gunicorn.log").read_text().splitlines() if ln.strip()]
    assert lines and all(json.loads(ln)["level"] for ln in lines), lines[:5]
