"""Bounding the data directory: older versions' files are deleted, their records stay.

Every round makes a version of about 6.8 MB (float32 weights and the download form) and every
one was kept: a coordinator making a version every few minutes filled its disk. Devices only
ever download the stable version and the candidate, so only they, the versions an operator may
roll back to (the `keep_versions` most recently retired) and the ones an operator may still
want to export (the `keep_versions` most recently rejected) keep their files. A version whose
files are gone keeps its row, manifest, privacy record and decisions, so `versions`, the
privacy accounting and the audit trail are unchanged; it is marked `files_pruned`, and rollback,
pin and export refuse it in one line. Importing an export of it restores its files and clears
the mark (`versions._restore_files`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from coordinator import queries
from coordinator.models import Decision, Round, Update, Version
from coordinator.states import RoundStatus, VersionStatus

if TYPE_CHECKING:
    from coordinator.service import Coordinator

log = logging.getLogger("fedkeys.coordinator")

PRUNED_STATUSES = (VersionStatus.RETIRED, VersionStatus.REJECTED)


def prune(coord: Coordinator) -> list[str]:
    """Mark the retired and rejected versions past the `keep_versions` most recently decided of
    each status and delete their files; the ids marked. Only in the service, from its
    maintenance (an admin command's own --set keep_versions must not delete what the service
    keeps): a count finds nothing to do almost always, and only then are rows read and the
    decisions' lock taken. The files go after the marks' commit (`_delete_unused`): a rollback
    or pin then sees the mark and refuses, and a download that read the version unmarked meets a
    missing file, a 404."""
    keep = coord.config.keep_versions
    if not keep or not coord.serving:
        return []
    with coord._sessions() as s:   # every check-in runs this: a count first, rows and the lock only when due
        if not _over(s, keep):
            return []
    with coord.tx(decides=True) as s:
        due = _due(s, keep)
        if not due:
            return []
        for v in due:
            v.files_pruned = True
            s.add(Decision(version_id=v.id, action="prune", actor="auto", numbers_json="{}",
                           reason=f"its files deleted: older than the {keep} most recently {v.status} versions "
                                  f"(keep_versions); its record stays"))
        ids = [v.id for v in due]
    _delete_unused(coord, ids, f"{len(ids)} version(s) past keep_versions {keep}: {', '.join(ids)}")
    return ids


def sweep(coord: Coordinator) -> int:
    """At service start: the files of marked versions still on disk (a kill between a prune's
    mark and its deletions) are deleted. Returns the files deleted."""
    return _delete_unused(coord, None, "versions marked before a restart")


def _delete_unused(coord: Coordinator, ids: list[str] | None, what: str) -> int:
    """Delete the files of the marked versions `ids` (None: every marked version) that nothing
    unmarked uses. A transaction of its own, after the marks' commit (a rollback or download then
    sees the mark), under the decisions' lock that every write of a version's files takes too
    (`close_round`, `import_version`): a file another version stored meanwhile, found present as
    equal bytes, is counted as in use here, never deleted under it."""
    freed = n = 0
    with coord.tx(decides=True) as s:
        if ids is None:   # the weights go last (below): a marked version whose weights are gone is done
            ids = [vid for vid, w in s.execute(select(Version.id, Version.weights_sha256)
                                               .where(Version.files_pruned.is_(True))) if coord.blobs.exists(w)]
        marked = list(s.scalars(select(Version).where(Version.files_pruned.is_(True), Version.id.in_(ids))))
        gone = _digests(marked) - _in_use(s)
        weights = {v.weights_sha256 for v in marked}
        for digest in sorted(gone, key=lambda d: d in weights):
            try:
                size = coord.blobs.path(digest).stat().st_size
            except FileNotFoundError:
                continue
            coord.blobs.discard(digest)
            freed, n = freed + size, n + 1
    if n:
        log.info("deleted %d file(s), %.1f MB, of %s", n, freed / 1e6, what)
    return n


def _over(s: Session, keep: int) -> bool:
    """Whether a status holds more than `keep` versions with their files (`_due` may then find some)."""
    counts = s.execute(select(func.count()).where(Version.status.in_(PRUNED_STATUSES), Version.files_pruned.is_(False))
                       .group_by(Version.status)).scalars()
    return any(n > keep for n in counts)


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


def _in_use(s: Session) -> set[str]:
    """Every blob something unmarked may read: the files of every version not marked (several
    versions share a graph and a tokenizer), and the updates of open rounds, which a release
    before the upload store kept among the blobs (`UploadStore.legacy`)."""
    open_ids = select(Round.id).where(Round.status == RoundStatus.OPEN)
    return (_digests(s.scalars(select(Version).where(Version.files_pruned.is_(False))))
            | set(s.scalars(select(Update.blob_sha256).where(Update.round_id.in_(open_ids)))))


def _digests(versions: Iterable[Version]) -> set[str]:
    return set().union(*(queries.version_blobs(v) for v in versions))
