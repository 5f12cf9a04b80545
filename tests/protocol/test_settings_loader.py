"""protocol.settings.load_settings: the one loader both deployables use (issue 13)."""

from dataclasses import dataclass

import pytest

from coordinator.config import Config, ConfigError, load_config
from edge_runtime.config import ConfigError as EdgeConfigError
from edge_runtime.config import load_config as load_edge_config
from protocol.settings import load_settings


class Oops(ValueError):
    pass


@dataclass(frozen=True)
class Toy:
    name: str = "a"
    size: int = 1
    on: bool = False


def test_file_then_environment_then_flags(tmp_path):
    f = tmp_path / "toy.toml"
    f.write_text('name = "file"\nsize = 2\non = true\n')
    got = load_settings(Toy, Oops, env_prefix="TOY_", config_file=str(f), environ={"TOY_SIZE": "3"},
                        flags={"name": "flag", "size": None})
    assert got == {"name": "flag", "size": 3, "on": True}


def test_the_file_may_be_named_by_the_environment_and_json_by_its_suffix(tmp_path):
    f = tmp_path / "toy.json"
    f.write_text('{"size": 5}')
    assert load_settings(Toy, Oops, env_prefix="TOY_", environ={"TOY_CONFIG": str(f)}) == {"size": 5}


@pytest.mark.parametrize(("kw", "match"), [
    ({"environ": {"TOY_COLOUR": "blue"}}, r"environment: unknown setting\(s\) \['colour'\]"),
    ({"flags": {"size": "big"}}, "flags: size='big' is not a valid int"),
    ({"config_file": "/nonexistent/toy.toml"}, "cannot read config file"),
])
def test_refusals_raise_the_callers_error(kw, match):
    with pytest.raises(Oops, match=match):
        load_settings(Toy, Oops, env_prefix="TOY_", **{"environ": {}, **kw})


def test_json_only_reads_any_name_as_json(tmp_path):
    f = tmp_path / "device.conf"
    f.write_text("size = 2")  # TOML, but this caller's files are JSON
    with pytest.raises(Oops, match="not valid JSON"):
        load_settings(Toy, Oops, env_prefix="TOY_", config_file=str(f), environ={}, toml=False)


def test_both_deployables_load_through_it(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('profile = "small"\ngoal_count = 3\n')
    c = load_config(config_file=str(f), environ={"FEDKEYS_COORDINATOR_PORT": "9000"})
    assert (c.goal_count, c.port, c.round_interval_s) == (3, 9000, 5.0)   # profile under file and env
    assert isinstance(c, Config)
    with pytest.raises(ConfigError, match="unknown profile"):
        load_config(environ={"FEDKEYS_COORDINATOR_PROFILE": "huge"})
    e = tmp_path / "edge.json"
    e.write_text('{"min_idle_s": 5}')
    assert load_edge_config(config_file=str(e), environ={"FEDKEYS_EDGE_JITTER": "0.2"}).jitter == 0.2
    with pytest.raises(EdgeConfigError, match="unknown setting"):
        load_edge_config(environ={"FEDKEYS_EDGE_NOPE": "1"})


def test_a_setting_a_release_removed_is_said_to_be_removed_not_unknown():
    """An upgrade probe: FEDKEYS_COORDINATOR_POPULATION_SIZE, left in an environment file from a
    release that read it, stopped the service with "unknown setting(s) ['population_size']", as if
    it were a typo, with no word that it had been removed or what to do."""
    with pytest.raises(ConfigError, match=r"population_size: removed on 6 December 2026 .*, delete it"):
        load_config(environ={"FEDKEYS_COORDINATOR_POPULATION_SIZE": "1000"})
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['colour'\]$"):
        load_config(environ={"FEDKEYS_COORDINATOR_COLOUR": "blue"})
