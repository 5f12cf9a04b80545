"""/metrics under real gunicorn with 2 workers (deploy/gunicorn.conf.py): counters add up over
workers (prometheus-client multiprocess mode) and the operator's gauges come from the database."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import requests

from protocol import wire
from tests.helpers.coordinator_fakes import TEST_DB_ENV, FakeDevice, make_version
from tests.helpers.front import FRONT_ADMIN_TOKEN, ROOT, gunicorn_coordinator, gunicorn_env
from tools.coordinator_process import free_port


def _value(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else r"(?:\{\})?") + r" (\S+)"
    found = re.findall("^" + pattern + "$", text, flags=re.M)
    assert len(found) == 1, (name, labels, [ln for ln in text.splitlines() if ln.startswith(name)])
    return float(found[0])


def test_metrics_add_up_over_two_gunicorn_workers(tmp_path):
    env = gunicorn_env(tmp_path, free_port(), FEDKEYS_COORDINATOR_RATE_LIMIT_PER_MINUTE="60000",
                       FEDKEYS_COORDINATOR_RATE_LIMIT_BURST="1000", FEDKEYS_WORKERS="2")
    cli = [sys.executable, "-m", "coordinator"]
    assert subprocess.run([*cli, "init"], env=env, cwd=ROOT, capture_output=True, timeout=120).returncode == 0
    # With a test database (PostgreSQL in CI) the workers share it, not a SQLite file of their own.
    assert (tmp_path / "coord" / "coordinator.db").exists() == (not os.environ.get(TEST_DB_ENV))
    make_version(tmp_path / "v0")
    assert subprocess.run([*cli, "import-version", str(tmp_path / "v0")], env=env, cwd=ROOT,
                          capture_output=True, timeout=120).returncode == 0
    key = subprocess.run([*cli, "create-enrollment-key"], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=120).stdout.strip()
    with gunicorn_coordinator(tmp_path, env) as url:
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
                            headers={wire.AUTH_HEADER: f"Bearer {FRONT_ADMIN_TOKEN}"}, timeout=10).json()["round_id"]
        assert dev.checkin().kind == wire.TASK_TRAIN
        text = requests.get(url + wire.PATH_METRICS, timeout=10).text
        assert _value(text, "fedkeys_round_open") == 1 and _value(text, "fedkeys_round_id") == rid
        assert _value(text, "fedkeys_round_goal_updates") == 3 and _value(text, "fedkeys_round_accepted_updates") == 0
        assert _value(text, "fedkeys_devices_enrolled") == 1 and _value(text, "fedkeys_devices_active") == 1
        assert 'fedkeys_epsilon_local{role="stable",version="v0000"}' in text
        assert _value(text, "fedkeys_checkins_total", 'task="train"') == 1
        assert _value(text, "fedkeys_rounds_total", 'event="started"') == 1   # from the database: once, not per worker
    # gunicorn's own log lines and the app's share one format: JSON lines.
    import json
    lines = [ln for ln in (tmp_path / "gunicorn.log").read_text().splitlines() if ln.strip()]
    assert lines and all(json.loads(ln)["level"] for ln in lines), lines[:5]


def test_an_older_workers_counter_files_do_not_double_a_family(served, tmp_path, monkeypatch):
    """After a `kill -HUP` reload onto this release, the old workers' files still held
    fedkeys_rounds as a counter of their own, beside the one counted from the database: each
    scrape carried the family twice."""
    from prometheus_client.parser import text_string_to_metric_families

    files = tmp_path / "prom"
    files.mkdir()
    old_worker = ("from prometheus_client import CollectorRegistry, Counter\n"
                  "Counter('fedkeys_rounds', 'Rounds by event', ['event'], registry=CollectorRegistry())"
                  ".labels('started').inc()\n")
    subprocess.run([sys.executable, "-c", old_worker], check=True,
                   env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(files)})
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(files))
    names = [f.name for f in text_string_to_metric_families(served.coord.metrics.render().decode())]
    assert names.count("fedkeys_rounds") == 1, names
