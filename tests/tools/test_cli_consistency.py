"""Every command line behaves alike: --version, defaults in --help, exit 2 on a user error."""

from __future__ import annotations

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
