"""Prometheus metrics, in a registry per app (several apps in one test process must not clash)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("fedkeys_http_requests", "HTTP requests", ["endpoint", "method", "status"], registry=r)
        self.request_seconds = Histogram("fedkeys_http_request_seconds", "Request latency", ["endpoint"], registry=r)
        self.checkins = Counter("fedkeys_checkins", "Check-ins by task kind", ["task"], registry=r)
        self.updates = Counter("fedkeys_updates", "Uploaded updates by result (accepted or reason)", ["result"],
                               registry=r)
        self.rounds = Counter("fedkeys_rounds", "Rounds by event", ["event"], registry=r)
        self.aggregation_seconds = Histogram("fedkeys_aggregation_seconds", "Time to aggregate a round", registry=r,
                                             buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300))
        self.canary_decisions = Counter("fedkeys_canary_decisions", "Automatic canary decisions", ["action"],
                                        registry=r)
        self.rate_limited = Counter("fedkeys_rate_limited", "Requests refused by the rate limit", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
