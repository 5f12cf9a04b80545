"""What the operator's dashboard shows, in one admin-only JSON document.

Assembled from the service's own views (status, versions, rounds, canary, rejections) so the
page and the admin CLI never disagree; only counts and versions, never a device's text.
Accuracies are percentages, as in the simulation report; the canary's are word-level top-3 on
the canary devices' held-out text (what the keyboard strip shows), decisions from before the
canary scored words show next-piece top-3.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from coordinator.blobs import disk_short, free_bytes
from coordinator.models import Device, utcnow
from coordinator.states import RoundStatus, VersionStatus

ACTIVE_WINDOW = timedelta(hours=24)
DECISIONS_SHOWN = 50


def _pct(numbers: dict | None, side: str) -> float | None:
    x = (numbers or {}).get(side, {}) or {}
    v = x.get("word_top3_acc", x.get("top3_acc"))
    return None if not isinstance(v, (int, float)) else round(100.0 * v, 2)


def _devices(c: Any) -> dict[str, int]:
    with c._sessions() as s:
        live = Device.revoked.is_(False)
        enrolled = s.scalar(select(func.count()).select_from(Device).where(live)) or 0
        active = s.scalar(select(func.count()).select_from(Device).where(
            live, Device.last_seen_at >= utcnow() - ACTIVE_WINDOW)) or 0
    return {"enrolled": int(enrolled), "active_24h": int(active)}


def _trouble(c: Any) -> list[str]:
    """What the page shows above everything: a full disk refuses every upload while the page
    would otherwise show a round waiting for devices."""
    return [short] if (short := disk_short(free_bytes(c.data_dir))) is not None else []


def dashboard_data(c: Any) -> dict[str, Any]:
    """`c`: the Coordinator. Everything the page renders, computed per refresh."""
    status = c.status()
    versions = c.version_summaries()   # not list_versions: every record and manifest whole
    rounds = c.round_counts()
    canary = c.canary_comparison()
    rnd = status["latest_round"]
    if rnd is not None:
        # a secure round's masked vectors are uploads before its sum makes them accepted updates
        rnd = {**rnd, "uploaded": max(rnd["accepted"], rnd["masked"]) + rnd["rejected"]}
        rnd["rejection_reasons"] = c.rejection_counts(rnd["round_id"])
    history = []
    for v in versions:
        verdict = next((d for d in reversed(v["decisions"]) if d["numbers"].get("candidate")), None)
        numbers = verdict["numbers"] if verdict else (canary.get("numbers")
                                                       if canary.get("candidate_version_id") == v["version_id"]
                                                       else None)
        history.append({"version_id": v["version_id"], "status": v["status"], "round_id": v["round_id"],
                        "parent_id": v["parent_id"], "created_at": v["created_at"],
                        "epsilon": v["epsilon"], "epsilon_local": v["epsilon_local"],
                        "canary_reports": v["canary_reports"], "candidate_top3_pct": _pct(numbers, "candidate"),
                        "stable_top3_pct": _pct(numbers, "stable"), "files_pruned": v["files_pruned"]})
    # Retention's deletions show in the versions table ("files deleted"); in the log they would crowd
    # out the decisions about the versions in use (a third of the rows or more).
    decisions = sorted(({"at": d["at"], "version_id": v["version_id"], "action": d["action"], "actor": d["actor"],
                         "reason": d["reason"]} for v in versions for d in v["decisions"] if d["action"] != "prune"),
                       key=lambda d: d["at"] or "", reverse=True)[:DECISIONS_SHOWN]
    stable = next((h for h in history if h["status"] == VersionStatus.STABLE), None)
    return {"stable_version_id": status["stable_version_id"], "candidate_version_id": status["candidate_version_id"],
            "pinned": status["pinned"], "devices": _devices(c), "round": rnd,
            "rounds": {"total": sum(rounds.values()), "done": rounds.get(RoundStatus.DONE, 0),
                       "failed": rounds.get(RoundStatus.FAILED, 0)},
            "canary": canary, "privacy": {"epsilon": stable["epsilon"] if stable else None,
                                          "epsilon_local": status["privacy"]["epsilon_local"],
                                          "rounds": status["privacy"]["rounds"],
                                          "delta": c.config.privacy_delta,
                                          "population": {k: v for k, v in status["population"].items()
                                                         if k != "enrolled"}},
            "rejections_total": c.rejection_counts(), "decisions": decisions, "versions": history,
            "trouble": _trouble(c),
            "server_time": utcnow().isoformat() + "Z"}
