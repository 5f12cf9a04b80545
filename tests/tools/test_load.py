"""The load bench in a reduced size: gunicorn on loopback, concurrent check-ins and default-model
uploads, zero errors, the round aggregated, and a report with every figure it promises.
(FEDKEYS_TEST_DATABASE_URL runs it on PostgreSQL; the full size is `python -m tools.bench load`.)"""

from __future__ import annotations

import os

import pytest

from tests.helpers.coordinator_fakes import TEST_DB_ENV
from tools.bench.load import format_report, run_load


def test_reduced_load_has_no_errors_and_reports_every_figure(tmp_path):
    res = run_load(devices=60, uploaders=10, concurrency=30, upload_concurrency=5, workers=2, threads=4,
                   database_url=os.environ.get(TEST_DB_ENV, ""), time_limit_s=240, data_dir=tmp_path,
                   log=lambda _m: None)
    assert res["errors"] == 0, res
    assert res["selected"] == 10 and res["round_status"] == "done" and res["round_accepted"] == 10, res
    phases = {p["phase"]: p for p in res["phases"]}
    assert phases["checkin"]["requests"] == 60 and phases["upload"]["requests"] == 10
    assert all(p["req_per_s"] > 0 and 0 < p["p50_ms"] <= p["p99_ms"] for p in phases.values()), phases
    # the model grew on main (10,000-word tied output, docs/quality.md): 628,384 -> 1,356,048
    assert res["model_params"] == 1_356_048 and res["peak_rss_mb_total"] > 0
    url = os.environ.get(TEST_DB_ENV, "")
    assert res["database"] == (url.split(":")[0].split("+")[0] if url else "sqlite")   # a SQLite URL said postgresql
    report = format_report(res)
    for word in ("req/s", "p50 ms", "p99 ms", "peak RSS", "errors: 0"):
        assert word in report


@pytest.mark.parametrize("args, says", [
    (["--workers", "0"], "--workers"), (["--threads", "0"], "--threads"),
    (["--upload-concurrency", "0"], "--upload-concurrency"), (["--time-limit", "0"], "--time-limit"),
    (["--uploaders", "0"], "--uploaders"), (["--devices", "2", "--uploaders", "3"], "--uploaders"),
])
def test_numbers_it_cannot_run_with_are_refused_before_any_work(args, says):
    """--workers 0 waited out the whole time limit (600 s by default) before saying anything."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "tools.bench", "load", *args], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[2], timeout=120, check=False,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert time.monotonic() - t0 < 60
