"""Model versions: import, the files devices download, and every status change with its decision.

Every change of a version's status (`states.VersionStatus`) records a `Decision` row that says
who changed it and why: an operator's action (`states.VersionAction`, `apply_decision`), the
canary's automatic promote/reject, a newer candidate superseding an undecided one, a stable
version retiring when another becomes stable ("retire"), an import ("import"), or a round's
version set aside while a favoured candidate waits. Retention deleting a version's files
("prune", `coordinator.retention`) and an import putting them back ("restore") are recorded too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from coordinator import canary, deployment, privacy, queries, rollout, round_end, views
from coordinator.errors import ApiError, bad_request, not_found
from coordinator.models import Decision, Round, Setting, Version, utcnow
from coordinator.states import VERSION_ACTIONS, RoundStatus, VersionAction, VersionStatus
from protocol import artifact, wire

if TYPE_CHECKING:
    from coordinator.service import Coordinator

log = logging.getLogger(__name__)


def carried_privacy(coord: Coordinator, manifest: artifact.Manifest) -> dict[str, Any]:
    """The privacy record of an imported version whose parent this coordinator does not hold:
    the history its manifest brings (rounds another coordinator ran; none for version 0),
    accounted again here. It was replaced by an empty one, so a version trained on users' text
    read epsilon 0 in the database, the dashboard and the manifest devices download."""
    brought = manifest.privacy if isinstance(manifest.privacy, dict) else {}
    try:
        history = privacy.counted(brought.get("history"), limit=privacy.MAX_IMPORTED_ROUNDS)
        if not all(math.isfinite(r.noise_multiplier) for r in history):
            raise ValueError("a noise multiplier is not finite")
    except (TypeError, ValueError) as e:
        raise bad_request(f"{manifest.version_id}: the privacy history in its manifest is not readable ({e})") from e
    rounds = brought.get("rounds")
    if isinstance(rounds, int) and not isinstance(rounds, bool) and rounds != privacy.rounds(history):
        raise bad_request(f"{manifest.version_id}: its manifest says {brought['rounds']} rounds but holds "
                          f"a history of {privacy.rounds(history)}")
    # Numbers accounted here; what the record says besides them (a secure round's assumptions and
    # note) kept, as write_candidate keeps a round's note over summarize's defaults.
    fresh = privacy.summarize(history, coord.config.privacy_delta)
    numbers = ("epsilon", "epsilon_local", "delta", "rounds", "history", "accountant")
    priv = fresh | {k: v for k, v in brought.items() if k not in numbers}
    return {k: views._jf(v) if isinstance(v, float) else v for k, v in priv.items()}


def import_version(coord: Coordinator, directory: str | Path, *, as_candidate: bool | None = None,
                   any_parent: bool = True) -> str:
    """Import a version directory (e.g. version 0 from central pretraining), re-signed by us.

    The first version becomes stable; later ones become canary candidates unless
    `as_candidate` is False (then they replace stable directly, as a pin would). With
    `any_parent` False (the command line without --force) a later one must build on the stable
    version: otherwise, stable or promoted (the canary compares only the two), it would drop
    every round the stable version holds. A version built on one this coordinator holds carries
    on that one's privacy history, or its manifest's when that goes on past it (trained further
    elsewhere).
    """
    d = Path(directory)
    if d.is_dir() and (missing := [f for f in (artifact.MANIFEST, artifact.WEIGHTS, artifact.GRAPH,
                                               artifact.TOKENIZER) if not (d / f).is_file()]):
        raise artifact.ArtifactError(f"{d} is not a whole version directory: it lacks {', '.join(missing)}")
    manifest, weights = artifact.load_version(directory)
    artifact.checked_architecture(manifest)
    if not wire.is_safe_id(manifest.version_id):
        raise bad_request(f"version id {manifest.version_id!r} is not URL-safe")
    # Refused before its files are stored; a restore under the decisions' lock, which the
    # retention's deletions hold too (`retention.prune`).
    with coord.tx(decides=True) as s:
        existing = s.get(Version, manifest.version_id)
        held = existing is not None and ((restored := _restore_files(coord, s, existing, d, weights))
                                         or existing.files_pruned)
        if held:
            if existing.files_pruned:   # back, and kept as the most recently decided of its status
                existing.files_pruned, existing.decided_at = False, utcnow()
                s.add(Decision(version_id=existing.id, action="restore", actor="admin", numbers_json="{}",
                               reason=f"its files restored from {d.name}"))
            status = existing.status
            log.warning("version %s: restored its %s from %s%s", existing.id, ", ".join(restored) or "files", d,
                        f"; it is {status}: roll back to it (or pin it) before keep_versions newer "
                        f"{status} versions come, or the service deletes its files again"
                        if status in (VersionStatus.RETIRED, VersionStatus.REJECTED) and as_candidate is not False
                        else "")
    if held:
        if as_candidate is False and status != VersionStatus.STABLE:
            # `import-version --stable` of a version held here makes it stable, as the decision for
            # its status does: restoring its files alone would exit 0 and leave it retired while
            # the operator reads "it is stable now".
            action = {VersionStatus.RETIRED: "rollback", VersionStatus.CANDIDATE: "promote"}.get(status, "pin")
            log.warning("version %s: made stable (%s), as --stable asks", manifest.version_id, action)
            admin_decide(coord, manifest.version_id, action)
        return manifest.version_id
    with coord.tx(decides=True) as s:
        _check_import(s, manifest, d, any_parent)
        parent = s.get(Version, manifest.parent) if manifest.parent else None
        before = _history(parent) if parent is not None else None
    # A parent held here gives its record, unless the manifest's history goes on past the parent's
    # (rounds another coordinator ran from it, whose updates the operator received); else the
    # manifest's own. Checked before anything is stored.
    carried = None if before is not None and not _brings_rounds(manifest, before) else carried_privacy(coord, manifest)
    if carried is not None and before and not before <= privacy.counted(carried["history"]):
        carried = None   # another lineage's history under this parent's name: the parent's record
    with coord.tx(decides=True) as s:
        stable = _check_import(s, manifest, d, any_parent)
        # Stored under the decisions' lock, which retention's deletions take: a file found
        # present (equal bytes an older version had) is not then deleted as unused.
        w_sha = coord.blobs.put((d / artifact.WEIGHTS).read_bytes())
        manifest.weights_q8_sha256 = put_download_form(coord, weights)
        g_sha = coord.blobs.put((d / artifact.GRAPH).read_bytes())
        t_sha = coord.blobs.put((d / artifact.TOKENIZER).read_bytes())
        status = (VersionStatus.STABLE if stable is None or as_candidate is False else VersionStatus.CANDIDATE)
        if status == VersionStatus.CANDIDATE:
            supersede_candidate(coord, s, manifest.version_id)
        parent = s.get(Version, manifest.parent) if manifest.parent else None
        # The parent's record as it is (JSON-safe, its secure-aggregation notes kept): an import adds no release.
        # (versions are never deleted: a parent held above is held here, so `carried` is set whenever it is missing)
        own = carried is not None or parent is None
        manifest.privacy = carried if own else json.loads(parent.privacy_json)
        artifact.sign_manifest(manifest, coord.signing_key)
        v = Version(id=manifest.version_id, seq=_import_seq(s, manifest.version_id), parent_id=manifest.parent,
                    status=status,
                    manifest_json=artifact.canonical_json(manifest.to_dict()).decode(), weights_sha256=w_sha,
                    graph_sha256=g_sha, tokenizer_sha256=t_sha,
                    epsilon=float(manifest.privacy["epsilon"]) if own else parent.epsilon,
                    epsilon_local=float(manifest.privacy["epsilon_local"]) if own else parent.epsilon_local,
                    delta=coord.config.privacy_delta if own else parent.delta,
                    privacy_json=json.dumps(manifest.privacy))
        s.add(v)
        s.flush()
        s.add(Decision(version_id=manifest.version_id, action="import", actor="admin",
                       reason=f"imported from {d.name} as {status}", numbers_json="{}"))
        if status == VersionStatus.STABLE and stable is not None:   # a stable change, as a pin is
            _become_stable(coord, s, v, utcnow(), cancels=f"the import of {v.id} as stable", actor="admin")
    log.info("imported version %s as %s (%d tensors, %d parameters)", manifest.version_id, status, len(weights),
             manifest.num_params)
    return manifest.version_id


def _history(v: Version) -> Counter[privacy.RoundPrivacy]:
    """A held version's privacy history (its record was written here, so it reads)."""
    return privacy.counted(json.loads(v.privacy_json).get("history"))


