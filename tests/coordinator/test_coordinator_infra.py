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


def test_a_database_from_when_secure_aggregation_was_migration_0002_upgrades(tmp_path):
    """Main shipped secure aggregation as migration 0002 (2026-11-30, c1179a8..b58b8f1); a merge
    renumbered it 0004 and gave 0002 to enrollment-key expiry. A database from that window (at
    '0002', with the secure-aggregation tables) failed every command after an upgrade with
    "table secagg_rounds already exists", its keys never getting `expires_at`."""
    import importlib

    from alembic.migration import MigrationContext
    from alembic.operations import Operations
    from sqlalchemy import inspect, text

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    migrate(engine, "0001")
    old_0002 = importlib.import_module("coordinator.migrations.versions.0004_secagg")   # the same tables
    now = "2026-11-30 12:00:00"
    with engine.begin() as conn:
        with Operations.context(MigrationContext.configure(conn)):
            old_0002.upgrade()
        conn.execute(text("UPDATE alembic_version SET version_num = '0002'"))
        conn.execute(text("INSERT INTO versions (id, seq, status, manifest_json, weights_sha256, graph_sha256, "
                          "tokenizer_sha256, epsilon, delta, privacy_json, created_at) VALUES ('v0000', 1, 'stable', "
                          f"'{{}}', 'w', 'g', 't', 0, 1e-6, '{{}}', '{now}')"))
        conn.execute(text("INSERT INTO rounds (id, base_version_id, status, plan_json, goal_count, max_selected, "
                          "min_count, population, deadline, created_at, reason) VALUES (1, 'v0000', 'done', '{}', "
                          f"3, 3, 2, 0, '{now}', '{now}', '')"))
        conn.execute(text("INSERT INTO secagg_rounds (round_id, phase, phase_started_at, params_json, survivors, "
                          f"stats_json) VALUES (1, 'summed', '{now}', '{{}}', 3, '{{}}')"))
    migrate(engine)
    found = inspect(engine)
    assert "expires_at" in {c["name"] for c in found.get_columns("enrollment_keys")}
    assert "selection_ends_at" in {c["name"] for c in found.get_columns("rounds")}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0011"
        assert conn.execute(text("SELECT survivors FROM secagg_rounds WHERE round_id = 1")).scalar() == 3
        assert conn.execute(text("PRAGMA foreign_key_check")).all() == []
    migrate(engine)   # and a second start has nothing to do
    engine.dispose()


def test_versions_made_before_each_round_took_its_draws_rate_are_accounted_at_q_1(tmp_path):
    """Rounds before migration 0005 recorded q = accepted / a population that only grew: a
    version trained from one of those passed the too-small q on. The upgrade takes their q as 1
    and recomputes their sampled epsilon; a drawn open round's old population reads q = 1 too."""
    import json

    from sqlalchemy import text

    from coordinator import privacy

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    migrate(engine, "0004")
    now = "2026-12-01 12:00:00"
    old = privacy.summarize([privacy.RoundPrivacy(0.01, 1.0)] * 3, 1e-6) | {"history": [[0.01, 1.0]] * 3}   # as then
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO versions (id, seq, status, manifest_json, weights_sha256, graph_sha256, "
                          "tokenizer_sha256, epsilon, delta, privacy_json, created_at) VALUES ('v0003', 1, 'stable', "
                          f"'{{}}', 'w', 'g', 't', :e, 1e-6, :p, '{now}')"),
                     {"e": old["epsilon"], "p": json.dumps(old)})
        conn.execute(text("INSERT INTO rounds (id, base_version_id, status, plan_json, goal_count, max_selected, "
                          "min_count, population, deadline, created_at, reason, drawn_at) VALUES (4, 'v0003', 'open', "
                          f"'{{}}', 3, 3, 2, 1000000, '{now}', '{now}', '', '{now}')"))
    migrate(engine)
    with engine.connect() as conn:
        raw, eps = conn.execute(text("SELECT privacy_json, epsilon FROM versions")).one()
        population = conn.execute(text("SELECT population FROM rounds")).scalar()
        assert conn.execute(text("SELECT files_pruned FROM versions")).scalar() in (0, False)   # 0006: files kept
        local = conn.execute(text("SELECT epsilon_local FROM versions")).scalar()   # 0007: from the record
    record = json.loads(raw)
    assert local == pytest.approx(record["epsilon_local"])
    assert record["history"] == [[1.0, 1.0, 3]] and population == 0   # 0008: counted
    assert eps == record["epsilon"] == record["epsilon_local"] == pytest.approx(old["epsilon_local"])
    assert eps > 5 * old["epsilon"]
    engine.dispose()


