"""Signatures, the OpenAPI document, metrics, health and the admin CLI."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from sqlalchemy import make_url

from coordinator.__main__ import main as cli_main
from coordinator.app import create_app
from protocol import artifact, wire
from tests.helpers.coordinator_fakes import SHAPES, FakeDevice, make_config, make_version

ROOT = Path(__file__).resolve().parents[2]


def test_manifest_signature_verifies_and_tampering_is_detected(served):
    dev = FakeDevice(served.url, served.coord.create_enrollment_key())
    key = wire.SigningKey.from_dict(requests.get(served.url + wire.PATH_SIGNING_KEY, timeout=5).json())
    manifest = artifact.Manifest.from_dict(dev.get(wire.PATH_VERSION_MANIFEST, "v0000").json())
    artifact.verify_manifest(manifest, key.public_key_hex)
    # Weights, graph and tokenizer downloads match the signed hashes.
    assert artifact.sha256_bytes(dev.get(wire.PATH_VERSION_WEIGHTS, "v0000").content) == manifest.weights_sha256
    assert artifact.sha256_bytes(dev.get(wire.PATH_VERSION_GRAPH, "v0000").content) == manifest.graph_sha256
    assert artifact.sha256_bytes(dev.get(wire.PATH_VERSION_TOKENIZER, "v0000").content) == manifest.tokenizer_sha256
    tampered = artifact.Manifest.from_dict(manifest.to_dict() | {"weights_sha256": "0" * 64})
    with pytest.raises(artifact.ArtifactError, match="bad signature"):
        artifact.verify_manifest(tampered, key.public_key_hex)
    unsigned = artifact.Manifest.from_dict(manifest.to_dict() | {"signature": None})
    with pytest.raises(artifact.ArtifactError, match="not signed"):
        artifact.verify_manifest(unsigned, key.public_key_hex)
    with pytest.raises(artifact.ArtifactError):
        artifact.verify_manifest(manifest, "11" * 32)          # someone else's key


def test_a_device_on_a_version_the_coordinator_does_not_hold_is_said_once(served, caplog):
    """A coordinator restored from a backup older than its devices' version moved them back in
    silence, and its ε against the coordinator lacked the rounds after the backup: nothing said
    why. A version a device runs that it does not hold is logged, once."""
    dev = FakeDevice(served.url, served.coord.create_enrollment_key())
    caplog.clear()
    for _ in range(3):
        assert dev.checkin(current="v0042").use_version_id == "v0000"
    said = [r.getMessage() for r in caplog.records if "does not hold" in r.getMessage()]
    assert len(said) == 1 and "'v0042'" in said[0] and "backup" in said[0]
    dev.checkin(current="v0000")
    dev.checkin(current=None)                     # a new device: nothing to say
    assert len([r for r in caplog.records if "does not hold" in r.getMessage()]) == 1


def test_a_download_cut_off_can_ask_for_the_rest_of_its_file(served):
    """A device's download cut off started again from the first byte: version
    files answer Range with If-Range on their ETag (the file's sha256)."""
    dev = FakeDevice(served.url, served.coord.create_enrollment_key())
    path = wire.version_path(wire.PATH_VERSION_GRAPH, "v0000")
    whole = requests.get(served.url + path, headers=dev.headers, timeout=5)
    etag = whole.headers["ETag"]
    assert whole.headers["Accept-Ranges"] == "bytes" and etag == f'"{artifact.sha256_bytes(whole.content)}"'
    n = len(whole.content)
    rest = requests.get(served.url + path, timeout=5, headers=dev.headers | {"Range": f"bytes={n // 2}-",
                                                                            "If-Range": etag})
    assert rest.status_code == 206 and rest.content == whole.content[n // 2:]
    assert rest.headers["Content-Range"] == f"bytes {n // 2}-{n - 1}/{n}"
    other = requests.get(served.url + path, timeout=5, headers=dev.headers | {"Range": f"bytes={n // 2}-",
                                                                             "If-Range": '"another file"'})
    assert other.status_code == 200 and other.content == whole.content   # not the same file: all of it


def test_signing_key_persists_and_cli_prints_it(tmp_path, capsys):
    import os

    cfg = make_config(tmp_path)
    umask = os.umask(0o022)   # the usual one, whatever the runner's: the modes below must not come from it
    try:
        app = create_app(cfg)
    finally:
        os.umask(umask)
    pub = app.extensions["fedkeys"].public_key_hex
    app.extensions["fedkeys"].close()
    args = ["--data-dir", cfg.data_dir, "--database-url", cfg.resolved_database_url]
    assert cli_main(["public-key", *args]) == 0
    assert capsys.readouterr().out.strip() == pub
    assert (Path(cfg.data_dir) / "signing_key.pem").stat().st_mode & 0o077 == 0   # private key is 0600
    # A new data directory and SQLite database are their owner's only: the database holds every
    # device's canary reports and token hashes, and the umask made it 0644.
    assert Path(cfg.data_dir).stat().st_mode & 0o077 == 0
    if cfg.resolved_database_url.startswith("sqlite"):
        db = Path(make_url(cfg.resolved_database_url).database)
        assert db.stat().st_mode & 0o077 == 0 and all(
            f.stat().st_mode & 0o077 == 0 for f in db.parent.glob(db.name + "-*"))   # its -wal and -shm


def test_openapi_describes_every_route_exactly(served):
    doc = requests.get(served.url + wire.PATH_OPENAPI, timeout=5).json()
    assert doc["openapi"].startswith("3.")
    documented = {(p, m.upper()) for p, ops in doc["paths"].items() for m in ops}
    routed = set()
    for rule in served.app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = rule.rule
        for conv in ("int:", ""):
            path = path.replace("<" + conv, "{")
        path = path.replace(">", "}")
        routed |= {(path, m) for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert documented == routed
    refs = json.dumps(doc).count("#/components/schemas/")
    assert refs > 10
    for name in ("EnrollRequest", "Task", "UpdateMeta", "EvaluationReport", "Error"):
        assert name in doc["components"]["schemas"]


def test_openapi_schemas_match_wire_messages(served):
    """Every field a wire message emits is declared in its schema (the document cannot drift)."""
    schemas = requests.get(served.url + wire.PATH_OPENAPI, timeout=5).json()["components"]["schemas"]
    plan = wire.TrainPlan(1, 1, 1, 0.1, 1.0, 0.0, 10)
    samples = {
        "EnrollRequest": wire.EnrollRequest("k"), "EnrollResponse": wire.EnrollResponse("d", "t"),
        "CheckinRequest": wire.CheckinRequest(True), "TrainPlan": plan,
        "Task": wire.Task(kind="train", retry_after=1, base_version_id="v", plan=plan, time_limit_s=1),
        "UpdateMeta": wire.UpdateMeta(1, "v", 1, "k"), "UpdateReceipt": wire.UpdateReceipt(1, 1),
        "EvaluationReceipt": wire.EvaluationReceipt("v"), "SigningKey": wire.SigningKey("ab" * 32),
        "VersionMetrics": wire.VersionMetrics("v", 1, 1, 1, 1),
        "RolloutState": wire.RolloutState("d", "v", "stable", 3, 1, False, 10, "ab"),
        "Error": wire.ErrorBody("x", "y", 1.0, {"a": 1}),
    }
    for name, msg in samples.items():
        d = msg.to_dict()
        assert set(d) <= set(schemas[name]["properties"]), name
        assert set(schemas[name].get("required", [])) <= set(d), name
        # a field sent as null is declared nullable (a task's `rollout` before any version was
        # not, and a strict generated client refused the answer)
        for field, value in d.items():
            assert value is not None or schemas[name]["properties"][field].get("nullable"), (name, field)


def test_metrics_and_health(served):
    assert requests.get(served.url + wire.PATH_HEALTH, timeout=5).json() == {"ok": True}
    requests.get(served.url + "/v1/nope", timeout=5)
    text = requests.get(served.url + wire.PATH_METRICS, timeout=5).text
    assert 'fedkeys_http_requests_total{endpoint="/healthz",method="GET",status="200"} 1.0' in text
    assert 'endpoint="unmatched",method="GET",status="404"' in text


def test_only_a_database_out_of_reach_is_a_503_other_database_errors_are_faults():
    """A missing table or a full disk is a bug or an operator's fault, not a reason for devices to
    retry forever: only connection-level failures are 503."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from coordinator.db import busy
    from coordinator.db import unreachable as _unreachable

    class PgError(Exception):
        def __init__(self, sqlstate):
            super().__init__(sqlstate)
            self.sqlstate = sqlstate

    def op(orig, invalidated=False):
        return OperationalError("SELECT 1", {}, orig, connection_invalidated=invalidated)

    for orig in (sqlite3.OperationalError("database is locked"), PgError(None), PgError("08006"),
                 PgError("57P01")):
        assert _unreachable(op(orig)), orig
    assert _unreachable(op(PgError("42P01"), invalidated=True))
    for orig in (sqlite3.OperationalError("no such table: rounds"), PgError("42P01"), PgError("53100")):
        assert not _unreachable(op(orig)), orig

    class Psycopg2Error(Exception):   # psycopg2 names the SQLSTATE `pgcode`: read it, not "no SQLSTATE"
        def __init__(self, pgcode):
            super().__init__(pgcode)
            self.pgcode = pgcode
    assert _unreachable(op(Psycopg2Error("08006"))) and not _unreachable(op(Psycopg2Error("42P01")))
    # SQLite locked past its busy timeout is reachable and in use: said "busy", not "unavailable"
    assert busy(op(sqlite3.OperationalError("database is locked")))
    assert not any(busy(op(orig)) for orig in (sqlite3.OperationalError("unable to open database file"),
                                               PgError("08006"), PgError(None)))


def test_a_database_out_of_reach_is_a_503_to_retry(served, caplog):
    """A database server that is down (here: nothing listens on its port) answers health checks and
    admin calls with 503 and Retry-After, one log line saying so, not a 500 with a traceback."""
    from sqlalchemy import create_engine

    from coordinator.db import session_factory
    c = served.coord
    real = c.engine, c._sessions, c.monitor
    c.engine = c.monitor = create_engine("postgresql+psycopg://u@127.0.0.1:1/db", connect_args={"connect_timeout": 5})
    c._sessions = c.metrics._state._sessions = session_factory(c.engine)
    try:
        for path, headers in ((wire.PATH_HEALTH, {}),
                              ("/v1/admin/status", {wire.AUTH_HEADER: f"Bearer {served.config.admin_token}"})):
            r = requests.get(served.url + path, headers=headers, timeout=30)
            assert r.status_code == 503, (path, r.text)
            assert r.json()["message"] == "the database is unavailable; retry later" and r.headers["Retry-After"]
        # The scrape keeps the counters and says the database is down (it was a 503 and said nothing).
        r = requests.get(served.url + wire.PATH_METRICS, timeout=30)
        assert r.status_code == 200 and "fedkeys_database_up 0.0" in r.text, r.text
        assert 'fedkeys_http_requests_total{endpoint="/v1/admin/status",method="GET",status="503"} 1.0' in r.text
    finally:
        c.engine.dispose()
        c.engine, c._sessions, c.monitor = real
        c.metrics._state._sessions = session_factory(c.monitor)
    said = [r for r in caplog.records if "database unavailable" in r.getMessage()]
    assert said and not any(r.exc_info for r in said)
    (said,) = [r for r in caplog.records if r.name == "coordinator.metrics"]
    assert said.getMessage().startswith("metrics: the database is unavailable; the scrape has the counters only (")
    assert "port 1" in said.getMessage() and not said.exc_info
    assert requests.get(served.url + wire.PATH_HEALTH, timeout=5).json() == {"ok": True}
    assert "fedkeys_database_up 1.0" in requests.get(served.url + wire.PATH_METRICS, timeout=5).text


def test_a_database_with_no_connection_free_is_a_503_to_retry(served, caplog):
    """Every pooled connection in use past the pool's timeout was a 500 with a traceback; it is
    "busy": 503 with Retry-After. Health checks and the scrape read from a pool of their own, which
    a burst of requests cannot take: they still answer, and the scrape counts the 503s."""
    from sqlalchemy import create_engine

    from coordinator.db import session_factory
    c = served.coord
    real = c.engine, c._sessions
    sqlite = real[0].dialect.name == "sqlite"
    c.engine = create_engine(real[0].url, pool_size=1, max_overflow=0, pool_timeout=0.2,
                             connect_args={"check_same_thread": False} if sqlite else {})
    c._sessions = session_factory(c.engine)
    held = c.engine.connect()
    try:
        r = requests.get(served.url + "/v1/admin/status", timeout=30,
                         headers={wire.AUTH_HEADER: f"Bearer {served.config.admin_token}"})
        assert r.status_code == 503 and r.headers["Retry-After"], r.text
        assert r.json()["message"] == "the database is busy; retry later"
        assert requests.get(served.url + wire.PATH_HEALTH, timeout=30).json() == {"ok": True}
        r = requests.get(served.url + wire.PATH_METRICS, timeout=30)
        assert r.status_code == 200 and "fedkeys_database_up 1.0" in r.text, r.text
        assert 'fedkeys_http_requests_total{endpoint="/v1/admin/status",method="GET",status="503"} 1.0' in r.text
    finally:
        held.close()
        c.engine.dispose()
        c.engine, c._sessions = real
    said = [r for r in caplog.records if "connection free" in r.getMessage()]
    assert len(said) == 1 and not any(r.exc_info for r in said)


def test_a_locked_database_is_seen_by_health_checks_and_the_scrape_within_its_timeout(served):
    """With SQLite locked by another program (an operator's `sqlite3` shell in a transaction),
    /healthz and /metrics waited the requests' 30 s busy timeout, past Prometheus's 10 s: the scrape
    failed whole, and the documented alert on `fedkeys_database_up` could never fire.
    They read through an engine of their own that waits 2 s at most, and the scrape says the
    database is not up: on SQLite (whose reads in WAL mode pass the lock) because the write lock
    that every request needs cannot be taken within 2 s; on PostgreSQL because a table locked
    against reads times the scrape's statement out."""
    with _locked(served.coord, "BEGIN EXCLUSIVE", "LOCK TABLE rounds IN ACCESS EXCLUSIVE MODE"):
        assert requests.get(served.url + wire.PATH_HEALTH, timeout=10).json() == {"ok": True}
        r = requests.get(served.url + wire.PATH_METRICS, timeout=10)   # Prometheus's default scrape timeout
        assert r.status_code == 200 and "fedkeys_http_requests_total" in r.text, r.text
        assert "fedkeys_database_up 0.0" in r.text


@contextlib.contextmanager
def _locked(c, sqlite_sql: str, postgresql_sql: str):
    """The coordinator's database locked by another program while the block runs (an operator's
    `sqlite3` shell in a transaction; a PostgreSQL session)."""
    import sqlite3

    sqlite = c.engine.dialect.name == "sqlite"
    if sqlite:
        locker = sqlite3.connect(c.engine.url.database, isolation_level=None)
        locker.execute(sqlite_sql)
    else:
        locker = c.engine.connect()
        locker.exec_driver_sql(postgresql_sql)
    try:
        yield
    finally:
        if sqlite:
            locker.execute("ROLLBACK")
        else:
            locker.rollback()
        locker.close()


def test_reads_pass_a_write_lock_held_elsewhere(served):
    """On SQLite every transaction, reads too, began by taking the write lock: a listing, an
    authentication or a version download waited behind every write (598 s of lock waiting over
    14k requests at 2,500 devices), and behind a lock another program holds for
    the 30 s busy timeout, then a 503. Reads now begin deferred (WAL: no lock); on PostgreSQL a
    table locked against writes never held reads."""
    import time

    c = served.coord
    # the write lock, as a writer in another process holds it; on PostgreSQL writes wait, reads pass
    with _locked(c, "BEGIN IMMEDIATE", "LOCK TABLE rounds, versions, devices IN EXCLUSIVE MODE"):
        t0 = time.monotonic()
        assert served.admin("GET", "/v1/admin/rounds").json()["total"] == 0
        assert [v["version_id"] for v in served.admin("GET", "/v1/admin/versions").json()["versions"]] == ["v0000"]
        assert c.version_file("v0000", "weights")[0] == artifact.encode_weights(served.v0_weights)
        assert time.monotonic() - t0 < 5


def test_a_scrape_answers_before_its_timeout_when_the_database_host_is_silent(served):
    """A PostgreSQL host that accepts connections and never answers: the scrape waited the 10 s
    connect timeout, which is Prometheus's default scrape timeout, so the scrape failed whole. It
    now gives up on the host at 5 s and answers with the counters and `fedkeys_database_up 0`."""
    import socket
    import time

    from coordinator.db import make_monitor_engine, session_factory
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)   # the kernel completes connections; nothing ever reads or answers them
    c = served.coord
    monitor = make_monitor_engine(f"postgresql+psycopg://u@127.0.0.1:{silent.getsockname()[1]}/db")
    c.metrics._state._sessions = session_factory(monitor)
    try:
        t0 = time.monotonic()
        r = requests.get(served.url + wire.PATH_METRICS, timeout=30)
        took = time.monotonic() - t0
        assert r.status_code == 200 and "fedkeys_database_up 0.0" in r.text, r.text
        assert took < 9, took
    finally:
        monitor.dispose()
        c.metrics._state._sessions = session_factory(c.monitor)
        silent.close()


def test_a_clients_own_method_names_are_one_series(served):
    """Each made-up HTTP method was a series of its own: unbounded label values from anyone."""
    for i in range(5):
        requests.request(f"X{i}", served.url + wire.PATH_HEALTH, timeout=5)
    text = requests.get(served.url + wire.PATH_METRICS, timeout=5).text
    assert 'method="other"' in text and 'method="X' not in text


def test_health_says_a_full_disk(served, monkeypatch):
    """On a full disk /healthz answered {"ok": true} while every upload and aggregation failed."""
    import shutil
    from collections import namedtuple

    real = shutil.disk_usage
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 2**20, 2**20))
    r = requests.get(served.url + wire.PATH_HEALTH, timeout=5)
    assert r.status_code == 503 and "1 MiB free" in r.json()["message"] and r.headers["Retry-After"], r.text
    # and a gauge to alert on (no metric moved but a 503 counter)
    assert "fedkeys_data_dir_free_bytes 1.048576e+06" in requests.get(served.url + wire.PATH_METRICS, timeout=5).text
    monkeypatch.setattr(shutil, "disk_usage", real)
    assert requests.get(served.url + wire.PATH_HEALTH, timeout=5).json() == {"ok": True}


def test_admin_commands_take_the_serving_coordinators_settings(tmp_path, capsys, caplog):
    """An admin command run without the service's --profile, --config or environment closed
    and opened rounds and judge candidates with the defaults (another goal, aggregator, tolerance).
    The service records its settings when it starts; admin commands take them as defaults, under
    their own flags, and log where theirs differ."""
    cfg = make_config(tmp_path, goal_count=3, min_count=2, server_optimizer="fedadam", canary_tolerance=0.02)
    common = ["--data-dir", cfg.data_dir, "--database-url", cfg.resolved_database_url]
    assert cli_main(["init", *common]) == 0
    make_version(tmp_path / "v0")
    assert cli_main(["import-version", str(tmp_path / "v0"), *common]) == 0
    assert cli_main(["start-round", *common]) == 0                 # no service yet: the defaults
    capsys.readouterr()
    assert cli_main(["close-round", "1", "--force", *common]) == 0
    capsys.readouterr()
    create_app(cfg).extensions["fedkeys"].close()                  # the service starts (and records)
    assert cli_main(["start-round", *common]) == 0
    assert json.loads(capsys.readouterr().out)["goal_count"] == 3
    assert cli_main(["canary", *common]) == 0
    assert "judged with the serving coordinator's settings under this command's own (canary_min_reports 2, " \
           "canary_tolerance 0.02)" in capsys.readouterr().err
    caplog.clear()
    assert cli_main(["canary", "--set", "canary_tolerance=0.1", *common]) == 0   # its own flag wins, and says so
    assert "canary_tolerance 0.1)" in capsys.readouterr().err
    assert "canary_tolerance=0.1 (service: 0.02)" in caplog.text
    caplog.clear()
    create_app(cfg.with_overrides({"goal_count": 4, "min_count": 1})).extensions["fedkeys"].close()   # restarted
    assert "replace those recorded" in caplog.text and "goal_count=4 (was 3)" in caplog.text   # said, not silent
    caplog.clear()
    create_app(cfg.with_overrides({"goal_count": 4, "min_count": 1})).extensions["fedkeys"].close()   # the same
    assert "replace those recorded" not in caplog.text
    assert cli_main(["close-round", "2", "--force", *common]) == 0
    capsys.readouterr()
    assert cli_main(["start-round", *common]) == 0
    assert json.loads(capsys.readouterr().out)["goal_count"] == 4


def test_admin_token_prints_the_token_the_service_accepts(tmp_path, monkeypatch, capsys):
    """On a deployment whose token is its admin_token setting (FEDKEYS_COORDINATOR_ADMIN_TOKEN in
    the service's environment), `admin-token` run without that variable made an admin_token file
    and printed its token, which the service refused. Now it says where the token is and makes no
    file; a token other than the one the service started with is printed with a note."""
    cfg = make_config(tmp_path)
    common = ["--data-dir", cfg.data_dir, "--database-url", cfg.resolved_database_url]
    file = Path(cfg.data_dir) / "admin_token"
    monkeypatch.setenv("FEDKEYS_COORDINATOR_ADMIN_TOKEN", cfg.admin_token)   # the service's environment
    assert cli_main(["init", *common]) == 0
    create_app(cfg).extensions["fedkeys"].close()                            # the service starts on it
    capsys.readouterr()
    monkeypatch.delenv("FEDKEYS_COORDINATOR_ADMIN_TOKEN")                    # an operator's own shell
    assert cli_main(["admin-token", *common]) == 2
    said = capsys.readouterr()
    assert not said.out and "FEDKEYS_COORDINATOR_ADMIN_TOKEN" in said.err and not file.exists()
    monkeypatch.setenv("FEDKEYS_COORDINATOR_ADMIN_TOKEN", cfg.admin_token)
    assert cli_main(["admin-token", *common]) == 0
    said = capsys.readouterr()
    assert said.out.strip() == cfg.admin_token and "refuses" not in said.err
    monkeypatch.setenv("FEDKEYS_COORDINATOR_ADMIN_TOKEN", "a-new-token-not-served-yet")   # before the restart
    assert cli_main(["admin-token", *common]) == 0
    said = capsys.readouterr()
    assert said.out.strip() == "a-new-token-not-served-yet" and "refuses this one" in said.err
    # The token in the file: the service starts on it; a rotated file is said until the reload.
    monkeypatch.delenv("FEDKEYS_COORDINATOR_ADMIN_TOKEN")
    create_app(cfg.with_overrides({"admin_token": ""})).extensions["fedkeys"].close()
    assert cli_main(["admin-token", *common]) == 0
    said = capsys.readouterr()
    assert said.out.strip() == file.read_text().strip() and "refuses" not in said.err
    file.write_text("a-rotated-admin-token\n")
    assert cli_main(["admin-token", *common]) == 0
    said = capsys.readouterr()
    assert said.out.strip() == "a-rotated-admin-token" and "refuses this one" in said.err


def test_a_record_of_the_token_that_cannot_be_written_stops_no_start(tmp_path, caplog):
    """Which token the service takes is written at every worker's boot: a full disk there (where
    the service answers on) failed the boot, and gunicorn stops when a worker cannot boot."""
    cfg = make_config(tmp_path)
    assert cli_main(["init", "--data-dir", cfg.data_dir, "--database-url", cfg.resolved_database_url]) == 0
    (Path(cfg.data_dir) / "admin_token.served" / "x").mkdir(parents=True)   # os.replace onto it fails
    create_app(cfg).extensions["fedkeys"].close()
    assert "could not record which admin token" in caplog.text
    assert [p.name for p in Path(cfg.data_dir).glob(".admin_token.served.*")] == []


def test_recorded_settings_hold_no_secret_and_a_bad_one_is_left_out(tmp_path, capsys, caplog):
    """The record keeps no admin token or database URL. A command's flag that is valid only with the
    service's settings (discover_words with its secure_aggregation) is not refused before they are
    read; a recorded value this release cannot read is left out with a warning, not fatal."""
    from coordinator import deployment
    from coordinator.models import Setting
    from coordinator.service import Coordinator

    cfg = make_config(tmp_path, secure_aggregation=True, admin_token="s3cret-admin-token")
    common = ["--data-dir", cfg.data_dir, "--database-url", cfg.resolved_database_url]
    assert cli_main(["init", *common]) == 0
    make_version(tmp_path / "v0")
    assert cli_main(["import-version", str(tmp_path / "v0"), *common]) == 0
    create_app(cfg).extensions["fedkeys"].close()
    c = Coordinator(cfg)
    try:
        with c.tx() as s:
            raw = s.get(Setting, deployment.KEY).value
        assert "s3cret-admin-token" not in raw and cfg.resolved_database_url not in raw and '"data_dir"' not in raw
        assert json.loads(raw)["secure_aggregation"] is True
        capsys.readouterr()
        assert cli_main(["status", "--set", "discover_words=5", *common]) == 0
        assert cli_main(["status", "--set", "aggregator=median", *common]) == 2    # invalid with the service's
        assert "recorded" in capsys.readouterr().err
        with c.tx() as s:
            s.get(Setting, deployment.KEY).value = json.dumps({**json.loads(raw), "goal_count": "many", "gone": 1})
    finally:
        c.close()
    caplog.clear()
    assert cli_main(["start-round", *common]) == 0
    assert json.loads(capsys.readouterr().out)["goal_count"] == 100              # the default, with a warning
    assert "goal_count" in caplog.text and "this command uses its own" in caplog.text


def test_cli_help_and_admin_commands(tmp_path, capsys):
    out = subprocess.run([sys.executable, "-m", "coordinator", "--help"], cwd=ROOT, capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0
    for command in ("serve", "init", "create-enrollment-key", "import-version", "start-round", "status", "promote",
                    "pin", "rollback", "canary", "public-key"):
        assert command in out.stdout
    assert cli_main([]) == 2                                          # help when no arguments
    assert "usage:" in capsys.readouterr().out
    cfg = make_config(tmp_path)
    common = ["--data-dir", cfg.data_dir, "--database-url", cfg.resolved_database_url]
    assert cli_main(["init", *common]) == 0
    assert json.loads(capsys.readouterr().out)["public_key_hex"]
    make_version(tmp_path / "v0")
    assert cli_main(["import-version", str(tmp_path / "v0"), *common]) == 0
    assert capsys.readouterr().out.strip() == "v0000"
    assert cli_main(["start-round", "--goal-count", "4", "--min-count", "2", *common]) == 0
    opened = json.loads(capsys.readouterr().out)
    assert opened["goal_count"] == 4
    rid = opened["round_id"]
    assert cli_main(["close-round", str(rid), *common]) == 3      # no updates, before its deadline:
    out = capsys.readouterr()                                    # still open, and it says what closes it
    assert json.loads(out.out)["status"] == "open" and "left open" in out.err and "--force" in out.err
    assert cli_main(["status", *common]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["stable_version_id"] == "v0000" and status["latest_round"]["status"] == "open"
    # The canary as this command's settings judge it, saying so: a server on another profile decides
    # with its own (the small profile's one report, where this command waits for five).
    assert cli_main(["canary", "--profile", "small", *common]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["candidate_version_id"] is None
    assert "judged with this command's settings (canary_min_reports 1," in out.err
    # User errors: one line on stderr, exit 2.
    assert cli_main(["start-round", *common]) == 2
    assert "already open" in capsys.readouterr().err
    assert cli_main(["import-version", str(tmp_path / "nowhere"), *common]) == 2
    # A manifest edited by hand (its size no longer a number) is refused before it is signed and
    # shipped: devices trust what the coordinator signs.
    edited = tmp_path / "v1"
    make_version(edited, "v1")
    doc = json.loads((edited / "manifest.json").read_text())
    doc["arch"]["model"]["vocab_size"] = "big"
    (edited / "manifest.json").write_text(json.dumps(doc))
    capsys.readouterr()
    assert cli_main(["import-version", str(edited), *common]) == 2
    assert "arch_hash is not the hash of its arch record" in capsys.readouterr().err
    doc["arch_hash"] = artifact.arch_hash(doc["arch"])
    (edited / "manifest.json").write_text(json.dumps(doc))
    assert cli_main(["import-version", str(edited), *common]) == 2
    assert "model config vocab_size must be a positive integer" in capsys.readouterr().err
    assert cli_main(["status", "--set", "colour=blue", *common]) == 2
    assert "unknown setting" in capsys.readouterr().err
    assert cli_main(["status", "--set", "log_level=LOUD", *common]) == 2
    assert "log_level must be one of" in capsys.readouterr().err
    # A database that cannot be opened, or a round id no database holds: one line, no traceback,
    # and never the password of the URL.
    # A URL that is not one is the operator's input (exit 2); a database out of reach exits 1.
    (tmp_path / "not-a-db.txt").write_text("a text file, not a database\n" * 100)
    for url, says, code in (("notaurl", "is not a database URL", 2),
                            ("mysql://fk:s3cret@127.0.0.1/db", "names a mysql database; this coordinator runs on "
                                                               "SQLite or PostgreSQL only", 2),
                            ("postgresql+nosuchdriver://fk:s3cret@127.0.0.1/db", "not a database URL this "
                                                                                "coordinator can use", 2),
                            ("sqlite:////nonexistent-dir/x.db",    # not made: "no coordinator database"
                             "no coordinator database at sqlite:////nonexistent-dir/x.db", 2),
                            (f"sqlite:///{tmp_path / 'typo.db'}", "check --database-url", 2),
                            (f"sqlite:///{tmp_path / 'not-a-db.txt'}", "is not a database this coordinator can open",
                             2),
                            ("postgresql+psycopg://fk:s3cret@127.0.0.1:1/db", "cannot open the database", 1)):
        assert cli_main(["status", "--data-dir", cfg.data_dir, "--database-url", url]) == code, url
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0] and "s3cret" not in err[0], err
    with pytest.raises(SystemExit) as e:
        cli_main(["rejections", "--round-id", "99999999999999999999999", *common])
    assert e.value.code == 2 and "invalid round_id value" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:   # past the wire's bound, as the API refuses it, not only past SQL's
        cli_main(["rounds", "--before", str(2**31), *common])
    assert e.value.code == 2 and "invalid row_id value" in capsys.readouterr().err
    assert cli_main(["rejections", "--round-id", "12345", *common]) == 2     # no such round: not "[]"
    assert capsys.readouterr().err.strip() == "error: no round 12345"
    with pytest.raises(SystemExit) as e:              # the commands by name, not as enum reprs
        cli_main(["bogus"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "'promote', 'reject'" in err and "VersionAction" not in err
    (tmp_path / "a-file").write_text("x")             # --data-dir naming a file: one line, the operator's input
    assert cli_main(["init", "--data-dir", str(tmp_path / "a-file")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'a-file'} is a file, not a folder"
    with socket.socket() as held:                     # a port another program holds: one line, before serving
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert cli_main(["serve", "--port", str(port), *common]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot listen on 127.0.0.1:{port}" in err[0], err


def test_import_refuses_a_version_not_built_on_stable_and_export_gives_one_to_build_on(tmp_path, capsys):
    """A version built on version 0 while v0025 was stable was imported as a candidate with no
    word, and a one-device canary promoted it: 25 rounds of training gone. And there was no way to
    get the stable version's files to build on."""
    cfg = make_config(tmp_path)
    common = ["--data-dir", cfg.data_dir, "--database-url", cfg.resolved_database_url]
    assert cli_main(["init", *common]) == 0
    make_version(tmp_path / "v0")
    assert cli_main(["import-version", str(tmp_path / "v0"), *common]) == 0
    make_version(tmp_path / "other", "other", seed=1)                  # built on no version of this coordinator
    capsys.readouterr()
    assert cli_main(["import-version", str(tmp_path / "other"), *common]) == 2
    err = capsys.readouterr().err
    assert "builds on no version, not on the stable version v0000" in err and "export-version v0000" in err
    assert cli_main(["export-version", "v0000", str(tmp_path / "stable"), *common]) == 0
    manifest, weights = artifact.load_version(tmp_path / "stable")          # every sha256 checked
    assert manifest.version_id == "v0000" and set(weights) == set(SHAPES)
    # Readable by the service's user (deploy/: sudo -u fedkeys ... import-version), where they were
    # 0600 (mkstemp's mode), as were the files write_version writes for the tools.
    for f in (tmp_path / "stable" / artifact.MANIFEST, tmp_path / "stable" / artifact.WEIGHTS,
              tmp_path / "v0" / artifact.WEIGHTS, tmp_path / "v0" / artifact.MANIFEST):
        assert f.stat().st_mode & 0o777 == 0o644, f
    assert cli_main(["export-version", "v0000", str(tmp_path / "stable"), *common]) == 2     # not over files
    assert "is not an empty folder" in capsys.readouterr().err
    # A version built on it is a candidate as before; --force imports the other one anyway.
    child = tmp_path / "child"
    shutil.copytree(tmp_path / "stable", child)
    doc = json.loads((child / "manifest.json").read_text())
    doc.update(version_id="v0000-w1", parent="v0000")
    (child / "manifest.json").write_text(json.dumps(doc))
    assert cli_main(["import-version", str(child), *common]) == 0
    assert cli_main(["import-version", str(tmp_path / "other"), "--force", *common]) == 0


def test_a_service_whose_database_another_release_migrated_refuses_requests(served, monkeypatch, caplog):
    """An old service left running through an upgrade went on answering devices and promoting
    candidates on the new schema, while every aggregation failed."""
    import logging

    from sqlalchemy import text

    from coordinator import app as app_module

    assert requests.get(served.url + wire.PATH_HEALTH, timeout=5).json() == {"ok": True}
    with served.coord.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    monkeypatch.setattr(app_module, "SCHEMA_CHECK_S", 0.0)
    with caplog.at_level(logging.ERROR, logger="coordinator.app"):
        r = requests.get(served.url + wire.PATH_HEALTH, timeout=5)
        assert r.status_code == 503 and "migrated (schema revision 9999)" in r.json()["message"], r.text
        assert requests.get(served.url + wire.PATH_HEALTH, timeout=5).status_code == 503
    said = [rec for rec in caplog.records if "another release migrated it" in rec.getMessage()]
    assert len(said) == 1                                  # once, not on every request
    # a read of the revision that fails does not let a request through
    real = served.coord.monitor

    class Away:
        def connect(self):
            from sqlalchemy.exc import OperationalError
            raise OperationalError("SELECT", {}, Exception("server closed the connection"))

    served.coord.monitor = Away()
    try:
        r = requests.get(served.url + wire.PATH_OPENAPI, timeout=5)
        assert r.status_code == 503 and "migrated" in r.json()["message"], r.text
    finally:
        served.coord.monitor = real
    from coordinator.db import head_revision

    with served.coord.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": head_revision()})
    assert requests.get(served.url + wire.PATH_HEALTH, timeout=5).json() == {"ok": True}


def test_the_rounds_listing_holds_the_newest_and_says_how_many(served, capsys):
    """Every round ever came back, at six queries a round: months of rounds every
    few minutes made one listing tens of thousands of queries."""
    for _ in range(3):
        rid = served.coord.start_round(goal_count=1, min_count=1)
        served.coord.close_round(rid, force=True)   # no update: failed, and the next may open
    every = served.admin("GET", "/v1/admin/rounds").json()
    newest = served.admin("GET", "/v1/admin/rounds?limit=2").json()
    assert every["total"] == newest["total"] == len(every["rounds"]) == 3
    assert [r["round_id"] for r in newest["rounds"]] == [r["round_id"] for r in every["rounds"]][-2:]
    assert served.admin("GET", "/v1/admin/rounds?limit=0").status_code == 400
    cfg = served.config
    assert cli_main(["rounds", "--limit", "1", "--format", "json", "--data-dir", cfg.data_dir,
                     "--database-url", cfg.resolved_database_url]) == 0
    out = capsys.readouterr()
    assert [r["round_id"] for r in json.loads(out.out)] == [every["rounds"][-1]["round_id"]]
    assert f"1 of 3 rounds; older ones: --before {every['rounds'][-1]['round_id']}" in out.err


def test_the_rounds_and_rejections_listings_page_back_to_the_oldest(served, capsys):
    """Only the newest N could be listed: the rounds or rejections before them were out of reach but
    by a larger ?limit=, and any limit was taken, so one request could read every row ever."""
    ids = []
    for _ in range(5):
        ids.append(served.coord.start_round(goal_count=1, min_count=1))
        served.coord.close_round(ids[-1], force=True)
    seen, before = [], None
    while True:
        page = served.admin("GET", "/v1/admin/rounds?limit=2" + (f"&before={before}" if before else "")).json()
        seen = [r["round_id"] for r in page["rounds"]] + seen
        assert page["total"] == 5 and len(page["rounds"]) <= 2
        before = page["next_before"]
        if before is None:
            break
    assert seen == ids
    for bad in ("limit=1001", "before=0", "before=x"):
        r = served.admin("GET", f"/v1/admin/rounds?{bad}")
        assert r.status_code == 400 and ("limit" if "limit" in bad else "before") in r.json()["message"]
    from coordinator.updates import reject

    for i in range(3):   # uploads to a round that is closed: each a row
        reject(served.coord, f"dev-{i}", ids[-1], wire.E_LATE, "the round is closed")
    every = served.admin("GET", "/v1/admin/rejections").json()
    assert every["total"] == 3 and every["next_before"] is None
    first = served.admin("GET", "/v1/admin/rejections?limit=2").json()
    older = served.admin("GET", f"/v1/admin/rejections?limit=2&before={first['next_before']}").json()
    assert [x["device_id"] for x in older["rejections"] + first["rejections"]] == ["dev-0", "dev-1", "dev-2"]
    assert older["next_before"] is None and older["total"] == 3
    assert served.admin("GET", "/v1/admin/rejections?limit=10001").status_code == 400
    doc = requests.get(served.url + wire.PATH_OPENAPI, timeout=5).json()   # and the document says the bounds
    for path, most in (("/v1/admin/rounds", 1000), ("/v1/admin/rejections", 10_000)):
        params = {p["name"]: p["schema"] for p in doc["paths"][path]["get"]["parameters"]}
        assert params["limit"]["maximum"] == most and params["before"]["minimum"] == 1
    cfg = served.config
    common = ["--format", "json", "--data-dir", cfg.data_dir, "--database-url", cfg.resolved_database_url]
    assert cli_main(["rounds", "--limit", "2", "--before", str(ids[2]), *common]) == 0
    out = capsys.readouterr()
    assert [r["round_id"] for r in json.loads(out.out)] == ids[:2] and "older ones" not in out.err


@pytest.mark.parametrize("query", ["rounds?before=" + "9" * 5000, "rounds?limit=" + "1" * 5000,
                                   "rejections?before=" + "9" * 5000, "rejections?round_id=" + "9" * 5000,
                                   "rounds?limit=" + "0" * 5000 + "1"])
def test_a_listings_number_too_long_for_int_is_a_400_not_a_500(served, query):
    """`before`, `limit` and `round_id` were checked with str.isdigit() and then int(): past 4,300
    digits int() raises ValueError (Python's int_max_str_digits), which the app answered 500.
    Leading zeros are still taken ("007" is 7), however many."""
    r = served.admin("GET", f"/v1/admin/{query}")
    assert r.status_code == (200 if "limit=000" in query else 400), r.text
