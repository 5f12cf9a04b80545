"""Shared fixtures. `exported_version` is a real, linted model version directory."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import pytest

HAS_TF = importlib.util.find_spec("tensorflow") is not None
CHROMIUM = Path("/usr/bin/chromium")   # Debian's package; Playwright drives it, never its own download
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--disable-quic"]


@pytest.fixture(scope="session")
def exported_version(tmp_path_factory) -> Path:
    """FEDKEYS_TEST_VERSION if set (the slim edge venv has no TensorFlow to build one), else a
    tiny version built once per test session."""
    given = os.environ.get("FEDKEYS_TEST_VERSION")
    if given:
        p = Path(given)
        assert (p / "manifest.json").exists(), f"FEDKEYS_TEST_VERSION={given} is not a version directory"
        return p
    if not HAS_TF:
        pytest.fail("no TensorFlow to build a test model: set FEDKEYS_TEST_VERSION to a version directory "
                    "(python -m tests.tiny_version DIR in the full environment)")
    from tests.tiny_version import build

    return build(tmp_path_factory.mktemp("tiny-version"))


@pytest.fixture(autouse=True)
def _restore_root_logger():
    """CLIs run in-process by some tests set up logging as for a whole process (a root handler);
    later tests must not inherit it (log-content tests read stderr)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


@pytest.fixture
def served(tmp_path):
    """The real coordinator app on a loopback port (make_config's settings), with v0000 imported
    as stable (its weights in `served.v0_weights`). Tests that need other settings call
    `serve(make_config(tmp_path, ...))` themselves. (Imported here, not at the top: the slim edge
    environment has no Flask.)"""
    from tests.helpers.coordinator_fakes import import_v0, make_config, serve

    with serve(make_config(tmp_path)) as s:
        import_v0(s, tmp_path / "v0")
        yield s


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium for the `browser`-marked tests (the keyboard page, the dashboard)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: the browser tests need Debian's chromium package "
                    "(apt-get install -y chromium; make test and .ci/run install it)", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
