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


# Control characters a message must not carry to a terminal or a text log: a line break starts a
# line the reader takes for the coordinator's own, an escape sequence rewrites the terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class TextFormatter(logging.Formatter):
    """The text format, one line per record: values a device sent (a version id, an idempotency
    key) reach some messages, and one holding "\n2026-12-06 ... WARNING ..." would forge a line of
    the log and an ESC sequence reach the operator's terminal. Control characters in the
    message are written escaped (werkzeug's colour codes are dropped, as in JSON lines). A
    traceback keeps its lines, each indented, since its exception's message may quote such a
    value too: no line of it can pass for a record."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return self._style._fmt % {**record.__dict__, "message": _escaped(_ANSI.sub("", record.message))}

    def formatException(self, ei) -> str:  # type: ignore[no-untyped-def]  # logging's own signature
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def _escaped(text: str) -> str:
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def _indented(text: str) -> str:
    """A traceback's lines, control characters escaped within each, two spaces before each."""
    return "\n".join("  " + _escaped(line) for line in text.splitlines())


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at emit time (it may be swapped, e.g. by test capture)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Libraries' loggers held above INFO in every process (`setup`, and gunicorn's deploy/gunicorn.conf.py):
# dp-accounting's convergence chatter, and alembic's line per plugin on every start.
QUIET = {"absl": "ERROR", "alembic": "WARNING"}


def setup(level: str = "INFO", *, json_lines: bool | None = None, log_format: str = "auto") -> None:
    """One format per process: JSON lines for a log collector, text when a person reads a terminal
    (log_format auto), or as configured (json | text)."""
    if json_lines is None:
        json_lines = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    if not any(getattr(h, "_fedkeys", False) for h in root.handlers):
        handler._fedkeys = True  # type: ignore[attr-defined]  # idempotent across repeated setup() calls
        root.addHandler(handler)
    root.setLevel(level.upper())
    for name, level in QUIET.items():
        logging.getLogger(name).setLevel(level)
