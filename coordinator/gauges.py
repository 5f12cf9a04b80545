"""Gauges an operator alerts on, read from the database at scrape time.

They describe shared state (rounds, versions, devices), so every gunicorn worker must report
the same numbers: computing them per scrape from the database, rather than setting gauges in
whichever worker happened to handle the last request, is what keeps them right with several
workers (counters and histograms use prometheus-client's multiprocess mode; coordinator.metrics).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from datetime import timedelta

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from coordinator import privacy, queries
from coordinator.models import Decision, Device, Round, Version, utcnow
from coordinator.states import RoundStatus, VersionStatus

ACTIVE_WINDOW = timedelta(hours=24)


def _finite(x: float) -> float:
    return x if math.isfinite(x) else math.inf


class StateCollector(Collector):
    """fedkeys_* gauges from one read-only session per scrape."""

    def __init__(self, sessions: Callable[[], Session], privacy_delta: float,
                 canary: tuple[float, int] | None = None) -> None:
        """`canary`: the service's (canary_fraction, canary_min_reports)."""
        self._sessions, self._delta, self._canary = sessions, privacy_delta, canary

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._sessions() as s:
            r = s.scalar(select(Round).where(Round.status == RoundStatus.OPEN).order_by(Round.id.desc()))
            # as every view counts them; a secure round's masked vectors apart, until its sum
            accepted = queries.accepted(s, r.id) if r is not None else 0
            masked = queries.masked_inputs(s, r.id) if r is not None else 0
            in_use = (VersionStatus.STABLE, VersionStatus.CANDIDATE)
            versions = list(s.scalars(select(Version).where(Version.status.in_(in_use))))
            enrolled = int(s.scalar(select(func.count()).select_from(Device).where(Device.revoked.is_(False))) or 0)
            active = int(s.scalar(select(func.count()).select_from(Device).where(
                Device.revoked.is_(False), Device.last_seen_at >= utcnow() - ACTIVE_WINDOW)) or 0)
            noise_seen = queries.noise_seen(s)
            phase = queries.secure_phase(s, r) if r is not None else None
            by_status = dict(s.execute(select(Round.status, func.count()).group_by(Round.status)).all())
            auto = dict(s.execute(select(Decision.action, func.count()).where(Decision.actor == "auto")
                                  .group_by(Decision.action)).all())
            cand = next((v for v in versions if v.status == VersionStatus.CANDIDATE), None)
            reports = queries.reported_count(s, cand.id) if cand is not None else 0
            # a candidate waiting on a cohort too small to decide it: no round opens meanwhile
            stuck = (self._canary is not None and cand is not None and reports < self._canary[1]
                     and queries.short_cohort(s, *self._canary) is not None)
        # Past its deadline a round is over, whether or not a request has closed it yet (maintenance
        # runs on requests, not on scrapes, which must not wait for an aggregation): with every
        # device away the gauge said "open" for as long as nobody opened the dashboard.
        due = r is not None and queries.overdue(r)
        yield GaugeMetricFamily("fedkeys_round_open", "1 while a training round is open and before its deadline",
                                value=int(r is not None and not due))
        yield GaugeMetricFamily("fedkeys_round_overdue", "1 while the open round's deadline has passed and no "
                                "request has closed it yet", value=int(due))
        yield GaugeMetricFamily("fedkeys_round_id", "id of the open round (0: none)", value=r.id if r else 0)
        yield GaugeMetricFamily("fedkeys_round_accepted_updates", "accepted updates in the open round (a secure "
                                "round's once summed, as `status` and the dashboard count them)", value=accepted)
        yield GaugeMetricFamily("fedkeys_round_masked_inputs", "masked vectors the open secure round has received "
                                "(its updates before the sum)", value=masked)
        yield GaugeMetricFamily("fedkeys_round_goal_updates", "updates the open round waits for",
                                value=r.goal_count if r else 0)
        secure = GaugeMetricFamily("fedkeys_round_secure_phase", "1 for the step the open secure round is at (keys, "
                                   "shares, masked, summing, unmask, summed, failed); none for a plain round",
                                   labels=["phase"])
        if phase is not None:   # a round stuck on one step of secure aggregation is what to alert on
            secure.add_metric([phase], 1)
        yield secure
        info = GaugeMetricFamily("fedkeys_version", "1 per version in use, by role", labels=["role", "version"])
        eps = GaugeMetricFamily("fedkeys_epsilon", "epsilon of the version in use (against released models)",
                                labels=["role", "version"])
        eps_local = GaugeMetricFamily("fedkeys_epsilon_local", "epsilon against the coordinator of the version's "
                                      "own rounds (no sampling amplification)", labels=["role", "version"])
        for v in versions:
            info.add_metric([v.status, v.id], 1)
            eps.add_metric([v.status, v.id], _finite(v.epsilon))
            local = (v.epsilon_local if v.epsilon_local is not None
                     else queries.recorded_epsilon_local(v.privacy_json, v.epsilon))
            eps_local.add_metric([v.status, v.id], _finite(local))
        yield from (info, eps, eps_local)
        seen = privacy.against_coordinator(noise_seen, self._delta)
        yield GaugeMetricFamily("fedkeys_epsilon_against_coordinator", "epsilon against the coordinator over "
                                "every round it received updates in, whatever their versions became (the number "
                                "to quote)", value=_finite(seen["epsilon_local"]))
        # Counted from the database, as the gauges are: a round an admin command opened or closed (its
        # own process: `start-round`, `status` closing a due one) was missing from the serving
        # processes' counters, so an alert on failed rounds missed every round `status` failed.
        rounds = CounterMetricFamily("fedkeys_rounds", "Rounds by event (started: every round opened)",
                                     labels=["event"])
        rounds.add_metric(["started"], sum(by_status.values()))
        for status in (RoundStatus.DONE, RoundStatus.FAILED):
            rounds.add_metric([status.value], by_status.get(status, 0))
        yield rounds
        decisions = CounterMetricFamily("fedkeys_canary_decisions", "The canary's decisions on candidates (a "
                                        "candidate a newer round's version replaced is not one)", labels=["action"])
        for action in ("promote", "reject"):
            decisions.add_metric([action], auto.get(action, 0))
        yield decisions
        yield GaugeMetricFamily("fedkeys_canary_reports", "canary reports on the pending candidate (0: none)",
                                value=reports)
        yield GaugeMetricFamily("fedkeys_canary_can_decide", "0 while a candidate waits on a canary cohort smaller "
                                "than canary_min_reports (it can never decide); 1 otherwise", value=int(not stuck))
        yield GaugeMetricFamily("fedkeys_devices_enrolled", "enrolled, not revoked devices", value=enrolled)
        yield GaugeMetricFamily("fedkeys_devices_active", "devices seen in the last 24 hours", value=active)
