"""The coordinator's command line as an operator meets it: only `init` creates a data dir, user
errors exit 2 on one line, --version, defaults in --help, presets, and the round schedule."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from coordinator.config import ConfigError, load_config
from coordinator.schedule import next_round_due
from protocol import __version__

ROOT = Path(__file__).resolve().parents[2]


def coord(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDKEYS_")} | {"PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "coordinator", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.mark.parametrize("command", [["status"], ["serve", "--port", "1"], ["create-enrollment-key"],
                                     ["admin-token"], ["import-version", "x"]])
def test_a_mistyped_data_dir_is_refused_not_created(tmp_path, command):
    typo = tmp_path / "coord-typo"
    r = coord(command[0], "--data-dir", str(typo), *command[1:])
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a coordinator data directory" in lines[0] and "init" in lines[0], lines
    assert not typo.exists()      # no new signing key, admin token or database


def test_ctrl_c_in_an_admin_command_is_one_line(tmp_path, monkeypatch, capsys):
    """Ctrl-C during an admin command (a long import-version) printed Python's traceback."""
    import coordinator.__main__ as cli

    d = tmp_path / "coord"
    assert coord("init", "--data-dir", str(d)).returncode == 0

    def interrupted(*_a):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_admin", interrupted)
    assert cli.main(["status", "--data-dir", str(d)]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "interrupted"


@pytest.mark.parametrize("name", ["q?mark", "pct%41", "hash#1"])
def test_a_data_dir_name_a_url_would_misread_holds_its_own_database(tmp_path, name):
    """The SQLite URL was the path pasted in: "q?mark" made the database a file "q" beside the
    directory (outside its backups), and "pct%41" failed in a directory named "pctA"."""
    d = tmp_path / name
    r = coord("init", "--data-dir", str(d))
    assert r.returncode == 0, r.stderr
    assert (d / "coordinator.db").is_file() and sorted(p.name for p in tmp_path.iterdir()) == [name]
    assert coord("status", "--data-dir", str(d)).returncode == 0


@pytest.mark.parametrize("url,says", [("postgres://fk@127.0.0.1:1/fedkeys", "write postgresql://"),
                                      ("sqlite://", "in-memory"), ("sqlite:///:memory:", "in-memory")])
def test_a_database_url_that_cannot_work_is_told_why_at_init(tmp_path, url, says):
    """postgres:// was "a postgres database; this coordinator runs on ... PostgreSQL"; an in-memory
    SQLite database was initialised, and every later command then said to run init."""
    r = coord("init", "--data-dir", str(tmp_path / "c"), "--database-url", url)
    assert r.returncode == 2 and says in r.stderr, r.stderr


def test_a_host_of_no_machine_is_a_user_error(tmp_path):
    """`serve --host 256.1.1.1` said why in one line but exited 1, as for a failure of the machine."""
    d = tmp_path / "c"
    assert coord("init", "--data-dir", str(d)).returncode == 0
    r = coord("serve", "--data-dir", str(d), "--host", "256.1.1.1", "--port", "18999")
    assert r.returncode == 2 and "--host must be an address of this machine" in r.stderr, r.stderr


def test_a_version_directory_without_its_tokenizer_is_refused_as_such(tmp_path):
    """import-version of a folder missing tokenizer.model printed a bare "[Errno 2] ..." and exited 1."""
    from tests.helpers.coordinator_fakes import make_version

    d = tmp_path / "c"
    assert coord("init", "--data-dir", str(d)).returncode == 0
    make_version(tmp_path / "v0")
    (tmp_path / "v0" / "tokenizer.model").unlink()
    r = coord("import-version", "--data-dir", str(d), str(tmp_path / "v0"))
    assert r.returncode == 2 and "lacks tokenizer.model" in r.stderr, r.stderr


def test_init_names_where_the_admin_token_is(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDKEYS_")} | {
        "PYTHONPATH": str(ROOT), "FEDKEYS_COORDINATOR_ADMIN_TOKEN": "a-token-of-twenty-chars"}
    r = subprocess.run([sys.executable, "-m", "coordinator", "init", "--data-dir", str(tmp_path / "c")], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=120, check=False)
    said = json.loads(r.stdout)
    assert "admin_token_file" not in said and not (tmp_path / "c" / "admin_token").exists(), said


def test_init_creates_and_then_every_command_accepts_it(tmp_path):
    d = tmp_path / "coord"
    assert coord("init", "--data-dir", str(d)).returncode == 0
    assert (d / "signing_key.pem").is_file() and (d / "admin_token").is_file()
    r = coord("status", "--data-dir", str(d))
    assert r.returncode == 0 and json.loads(r.stdout)["stable_version_id"] is None
    # A non-tty stderr gets JSON lines (one format per deployable; text on a terminal).
    for line in r.stderr.strip().splitlines():
        assert json.loads(line)["level"]


def test_a_data_dir_and_another_coordinators_database_are_refused_together(tmp_path):
    """The database's versions were signed with its own data directory's key and their weights
    are in its blobs: paired with another data directory, devices would fail every signature
    check and downloads would be 500s. Both ways round are refused on one line; each pair works."""
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        assert coord("init", "--data-dir", str(d)).returncode == 0, d
    for d, other in ((b, a), (a, b)):
        r = coord("status", "--data-dir", str(d), "--database-url", f"sqlite:///{other / 'coordinator.db'}")
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, r.stderr
        assert f"the data directory {d} does not belong to this database" in lines[0], lines
    assert coord("status", "--data-dir", str(a)).returncode == 0
    # A new folder's init for a database that has its own data directory: refused before it
    # writes a key and a token into the folder (they were left behind)
    r = coord("init", "--data-dir", str(tmp_path / "new"), "--database-url", f"sqlite:///{a / 'coordinator.db'}")
    assert r.returncode == 2 and "belongs to another data directory" in r.stderr, r.stderr
    assert not (tmp_path / "new" / "signing_key.pem").exists() and not (tmp_path / "new" / "admin_token").exists()


@pytest.mark.parametrize("damage,needle", [
    (("signing_key.pem", b"garbage\n"), "signing_key.pem is not a readable private key"),
    (("admin_token", b"\xff\xfe"), "admin_token is not a text token"),
])
def test_a_damaged_secret_in_the_data_dir_is_said_on_one_line(tmp_path, damage, needle):
    d = tmp_path / "coord"
    assert coord("init", "--data-dir", str(d)).returncode == 0
    name, data = damage
    (d / name).write_bytes(data)
    r = coord("status", "--data-dir", str(d))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr


def test_a_short_admin_token_is_not_served_but_admin_commands_still_run(tmp_path):
    d = tmp_path / "coord"
    assert coord("init", "--data-dir", str(d)).returncode == 0
    for args, where in ((["--set", "admin_token=hunter2"], "admin_token must be at least 16 characters"),
                        ([], "admin_token must be at least 16 characters")):
        if not args:
            (d / "admin_token").write_text("hunter2\n")     # written there by hand
        r = coord("serve", "--data-dir", str(d), "--port", "1", *args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and where in lines[0], r.stderr
        assert "hunter2" not in r.stderr                    # the error never echoes the secret
        # An operator replacing a weak token can still act: admin commands read the database.
        assert coord("status", "--data-dir", str(d), *args).returncode == 0
    # Tokens a header carries differently by client: served before, and no one could log in.
    for token in ("  padded-admin-token-123  ", "token-\u20acuro-1234567890"):
        r = coord("serve", "--data-dir", str(d), "--port", "1", "--set", f"admin_token={token}")
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and "printable Latin-1" in lines[0], r.stderr


def test_list_commands_print_a_table_on_a_terminal_and_json_when_piped(tmp_path):
    import pty

    d = tmp_path / "coord"
    assert coord("init", "--data-dir", str(d)).returncode == 0
    assert coord("create-enrollment-key", "--data-dir", str(d), "--label", "lab-7").returncode == 0
    piped = coord("enrollment-keys", "--data-dir", str(d))
    assert json.loads(piped.stdout)[0]["label"] == "lab-7"            # scripts keep their JSON
    table = coord("enrollment-keys", "--data-dir", str(d), "--format", "table").stdout.splitlines()
    assert table[0].split()[:3] == ["id", "label", "uses"] and table[1].split()[:3] == ["1", "lab-7", "100"]
    assert coord("versions", "--data-dir", str(d), "--format", "table").stdout.strip() == "(none)"
    # On a terminal (auto): the table.
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDKEYS_")} | {"PYTHONPATH": str(ROOT)}
    with subprocess.Popen([sys.executable, "-m", "coordinator", "enrollment-keys", "--data-dir", str(d)], cwd=ROOT,
                          env=env, stdout=follower, stderr=subprocess.DEVNULL) as proc:
        os.close(follower)
        out = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:      # the terminal's other end closed: the command is done
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(60) == 0
    os.close(leader)
    lines = out.decode().splitlines()
    assert lines[0].split()[:2] == ["id", "label"] and "lab-7" in lines[1], lines


def test_list_tables_show_what_the_json_can_hold():
    from coordinator.listing import COLUMNS, table

    version = {"version_id": "v3", "status": "retired", "parent_id": "v2", "round_id": 7, "epsilon": "inf",
               "canary_reports": 2, "created_at": "2026-12-04T23:22:48.474680Z",
               "decisions": [{"action": "reject", "reason": "x" * 200}]}
    rows = table([version, version | {"epsilon": 1.23456, "decisions": []}], COLUMNS["versions"]).splitlines()
    assert rows[1].split()[:7] == ["v3", "retired", "v2", "7", "inf", "2", "2026-12-04"]   # a round without noise
    assert rows[2].split()[4] == "1.23" and rows[1].endswith("x…") and len(rows[1]) < 160
    key = {"id": 1, "label": "", "uses_left": None, "revoked": True, "devices": 3, "devices_revoked": 3,
           "expires_at": None}
    assert table([key], COLUMNS["enrollment-keys"]).splitlines()[1].split() == ["1", "unlimited", "yes", "3", "(3)"]


def test_version_and_defaults_in_help():
    r = coord("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"python -m coordinator {__version__}"
    h = coord("start-round", "--help").stdout
    flat = " ".join(h.split())
    # the setting as the service recorded it (admin commands read it from the database), not only 100
    assert "(default: setting goal_count, as the service recorded it; built in: 100)" in flat
    assert "(default: ./coordinator-data)" in flat
    assert "0.0.0.0 for a LAN" in coord("serve", "--help").stdout.replace("\n", " ").replace("  ", " ")


def test_small_profile_sits_under_file_env_and_flags(tmp_path):
    cfg = load_config(environ={}, flags={"profile": "small"})
    assert (cfg.goal_count, cfg.min_count, cfg.canary_min_reports, cfg.round_interval_s) == (1, 1, 1, 5.0)
    cfg = load_config(environ={"FEDKEYS_COORDINATOR_CANARY_MIN_REPORTS": "3"}, flags={"profile": "small"})
    assert cfg.canary_min_reports == 3 and cfg.goal_count == 1
    with pytest.raises(ConfigError, match="unknown profile"):
        load_config(environ={}, flags={"profile": "huge"})
    assert load_config(environ={}).round_interval_s == 0.0          # no schedule unless configured


@pytest.mark.parametrize("setting, value, says", [
    ("adam_epsilon", "0", "adam_epsilon must be > 0"),          # was taken: every FedAdam round failed "not finite"
    ("adam_beta2", "-1", "adam_beta1 and adam_beta2 must be in [0, 1)"),
    ("server_momentum", "1", "server_momentum must be in [0, 1)"),   # was "bad server optimizer settings"
    ("server_learning_rate", "0", "server_learning_rate must be > 0"),
    ("canary_tolerance", "-0.1", "canary_tolerance must be >= 0"),   # was "bad canary settings"
    ("canary_min_reports", "0", "canary_min_reports must be >= 1"),
])
def test_a_bad_setting_is_refused_by_its_name(setting, value, says):
    with pytest.raises(ConfigError, match=re.escape(says)):
        load_config(environ={f"FEDKEYS_COORDINATOR_{setting.upper()}": value})


def test_next_round_schedule():
    t = datetime(2026, 1, 1, 12, 0, 0)
    base = dict(interval_s=60, last_closed_at=t, round_open=False, has_stable=True, candidate_pending=False)
    assert not next_round_due(t + timedelta(seconds=59), **base)
    assert next_round_due(t + timedelta(seconds=60), **base)
    for blocker in ({"round_open": True}, {"candidate_pending": True}, {"has_stable": False},
                    {"interval_s": 0}, {"last_closed_at": None}):
        assert not next_round_due(t + timedelta(hours=1), **(base | blocker)), blocker


def test_every_task_names_the_channel_of_the_version_to_use(served):
    from protocol import wire
    from tests.helpers.coordinator_fakes import FakeDevice

    dev = FakeDevice(served.url, served.coord.create_enrollment_key())
    task = dev.checkin()                                  # nothing to do: come_back, still says stable
    assert (task.kind, task.use_version_id, task.use_channel) == (wire.TASK_COME_BACK, "v0000", "stable")
    served.coord.start_round()
    assert dev.checkin().use_channel == "stable"


def test_gunicorn_entry_point_refuses_a_mistyped_data_dir(tmp_path, monkeypatch):
    """gunicorn calls create_app() with no argument (settings from the environment): a typo in
    the data directory must not mint a new coordinator there either."""
    from coordinator.app import create_app
    from coordinator.config import ENV_PREFIX, ConfigError

    typo = tmp_path / "coord-typo"
    for k in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(k)
    monkeypatch.setenv(f"{ENV_PREFIX}DATA_DIR", str(typo))
    with pytest.raises(ConfigError, match="not a coordinator data directory"):
        create_app()
    assert not typo.exists()


def test_gunicorn_entry_point_refuses_a_database_init_never_made(tmp_path, monkeypatch):
    """A data directory whose database is elsewhere, served without its URL (a line lost from
    coordinator.env): `serve` refused, gunicorn's create_app() created and served a new, empty
    SQLite database there, so every enrolled device was told to enroll again."""
    from coordinator.__main__ import main as coordinator_main
    from coordinator.app import create_app
    from coordinator.config import ENV_PREFIX, ConfigError

    d = tmp_path / "coord"
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    assert coordinator_main(["init", "--data-dir", str(d), "--database-url", elsewhere]) == 0
    for k in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(k)
    monkeypatch.setenv(f"{ENV_PREFIX}DATA_DIR", str(d))   # and no DATABASE_URL: the default in the data dir
    with pytest.raises(ConfigError, match="no coordinator database at sqlite:///.*coordinator.db"):
        create_app()
    assert not (d / "coordinator.db").exists()


def test_a_data_directory_older_than_its_database_is_refused_at_start(tmp_path):
    """Restored from an earlier backup than the database, the data directory holds the right key
    but not the newer versions' files: the service started and answered each download with a 500.
    A damaged file (truncated) is refused the same way: it was served, and every device refused it
    while the service logged nothing."""
    from coordinator.app import create_app
    from coordinator.config import ConfigError
    from tests.helpers.coordinator_fakes import make_config, make_version, serve

    conf = make_config(tmp_path)
    with serve(conf) as s:
        make_version(tmp_path / "v0")
        vid = s.coord.import_version(tmp_path / "v0")
        from protocol.artifact import GRAPH, sha256_file

        blob = s.coord.blobs.path(sha256_file(tmp_path / "v0" / GRAPH))
    data = blob.read_bytes()
    blob.write_bytes(data[: len(data) // 2])   # truncated (a disk error): served, and refused by every device
    with pytest.raises(ConfigError, match=f"lacks the files of version\\(s\\) {vid} that devices are sent, "
                                          "or holds them damaged"):
        create_app(conf)
    blob.unlink()   # as if the data directory came from a backup taken before the import
    with pytest.raises(ConfigError, match=f"lacks the files of version\\(s\\) {vid} that devices are sent"):
        create_app(conf)
    blob.write_bytes(data)
    create_app(conf).extensions["fedkeys"].close()   # serves again


def test_a_version_that_lost_its_files_gets_them_back_from_its_folder(tmp_path):
    """The only stable version lost a file: serve refused, reject and rollback cannot act on the
    one stable version, and importing its folder again answered "already imported".
    Importing it again now puts back what was lost or damaged, and serve starts; a folder of the
    same id with other files is refused, and an intact version is "already imported" as before."""
    import json as _json

    from coordinator.app import create_app
    from coordinator.config import ConfigError
    from coordinator.errors import ApiError
    from protocol.artifact import TOKENIZER, sha256_bytes, sha256_file
    from tests.helpers.coordinator_fakes import make_config, make_version, serve

    conf = make_config(tmp_path)
    with serve(conf) as s:
        make_version(tmp_path / "v0")
        vid = s.coord.import_version(tmp_path / "v0")
        q8 = _json.loads(s.coord.export_version(vid, tmp_path / "out").joinpath("manifest.json").read_text())[
            "weights_q8_sha256"]
        tok = s.coord.blobs.path(sha256_file(tmp_path / "v0" / TOKENIZER))
    tok.unlink()
    s.coord.blobs.path(q8).write_bytes(b"damaged")
    with pytest.raises(ConfigError, match="put its files back with import-version"):
        create_app(conf)
    from coordinator.service import Coordinator
    c = Coordinator(conf)
    try:
        assert c.import_version(tmp_path / "v0") == vid
        assert tok.read_bytes() == (tmp_path / "v0" / TOKENIZER).read_bytes()
        assert sha256_bytes(c.blobs.get(q8)) == q8                  # the download form, rebuilt
        with pytest.raises(ApiError, match=f"version {vid} already imported"):
            c.import_version(tmp_path / "v0")
        make_version(tmp_path / "other", vid, seed=3)
        with pytest.raises(ApiError, match="with other files"):
            c.import_version(tmp_path / "other")
    finally:
        c.close()
    create_app(conf).extensions["fedkeys"].close()   # serves again


def test_a_round_and_a_pending_candidate_that_will_meet_are_named(tmp_path):
    """The version a round makes replaces a candidate still in its canary: start-round while one
    is pending, and import-version while a round is open, gave no word of it; nor did
    import-version of the candidate it set aside."""
    import json as _json

    from tests.helpers.coordinator_fakes import make_version

    d = tmp_path / "c"
    assert coord("init", "--data-dir", str(d)).returncode == 0
    make_version(tmp_path / "v0")
    assert coord("import-version", "--data-dir", str(d), str(tmp_path / "v0")).returncode == 0
    for vid in ("v1", "v2"):
        make_version(tmp_path / vid, vid, seed=1)
        doc = _json.loads((tmp_path / vid / "manifest.json").read_text())
        (tmp_path / vid / "manifest.json").write_text(_json.dumps(doc | {"parent": "v0000"}))
    r = coord("import-version", "--data-dir", str(d), str(tmp_path / "v1"))
    assert r.returncode == 0 and "note:" not in r.stderr, r.stderr          # no round open: nothing to say
    r = coord("start-round", "--data-dir", str(d))
    assert r.returncode == 0 and "note: candidate v1 is still in its canary" in r.stderr, r.stderr
    r = coord("import-version", "--data-dir", str(d), str(tmp_path / "v2"))
    assert r.returncode == 0 and "note: round 1 is open; the version it makes replaces candidate v2" in r.stderr
    # the candidate it replaced was set aside without a word
    assert "note: candidate v1, still in its canary, was set aside for v2" in r.stderr, r.stderr


def test_admin_commands_that_change_nothing_say_so_and_a_round_left_open_exits_3(tmp_path):
    """close-round before its deadline without its goal exited 0 with the round still open (now 3:
    1 is an internal error, 2 the operator's input);
    close-round of a finished round, unpin with nothing pinned and a second pin exited 0 saying
    nothing."""
    from tests.helpers.coordinator_fakes import make_version

    d = tmp_path / "c"
    assert coord("init", "--data-dir", str(d)).returncode == 0
    make_version(tmp_path / "v0")
    assert coord("import-version", "--data-dir", str(d), str(tmp_path / "v0")).returncode == 0
    assert coord("start-round", "--data-dir", str(d)).returncode == 0
    r = coord("close-round", "--data-dir", str(d), "1")
    assert r.returncode == 3 and "round 1 left open" in r.stderr, r.stderr
    r = coord("close-round", "--data-dir", str(d), "1", "--force")      # no update: failed, as asked
    assert r.returncode == 0 and '"status": "failed"' in r.stdout, r.stdout + r.stderr
    r = coord("close-round", "--data-dir", str(d), "1")
    assert r.returncode == 0 and "note: round 1 was already failed: nothing to close" in r.stderr, r.stderr
    r = coord("unpin", "--data-dir", str(d), "v0000")
    assert r.returncode == 0 and "note: nothing was pinned" in r.stderr, r.stderr
    r = coord("pin", "--data-dir", str(d), "v0000")
    assert r.returncode == 0 and "note:" not in r.stderr, r.stderr
    r = coord("pin", "--data-dir", str(d), "v0000")
    assert r.returncode == 0 and "note: v0000 was pinned already: nothing changed" in r.stderr, r.stderr
