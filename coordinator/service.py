"""The coordinator's state machine: enrollment, check-in, rounds, aggregation, canary rollout.

All I/O (database, blobs, signing) happens here; the decisions themselves are the pure
functions in `aggregation`, `validation`, `privacy` and `rollout`. Every mutation holds one
process lock and runs in one database transaction, and the round row is locked FOR UPDATE
(PostgreSQL) so several workers agree too. An update is acknowledged only after its blob is
fsynced and its row committed: a 2xx is never lost, whatever happens next.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from coordinator import (
    aggregation,
    canary,
    enrollment,
    keys,
    privacy,
    rollout,
    rollout_signing,
    schedule,
    secagg,
    selection,
    updates,
    views,
)
from coordinator.blobs import BlobStore
from coordinator.config import Config
from coordinator.db import data_dir_lock, make_engine, migrate, session_factory
from coordinator.errors import ApiError, bad_request, not_found
from coordinator.metrics import Metrics
from coordinator.models import (
    Decision,
    Device,
    Round,
    Setting,
    Update,
    Version,
    utcnow,
)
from coordinator.views import _iso, _jf, _json_safe  # noqa: F401  (used here and by older imports)
from protocol import artifact, wire
from protocol.plan import PLAN_FIELD_NAMES, check_plan_values

log = logging.getLogger(__name__)

STABLE, CANDIDATE, REJECTED, RETIRED = "stable", "candidate", "rejected", "retired"
OPEN, DONE, FAILED = "open", "done", "failed"


class Coordinator:
    """One per process; the Flask app holds it as `app.extensions["fedkeys"]`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.data_dir = Path(config.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.engine = make_engine(config.resolved_database_url)
        with data_dir_lock(self.data_dir):
            migrate(self.engine)
            self.signing_key = keys.load_or_create_signing_key(self.data_dir)
            self.admin_token = config.admin_token or keys.load_or_create_admin_token(self.data_dir)
        self.public_key_hex = keys.public_key_hex(self.signing_key)
        self._sessions = session_factory(self.engine)
        self.blobs = BlobStore(self.data_dir / "blobs")
        self.metrics = Metrics(self._sessions)
        self._lock = threading.RLock()
        self._rng = random.Random()
        self._key_of: dict[str, int] = {}
        self._local = threading.local()      # .manual: inside an operator's start_round (no auto round then)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def tx(self) -> Iterator[Session]:
        """One locked transaction: commit on success, roll back on any error."""
        with self._lock, self._sessions() as s, s.begin():
            yield s

    # --- enrollment and auth ---------------------------------------------------------------

    def create_enrollment_key(self, *, label: str = "", uses: int | None = None,
                              expires_in_s: float | None = None) -> str:
        """A new key for `uses` enrollments within `expires_in_s` (config defaults when None)."""
        return enrollment.create_key(self, label=label, uses=uses, expires_in_s=expires_in_s)

    def enroll(self, req: wire.EnrollRequest) -> wire.EnrollResponse:
        return enrollment.enroll(self, req)

    def authenticate(self, device_id: str | None, token: str | None) -> str:
        """Return the device id if the token is that device's, else 401."""
        if not device_id or not token:
            raise ApiError(401, wire.E_UNAUTHORIZED, f"missing {wire.DEVICE_HEADER} or bearer token")
        with self._sessions() as s:
            dev = s.get(Device, device_id[: wire.MAX_ID_LEN])
            if dev is None or dev.revoked or not keys.secret_matches(token, dev.token_hash):
                raise ApiError(401, wire.E_UNAUTHORIZED, "unknown device or wrong token")
        return device_id

    def enrollment_key_of(self, device_id: str) -> int:
        """The enrollment key a device was minted with (fixed for its life, so cached)."""
        return enrollment.key_of(self, device_id)

    def revoke_device(self, device_id: str) -> None:
        with self.tx() as s:
            dev = s.get(Device, device_id)
            if dev is None:
                raise not_found(f"no device {device_id}")
            dev.revoked = True

    # --- versions ----------------------------------------------------------------------------

    def _stable(self, s: Session) -> Version | None:
        return s.scalar(select(Version).where(Version.status == STABLE))

    def _candidate(self, s: Session) -> Version | None:
        return s.scalar(select(Version).where(Version.status == CANDIDATE))

    def _pinned(self, s: Session) -> bool:
        row = s.get(Setting, "pinned")
        return row is not None and row.value == "1"

    def _next_seq(self, s: Session) -> int:
        return (s.scalar(select(func.max(Version.seq))) or 0) + 1

    def import_version(self, directory: str | Path, *, as_candidate: bool | None = None) -> str:
        """Import a version directory (e.g. version 0 from central pretraining), re-signed by us.

        The first version becomes stable; later ones become canary candidates unless
        `as_candidate` is False (then they replace stable directly).
        """
        manifest, weights = artifact.load_version(directory)
        d = Path(directory)
        if not wire.is_safe_id(manifest.version_id):
            raise bad_request(f"version id {manifest.version_id!r} is not URL-safe")
        w_sha = self.blobs.put((d / artifact.WEIGHTS).read_bytes())
        g_sha = self.blobs.put((d / artifact.GRAPH).read_bytes())
        t_sha = self.blobs.put((d / artifact.TOKENIZER).read_bytes())
        with self.tx() as s:
            if s.get(Version, manifest.version_id) is not None:
                raise ApiError(409, wire.E_CONFLICT, f"version {manifest.version_id} already imported")
            stable = self._stable(s)
            if stable is not None and json.loads(stable.manifest_json)["arch_hash"] != manifest.arch_hash:
                raise bad_request("imported version has a different architecture than the stable version")
            status = STABLE if stable is None or as_candidate is False else CANDIDATE
            if status == STABLE and stable is not None:
                stable.status = RETIRED
            if status == CANDIDATE:
                self._supersede_candidate(s, manifest.version_id)
            manifest.privacy = privacy.summarize([], self.config.privacy_delta)
            artifact.sign_manifest(manifest, self.signing_key)
            s.add(Version(id=manifest.version_id, seq=self._next_seq(s), parent_id=manifest.parent, status=status,
                          manifest_json=artifact.canonical_json(manifest.to_dict()).decode(), weights_sha256=w_sha,
                          graph_sha256=g_sha, tokenizer_sha256=t_sha, epsilon=0.0, delta=self.config.privacy_delta,
                          privacy_json=json.dumps(manifest.privacy)))
            s.flush()
            s.add(Decision(version_id=manifest.version_id, action="import", actor="admin",
                           reason=f"imported from {d.name} as {status}", numbers_json="{}"))
        log.info("imported version %s as %s (%d tensors, %d parameters)", manifest.version_id, status, len(weights),
                 manifest.num_params)
        return manifest.version_id

    def _supersede_candidate(self, s: Session, new_id: str) -> None:
        old = self._candidate(s)
        if old is not None:
            old.status = REJECTED
            old.decided_at = utcnow()
            s.add(Decision(version_id=old.id, action="reject", actor="auto",
                           reason=f"superseded by {new_id} before the canary decided", numbers_json="{}"))

    def version_file(self, version_id: str, kind: str) -> tuple[bytes, str]:
        """(bytes, media type) of a version's manifest, weights, graph or tokenizer."""
        with self._sessions() as s:
            v = s.get(Version, version_id)
            if v is None:
                raise not_found(f"no version {version_id!r}")
            if kind == "manifest":
                return v.manifest_json.encode(), "application/json"
            digest = {"weights": v.weights_sha256, "graph": v.graph_sha256, "tokenizer": v.tokenizer_sha256}[kind]
        return self.blobs.get(digest), wire.SAFETENSORS_MEDIA_TYPE

    def _manifest(self, v: Version) -> artifact.Manifest:
        return artifact.Manifest.from_dict(json.loads(v.manifest_json))

    # --- rounds ------------------------------------------------------------------------------

    def _population(self, s: Session) -> int:
        """The population the sampled epsilon assumes: the configured size, else the devices that
        have actually contributed an accepted update (enrolled-but-idle sybils do not count)."""
        if self.config.population_size:
            return self.config.population_size
        return int(s.scalar(select(func.count(func.distinct(Update.device_id)))) or 0)

    def _population_view(self, s: Session) -> dict[str, Any]:
        enrolled = int(s.scalar(select(func.count()).select_from(Device).where(Device.revoked.is_(False))) or 0)
        basis = ("configured population_size" if self.config.population_size
                 else "devices that contributed an accepted update (not merely enrolled ones)")
        return {"enrolled": enrolled, "assumed_by_epsilon": self._population(s), "basis": basis}

    def start_round(self, **overrides: Any) -> int:
        """Open a round on the stable version; overrides: goal_count, min_count, overselect,
        round_duration_s and any TrainPlan field."""
        c = self.config
        allowed = {"goal_count", "min_count", "overselect", "round_duration_s", "selection_window_s",
                   *PLAN_FIELD_NAMES}
        unknown = set(overrides) - allowed
        if unknown:
            raise bad_request(f"unknown round settings {sorted(unknown)}")
        # A round that reached its goal but whose aggregation a crash interrupted must not block
        # the next one until some device happens to check in.
        self._local.manual = True
        try:
            self._safe_maintenance()
        finally:
            self._local.manual = False
        o = {k: getattr(c, k) for k in allowed} | {k: v for k, v in overrides.items() if v is not None}
        try:
            goal, min_count = int(o["goal_count"]), int(o["min_count"])
            over, duration = float(o["overselect"]), float(o["round_duration_s"])
            window = float(o["selection_window_s"])
            if not 0 <= window < duration:
                raise ValueError("need 0 <= selection_window_s < round_duration_s")
            min_count = min(min_count, goal)
            if not (1 <= goal <= 10**7 and 1 <= min_count and 1 <= over <= 10 and 0 < duration <= 30 * 86400):
                raise ValueError("need 1 <= goal_count <= 1e7, min_count >= 1, 1 <= overselect <= 10, "
                                 "0 < round_duration_s <= 30 days")
            plan_values = check_plan_values({k: o[k] for k in PLAN_FIELD_NAMES})  # the one plan rule
            if plan_values["secure_aggregation"] and c.aggregator != "mean":
                raise ValueError(f"secure_aggregation needs aggregator = mean (it is {c.aggregator})")
            with self.tx() as s:
                stable = self._stable(s)
                if stable is None:
                    raise ApiError(409, wire.E_CONFLICT, "no stable version: import one first")
                if s.scalar(select(Round).where(Round.status == OPEN)) is not None:
                    raise ApiError(409, wire.E_CONFLICT, "a round is already open")
                r = Round(base_version_id=stable.id, status=OPEN, plan_json="{}", goal_count=goal,
                          max_selected=max(goal, math.ceil(goal * over)), min_count=min_count,
                          population=self._population(s), deadline=utcnow() + timedelta(seconds=duration), reason="",
                          selection_ends_at=utcnow() + timedelta(seconds=window) if window > 0 else None)
                s.add(r)
                s.flush()
                plan = wire.TrainPlan(round_id=r.id, **plan_values)
                r.plan_json = json.dumps(plan.to_dict())
                rid = r.id
        except (ValueError, TypeError) as e:
            if isinstance(e, ApiError):
                raise
            raise bad_request(f"invalid round settings: {e}") from e
        self.metrics.rounds.labels("started").inc()
        log.info("round %d open on %s: goal %d, select up to %d, min %d", rid, stable.id, goal,
                 max(goal, math.ceil(goal * over)), min_count)
        return rid

    def _accepted(self, s: Session, round_id: int) -> int:
        return int(s.scalar(select(func.count()).select_from(Update).where(Update.round_id == round_id)) or 0) \
            + secagg.accepted(s, round_id)

    def maintenance(self) -> None:
        """Close rounds that reached their goal or deadline (lazily, on requests and `tick`)."""
        secagg.advance_open(self)
        with self._sessions() as s:
            rows = s.execute(select(Round.id, Round.deadline, Round.goal_count).where(Round.status == OPEN)).all()
            due = [rid for rid, deadline, goal in rows if utcnow() >= deadline or self._accepted(s, rid) >= goal]
        for rid in due:
            self.close_round(rid)
        self._open_scheduled_round()

    def _open_scheduled_round(self) -> None:
        """With round_interval_s > 0, the next round opens by itself (coordinator.schedule)."""
        if not getattr(self._local, "manual", False):
            schedule.open_if_due(self)

    def close_round(self, round_id: int, *, force: bool = False) -> dict[str, Any]:
        """Aggregate if the round has enough updates (goal, or min at/after the deadline), or fail it."""
        if not 1 <= round_id <= wire.MAX_INT:
            raise not_found(f"no round {round_id}")
        with self.tx() as s:
            r = s.get(Round, round_id, with_for_update=True)
            if r is None:
                raise not_found(f"no round {round_id}")
            if r.status != OPEN:
                return self._round_dict(s, r)
            n = self._accepted(s, r.id)
            past = utcnow() >= r.deadline
            if n >= r.goal_count or ((past or force) and n >= r.min_count):
                t0 = time.perf_counter()
                self._aggregate(s, r)
                self.metrics.aggregation_seconds.observe(time.perf_counter() - t0)
                self.metrics.rounds.labels("done").inc()
            elif past or force:
                r.status, r.closed_at = FAILED, utcnow()
                r.reason = f"only {n} accepted updates, minimum {r.min_count}"
                self.metrics.rounds.labels("failed").inc()
                log.warning("round %d failed: %s", r.id, r.reason)
            return self._round_dict(s, r)

    def _aggregate(self, s: Session, r: Round) -> None:
        base = s.get(Version, r.base_version_id)
        manifest = self._manifest(base)
        tensors = manifest.tensors
        plan = wire.TrainPlan.from_dict(json.loads(r.plan_json))
        updates = s.execute(select(Update.blob_sha256, Update.example_count).where(Update.round_id == r.id)
                            .order_by(Update.id)).all()

        def stream() -> Iterator[tuple[np.ndarray, float]]:
            for digest, count in updates:  # one decoded update in memory at a time
                vec = artifact.flatten(artifact.decode_weights(self.blobs.get(digest)), tensors)
                yield vec, aggregation.bounded_weight(count, self.config.max_example_weight)

        mean_delta, updates, note = secagg.round_mean(self, s, r, plan, updates, stream)
        base_vec = artifact.flatten(artifact.decode_weights(self.blobs.get(base.weights_sha256)), tensors)
        opt_state = ({} if base.opt_state_sha256 is None
                     else artifact.decode_weights(self.blobs.get(base.opt_state_sha256)))
        c = self.config
        new_vec, new_state = aggregation.apply_server_optimizer(
            c.server_optimizer, base_vec, mean_delta, opt_state, lr=c.server_learning_rate, momentum=c.server_momentum,
            beta1=c.adam_beta1, beta2=c.adam_beta2, eps=c.adam_epsilon)
        if not np.all(np.isfinite(new_vec)):
            r.status, r.closed_at, r.reason = FAILED, utcnow(), "aggregate is not finite"
            return
        weights_bytes = artifact.encode_weights(artifact.unflatten(new_vec, tensors))
        w_sha = self.blobs.put(weights_bytes)
        state_sha = self.blobs.put(artifact.encode_weights(new_state)) if new_state else None
        seq = self._next_seq(s)
        vid = f"v{seq:04d}-{w_sha[:8]}"
        q = min(1.0, len(updates) / max(r.population, len(updates)))
        history = [privacy.RoundPrivacy(*h) for h in json.loads(base.privacy_json).get("history", [])]
        history.append(privacy.RoundPrivacy(q, plan.noise_multiplier))
        priv = privacy.summarize(history, c.privacy_delta) | note
        manifest.version_id, manifest.parent, manifest.weights_sha256 = vid, base.id, w_sha
        manifest.created_at = utcnow().isoformat() + "Z"
        manifest.metrics = {"round_id": r.id, "updates": len(updates),
                            "examples": int(sum(cnt for _, cnt in updates)),
                            "mean_delta_norm": float(np.linalg.norm(mean_delta)),
                            "server_optimizer": c.server_optimizer,
                            "aggregator": "secure_sum" if plan.secure_aggregation else c.aggregator}
        manifest.privacy = {k: _jf(v) if isinstance(v, float) else v for k, v in priv.items()}
        artifact.sign_manifest(manifest, self.signing_key)
        self._supersede_candidate(s, vid)
        s.add(Version(id=vid, seq=seq, parent_id=base.id, status=CANDIDATE,
                      manifest_json=artifact.canonical_json(manifest.to_dict()).decode(), weights_sha256=w_sha,
                      graph_sha256=base.graph_sha256, tokenizer_sha256=base.tokenizer_sha256,
                      opt_state_sha256=state_sha, round_id=r.id, epsilon=priv["epsilon"], delta=c.privacy_delta,
                      privacy_json=json.dumps(manifest.privacy)))
        r.status, r.closed_at, r.result_version_id = DONE, utcnow(), vid
        r.reason = f"aggregated {len(updates)} updates"
        log.info("round %d done: %d updates -> candidate %s (eps %.3g at delta %g)", r.id, len(updates), vid,
                 priv["epsilon"], c.privacy_delta)

    def _round_dict(self, s: Session, r: Round) -> dict[str, Any]:
        return views.round_dict(self, s, r)

    # --- device calls ------------------------------------------------------------------------

    def _retry_after(self, base: float | None = None) -> float:
        """Pace steering: the interval, jittered so devices do not come back all at once."""
        base = self.config.checkin_interval_s if base is None else base
        j = self.config.checkin_jitter
        value = base * (1 + self._rng.uniform(-j, j))
        return round(min(max(value, wire.MIN_RETRY_AFTER_S), wire.MAX_RETRY_AFTER_S), 1)

    def _safe_maintenance(self) -> None:
        """Maintenance on a device's request must never turn into that device's error."""
        try:
            self.maintenance()
        except Exception:
            log.exception("round maintenance failed; will retry on the next request")

    def checkin(self, device_id: str, req: wire.CheckinRequest) -> wire.Task:
        self._safe_maintenance()
        task = self._checkin(device_id, req)
        self.metrics.checkins.labels(task.kind).inc()
        return task

    def _checkin(self, device_id: str, req: wire.CheckinRequest) -> wire.Task:
        c = self.config
        with self.tx() as s:
            s.get(Device, device_id).last_seen_at = utcnow()
            stable, cand = self._stable(s), self._candidate(s)
            if stable is None:
                return wire.Task(kind=wire.TASK_COME_BACK, retry_after=self._retry_after())
            in_cohort = cand is not None and rollout.in_canary(device_id, c.canary_fraction)
            use = cand.id if in_cohort else stable.id
            channel = "canary" if in_cohort else "stable"
            state = rollout_signing.signed_state(self, s, device_id, cand if in_cohort else stable, channel,
                                                 req.current_version_id)
            if in_cohort and req.eligible and req.can_evaluate:
                task = canary.evaluate_task(self, s, device_id, cand, stable, self._retry_after())
                if task is not None:
                    return replace(task, rollout=state)
            r = s.scalar(select(Round).where(Round.status == OPEN).with_for_update())
            if r is not None and req.eligible and utcnow() < r.deadline:
                now = utcnow()
                verdict, wait = selection.select_device(s, r, device_id, now)
                if verdict == selection.TRAIN:  # new, or the same task again after a lost reply
                    remaining = (r.deadline - now).total_seconds()
                    return wire.Task(kind=wire.TASK_TRAIN, retry_after=self._retry_after(), use_version_id=use,
                                     use_channel=channel, rollout=state, base_version_id=r.base_version_id,
                                     plan=wire.TrainPlan.from_dict(json.loads(r.plan_json)),
                                     time_limit_s=round(max(remaining, 0.0), 1))
                if verdict == selection.WAIT:   # registered for the draw: back right after the window
                    back = min(max(wait + self._rng.uniform(0.5, 5.0), wire.MIN_RETRY_AFTER_S), wire.MAX_RETRY_AFTER_S)
                    return wire.Task(kind=wire.TASK_COME_BACK, use_version_id=use, use_channel=channel,
                                     rollout=state, retry_after=round(back, 1))
            # An open round still short of devices: ask eligible devices back sooner.
            busy = r is not None and utcnow() < r.deadline
            return wire.Task(kind=wire.TASK_COME_BACK, use_version_id=use, use_channel=channel, rollout=state,
                             retry_after=self._retry_after(c.checkin_interval_s / 4 if busy else None))

    def _reject(self, device_id: str, round_id: int | None, code: str, message: str) -> ApiError:
        return updates.reject(self, device_id, round_id, code, message)

    def submit_update(self, device_id: str, meta_header: str | None, body: bytes) -> wire.UpdateReceipt:
        return updates.submit_update(self, device_id, meta_header, body)

    def report_evaluation(self, device_id: str, report: wire.EvaluationReport) -> wire.EvaluationReceipt:
        return canary.report_evaluation(self, device_id, report)

    def canary_comparison(self) -> dict[str, Any]:
        return canary.canary_comparison(self)

    def _apply(self, s: Session, v: Version, action: str, actor: str, reason: str, numbers: dict) -> None:
        now = utcnow()
        if action in ("promote", "pin", "rollback"):
            old = self._stable(s)
            if old is not None and old.id != v.id:
                old.status, old.decided_at = RETIRED, now
            v.status = STABLE
            if action != "promote":  # a manual stable change cancels the pending canary
                cand = self._candidate(s)
                if cand is not None and cand.id != v.id:
                    cand.status, cand.decided_at = REJECTED, now
        elif action == "reject":
            v.status = REJECTED
        v.decided_at = now
        s.add(Decision(version_id=v.id, action=action, actor=actor, reason=reason,
                       numbers_json=json.dumps(_json_safe(numbers))))
        log.info("version %s: %s by %s (%s)", v.id, action, actor, reason)

    def admin_decide(self, version_id: str, action: str) -> dict[str, Any]:
        """promote (a candidate), reject (a candidate), pin (make stable, stop auto-promotion),
        unpin, rollback (make a retired version stable again)."""
        with self.tx() as s:
            v = s.get(Version, version_id)
            if v is None:
                raise not_found(f"no version {version_id!r}")
            if action in ("promote", "reject") and v.status != CANDIDATE:
                raise ApiError(409, wire.E_CONFLICT, f"{version_id} is {v.status}, not a candidate")
            if action == "rollback" and v.status not in (RETIRED, REJECTED):
                raise ApiError(409, wire.E_CONFLICT, f"{version_id} is {v.status}; roll back to a retired version")
            if action not in ("promote", "reject", "pin", "unpin", "rollback"):
                raise bad_request(f"unknown action {action!r}")
            if action in ("pin", "unpin"):
                row = s.get(Setting, "pinned") or Setting(key="pinned", value="0")
                row.value = "1" if action == "pin" else "0"
                s.add(row)
            if action == "unpin":
                s.add(Decision(version_id=v.id, action="unpin", actor="admin", reason="automatic promotion on",
                               numbers_json="{}"))
            else:
                self._apply(s, v, action, "admin", f"admin {action}", {})
            return self._version_dict(s, v)

    # --- views -------------------------------------------------------------------------------

    def _version_dict(self, s: Session, v: Version) -> dict[str, Any]:
        return views.version_dict(self, s, v)

    def list_versions(self) -> list[dict[str, Any]]:
        return views.list_versions(self)

    def list_rounds(self) -> list[dict[str, Any]]:
        return views.list_rounds(self)

    def get_round(self, round_id: int) -> dict[str, Any]:
        return views.get_round(self, round_id)

    def rejections(self, round_id: int | None = None) -> list[dict[str, Any]]:
        return views.rejections(self, round_id)

    def status(self) -> dict[str, Any]:
        return views.status(self)
