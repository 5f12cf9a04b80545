"""Fixtures shared by the integration tests (helpers that are not fixtures: coordinator_fakes)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from coordinator_fakes import Served, import_v0, make_config, serve


@pytest.fixture
def served(tmp_path) -> Iterator[Served]:
    """The real coordinator app on a loopback port (make_config's settings), with v0000 imported
    as stable (its weights in `served.v0_weights`). Tests that need other settings call
    `serve(make_config(tmp_path, ...))` themselves."""
    with serve(make_config(tmp_path)) as s:
        import_v0(s, tmp_path / "v0")
        yield s
