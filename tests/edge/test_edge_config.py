"""The edge config: defaults < JSON file < FEDKEYS_EDGE_* < flags; unknown keys and bad values are errors."""

from __future__ import annotations

import json

import pytest

from edge_runtime.config import ConfigError, EdgeConfig, load_config


def test_layers_override_in_order(tmp_path):
    f = tmp_path / "edge.json"
    f.write_text(json.dumps({"min_idle_s": 60, "jitter": 0.2, "log_level": "DEBUG"}))
    env = {"FEDKEYS_EDGE_JITTER": "0.3", "FEDKEYS_EDGE_REQUIRE_POWER": "false", "OTHER": "x"}
    cfg = load_config(config_file=str(f), environ=env, flags={"jitter": 0.4, "data_dir": None})
    assert cfg.min_idle_s == 60.0 and cfg.log_level == "DEBUG"   # file
    assert cfg.require_power is False                           # environment
    assert cfg.jitter == 0.4                                    # flag beats environment
    assert cfg.data_dir == ""                                   # None flags are "not given"
    assert load_config(environ={}) == EdgeConfig()


def test_config_file_from_environment(tmp_path):
    f = tmp_path / "edge.json"
    f.write_text(json.dumps({"eligibility": "override:eligible"}))
    cfg = load_config(environ={"FEDKEYS_EDGE_CONFIG": str(f)})
    assert cfg.override is True and EdgeConfig().override is None


@pytest.mark.parametrize("kw, msg", [
    ({"flags": {"bogus": 1}}, "unknown setting"),
    ({"environ": {"FEDKEYS_EDGE_NOPE": "1"}}, "unknown setting"),
    ({"flags": {"jitter": "abc"}}, "not a valid float"),
    ({"flags": {"require_power": "maybe"}}, "not a valid bool"),
    ({"flags": {"upload_attempts": True}}, "not a valid int"),
    ({"flags": {"eligibility": "sometimes"}}, "eligibility must be one of"),
    ({"flags": {"coordinator": "ftp://x"}}, "http"),
    ({"flags": {"coordinator": "http://[::1"}}, "with a host and a port in 1-65535, not 'http://\\[::1'"),
    ({"flags": {"coordinator": "http://127.0.0.1:99999"}}, "a port in 1-65535"),
    ({"flags": {"coordinator": "http://127.0.0.1:0"}}, "a port in 1-65535"),
    ({"flags": {"public_key": "abc"}}, "64 hex"),
    ({"flags": {"holdout_fraction": 1.5}}, "holdout_fraction"),
    ({"flags": {"min_wait_s": 10, "max_wait_s": 5}}, "min_wait_s"),
    ({"flags": {"http_timeout_s": float("inf")}}, "http_timeout_s must be > 0 and finite"),   # every call failed
    ({"flags": {"max_wait_s": float("inf")}}, "finite"),
    ({"flags": {"backoff_max_s": float("inf")}}, "finite"),
    # finite but past what a socket or a wait takes: every iteration failed, or the loop died of
    # an OverflowError traceback at its first backoff
    ({"flags": {"http_timeout_s": 1e300}}, "http_timeout_s must be > 0 and finite, at most a year"),
    ({"flags": {"max_wait_s": 1e10}}, "at most a year"),
    ({"flags": {"backoff_max_s": 1e10}}, "at most a year"),
])
def test_bad_settings_are_errors(kw, msg):
    kw.setdefault("environ", {})
    with pytest.raises(ConfigError, match=msg):
        load_config(**kw)


def test_bad_file_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(config_file=str(tmp_path / "missing.json"), environ={})
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        load_config(config_file=str(bad), environ={})
    bad.write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(config_file=str(bad), environ={})
    bad.write_text(json.dumps({"typo_setting": 1}))
    with pytest.raises(ConfigError, match="unknown setting"):
        load_config(config_file=str(bad), environ={})


def test_require_data_dir():
    with pytest.raises(ConfigError, match="data directory"):
        EdgeConfig().require_data_dir()


@pytest.mark.parametrize("command", [["status"], ["type", "--field-kind", "message", "hello there"], ["pause"],
                                     ["wipe"], ["run", "--once"], ["notices"]])
