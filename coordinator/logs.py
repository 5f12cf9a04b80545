"""Structured (JSON lines) logging, configured only at entry points."""

from __future__ import annotations

import json
import logging
import re
import sys
import time

# Terminal colour codes: werkzeug colours its access lines ("\x1b[33mGET /v1/... HTTP/1.1\x1b[0m")
# whatever the destination, which a log collector shows as escape codes.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        d = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
             "level": record.levelname, "logger": record.name, "msg": _ANSI.sub("", record.getMessage())}
        if record.exc_info:
            d["exc"] = self.formatException(record.exc_info)
        return json.dumps(d)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at emit time (it may be swapped, e.g. by test capture)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup(level: str = "INFO", *, json_lines: bool | None = None, log_format: str = "auto") -> None:
    """One format per process: JSON lines for a log collector, text when a person reads a terminal
    (log_format auto), or as configured (json | text)."""
    if json_lines is None:
        json_lines = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    if not any(getattr(h, "_fedkeys", False) for h in root.handlers):
        handler._fedkeys = True  # type: ignore[attr-defined]  # idempotent across repeated setup() calls
        root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("absl").setLevel(logging.ERROR)      # dp-accounting's convergence chatter
    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per plugin on every start
