"""The coordinator's read views: versions, rounds, rejections and status as API dicts.

Read-only, each in its own session; the JSON helpers here keep infinities and datetimes
JSON-safe for every module that builds an answer.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from coordinator import privacy, queries, selection
from coordinator.errors import not_found
from coordinator.listing import REJECTIONS_SHOWN, ROUNDS_SHOWN
from coordinator.models import Decision, Rejection, Round, Version
from protocol import wire

if TYPE_CHECKING:
    from coordinator.service import Coordinator


def iso(dt: datetime | None) -> str | None:
    """A stored UTC time as the API and CLI show it."""
    return None if dt is None else dt.isoformat() + "Z"


def _jf(x: float) -> float | str:
    """JSON-safe float (epsilon may be inf)."""
    return x if math.isfinite(x) else str(x)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return _jf(obj)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def round_dict(coord: Coordinator, s: Session, r: Round) -> dict[str, Any]:
    selected = selection.selected_count(s, r.id)
    rejected = int(s.scalar(select(func.count()).select_from(Rejection).where(Rejection.round_id == r.id)) or 0)
    plan = json.loads(r.plan_json)
    return {"round_id": r.id, "status": r.status, "base_version_id": r.base_version_id,
            "plan": plan, "goal_count": r.goal_count, "max_selected": r.max_selected,
            "min_count": r.min_count, "population": r.population, "selected": selected,
            # after the draw, its losers wait for nothing: 0, not the hundreds the draw left out
            "waiting_for_draw": 0 if r.drawn_at is not None else selection.waiting_count(s, r.id),
            "selection_ends_at": iso(r.selection_ends_at),
            "accepted": queries.accepted(s, r.id), "rejected": rejected, "deadline": iso(r.deadline),
            "created_at": iso(r.created_at), "closed_at": iso(r.closed_at),
            "result_version_id": r.result_version_id, "reason": r.reason,
            "overdue": queries.overdue(r),   # as `fedkeys_round_overdue` says it
            "secure_phase": queries.secure_phase(s, r, plan), "masked": queries.masked_inputs(s, r.id)}


def _decision(d: Decision) -> dict[str, Any]:
    return {"action": d.action, "actor": d.actor, "reason": d.reason, "numbers": json.loads(d.numbers_json),
            "at": iso(d.created_at)}


def version_dict(coord: Coordinator, s: Session, v: Version) -> dict[str, Any]:
    evals = queries.reported_count(s, v.id)
    decisions = [_decision(d)
                 for d in s.scalars(select(Decision).where(Decision.version_id == v.id).order_by(Decision.id))]
    return {"version_id": v.id, "seq": v.seq, "status": v.status, "parent_id": v.parent_id, "round_id": v.round_id,
            "epsilon": _jf(v.epsilon), "delta": v.delta, "privacy": json.loads(v.privacy_json),
            "metrics": json.loads(v.manifest_json).get("metrics", {}), "canary_reports": evals,
            "decisions": decisions, "created_at": iso(v.created_at), "decided_at": iso(v.decided_at),
            "files_pruned": v.files_pruned}


def list_versions(coord: Coordinator) -> list[dict[str, Any]]:
    with coord._sessions() as s:
        return [version_dict(coord, s, v) for v in s.scalars(select(Version).order_by(Version.seq))]


def version_summaries(coord: Coordinator) -> list[dict[str, Any]]:
    """Every version as the dashboard and the `versions` table show it: `version_dict` without the
    privacy record and the manifest's metrics, in three queries. Each version's record holds its
    lineage's whole history (one entry a round until migration 0008), so `list_versions` parsed the
    rounds squared (2.7 s at 2,000 versions, on every 5-second refresh of the dashboard); this reads
    `epsilon_local` from its column."""
    cols = (Version.id, Version.seq, Version.status, Version.parent_id, Version.round_id, Version.epsilon,
            Version.epsilon_local, Version.delta, Version.created_at, Version.decided_at, Version.files_pruned)
    with coord._sessions() as s:
        rows = s.execute(select(*cols).order_by(Version.seq)).all()
        decisions: dict[str, list[dict[str, Any]]] = {}
        for d in s.scalars(select(Decision).order_by(Decision.id)):
            decisions.setdefault(d.version_id, []).append(_decision(d))
        reports = queries.reported_counts(s)
        unset = {vid: queries.recorded_epsilon_local(pj, eps) for vid, eps, pj in s.execute(
            select(Version.id, Version.epsilon, Version.privacy_json).where(Version.epsilon_local.is_(None)))}
    return [{"version_id": v.id, "seq": v.seq, "status": v.status, "parent_id": v.parent_id, "round_id": v.round_id,
             "epsilon": _jf(v.epsilon), "epsilon_local": _jf(unset.get(v.id, v.epsilon_local)),
             "delta": v.delta, "canary_reports": reports.get(v.id, 0), "decisions": decisions.get(v.id, []),
             "created_at": iso(v.created_at), "decided_at": iso(v.decided_at), "files_pruned": v.files_pruned}
            for v in rows]


def round_counts(coord: Coordinator) -> dict[str, int]:
    """Rounds by status, counted by the database (the dashboard built every round's view for it)."""
    with coord._sessions() as s:
        return {status: int(n) for status, n in s.execute(select(Round.status, func.count()).group_by(Round.status))}


def rejection_counts(coord: Coordinator, round_id: int | None = None) -> dict[str, int]:
    """Rejected updates by reason, over every round or one."""
    with coord._sessions() as s:
        return _by_reason(s, _of_round(s, round_id))


def _of_round(s: Session, round_id: int | None) -> list:
    """The rejections' filter for `round_id` (None: every round); 404 for a round that never was."""
    if round_id is None:
        return []
    if s.get(Round, round_id) is None:   # not an empty list: a mistyped id would read "none"
        raise not_found(f"no round {round_id}")
    return [Rejection.round_id == round_id]


def _by_reason(s: Session, where: list) -> dict[str, int]:
    return {reason: int(n) for reason, n in s.execute(select(Rejection.reason, func.count()).where(*where)
                                                       .group_by(Rejection.reason))}


def _newest(s: Session, query: Any, limit: int) -> tuple[list, int | None]:
    """The first `limit` rows of `query` (newest first) and the `before` that shows the page older
    than them (their oldest id), or None when there are no more: one row past the page tells."""
    got = list(s.scalars(query.limit(limit + 1)))
    return got[:limit], (got[limit - 1].id if len(got) > limit else None)


def list_rounds(coord: Coordinator, limit: int = ROUNDS_SHOWN, before: int | None = None) -> dict[str, Any]:
    """{"rounds": the newest `limit` (with an id below `before`), oldest first; "total": how many in
    all; "next_before": the `before` of the page older than this, None at the oldest}. Bounded,
    since every round ever, at six queries each, grows without limit: a coordinator that opens a
    round every few minutes holds tens of thousands within months."""
    where = [] if before is None else [Round.id < before]
    with coord._sessions() as s:
        newest, older = _newest(s, select(Round).where(*where).order_by(Round.id.desc()), limit)
        total = int(s.scalar(select(func.count()).select_from(Round)) or 0)
        return {"rounds": [round_dict(coord, s, r) for r in reversed(newest)], "total": total,
                "next_before": older}


def get_round(coord: Coordinator, round_id: int) -> dict[str, Any]:
    if not 1 <= round_id <= wire.MAX_INT:
        raise not_found(f"no round {round_id}")
    with coord._sessions() as s:
        r = s.get(Round, round_id)
        if r is None:
            raise not_found(f"no round {round_id}")
        return round_dict(coord, s, r)


def rejections(coord: Coordinator, round_id: int | None = None, limit: int = REJECTIONS_SHOWN,
               before: int | None = None) -> dict[str, Any]:
    """The newest `limit` rejections (of one round, or of all; with an id below `before`), oldest
    first; how many there are and how many of each reason; and `next_before`, the `before` of the
    page older than this (None at the oldest). Bounded, since every rejection ever grows fast: with
    a goal of 1,000 a round adds 300 late uploads."""
    with coord._sessions() as s:
        where = _of_round(s, round_id)
        page = where if before is None else [*where, Rejection.id < before]
        newest, older = _newest(s, select(Rejection).where(*page).order_by(Rejection.id.desc()), limit)
        by_reason = _by_reason(s, where)
        return {"rejections": [{"id": x.id, "round_id": x.round_id, "device_id": x.device_id, "reason": x.reason,
                                "message": x.message, "at": iso(x.created_at)} for x in reversed(newest)],
                "total": sum(by_reason.values()), "by_reason": by_reason,
                "next_before": older}


def status(coord: Coordinator) -> dict[str, Any]:
    from coordinator.rounds import safe_maintenance  # rounds stands on views

    safe_maintenance(coord)   # a round that cannot aggregate (a full disk) is said, and the status still read
    with coord._sessions() as s:
        stable, cand = queries.stable(s), queries.candidate(s)
        r = s.scalar(select(Round).order_by(Round.id.desc()))
        population = queries.population_view(s)
        return {"stable_version_id": stable.id if stable else None,
                "candidate_version_id": cand.id if cand else None, "pinned": queries.pinned(s),
                "devices": population["enrolled"], "population": population,
                "latest_round": round_dict(coord, s, r) if r else None,
                "privacy": _json_safe(privacy.against_coordinator(queries.noise_seen(s), coord.config.privacy_delta)),
                "public_key_hex": coord.public_key_hex}
