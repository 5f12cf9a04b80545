"""`coordinator.db.drop_everything` empties a reused database (PostgreSQL in CI's second stage)
from a fresh process that imported nothing else: it once missed the secure-aggregation tables,
whose foreign keys on `rounds` then blocked the drop (tools.bench load --database-url)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from coordinator.db import make_engine, migrate, table_names
from tests.helpers.coordinator_fakes import database_url

REPO = Path(__file__).resolve().parents[2]


def test_a_fresh_process_drops_every_table_the_migrations_made(tmp_path):
    url = database_url(tmp_path)
    engine = make_engine(url)
    migrate(engine)
    assert {"rounds", "secagg_rounds", "alembic_version"} <= table_names(engine)
    engine.dispose()
    r = subprocess.run([sys.executable, "-c", f"from coordinator.db import drop_everything; drop_everything({url!r})"],
                       cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    engine = make_engine(url)
    assert table_names(engine) == set()
    engine.dispose()


def test_an_unreachable_database_is_one_line_without_its_password(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tools.bench", "load", "--devices", "2", "--uploaders", "1",
                        "--database-url", "postgresql+psycopg://fk:s3cret@127.0.0.1:1/x"],
                       cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    err = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(err) == 1 and "cannot open the database" in err[0] and "s3cret" not in err[0], err