def _brings_rounds(manifest: artifact.Manifest, before: Counter[privacy.RoundPrivacy]) -> bool:
    """Whether the manifest's privacy history holds more rounds than `before`, its held parent's:
    the version was trained further elsewhere (an export of the parent, rounds on another
    coordinator, imported back), and keeping the parent's record had dropped those rounds. One
    that does not read is taken as bringing rounds, for `carried_privacy` to refuse it."""
    brought = manifest.privacy.get("history") if isinstance(manifest.privacy, dict) else None
    if not isinstance(brought, list):
        return False
    try:
        return privacy.rounds(privacy.counted(brought)) > privacy.rounds(before)
    except (TypeError, ValueError):
        return True


def _restore_files(coord: Coordinator, s: Session, v: Version, d: Path, weights: dict) -> list[str]:
    """Put back the files of version `v` that the data directory lost or holds damaged, from a
    directory holding the same files (the folder it was imported from, or an export); the names
    of those restored, [] when none was missing. Without it an operator whose only stable
    version lost a file had no documented way back: `serve` refused, reject and rollback could
    not act on the one stable version, and importing the folder again was "already imported"."""
    given = {artifact.WEIGHTS: (d / artifact.WEIGHTS).read_bytes(), artifact.GRAPH: (d / artifact.GRAPH).read_bytes(),
             artifact.TOKENIZER: (d / artifact.TOKENIZER).read_bytes()}
    recorded = {artifact.WEIGHTS: v.weights_sha256, artifact.GRAPH: v.graph_sha256,
                artifact.TOKENIZER: v.tokenizer_sha256}
    if other := [name for name, data in given.items() if artifact.sha256_bytes(data) != recorded[name]]:
        raise ApiError(409, wire.E_CONFLICT, f"version {v.id} already imported, with other files than {d}'s "
                       f"({', '.join(other)})")

    def intact(digest: str) -> bool:
        return coord.blobs.exists(digest) and artifact.sha256_bytes(coord.blobs.get(digest)) == digest

    put = {name: (recorded[name], data) for name, data in given.items() if not intact(recorded[name])}
    q8 = json.loads(v.manifest_json).get("weights_q8_sha256")
    if q8 and not intact(q8):   # decided before anything is written: all or nothing
        exported = d / artifact.WEIGHTS_Q8
        form = exported.read_bytes() if exported.is_file() else b""   # an export's copy (`export_version`)
        if artifact.sha256_bytes(form) != q8:   # else rebuilt as it was made: on no row scales, or its parent's
            parent = s.get(Version, v.parent_id) if v.parent_id else None
            parent_q8 = json.loads(parent.manifest_json).get("weights_q8_sha256") if parent is not None else None
            bases = [None] + ([coord.blobs.get(parent_q8)] if parent_q8 and intact(parent_q8) else [])
            form = next((b for b in (artifact.encode_weights_q8(weights, base) for base in bases)
                         if artifact.sha256_bytes(b) == q8), None)
        if form is None:
            raise ApiError(409, wire.E_CONFLICT, f"version {v.id}: its download form (weights_q8) cannot be rebuilt "
                           f"here, its parent's is lost too: import an export of {v.id} made by this release (it "
                           "carries the form), or restore the data directory from a backup")
        put["weights_q8"] = (q8, form)
    for digest, data in put.values():
        artifact.atomic_write(coord.blobs.path(digest), data)
    return list(put)


