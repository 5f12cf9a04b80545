"""Per-key token bucket (per device, or per client address for unauthenticated calls).

In-process: with several gunicorn workers each enforces its own bucket, so the effective limit
is workers x the configured one; acceptable for abuse protection, not for billing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimiter:
    def __init__(self, per_minute: float, burst: int, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000) -> None:
        if per_minute <= 0 or burst < 1:
            raise ValueError("per_minute must be > 0 and burst >= 1")
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self._max_keys = max_keys

    def check(self, key: str) -> float:
        """Take one token for `key`; return 0 if allowed, else seconds until one is available."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            allowed = tokens >= 1
            self._buckets[key] = (tokens - 1 if allowed else tokens, now)
            if len(self._buckets) > self._max_keys:   # many keys (addresses): bounded memory
                self._forget(now)
            return 0.0 if allowed else (1 - tokens) / self.rate

    def refund(self, key: str) -> None:
        """Give back the token `check` took for `key`: the call it guarded did not count (the right
        admin token). Taking first and giving back leaves no window in which concurrent calls all
        see the last token."""
        with self._lock:
            if key in self._buckets:
                tokens, last = self._buckets[key]
                self._buckets[key] = (min(self.burst, tokens + 1), last)

    def _forget(self, now: float) -> None:
        """Drop the buckets that have refilled (a new key starts full: the same), then, if more than
        three quarters of max_keys are left, the least recently used down to half: one pass buys
        room for many new keys, so a client with ever new addresses cannot make each call pay it."""
        rate, burst = self.rate, self.burst
        self._buckets = {k: (t, last) for k, (t, last) in self._buckets.items() if t + (now - last) * rate < burst}
        if len(self._buckets) > self._max_keys * 3 // 4:
            recent = sorted(self._buckets.items(), key=lambda kv: kv[1][1])[-(self._max_keys // 2):]
            self._buckets = dict(recent)
