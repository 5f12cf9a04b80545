"""Every command line behaves alike: --version, defaults in --help, exit 2 on a user error."""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from protocol import __version__

REPO = Path(__file__).resolve().parents[2]
COMMANDS = ["coordinator", "edge_runtime", "tools.pretrain", "tools.evaluate", "tools.simulate", "tools.demo",
            "tools.bench", "tools.arm", "tools.settings_doc", "tools.ablation", "tools.add_words",
            "tools.secagg_bench", "tools.secagg_quality", "tools.prepare", "tools.rescore"]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDKEYS_")} | {"PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.mark.parametrize("module", COMMANDS)
def test_version_and_unknown_flag(module):
    v = _run(module, "--version")
    assert v.returncode == 0 and v.stdout.strip().endswith(__version__), v.stdout + v.stderr
    bad = _run(module, "--no-such-flag")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr


@pytest.mark.parametrize("args", [["tools.simulate", "--help"], ["tools.pretrain", "--help"],
                                  ["coordinator", "start-round", "--help"], ["edge_runtime", "run", "--help"]])
def test_help_shows_defaults(args):
    h = _run(*args)
    assert h.returncode == 0 and "(default:" in h.stdout, h.stdout


PARSERS = ["coordinator.__main__", "edge_runtime.__main__", "tools.pretrain", "tools.evaluate", "tools.simulate.cli",
           "tools.demo", "tools.bench.__main__", "tools.arm.__main__", "tools.ablation", "tools.add_words",
           "tools.prepare", "tools.rescore", "tools.proxy_ngram"]


def _parsers(parser: argparse.ArgumentParser, name: str):
    yield name, parser
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sub, p in a.choices.items():
                yield from _parsers(p, f"{name} {sub}")


@pytest.mark.parametrize("module", PARSERS)
def test_every_flag_with_a_default_shows_it_once(module):
    """The README's promise, flag by flag: argparse prints nothing for a flag without help text, and
    a help text that names its default must not get a second one."""
    from protocol.cli import HelpFormatter

    missing, twice = [], []
    for name, parser in _parsers(importlib.import_module(module).build_parser(), module):
        assert issubclass(parser.formatter_class, HelpFormatter), name    # subcommands too
        for action in parser._actions:
            d = action.default       # by identity: a default of 0 is a real one (`0 == False`)
            if not action.option_strings or d is None or d is False or d is argparse.SUPPRESS or d == []:
                continue
            fmt = parser._get_formatter()
            fmt.add_argument(action)
            text = fmt.format_help()
            n = text.count("(default")
            (missing if n == 0 else twice if n > 1 else []).append(f"{name} {action.option_strings[-1]}")
    assert not missing and not twice, (missing, twice)


BLOCK_EXTRAS = """
import importlib.abc, sys
class Slim(importlib.abc.MetaPathFinder):   # what `pip install fedkeys` (the device install) leaves out
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {"tensorflow", "tqdm", "rich", "matplotlib"}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name.split(".")[0])
sys.meta_path.insert(0, Slim())
"""


@pytest.mark.parametrize("script, args", [("pretrain", ["--proxy", "corpora/sotu.jsonl", "--out", "OUT"]),
                                          ("simulate", ["--help"])])
def test_console_scripts_on_the_slim_install_say_which_install_they_need(script, args, tmp_path):
    """`fedkeys-pretrain` / `fedkeys-simulate` from `pip install fedkeys`: one line and exit 2, no traceback."""
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    code = BLOCK_EXTRAS + (f"import sys; sys.argv = ['fedkeys-{script}', *{args!r}]\n"
                           f"from tools._cli import {script}\n{script}()")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                       check=False, env=os.environ | {"PYTHONPATH": str(REPO)})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "pip install 'fedkeys[full]'" in r.stderr and not (tmp_path / "out").exists()


COORDINATOR_EXTRA = {"flask", "werkzeug", "sqlalchemy", "alembic", "gunicorn", "prometheus_client", "psycopg",
                     "dp_accounting"}
BLOCK_COORDINATOR = f"""
import importlib.abc, runpy, sys
class Slim(importlib.abc.MetaPathFinder):   # `pip install fedkeys`: the device runtime, without [coordinator]
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {sorted(COORDINATOR_EXTRA)!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name.split(".")[0])
sys.meta_path.insert(0, Slim())
sys.argv = ["fedkeys-coordinator", *sys.argv[1:]]
runpy.run_module("coordinator", run_name="__main__", alter_sys=True)
"""