def _check_import(s: Session, manifest: artifact.Manifest, d: Path, any_parent: bool) -> Version | None:
    """Refuse an import `import_version` must not make; the stable version (None: this is the first)."""
    if s.get(Version, manifest.version_id) is not None:
        raise ApiError(409, wire.E_CONFLICT, f"version {manifest.version_id} already imported")
    if manifest.parent is not None and not wire.is_safe_id(manifest.parent):   # shown in tables and logs
        raise bad_request(f"the manifest's parent {manifest.parent[:40]!r} is not a version id")
    stable = queries.stable(s)
    if stable is not None and json.loads(stable.manifest_json)["arch_hash"] != manifest.arch_hash:
        raise bad_request("imported version has a different architecture than the stable version")
    if stable is not None and not any_parent and manifest.parent != stable.id:
        raise ApiError(409, wire.E_CONFLICT, f"{d} builds on {manifest.parent or 'no version'}, not on the "
                       f"stable version {stable.id}: made stable or promoted, it would drop what {stable.id} "
                       f"learned since. Build it on {stable.id} (python -m coordinator export-version "
                       f"{stable.id} DIR, then e.g. tools.add_words --base DIR), or pass --force")
    return stable


def export_version(coord: Coordinator, version_id: str, directory: str | Path) -> Path:
    """Write a version's files as a version directory, the form `import-version` and the tools
    read: e.g. the stable version, to build a word-list change on (`tools.add_words --base DIR`)
    instead of on version 0, which would drop every round since."""
    with coord._sessions() as s:
        v = s.get(Version, version_id)
        if v is None:
            raise not_found(f"no version {version_id!r}")
        refuse_pruned(coord, v, "exported")
        try:
            files = {artifact.MANIFEST: v.manifest_json.encode(),
                     artifact.WEIGHTS: coord.blobs.get(v.weights_sha256),
                     artifact.GRAPH: coord.blobs.get(v.graph_sha256),
                     artifact.TOKENIZER: coord.blobs.get(v.tokenizer_sha256)}
        except FileNotFoundError as e:
            raise ApiError(409, wire.E_CONFLICT, f"{version_id} cannot be exported: {Path(e.filename).name} is no "
                           "longer in the data directory (keep_versions deleted it, or it was lost)") from None
        if q8 := json.loads(v.manifest_json).get("weights_q8_sha256"):
            # Its download form too: a round's version quantizes on its parent's row scales, and
            # once retention deleted the parent's files, only this copy can put it back.
            with contextlib.suppress(FileNotFoundError):   # lost: the export still holds the rest
                files[artifact.WEIGHTS_Q8] = coord.blobs.get(q8)
    d = Path(directory)
    if d.exists() and (not d.is_dir() or any(d.iterdir())):
        raise bad_request(f"{d} exists and is not an empty folder: name a new one")
    # An export a full disk or Ctrl-C stops would leave a partial folder, which the next export
    # would refuse as not empty. A new folder is written beside its name and renamed
    # whole; an empty one named (a mount point, a link, ".") is filled, and emptied again on failure.
    if d.is_dir():
        try:
            for name, data in files.items():
                artifact.atomic_write(d / name, data, mode=artifact.VERSION_FILE_MODE)
        except BaseException:
            for p in d.iterdir():   # it was empty: whatever is in it now, this export wrote
                p.unlink(missing_ok=True)
            raise
        return d
    d.parent.mkdir(parents=True, exist_ok=True)
    partial = d.parent / f".{d.name}.{uuid.uuid4().hex[:12]}.partial"
    partial.mkdir()
    try:
        for name, data in files.items():
            artifact.atomic_write(partial / name, data, mode=artifact.VERSION_FILE_MODE)
        os.rename(partial, d)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return d


