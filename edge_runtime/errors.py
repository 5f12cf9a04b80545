"""The device's one root error: every exception the runtime raises on purpose derives from it.

Each area keeps its own class (`ClientError` for the coordinator's answers, `CacheError`,
`VersionError`, `ConfigError`, ...) and, where callers catch a builtin, that builtin as a second
base; `except EdgeError` is the boundary that catches them all.
"""

from __future__ import annotations


class EdgeError(Exception):
    """Root of the device runtime's errors."""


class Stopping(EdgeError):
    """The device is shutting down while a task waits (its `sleep` returned true: the agent's stop
    event was set): the task ends without its last step, as a stop, not as a failure."""
