"""Bounding the data directory: older versions' files are deleted, their records stay.

Every round makes a version of about 6.8 MB (float32 weights and the download form) and every
one was kept: a coordinator making a version every few minutes filled its disk. Devices only
ever download the stable version and the candidate, so only they, the versions an operator may
roll back to (the `keep_versions` most recently retired) and the ones an operator may still
want to export (the `keep_versions` most recently rejected) keep their files. A version whose
files are gone keeps its row, manifest, privacy record and decisions, so `versions`, the
privacy accounting and the audit trail are unchanged; it is marked `files_pruned`, and rollback,
pin and export refuse it in one line. Importing an export of it restores its files
(`versions._restore_files`).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from coordinator.models import Decision, Round, Version
from coordinator.states import RoundStatus, VersionStatus

if TYPE_CHECKING:
    from coordinator.service import Coordinator

log = logging.getLogger("fedkeys.coordinator")

PRUNED_STATUSES = (VersionStatus.RETIRED, VersionStatus.REJECTED)


def prune(coord: Coordinator) -> list[str]:
    """Delete the files of the retired and rejected versions past the `keep_versions` most
    recently decided of each status; the ids pruned. Called by every maintenance: a plain read
    finds nothing to do almost always, and only then is the decisions' lock taken."""
    keep = coord.config.keep_versions
    if not keep:
        return []
    with coord._sessions() as s:
        if not _due(s, keep):
            return []
    with coord.tx(decides=True) as s:   # serialised with rollback and pin: they check the files after it
        due = _due(s, keep)
        if not due:
            return []
        kept = _digests(s.scalars(select(Version).where(Version.files_pruned.is_(False),
                                                        Version.id.not_in([v.id for v in due]))))
        gone = _digests(due) - kept
        freed = 0
        for v in due:
            v.files_pruned = True
            s.add(Decision(version_id=v.id, action="prune", actor="auto", numbers_json="{}",
                           reason=f"its files deleted: older than the {keep} most recently {v.status} versions "
                                  f"(keep_versions); its record stays"))
        s.flush()
        # Deleted inside the transaction, under its lock: a rollback waiting for the lock then
        # finds the files gone. A failed commit leaves files deleted on unmarked rows, which the
        # next maintenance marks (and rollback refuses meanwhile, the files being gone).
        for digest in gone:
            path = coord.blobs.path(digest)
            freed += path.stat().st_size if path.exists() else 0
            coord.blobs.discard(digest)
        ids = [v.id for v in due]
    log.info("deleted the files of %d version(s), %.1f MB (keep_versions %d): %s", len(ids), freed / 1e6, keep,
             ", ".join(ids))
    return ids


def _due(s: Session, keep: int) -> list[Version]:
    """Retired and rejected versions with their files, past the `keep` most recently decided of
    their status, never the base of an open round."""
    bases = set(s.scalars(select(Round.base_version_id).where(Round.status == RoundStatus.OPEN)))
    due: list[Version] = []
    for status in PRUNED_STATUSES:
        rows = s.scalars(select(Version).where(Version.status == status, Version.files_pruned.is_(False))
                         .order_by(Version.decided_at.desc().nulls_last(), Version.seq.desc())).all()
        due += [v for v in rows[keep:] if v.id not in bases]
    return due


def _digests(versions) -> set[str]:
    """Every blob a version's files are (several versions share a graph and a tokenizer)."""
    out: set[str] = set()
    for v in versions:
        q8 = json.loads(v.manifest_json).get("weights_q8_sha256")
        out |= {d for d in (v.weights_sha256, v.graph_sha256, v.tokenizer_sha256, v.opt_state_sha256, q8) if d}
    return out