def put_download_form(coord: Coordinator, weights: dict, parent_sha: str = "") -> str:
    """Store the quantized form devices download (`artifact.quantize`, a quarter of float32's
    bytes), on the parent's row scales when there is a parent; its sha256 goes into the manifest
    before it is signed."""
    parent = coord.blobs.get(parent_sha) if parent_sha else None
    return coord.blobs.put(artifact.encode_weights_q8(weights, parent))


def _import_seq(s: Session, version_id: str) -> int:
    """An imported round's version keeps its place in the count its id carries ("v0005-..." is 5,
    if no version here is past it), so this coordinator's next rounds number on from it: otherwise a
    new deployment that imported v0005-5f6c29b3 after a key replacement would make its own v0002
    to v0005, and list two v0005s."""
    found = re.match(r"v(\d{1,9})-", version_id)
    return max(queries.next_seq(s), int(found.group(1)) if found else 0)


def write_candidate(coord: Coordinator, s: Session, r: Round, base: Version, manifest: artifact.Manifest,
                    weights: dict, plan: wire.TrainPlan, *, sampling_rate: float, metrics: dict[str, Any],
                    note: dict[str, Any] | None = None, q8_parent: str = "", state_sha: str | None = None,
                    tokenizer_sha: str | None = None) -> tuple[str, dict[str, Any]]:
    """Store the weights a round produced from `base` as the new canary candidate, signed, with
    the round's release added to the base's privacy history; closes the round as done.
    Returns (version id, privacy summary)."""
    c = coord.config
    w_sha = coord.blobs.put(artifact.encode_weights(weights))
    manifest.weights_q8_sha256 = put_download_form(coord, weights, q8_parent)
    seq = queries.next_seq(s)
    vid = f"v{seq:04d}-{w_sha[:8]}"
    history = privacy.bounded(_history(base))   # a lineage's rounds before rates were rounded: one entry each
    history[privacy.RoundPrivacy(sampling_rate, plan.noise_multiplier)] += 1
    priv = privacy.summarize(history, c.privacy_delta) | (note or {})
    manifest.version_id, manifest.parent, manifest.weights_sha256 = vid, base.id, w_sha
    manifest.tokenizer_sha256 = tokenizer_sha or base.tokenizer_sha256
    manifest.created_at = utcnow().isoformat() + "Z"
    manifest.metrics = {"round_id": r.id, **metrics}
    manifest.privacy = {k: views._jf(v) if isinstance(v, float) else v for k, v in priv.items()}
    artifact.sign_manifest(manifest, coord.signing_key)
    waiting = _favoured_under_pin(coord, s)
    if waiting is None:
        supersede_candidate(coord, s, vid)
    s.add(Version(id=vid, seq=seq, parent_id=base.id,
                  status=VersionStatus.CANDIDATE if waiting is None else VersionStatus.REJECTED,
                  manifest_json=artifact.canonical_json(manifest.to_dict()).decode(), weights_sha256=w_sha,
                  graph_sha256=base.graph_sha256, tokenizer_sha256=manifest.tokenizer_sha256,
                  opt_state_sha256=state_sha, round_id=r.id, epsilon=priv["epsilon"],
                  epsilon_local=priv["epsilon_local"], delta=c.privacy_delta,
                  privacy_json=json.dumps(manifest.privacy)))
    if waiting is not None:
        s.flush()
        s.get(Version, vid).decided_at = utcnow()
        s.add(Decision(version_id=vid, action=VersionAction.REJECT, actor=NEWER_ACTOR, numbers_json="{}",
                       reason=f"candidate {waiting} waits for unpin with the canary in its favour; this round's "
                              f"version does not replace it (export-version keeps it)"))
        log.warning("round %d made %s, set aside: candidate %s waits for unpin with the canary in its favour",
                    r.id, vid, waiting)
    r.status, r.closed_at, r.result_version_id = RoundStatus.DONE, utcnow(), vid
    return vid, priv


