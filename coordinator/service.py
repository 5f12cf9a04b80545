"""The coordinator: one object per process holding its resources, and the facade the API, the
CLI and the tests call.

Each responsibility lives in its own module, and the methods below only forward to it:

    enrollment  enrollment keys, enrollment, device authentication and revocation
    checkin     a device's check-in: which version to use; train, evaluate or come back
    rounds      the round state machine: start, close at goal or deadline, aggregate (I/O)
    aggregation the pure math of a round: mean, server optimizer, finite check, stats
    updates     update uploads: every check between the bytes and a durable, counted update
    canary      evaluation tasks and reports, and the automatic promote/reject
    versions    import, version files, every status change and its recorded decision
    queries     read-only lookups several of them share
    views       the admin API's dict views
    states      the status and action enums

All I/O (database, blobs, signing) happens in those modules; the decisions themselves are the
pure functions in `aggregation`, `validation`, `privacy` and `rollout`. Every mutation holds one
process lock and runs in one database transaction (`tx`), and the round row is locked FOR UPDATE
(PostgreSQL) so several workers agree too; a transaction that decides which version is stable or
candidate or which round is open (`tx(decides=True)`) also takes one advisory lock there, so two
workers never both decide (SQLite's BEGIN IMMEDIATE orders every writer already). An update is
acknowledged only after its blob is fsynced and its row committed: a 2xx is never lost, whatever
happens next.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from coordinator import canary, checkin, deployment, enrollment, keys, rollout_signing, rounds, updates, versions, views
from coordinator.blobs import BlobStore, UploadStore
from coordinator.config import Config
from coordinator.db import (
    create_private,
    data_dir_lock,
    make_engine,
    make_monitor_engine,
    migrate,
    reading,
    require_current_schema,
    session_factory,
)
from coordinator.metrics import Metrics
from protocol import wire

DECISIONS_LOCK = 7201359   # PostgreSQL advisory lock of `tx(decides=True)` (db.migrate holds 7201358)


class Coordinator:
    """One per process; the Flask app holds it as `app.extensions["fedkeys"]`."""

    def __init__(self, config: Config, *, read_only: bool = False) -> None:
        """`read_only`: for inspecting a data directory that cannot be written (`__main__`'s
        inspection commands there): nothing is created, locked, migrated or written."""
        self.config = config
        self.data_dir = Path(config.data_dir)
        self.read_only = read_only
        if not read_only:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)   # a new one: its owner's only
        self.engine = make_engine(config.resolved_database_url, read_only=read_only)
        try:
            if read_only:
                require_current_schema(self.engine)
                self.signing_key = keys.load_signing_key(self.data_dir)
            else:
                with data_dir_lock(self.data_dir):
                    create_private(config.resolved_database_url)   # a new SQLite file: its owner's only
                    if not keys.is_initialised(self.data_dir):   # `init` of a new folder: refused before it
                        deployment.check_unpaired(self.engine, self.data_dir)   # migrates or writes a key
                    migrate(self.engine)
                    self.signing_key = keys.load_or_create_signing_key(self.data_dir)
            # The token file is made by `init` and by serving (`ensure_admin_token`), not by every
            # admin command: one run without the service's token setting would make a file of a
            # token the service refuses.
            self.admin_token: str | None = config.admin_token or keys.load_admin_token(self.data_dir)
            self.public_key_hex = keys.public_key_hex(self.signing_key)
            deployment.check_pairing(self.engine, self.public_key_hex, self.data_dir, read_only=read_only)
        except BaseException:
            self.engine.dispose()
            raise
        self._sessions = session_factory(reading(self.engine))   # reads; `tx` binds its own to `engine`
        self.blobs = BlobStore(self.data_dir / "blobs", create=not read_only)
        self.uploads = UploadStore(self.data_dir / "uploads", self.blobs, create=not read_only)
        # /healthz and the scrape read through an engine of their own that waits seconds, not 30.
        self.monitor = self.engine if read_only else make_monitor_engine(config.resolved_database_url)
        self.metrics = Metrics(session_factory(self.monitor), config.privacy_delta, self.data_dir,
                               (config.canary_fraction, config.canary_min_reports),
                               None if read_only else self.monitor)
        self._lock = threading.RLock()
        self.rollout_seq = rollout_signing.SequenceClock()   # the signed rollout statements' numbers
        self.clock_skew = time.time() - time.monotonic()   # its high mark since this start (rounds.restamp_ahead)
        self._rng = random.Random()
        self._key_of: dict[str, int] = {}
        self._local = threading.local()      # .manual: inside an operator's start_round (no auto round then)
        # True in the HTTP service (create_app): the canary's decisions need the service's settings,
        # which an admin command started with other ones (another --profile) does not have.
        self.serving = False
        # What `rounds.safe_maintenance` last said of a failure that repeats: {what, at, times}.
        self.maintenance_failing: dict[str, Any] = {"what": None, "at": -math.inf, "times": 0}

    def close(self) -> None:
        self.engine.dispose()
        self.monitor.dispose()

    def ensure_admin_token(self) -> str:
        """The admin token: the setting's, else the data directory's file, made if there is none."""
        if self.admin_token is None:
            with data_dir_lock(self.data_dir):   # another worker's file is read whole, not as it is written
                self.admin_token = keys.load_or_create_admin_token(self.data_dir)
        return self.admin_token

    @contextmanager
    def tx(self, *, decides: bool = False) -> Iterator[Session]:
        """One locked transaction: commit on success, roll back on any error.

        `decides`: it reads the versions' or rounds' states and changes them on what it read
        (start or close a round, a canary report, an operator's promote or rollback, an import).
        On PostgreSQL two worker processes did that at once, each on a state without the other's
        change: two stable versions, two open rounds, a canary's last two reports neither of which
        decided. Such transactions take one advisory lock first (READ COMMITTED: every statement
        after it sees what the one before it committed)."""
        with self._lock, self._sessions(bind=self.engine) as s, s.begin():
            if decides and s.get_bind().dialect.name == "postgresql":
                s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": DECISIONS_LOCK})   # released at commit
            yield s

    # --- enrollment and auth (coordinator.enrollment) ----------------------------------------

    def create_enrollment_key(self, *, label: str = "", uses: int | None = None,
                              expires_in_s: float | None = None) -> str:
        """A new key for `uses` enrollments within `expires_in_s` (config defaults when None)."""
        return enrollment.create_key(self, label=label, uses=uses, expires_in_s=expires_in_s)

    def enroll(self, req: wire.EnrollRequest) -> wire.EnrollResponse:
        return enrollment.enroll(self, req)

    def authenticate(self, device_id: str | None, token: str | None) -> str:
        """Return the device id if the token is that device's, else 401."""
        return enrollment.authenticate(self, device_id, token)

    def enrollment_key_of(self, device_id: str) -> int:
        """The enrollment key a device was minted with (fixed for its life, so cached)."""
        return enrollment.key_of(self, device_id)

    def revoke_device(self, device_id: str) -> dict[str, Any]:
        return enrollment.revoke_device(self, device_id)

    def list_enrollment_keys(self) -> list[dict[str, Any]]:
        """Every enrollment key without its secret, with how many devices it minted."""
        return enrollment.list_keys(self)

    def revoke_enrollment_key(self, *, key_id: int | None = None, key: str | None = None,
                              devices: bool = False) -> dict[str, Any]:
        """Stop a key (by id, or the key itself) enrolling devices; `devices`: revoke those it minted too."""
        return enrollment.revoke_key(self, key_id=key_id, key=key, devices=devices)

    # --- device calls (coordinator.checkin, .updates, .canary) -------------------------------

    def checkin(self, device_id: str, req: wire.CheckinRequest) -> wire.Task:
        return checkin.checkin(self, device_id, req)

    def submit_update(self, device_id: str, meta_header: str | None, body: bytes) -> wire.UpdateReceipt:
        return updates.submit_update(self, device_id, meta_header, body)

    def report_evaluation(self, device_id: str, report: wire.EvaluationReport) -> wire.EvaluationReceipt:
        return canary.report_evaluation(self, device_id, report)

    # --- rounds (coordinator.rounds) ---------------------------------------------------------

    def start_round(self, /, **overrides: Any) -> int:
        """Open a round on the stable version; overrides: goal_count, min_count, overselect,
        round_duration_s, selection_window_s and any TrainPlan field."""
        return rounds.start_round(self, **overrides)

    def maintenance(self, *, wait: bool = False) -> None:
        """Close rounds that reached their goal or deadline (lazily, on requests and `tick`). Not
        when read-only: an inspection shows the state as it is (a due round stays as it was left).
        `wait`: for a close under way elsewhere (an operator's command), not leaving it to that close."""
        if not self.read_only:
            rounds.maintenance(self, wait=wait)

    def close_round(self, round_id: int, *, force: bool = False, wait: bool = True) -> dict[str, Any] | None:
        """Aggregate if the round has enough updates (goal, or min at/after the deadline), or fail it.
        `wait` False: None at once if another close of it is under way (maintenance on requests)."""
        return rounds.close_round(self, round_id, force=force, wait=wait)

    # --- versions (coordinator.versions, .canary) --------------------------------------------

    def import_version(self, directory: str | Path, *, as_candidate: bool | None = None,
                       any_parent: bool = True) -> str:
        """Import a version directory; the first becomes stable, later ones canary candidates
        unless `as_candidate` is False (then they replace stable directly)."""
        return versions.import_version(self, directory, as_candidate=as_candidate, any_parent=any_parent)

    def export_version(self, version_id: str, directory: str | Path) -> Path:
        """Write a version's files as a version directory (e.g. to build a word-list change on)."""
        return versions.export_version(self, version_id, directory)

    def version_file(self, version_id: str, kind: str) -> tuple[bytes, str]:
        """(bytes, media type) of a version's manifest, weights, graph or tokenizer."""
        return versions.version_file(self, version_id, kind)

    def admin_decide(self, version_id: str, action: str) -> dict[str, Any]:
        """An operator's states.VersionAction: promote or reject a candidate, pin (make stable,
        stop auto-promotion), unpin, rollback (make a retired version stable again)."""
        return versions.admin_decide(self, version_id, action)

    def canary_comparison(self) -> dict[str, Any]:
        return canary.canary_comparison(self)

    # --- views (coordinator.views) -----------------------------------------------------------

    def list_versions(self) -> list[dict[str, Any]]:
        return views.list_versions(self)

    def version_summaries(self) -> list[dict[str, Any]]:
        return views.version_summaries(self)

    def list_rounds(self, limit: int = views.ROUNDS_SHOWN, before: int | None = None) -> dict[str, Any]:
        """{"rounds": the newest `limit` below round `before`, oldest first; "total"; "next_before"}."""
        return views.list_rounds(self, limit, before)

    def round_counts(self) -> dict[str, int]:
        return views.round_counts(self)

    def rejection_counts(self, round_id: int | None = None) -> dict[str, int]:
        return views.rejection_counts(self, round_id)

    def get_round(self, round_id: int) -> dict[str, Any]:
        return views.get_round(self, round_id)

    def rejections(self, round_id: int | None = None, limit: int = views.REJECTIONS_SHOWN,
                   before: int | None = None) -> dict[str, Any]:
        """{"rejections": the newest `limit` below id `before`, oldest first; "total"; "by_reason": of
        each reason; "next_before"}."""
        return views.rejections(self, round_id, limit, before)

    def status(self) -> dict[str, Any]:
        return views.status(self)
