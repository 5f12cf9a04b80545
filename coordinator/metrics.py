"""Prometheus metrics: counters and histograms per app, plus database-backed gauges.

Under gunicorn each worker is its own process with its own counters, so a scrape answered by
one worker saw only its share (10 requests read as 4 or 6). With PROMETHEUS_MULTIPROC_DIR set
(deploy/gunicorn.conf.py sets it), prometheus-client keeps every worker's values in files there
and a scrape adds them up (its multiprocess mode). Without it (one process: `serve`, tests),
each app keeps its own registry, so several apps in one test process do not clash.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from coordinator.blobs import free_bytes
from coordinator.db import retryable, write_lock_free
from coordinator.gauges import StateCollector
from protocol import wire

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "multiprocess_dir"]

log = logging.getLogger(__name__)

FROM_DATABASE = frozenset({"fedkeys_rounds", "fedkeys_canary_decisions"})   # counted by `gauges`, once


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


UPDATES_HELP = ("Uploaded updates by result (accepted or reason), counted on arrival: a revoked device's accepted "
                "update, withdrawn later, stays accepted here (the rejections list it as revoked)")

class Metrics:
    def __init__(self, sessions: Callable[[], Session] | None, privacy_delta: float,
                 data_dir: str | os.PathLike | None = None, canary: tuple[float, int] | None = None,
                 engine: Engine | None = None) -> None:
        """`engine`: the monitor's, whose SQLite write lock the scrape checks is free."""
        self.registry = CollectorRegistry()
        self._engine = engine
        self._data_dir = data_dir
        self._state = StateCollector(sessions, privacy_delta, canary) if sessions is not None else None
        r = self.registry
        self.requests = Counter("fedkeys_http_requests", "HTTP requests", ["endpoint", "method", "status"], registry=r)
        self.request_seconds = Histogram("fedkeys_http_request_seconds", "Request latency", ["endpoint"], registry=r)
        self.checkins = Counter("fedkeys_checkins", "Check-ins by task kind", ["task"], registry=r)
        self.updates = Counter("fedkeys_updates", UPDATES_HELP, ["result"], registry=r)
        self.aggregation_seconds = Histogram("fedkeys_aggregation_seconds", "Time to aggregate a round", registry=r,
                                             buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300))
        self.rate_limited = Counter("fedkeys_rate_limited", "Requests refused by the rate limit", registry=r)
        self.maintenance_failures = Counter(
            "fedkeys_maintenance_failures", "Round maintenance that raised (closing a due round, the canary, "
            "retention, the schedule); the log and the open round's reason say why", registry=r)
        # Series an alert reads exist from the start at 0: an alert on `rate(fedkeys_checkins_total[1h])
        # == 0` never fired on a coordinator no device reached, since the series did not exist yet.
        for kind in wire.TASK_KINDS:
            self.checkins.labels(kind)
        self.updates.labels("accepted")

    def render(self) -> bytes:
        """One scrape: every worker's counters (multiprocess mode) or this process's, plus the gauges."""
        path = multiprocess_dir()
        if path:
            registry = CollectorRegistry()
            registry.register(_WorkerFiles(path))
        else:
            registry = self.registry
        out = generate_latest(registry)
        if self._data_dir is not None:
            out += _free_bytes(self._data_dir)
        if self._state is not None:
            state = CollectorRegistry()
            state.register(self._state)
            try:
                out += generate_latest(state)
                locked = write_lock_free(self._engine) if self._engine is not None else None
                if locked is not None:
                    log.warning("metrics: the database is %s; requests that write wait for it (%s)", *locked)
                out += _database_up(locked is None)
            except (OperationalError, PoolTimeout) as e:
                # The counters are this process's and still true: a scrape that failed whole (503)
                # would hide them while the database is down, and the alert would have to be read
                # from the scrape failing; instead it is `fedkeys_database_up 0`. Any other error
                # is a fault (500).
                if (trouble := retryable(e)) is None:
                    raise
                log.warning("metrics: the database is %s; the scrape has the counters only (%s)", *trouble)
                out += _database_up(False)
        return out


def _free_bytes(data_dir: str | os.PathLike) -> bytes:
    """`fedkeys_data_dir_free_bytes`: a full disk refuses every upload with 503, and without
    this gauge nothing moves while the dashboard shows a round waiting for devices."""
    if (free := free_bytes(data_dir)) is None:
        return b""
    return _gauge("fedkeys_data_dir_free_bytes", "free bytes on the data directory's file system (uploads and new "
                  "versions fail under 64 MiB; /healthz says so)", free)


def _database_up(up: bool) -> bytes:
    return _gauge("fedkeys_database_up", "1 when this scrape read the gauges from the database, 0 when it could "
                  "not (down, or no connection free)", int(up))


def _gauge(name: str, documentation: str, value: float) -> bytes:
    """One gauge, in the exposition format, outside any registry's collectors."""
    registry = CollectorRegistry()
    registry.register(_Const(GaugeMetricFamily(name, documentation, value=value)))
    return generate_latest(registry)


class _Const:
    def __init__(self, family: GaugeMetricFamily) -> None:
        self._family = family

    def collect(self):  # noqa: ANN201 - prometheus-client's collector protocol
        yield self._family


class _WorkerFiles:
    """Every worker's counters from the multiprocess files, without the families the database
    now counts (`gauges`): files an older release's workers left (a `kill -HUP` reload keeps them
    until a restart) still held `fedkeys_rounds` as a counter of their own, and a scrape then
    carried the family twice."""

    def __init__(self, path: str) -> None:
        self._files = multiprocess.MultiProcessCollector(None, path=path)

    def collect(self):  # noqa: ANN201 - prometheus-client's collector protocol
        return (m for m in self._files.collect() if m.name not in FROM_DATABASE)