def _favoured_under_pin(coord: Coordinator, s: Session) -> str | None:
    """The pending candidate, when a pin holds it back with the canary in its favour: README
    promises it waits for `unpin`, so a round closing meanwhile must not supersede it."""
    cand, stable = queries.candidate(s), queries.stable(s)
    if cand is None or stable is None or not queries.pinned(s):
        return None
    return cand.id if canary.verdict(coord, s, cand, stable).action == rollout.PROMOTE else None


# A decision a newer version made (a candidate replaced, or a round's version set aside), not the canary.
NEWER_ACTOR = "newer version"


def supersede_candidate(coord: Coordinator, s: Session, new_id: str) -> None:
    """A new candidate rejects the undecided one it replaces (one canary at a time), recording
    what the canary had measured by then (the dashboard showed no figure for a superseded
    candidate that devices had scored)."""
    old, stable = queries.candidate(s), queries.stable(s)
    if old is not None:
        numbers = canary.verdict(coord, s, old, stable).numbers if stable is not None else {}
        old.status = VersionStatus.REJECTED
        old.decided_at = utcnow()
        # By the round, not the canary: counted with the canary's vetoes (actor "auto"), a routine
        # replacement would fire an alert on rejections, and go unlogged.
        s.add(Decision(version_id=old.id, action=VersionAction.REJECT, actor=NEWER_ACTOR,
                       reason=f"superseded by {new_id} before the canary decided",
                       numbers_json=json.dumps(views._json_safe(numbers))))
        log.info("version %s: superseded by %s before the canary decided", old.id, new_id)