def test_privacy_histories_are_counted_so_records_do_not_grow_with_the_rounds_squared(tmp_path):
    """Every version's record holds its lineage's whole history, one [q, sigma] a round: the
    database grew with the rounds squared (about 1 GB after 10,000 rounds). Migration 0008 counts
    each distinct release once, with the same epsilons; its downgrade writes the rounds out again."""
    from sqlalchemy import text

    from coordinator import privacy

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    migrate(engine, "0007")
    rounds = [privacy.RoundPrivacy(0.5, 1.0)] * 600 + [privacy.RoundPrivacy(0.25, 1.0)] * 400
    old = privacy.summarize(rounds, 1e-6) | {"history": [[r.sampling_rate, r.noise_multiplier] for r in rounds]}
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO versions (id, seq, status, manifest_json, weights_sha256, graph_sha256, "
                          "tokenizer_sha256, epsilon, delta, privacy_json, created_at) VALUES ('v1000', 1, 'stable', "
                          "'{}', 'w', 'g', 't', :e, 1e-6, :p, '2026-12-01 12:00:00')"),
                     {"e": old["epsilon"], "p": json.dumps(old)})
    migrate(engine)
    with engine.connect() as conn:
        raw = conn.execute(text("SELECT privacy_json FROM versions")).scalar()
    record = json.loads(raw)
    assert record["history"] == [[0.25, 1.0, 400], [0.5, 1.0, 600]] and len(raw) < len(json.dumps(old)) / 20
    assert privacy.epsilon(privacy.counted(record["history"]), 1e-6) == pytest.approx(old["epsilon"])
    assert record["epsilon"] == old["epsilon"] and record["rounds"] == 1000
    migrate(engine)   # a second start has nothing to do
    downgrade(engine, "0007")
    with engine.connect() as conn:
        back = json.loads(conn.execute(text("SELECT privacy_json FROM versions")).scalar())
    assert sorted(back["history"]) == sorted(old["history"])   # what the release before reads
    engine.dispose()


def test_a_database_a_newer_release_upgraded_is_refused_in_one_line(tmp_path, capsys):
    """Rolling the software back onto a database a newer release had upgraded printed alembic's
    traceback ("Can't locate revision identified by '0005'") from every command, with no word of
    what happened."""
    from sqlalchemy import text

    from coordinator.__main__ import main as coordinator_main

    url = f"sqlite:///{tmp_path / 'newer.db'}"
    assert coordinator_main(["init", "--data-dir", str(tmp_path / "data"), "--database-url", url]) == 0
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0999'"))
    engine.dispose()
    assert coordinator_main(["status", "--data-dir", str(tmp_path / "data"), "--database-url", url]) == 1
    err = capsys.readouterr().err
    assert "schema revision '0999'" in err and "newer FedKeys release" in err and "Traceback" not in err


def test_a_rounds_sampling_rate_is_accounted_rounded_up_so_records_stay_short():
    """Each draw of a fleet had its own rate, so a lineage's record held one entry a round and its
    epsilon, recomposed at every close inside the lock, cost 25 ms an entry."""
    import random
    from collections import Counter
    from datetime import datetime

    from coordinator import privacy
    from coordinator.models import Round
    from coordinator.queries import sampling_rate

    assert [privacy.rate_bound(q) for q in (0.25, 0.2563, 1 / 3, 0.01234, 0.999, 1.0)] == \
        [0.25, 0.26, 0.34, 0.013, 1.0, 1.0]
    rng = random.Random(0)
    exact, accounted = Counter(), Counter()
    for _ in range(300):     # 300 rounds of 100 slots, each over its own draw of 300 to 500 devices
        r = Round(max_selected=100, population=rng.randint(300, 500), drawn_at=datetime(2026, 12, 1))
        q = sampling_rate(r)
        assert 100 / r.population <= q <= 1.1 * 100 / r.population   # an upper bound, at most 10% over
        exact[privacy.RoundPrivacy(100 / r.population, 1.0)] += 1
        accounted[privacy.RoundPrivacy(q, 1.0)] += 1
    assert len(privacy.entries(accounted)) <= 15 and len(exact) > 100
    # a bound even a hair above a two-digit rate (populations of millions), and for a lineage
    # recorded before the rounding, whose per-round entries are folded at its next close
    for m, n in ((44307, 4027909), (3474802, 3509901)):
        assert privacy.rate_bound(m / n) >= m / n
    assert privacy.bounded(exact) == accounted
    assert privacy.epsilon(exact, 1e-6) <= privacy.epsilon(accounted, 1e-6) <= 1.1 * privacy.epsilon(exact, 1e-6)
