"""docs/settings.md is generated from the settings classes and kept current."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

from coordinator.config import Config
from edge_runtime.config import EdgeConfig

REPO = Path(__file__).resolve().parents[2]


def test_settings_reference_is_current_and_complete(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "tools.settings_doc", "--check"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    doc = (REPO / "docs" / "settings.md").read_text()
    for f in dataclasses.fields(Config):
        assert f"| `{f.name}` |" in doc and f"`FEDKEYS_COORDINATOR_{f.name.upper()}`" in doc, f.name
    for f in dataclasses.fields(EdgeConfig):
        assert f"`FEDKEYS_EDGE_{f.name.upper()}`" in doc, f.name
    assert '| `noise_multiplier` | float | `0.01` |' in doc
    # A stale file is caught.
    stale = tmp_path / "settings.md"
    stale.write_text(doc.replace("`0.01`", "`0.0`"))
    r = subprocess.run([sys.executable, "-m", "tools.settings_doc", "--check", "--out", str(stale)], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 1 and "out of date" in r.stderr


def test_an_installed_copy_prints_the_reference_instead_of_writing_into_its_packages(tmp_path, monkeypatch, capsys):
    """Run from an installed copy (no docs/ beside the packages) it wrote docs/settings.md into
    site-packages: there it prints the reference."""
    from tools import settings_doc

    monkeypatch.setattr(settings_doc, "OUT", tmp_path / "site-packages" / "docs" / "settings.md")
    assert settings_doc.default_out() == "-"
    assert settings_doc.main(["--out", "-"]) == 0
    assert "| `noise_multiplier` |" in capsys.readouterr().out
    assert not (tmp_path / "site-packages").exists()
