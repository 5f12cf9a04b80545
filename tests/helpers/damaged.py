"""A device's text cache damaged the way a bad disk damages one: past its header."""

from __future__ import annotations

from pathlib import Path

from edge_runtime.paths import CACHE_DB


def damaged_cache(data_dir: Path, text: str, rows: int = 400) -> Path:
    """A cache of `rows` texts holding `text`, with a page's worth of garbage written well inside
    its table: it opens, and the first query that reads the bad page fails ("database disk image
    is malformed"). Returns the cache file."""
    from edge_runtime.cache import TextCache

    with TextCache(data_dir) as cache:
        for i in range(rows):
            cache.add(f"{text} {i} with padding to fill the pages", "message")
    db = data_dir / CACHE_DB
    size = db.stat().st_size
    with open(db, "r+b") as f:
        f.seek(size // 2 - (size // 2) % 4096 + 8)
        f.write(b"\xa5" * 3000)
    return db