def version_file(coord: Coordinator, version_id: str, kind: str) -> tuple[bytes, str]:
    """(bytes, media type) of a version's manifest, weights (float32 or `weights_q8`), graph or tokenizer."""
    with coord._sessions() as s:
        v = s.get(Version, version_id)
        if v is None:
            raise not_found(f"no version {version_id!r}")
        if kind == "manifest":
            return v.manifest_json.encode(), "application/json"
        refuse_pruned(coord, v, "downloaded")
        if kind == "weights_q8":
            digest = json.loads(v.manifest_json).get("weights_q8_sha256")
            if not digest:
                raise not_found(f"version {version_id} has no quantized weights; fetch its weights")
        else:
            digest = {"weights": v.weights_sha256, "graph": v.graph_sha256, "tokenizer": v.tokenizer_sha256}[kind]
    try:
        return coord.blobs.get(digest), wire.SAFETENSORS_MEDIA_TYPE
    except FileNotFoundError:   # pruned between the read above and this one (`retention.prune`)
        raise not_found(f"{version_id}'s {kind} is no longer in the data directory (keep_versions deleted it, "
                        "or it was lost)") from None


def refuse_pruned(coord: Coordinator, v: Version, doing: str) -> None:
    """Refuse, saying why, to act on `v` (export, download, make stable) when retention deleted
    its files (or will, after its commit): a 404 for a download, else a 409. An import of an
    export made before restores them and clears the mark (`_restore_files`)."""
    if v.files_pruned:
        code, kind = (404, wire.E_NOT_FOUND) if doing == "downloaded" else (409, wire.E_CONFLICT)
        raise ApiError(code, kind, f"{v.id} cannot be {doing}: the service deleted its files when newer versions "
                       f"were {v.status} (keep_versions; its 'prune' decision says how many), and its record "
                       "stays. import-version of an export made before puts them back")


def apply_decision(coord: Coordinator, s: Session, v: Version, action: VersionAction, actor: str, reason: str,
                   numbers: dict) -> None:
    """Change `v`'s status for `action` (promote, reject, pin, rollback) and record the decision;
    a new stable version fails the open round that trains another (`_fail_round_off`)."""
    now = utcnow()
    if action in (VersionAction.PROMOTE, VersionAction.PIN, VersionAction.ROLLBACK):
        # a manual stable change cancels the pending canary; a promotion is that canary
        _become_stable(coord, s, v, now, cancels=None if action == VersionAction.PROMOTE else f"the {action} of {v.id}",
                       actor=actor, by=action)
    elif action == VersionAction.REJECT:
        v.status = VersionStatus.REJECTED
    v.decided_at = now
    s.add(Decision(version_id=v.id, action=action, actor=actor, reason=reason,
                   numbers_json=json.dumps(views._json_safe(numbers))))
    # a canary's veto is what an operator looks into: a WARNING, where INFO was filtered out
    level = logging.WARNING if (actor, action) == ("auto", VersionAction.REJECT) else logging.INFO
    log.log(level, "version %s: %s by %s (%s)", v.id, action, actor, reason)


def _become_stable(coord: Coordinator, s: Session, v: Version, now: datetime, *, cancels: str | None,
                   actor: str, by: str = VersionAction.PROMOTE) -> None:
    """Every stable change (a promotion, a pin, a rollback, an import as stable): the version it
    replaces retires, the round open on another fails (`_fail_round_off`) and, unless `cancels` is
    None (the canary's own candidate promoted), the pending candidate is cancelled by `cancels`.
    A version rolled back from is retired too, and its history says so (it read as if a newer
    version had simply replaced it)."""
    why = f"rolled back: {v.id} became stable" if by == VersionAction.ROLLBACK else f"{v.id} became stable"
    for old in s.scalars(select(Version).where(Version.status == VersionStatus.STABLE, Version.id != v.id)):
        old.status, old.decided_at = VersionStatus.RETIRED, now
        s.add(Decision(version_id=old.id, action="retire", actor=actor, numbers_json="{}", created_at=now,
                       reason=why))   # its history says why; before the decision that did it
    v.status = VersionStatus.STABLE
    _fail_round_off(coord, s, v, now)
    if cancels is not None:
        _cancel_candidate(s, v, cancels, actor, now)