def test_the_coordinator_on_the_slim_install_says_which_install_it_needs(tmp_path):
    """`fedkeys-coordinator status` (and even `--version`) from `pip install fedkeys` ended in a
    ModuleNotFoundError traceback for sqlalchemy, raised as the command line module loaded, before
    the handler that names `pip install 'fedkeys[coordinator]'` could run."""
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", BLOCK_COORDINATOR, *args], cwd=REPO, capture_output=True,
                              text=True, timeout=120, check=False, env=os.environ | {"PYTHONPATH": str(REPO)})

    v = run("--version")
    assert v.returncode == 0 and v.stdout.strip().endswith(__version__), v.stdout + v.stderr
    h = run("--help")
    assert h.returncode == 0 and "usage:" in h.stdout, h.stderr
    assert _run("coordinator", "init", "--data-dir", str(tmp_path / "made")).returncode == 0   # the full install
    for args in (["status", "--data-dir", str(tmp_path / "made")], ["init", "--data-dir", str(tmp_path / "new")]):
        r = run(*args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1 and "pip install 'fedkeys[coordinator]'" in r.stderr, r.stderr


@pytest.mark.parametrize("module", ["coordinator", "edge_runtime"])
def test_the_deployables_end_quietly_when_the_reader_of_stdout_goes_away(tmp_path, module):
    """`python -m coordinator status | head -1` once printed 'error: [Errno 32] Broken pipe'."""
    if module == "coordinator":
        assert _run("coordinator", "init", "--data-dir", str(tmp_path)).returncode == 0
    else:
        from edge_runtime.cache import TextCache
        TextCache(tmp_path).close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDKEYS_")} | {"PYTHONPATH": str(REPO)}
    with subprocess.Popen([sys.executable, "-m", module, "status", "--data-dir", str(tmp_path)], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        proc.stdout.close()                             # before the child prints anything
        err = proc.stderr.read()
        assert proc.wait(timeout=120) == 141 and "Broken pipe" not in err and "Traceback" not in err, err


@pytest.mark.parametrize("args", [["coordinator", "pin", b"v\xff", "--data-dir", "{tmp}"],
                                  ["edge_runtime", "status", "--data-dir", b"{tmp}/d\xff"],
                                  ["tools.evaluate", "--model", "models/v0", "--corpus", b"c\xff.jsonl"]])
def test_an_argument_that_is_not_utf8_is_one_line_exit_2(args, tmp_path):
    """Python keeps such bytes as lone surrogates, which reached a database query or a file write
    and ended in a UnicodeEncodeError traceback (`pin $'v\\xff'`; a probe)."""
    argv = [a.replace("{tmp}", str(tmp_path)) if isinstance(a, str) else a.replace(b"{tmp}", os.fsencode(tmp_path))
            for a in args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDKEYS_")} | {"PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", *argv], cwd=REPO, env=env, capture_output=True, timeout=120,
                       check=False)
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode == 2 and "holds bytes that are not UTF-8" in err and "Traceback" not in err, err


@pytest.mark.parametrize("args", [["tools.evaluate", "--model", "models/v0"], ["tools.ablation"],
                                  ["tools.bench", "keystroke"]])
def test_a_base_ngram_the_user_names_must_be_one(args, tmp_path):
    """A mistyped --base-ngram was a warning, and the tool scored without one: figures 1.3 points of
    top-3 low. The device itself keeps typing without a base n-gram; a tool refuses."""
    (tmp_path / "notes.txt").write_text("not an n-gram")
    for bad, says in ((tmp_path / "nope.npz", "not found"), (tmp_path / "notes.txt", "is not a base n-gram"),
                      (tmp_path, "is a folder")):
        r = _run(*args, "--base-ngram", str(bad))
        assert r.returncode == 2 and says in r.stderr.strip().splitlines()[-1], r.stderr


def test_a_base_ngram_under_home_is_read_as_the_device_reads_it(tmp_path, monkeypatch):
    """`--base-ngram=~/n.npz` (no shell expansion after `=`) was refused as not found; the device's
    setting expands ~, and so does the tools' check now."""
    from edge_runtime.ngram import KneserNeyLM
    from tools._cli import base_ngram_arg

    KneserNeyLM.fit(["the cat sat on the mat"] * 3).save(tmp_path / "n.npz")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert base_ngram_arg("~/n.npz") == "~/n.npz"
    monkeypatch.setenv("FEDKEYS_BASE_NGRAM", "x")     # the old variable: its own message, not argparse's
    with pytest.raises(argparse.ArgumentTypeError, match="FEDKEYS_BASE_NGRAM is no longer read"):
        base_ngram_arg("~/n.npz")


def test_an_installed_console_script_names_itself(monkeypatch, capsys):
    """`fedkeys-coordinator --version` printed "python -m coordinator 0.1.0", and its usage lines
    named a command the user had not typed."""
    from coordinator.__main__ import build_parser as coordinator_parser
    from edge_runtime.__main__ import build_parser as device_parser

    monkeypatch.setattr("sys.argv", ["/opt/venv/bin/fedkeys-coordinator", "--version"])
    with pytest.raises(SystemExit):
        coordinator_parser().parse_args(["--version"])
    assert capsys.readouterr().out.startswith("fedkeys-coordinator ")
    with pytest.raises(SystemExit):
        coordinator_parser().parse_args(["status", "--help"])
    assert "usage: fedkeys-coordinator status" in capsys.readouterr().out
    assert device_parser().prog == "python -m edge_runtime"      # another script's parser keeps its name
    monkeypatch.setattr("sys.argv", ["/x/coordinator/__main__.py"])
    assert coordinator_parser().prog == "python -m coordinator"


def test_python_m_tools_lists_every_command():
    """`python -m tools` was "No module named tools.__main__": it lists the commands, each one a
    module that runs (every `tools.X` in COMMANDS is there), and a sub-command typed after a space
    is refused with the form that works. A library module run as a command says where it is."""
    listed = _run("tools")
    assert listed.returncode == 0, listed.stderr
    names = {line.split()[0] for line in listed.stdout.splitlines() if line.startswith("  ")}
    assert {m.removeprefix("tools.") for m in COMMANDS if m.startswith("tools.")} <= names, names
    assert not names & {"_cli", "shipped", "wordeval", "coordinator_process"}, names   # libraries
    wrong = _run("tools", "simulate")
    assert wrong.returncode == 2 and "python -m tools.simulate" in wrong.stderr, wrong.stderr
    lib = _run("model.export", "--help")
    assert lib.returncode == 2 and "python -m tools.pretrain" in lib.stderr and "Traceback" not in lib.stderr


def test_bench_poisoning_names_the_corpus_it_reads_by_default():
    """Its --help said "(default: the shared Shakespeare corpus)": a clone has no shared folder (it
    reads the repository's corpora/shakespeare.jsonl), and it said JSONL where plain text reads too."""
    h = _run("tools.bench", "poisoning", "--help")
    text = " ".join(h.stdout.split())
    assert h.returncode == 0 and "shared" not in text, text
    assert "JSONL or plain-text corpus (default: the repository's corpora/shakespeare.jsonl)" in text, text


def test_the_version_commands_say_which_version_they_take():
    """`coordinator unpin` demanded a version_id that its help never explained (it is the pinned
    stable version: another is refused); each version command now says what its argument is."""
    for action, says in (("promote", "the candidate"), ("reject", "the candidate"), ("pin", "any version"),
                         ("unpin", "the stable version"), ("rollback", "a retired version")):
        h = _run("coordinator", action, "--help")
        text = " ".join(h.stdout.split())
        assert h.returncode == 0 and f"version_id {says}" in text, (action, text)


@pytest.mark.parametrize("module", ["coordinator", "edge_runtime", "tools.bench", "tools.arm", "tools.secagg_bench"])
def test_a_command_line_of_commands_given_none_lists_them(module):
    """Run with no command, a tool made of commands lists them, exit 2 (a probe: tools.secagg_bench
    said only "the following arguments are required: cmd", naming neither the word nor the choices)."""
    r = _run(module)
    out = r.stdout + r.stderr
    assert r.returncode == 2 and "COMMAND" in out and " cmd" not in out and "Traceback" not in out, out
