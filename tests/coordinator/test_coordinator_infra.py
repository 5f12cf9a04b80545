"""Config layering, rate limiting, the blob store, migrations up and down."""

from __future__ import annotations

import json

import pytest

from coordinator.blobs import BlobStore
from coordinator.config import Config, ConfigError, load_config
from coordinator.db import downgrade, make_engine, migrate, table_names
from coordinator.ratelimit import RateLimiter


def test_config_layers_defaults_file_env_flags(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('goal_count = 20\nmin_count = 10\nport = 9000\nserver_optimizer = "fedadam"\n')
    env = {"FEDKEYS_COORDINATOR_PORT": "9001", "FEDKEYS_COORDINATOR_CANARY_FRACTION": "0.25", "OTHER": "x"}
    cfg = load_config(config_file=str(toml), environ=env, flags={"port": 9002, "host": None})
    assert (cfg.goal_count, cfg.min_count, cfg.server_optimizer) == (20, 10, "fedadam")   # file
    assert cfg.canary_fraction == 0.25                                                      # env
    assert cfg.port == 9002 and cfg.host == Config().host                                   # flag; None ignored
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"goal_count": 5, "min_count": 5}))
    assert load_config(environ={"FEDKEYS_COORDINATOR_CONFIG": str(j)}).goal_count == 5
    assert Config().resolved_database_url.startswith("sqlite:///")


@pytest.mark.parametrize("kwargs,needle", [
    ({"environ": {"FEDKEYS_COORDINATOR_COLOUR": "blue"}}, "unknown setting"),
    ({"flags": {"port": "eighty"}}, "not a valid int"),
    ({"flags": {"port": 0}}, "port"),
    ({"flags": {"min_count": 500}}, "min_count"),
    ({"flags": {"server_optimizer": "sgd"}}, "server_optimizer"),
    ({"flags": {"goal_count": True}}, "not a valid int"),
    ({"config_file": "/nonexistent/c.toml"}, "cannot read"),
    ({"flags": {"proxy_hops": -1}}, "proxy_hops"),
    ({"flags": {"admin_failures_burst": 0}}, "admin_failures"),
    # Values every later use would fail on (a 500 on the dashboard, rounds never opening) are
    # refused at start, by the same rule an operator's start-round override meets.
    ({"flags": {"round_interval_s": float("inf")}}, "round_interval_s must be a finite number"),
    ({"environ": {"FEDKEYS_COORDINATOR_SERVER_LEARNING_RATE": "nan"}}, "server_learning_rate must be a finite"),
    ({"flags": {"round_interval_s": 1e18}}, r"round_interval_s must be in \[0, 365 days\]"),
    ({"flags": {"secagg_phase_timeout_s": 1e12}}, "secagg_phase_timeout_s"),
    ({"flags": {"overselect": 20.0}}, r"overselect must be in \[1, 10\] \(it is 20.0\)"),
    ({"flags": {"goal_count": 10**8, "min_count": 1}}, "goal_count must be in"),
    ({"flags": {"round_duration_s": 31 * 86400.0}}, "round_duration_s must be in"),
])
def test_config_rejects_bad_settings(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(**({"environ": {}} | kwargs))


def test_rate_limiter_token_bucket():
    now = [0.0]
    rl = RateLimiter(per_minute=60, burst=2, clock=lambda: now[0])
    assert rl.check("a") == 0 and rl.check("a") == 0
    wait = rl.check("a")
    assert wait == pytest.approx(1.0)
    assert rl.check("b") == 0                      # per key
    now[0] += 1.0
    assert rl.check("a") == 0
    rl.refund("a")                                 # the call did not count: its token back
    assert rl.check("a") == 0 and rl.check("a") > 0


def test_rate_limiter_memory_is_bounded_and_forgets_only_what_a_new_key_would_have():
    now = [0.0]
    rl = RateLimiter(per_minute=60, burst=2, clock=lambda: now[0], max_keys=100)
    for i in range(99):                           # a client with many addresses
        rl.check(f"k{i}")
    now[0] = 0.1
    rl.check("spent"), rl.check("spent")
    now[0] = 0.2
    rl.check("new")                               # 101 keys: none refilled, the older half goes
    assert 50 <= len(rl._buckets) <= 100
    assert rl.check("spent") > 0                  # the recent ones stay, spent as they were
    now[0] = 10.0                                 # every bucket refills: forgetting them changes nothing
    for i in range(100, 200):
        rl.check(f"k{i}")
    assert len(rl._buckets) <= 100 and rl.check("spent") == 0


def test_blob_store_is_content_addressed(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    d = store.put(b"hello")
    assert store.put(b"hello") == d and store.get(d) == b"hello" and store.exists(d)
    assert store.path(d).parent.name == d[:2]
    with pytest.raises(ValueError):
        store.path("../../etc/passwd")


def test_migrations_upgrade_downgrade_idempotent(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrate(engine)
    migrate(engine)                                 # second start: nothing to do
    tables = table_names(engine)
    assert {"devices", "versions", "rounds", "updates", "evaluations", "decisions"} <= tables
    downgrade(engine)
    assert table_names(engine) == {"alembic_version"}
    engine.dispose()