def _cancel_candidate(s: Session, stable: Version, by: str, actor: str, now: datetime) -> None:
    """The pending candidate, rejected because `stable` replaced the version it was compared
    with (recorded, as a superseded candidate is)."""
    cand = queries.candidate(s)
    if cand is not None and cand.id != stable.id:
        cand.status, cand.decided_at = VersionStatus.REJECTED, now
        s.add(Decision(version_id=cand.id, action=VersionAction.REJECT, actor=actor,
                       reason=f"cancelled by {by} before the canary decided", numbers_json="{}"))


def _fail_round_off(coord: Coordinator, s: Session, stable: Version, now: datetime) -> None:
    """The open round, failed if it trains a version other than the new `stable`: its updates are
    steps from that version, and their aggregate would be a candidate without what `stable` holds
    (a promoted candidate's rounds, an operator's pin or rollback). The next round trains `stable`."""
    r = queries.open_round(s, for_update=True)
    if r is None or r.base_version_id == stable.id:
        return
    round_end.fail_round(coord, s, r, f"the stable version changed to {stable.id} while it trained "
                                      f"{r.base_version_id}", now)


def admin_decide(coord: Coordinator, version_id: str, action: str) -> dict[str, Any]:
    """An operator's VersionAction on a version; answers the version as the API shows it."""
    with coord.tx(decides=True) as s:
        v = s.get(Version, version_id)
        if v is None:
            raise not_found(f"no version {version_id!r}")
        if action in (VersionAction.PROMOTE, VersionAction.REJECT) and v.status != VersionStatus.CANDIDATE:
            raise ApiError(409, wire.E_CONFLICT, f"{version_id} is {v.status}, not a candidate")
        if action == VersionAction.ROLLBACK and v.status != VersionStatus.RETIRED:   # once stable, then replaced
            hint = ("it was never stable; `pin` makes it stable without the canary"
                    if v.status == VersionStatus.REJECTED else "roll back to a retired version")
            raise ApiError(409, wire.E_CONFLICT, f"{version_id} is {v.status}; {hint}")
        if action not in VERSION_ACTIONS:
            raise bad_request(f"unknown action {action!r}")
        action = VersionAction(action)
        if action in (VersionAction.PROMOTE, VersionAction.ROLLBACK, VersionAction.PIN):
            refuse_pruned(coord, v, "made stable")
            if not deployment.holds_files(coord, v):   # else every device's download of it is a 500
                raise ApiError(409, wire.E_CONFLICT, f"the data directory lacks {version_id}'s files (restored from "
                                                     "an older backup?): it cannot be sent to devices")
        if action == VersionAction.UNPIN and v.status != VersionStatus.STABLE:   # it was recorded on any id
            stable = queries.stable(s)
            raise ApiError(409, wire.E_CONFLICT, f"{version_id} is {v.status}; unpin the stable version"
                                                 f"{' ' + stable.id if stable else ''}")
        if action in (VersionAction.PIN, VersionAction.UNPIN):
            row = s.get(Setting, "pinned") or Setting(key="pinned", value="0")
            pinned = row.value == "1"
            if (action == VersionAction.UNPIN and not pinned) or \
                    (action == VersionAction.PIN and pinned and v.status == VersionStatus.STABLE):
                return views.version_dict(coord, s, v)   # already so: no second decision in the history
            row.value = "1" if action == VersionAction.PIN else "0"
            s.add(row)
        if action == VersionAction.UNPIN:
            s.add(Decision(version_id=v.id, action=action, actor="admin", reason="automatic promotion on",
                           numbers_json="{}"))
            # A candidate the pin held back has its reports and will get no more: the service decides
            # it (canary.decide_if_asked, on its next request), with the service's settings.
            s.merge(Setting(key=canary.DECIDE_PENDING, value="1"))
        elif action in (VersionAction.PROMOTE, VersionAction.REJECT) and (stable := queries.stable(s)) is not None:
            # What the canary showed when the operator decided over it, recorded as the service's
            # own decisions record it: without it the dashboard lost the candidate's canary top-3.
            d = canary.verdict(coord, s, v, stable)
            apply_decision(coord, s, v, action, "admin", f"admin {action} (the canary: {d.action}, {d.reason})",
                           d.numbers)
        else:
            apply_decision(coord, s, v, action, "admin", f"admin {action}", {})
        return views.version_dict(coord, s, v)
