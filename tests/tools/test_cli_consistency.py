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
            "tools.bench", "tools.arm", "tools.settings_doc", "tools.ablation", "tools.add_words"]


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