def test_device_commands_refuse_a_mistyped_data_dir(tmp_path, capsys, command):
    """Only `enroll` (and the stand-alone keyboard) may create a device directory: a typo in
    --data-dir must not start a new device (or cache text) somewhere nobody looks."""
    from edge_runtime.__main__ import main as cli_main

    typo = tmp_path / "dev1-typo"
    assert cli_main([command[0], "--data-dir", str(typo), *command[1:]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a device data directory" in err[0] and "enroll" in err[0], err
    assert not typo.exists()


@pytest.mark.parametrize("sub", ["", "dev"])
def test_a_data_dir_that_is_a_file_is_named_in_one_line(tmp_path, capsys, sub):
    from edge_runtime.__main__ import main as cli_main

    (tmp_path / "a-file").write_text("x")
    data_dir = tmp_path / "a-file" / sub if sub else tmp_path / "a-file"
    assert cli_main(["keyboard", "--data-dir", str(data_dir), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path / 'a-file'} is a file, not a folder"), err


@pytest.mark.parametrize("command", [["wipe"], ["pause"], ["status"]])
def test_device_commands_leave_a_directory_that_holds_no_device_alone(tmp_path, capsys, command):
    """An existing directory that is not a device's (a user's own folder given by mistake): `wipe`
    must not delete its `personal/` folder, and nothing may write a cache or models into it."""
    from edge_runtime.__main__ import main as cli_main

    (tmp_path / "personal").mkdir()
    (tmp_path / "personal" / "thesis.txt").write_text("years of work")
    assert cli_main([command[0], "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a device data directory" in err[0], err
    assert (tmp_path / "personal" / "thesis.txt").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["personal"]


def test_plain_http_to_another_machine_is_warned_about(monkeypatch, tmp_path, capsys):
    """Plans, rosters and the device's token are not signed or sealed above TLS: over plain http
    to another machine anyone on the network can act as the coordinator. Enroll
    and run say so on stderr; loopback and https say nothing."""
    from edge_runtime import __main__ as cli
    from edge_runtime import agent
    from edge_runtime.config import plain_http_warning

    for quiet in ("http://127.0.0.1:8400", "http://localhost:8400", "http://[::1]:8400", "https://10.0.0.2:8400",
                  "http://127.9.9.9"):
        assert plain_http_warning(quiet) is None, quiet
    for loud in ("http://10.0.0.2:8400", "http://coord.example", "http://[fd00::1]:8400"):
        assert "plain HTTP to another machine" in plain_http_warning(loud), loud

    def refused(cfg, key, force=False):
        raise agent.AgentError("the coordinator is out of reach")

    monkeypatch.setattr(agent, "enroll", refused)
    rc = cli.main(["enroll", "--data-dir", str(tmp_path / "d"), "--coordinator", "http://10.0.0.2:8400",
                   "--enrollment-key", "k" * 20])
    err = capsys.readouterr().err
    assert rc != 0 and "warning: http://10.0.0.2:8400 is plain HTTP" in err and "out of reach" in err, err


def test_an_unknown_interpreter_backend_is_a_settings_error_naming_the_choices():
    """FEDKEYS_INTERPRETER=bogus was read only where a task made an interpreter, and logged as
    "iteration failed: ValueError" (its message withheld): it is refused with
    the settings, in one line naming the backends."""
    from edge_runtime.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="unknown interpreter backend 'bogus'.*ai_edge_litert"):
        load_config(environ={"FEDKEYS_INTERPRETER": "bogus"})
    for ok in ("ai_edge_litert", "tflite_runtime", "tensorflow", ""):
        load_config(environ={"FEDKEYS_INTERPRETER": ok})


def test_keyboard_takes_the_port_flag_run_takes_too():
    """`keyboard` took --keyboard-host, as `run` does, but only --port for the port: `keyboard
    --keyboard-port 8760`, as docs/settings.md and `run` name it, was "unrecognized arguments"."""
    from edge_runtime.__main__ import build_parser

    for flag in ("--port", "--keyboard-port"):
        args = build_parser().parse_args(["keyboard", flag, "8760", "--keyboard-host", "127.0.0.1"])
        assert args.keyboard_port == 8760 and args.keyboard_host == "127.0.0.1", flag
    assert build_parser().parse_args(["run", "--keyboard-port", "8760"]).keyboard_port == 8760
