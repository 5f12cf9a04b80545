"""Read-only lookups over one database session that several areas share.

Each takes the caller's `Session`, so it reads inside the caller's transaction (and sees its
locks); none writes.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from coordinator import privacy
from coordinator.models import Device, Evaluation, Rejection, Round, Setting, Update, Version, utcnow
from coordinator.models_secagg import SecAggMember, SecAggRound
from coordinator.states import RoundStatus, SecAggPhase, VersionStatus
from protocol import artifact, wire

EVALUATION_ISSUED = ""  # Evaluation.report_json of an evaluate task issued but not yet reported


def stable(s: Session) -> Version | None:
    return s.scalar(select(Version).where(Version.status == VersionStatus.STABLE))


def candidate(s: Session) -> Version | None:
    return s.scalar(select(Version).where(Version.status == VersionStatus.CANDIDATE))


def pinned(s: Session) -> bool:
    """True while an operator's pin holds automatic promotion off."""
    row = s.get(Setting, "pinned")
    return row is not None and row.value == "1"


def next_seq(s: Session) -> int:
    return (s.scalar(select(func.max(Version.seq))) or 0) + 1


def manifest(v: Version) -> artifact.Manifest:
    return artifact.Manifest.from_dict(json.loads(v.manifest_json))


def version_blobs(v: Version) -> set[str]:
    """Every blob a version's files are: weights, their int8 download form, graph, tokenizer and
    the server optimizer's state (several versions share a graph and a tokenizer)."""
    q8 = json.loads(v.manifest_json).get("weights_q8_sha256")
    return {d for d in (v.weights_sha256, v.graph_sha256, v.tokenizer_sha256, v.opt_state_sha256, q8) if d}


def open_round(s: Session, *, for_update: bool = False) -> Round | None:
    q = select(Round).where(Round.status == RoundStatus.OPEN)
    return s.scalar(q.with_for_update() if for_update else q)


def accepted(s: Session, round_id: int) -> int:
    """Updates a round counts: stored plain updates, plus the survivors of a summed secure round."""
    plain = int(s.scalar(select(func.count()).select_from(Update).where(Update.round_id == round_id)) or 0)
    summed = s.get(SecAggRound, round_id)
    return plain + (summed.survivors if summed is not None and summed.phase == SecAggPhase.SUMMED else 0)


def averages_now(r: Round, accepted_now: int, *, force: bool = False) -> bool:
    """Whether a close now averages the round: its goal reached, or its minimum at or after its
    deadline (or at a forced close). Else a close past its deadline (or forced) fails it."""
    past = r.deadline is not None and utcnow() >= r.deadline
    return accepted_now >= r.goal_count or ((past or force) and accepted_now >= r.min_count)


def overdue(r: Round) -> bool:
    """An open round past its deadline, not closed by any request yet (maintenance runs on requests)."""
    return r.status == RoundStatus.OPEN and r.deadline is not None and r.deadline <= utcnow()


def masked_inputs(s: Session, round_id: int) -> int:
    """A secure round's masked vectors received so far (its updates count in `accepted` only once
    summed): counted as accepted, the gauge would disagree with every view, which says 0."""
    return int(s.scalar(select(func.count()).select_from(SecAggMember).where(
        SecAggMember.round_id == round_id, SecAggMember.masked_sha256.is_not(None))) or 0)


def noise_seen(s: Session) -> Counter[float]:
    """The noise multiplier of every round in which this coordinator received what devices
    computed from their text: a plain update (stored, or refused after its round's draw was checked)
    or a secure round's sum. A
    device may have taken part in all of them, whichever versions they fed (a rejected candidate,
    a lineage a pin or rollback left), so their composition bounds every device's epsilon against
    the coordinator; a version's own `epsilon_local` counts only its lineage's rounds. Then the
    rounds that versions imported from another coordinator bring (`carried_noise`)."""
    ids = set(s.scalars(select(Update.round_id).distinct()))
    # A refused post counts unless it was refused as from a device the round never drew: any
    # enrolled device could post bytes to any round, and each such post would raise every device's
    # quoted epsilon. It is decided by the reason written when the post was
    # refused, not by rows a later revocation changes (it deletes the device's draws): a device
    # revoked while its post was under way is refused as revoked (`updates.refused_as_revoked`).
    ids |= set(s.scalars(select(Rejection.round_id).distinct().where(
        Rejection.round_id.is_not(None), Rejection.reason != wire.E_NOT_SELECTED)))
    ids |= set(s.scalars(select(SecAggRound.round_id).where(SecAggRound.phase == SecAggPhase.SUMMED)))
    here = Counter(float(json.loads(pj).get("noise_multiplier", 0.0))
                   for pj in s.scalars(select(Round.plan_json).where(Round.id.in_(ids)))) if ids else Counter()
    return here + carried_noise(s)


def carried_noise(s: Session) -> Counter[float]:
    """The noise multipliers of the rounds that versions imported from another coordinator
    brought (`versions.import_version` keeps a manifest's history when it is longer than the
    parent's held here): the same operator's earlier service received those updates, so uncounted,
    after a move to a new data directory the number to quote would read epsilon 0 beside a stable
    version of epsilon 20,000. Each imported version counts the rounds its history holds past its
    parent's, all of them when the parent is not held or its history is not within the version's.
    Histories carry no round identities, so two imports of one lineage whose parent link is not
    held here count their shared rounds twice: an over-count, the safe side of a privacy bound."""
    # Only imported versions and their parents are read: every version's record holds its lineage's
    # whole history, so reading them all cost a record per version on every scrape and dashboard view.
    imported = s.execute(select(Version.id, Version.parent_id, Version.privacy_json)
                         .where(Version.round_id.is_(None))).all()
    history = {vid: privacy.counted(json.loads(pj).get("history")) for vid, _, pj in imported}
    parents = {p for _, p, _ in imported if p and p not in history}
    if parents:
        history |= {vid: privacy.counted(json.loads(pj).get("history")) for vid, pj in s.execute(
            select(Version.id, Version.privacy_json).where(Version.id.in_(parents)))}
    out: Counter[float] = Counter()
    for vid, parent, _ in imported:
        own, base = history[vid], history.get(parent, Counter()) if parent else Counter()
        out += privacy.noise_counts(own - base if base <= own else own)
    return out


def sampling_rate(r: Round) -> float:
    """The round's q for the sampled epsilon: a device in its check-in draw is among its
    `max_selected` slots with probability max_selected / the devices drawn from, and one outside
    the draw not at all. A round without a draw (window 0: first come, first served) samples
    nothing at random: q = 1. A draw from fewer devices than slots takes every one of them, and
    its leftover slots go first come: q = 1 too. Counting a population (every device that ever
    contributed, or a configured size) made q smaller than any device's chance of taking part."""
    if r.drawn_at is None or r.population <= r.max_selected:
        return 1.0
    return privacy.rate_bound(r.max_selected / r.population)


SAMPLING_BASIS = ("each round's slots over the devices in its check-in draw, rounded up to 2 significant digits "
                  "(1 for a round without a draw, first come)")


def population_view(s: Session) -> dict[str, Any]:
    enrolled = int(s.scalar(select(func.count()).select_from(Device).where(Device.revoked.is_(False))) or 0)
    return {"enrolled": enrolled, "sampling": SAMPLING_BASIS}


_REPORTED = Evaluation.report_json != EVALUATION_ISSUED


def short_cohort(s: Session, fraction: float, needed: int) -> int | None:
    """The enrolled, not revoked devices in the canary cohort (the most reports a candidate can
    get) when they may be fewer than `needed`; None when they surely are not. Counting them hashes
    every id, which every scrape and dashboard refresh would pay: with n * fraction >= 4 * needed
    + 50 expected, fewer than `needed` has a chance under e^-14 (Chernoff), and is not counted."""
    from coordinator.rollout import in_canary

    live = Device.revoked.is_(False)
    n = int(s.scalar(select(func.count()).select_from(Device).where(live)) or 0)
    if n * fraction >= 4 * needed + 50:
        return None
    cohort = sum(in_canary(i, fraction) for i in s.scalars(select(Device.id).where(live)))
    return cohort if cohort < needed else None


def reported_count(s: Session, version_id: str) -> int:
    """Canary devices that have reported on this candidate."""
    return int(s.scalar(select(func.count()).select_from(Evaluation).where(
        Evaluation.candidate_version_id == version_id, _REPORTED)) or 0)


def reported_counts(s: Session) -> dict[str, int]:
    """`reported_count` of every candidate that has reports, in one query."""
    return {vid: int(n) for vid, n in s.execute(select(Evaluation.candidate_version_id, func.count())
                                                 .where(_REPORTED).group_by(Evaluation.candidate_version_id))}


def recorded_epsilon_local(privacy_json: str | None, epsilon: float) -> float:
    """A version's epsilon_local as its privacy record has it (else its epsilon): for a row without
    the column's value, which a release before migration 0007 wrote after another migrated."""
    return float(json.loads(privacy_json or "{}").get("epsilon_local", epsilon))


def secure_phase(s: Session, r: Round, plan: dict[str, Any] | None = None) -> str | None:
    """Where a secure round is (keys, shares, masked, summing, unmask, summed, failed); None for a
    plain one, and for a secure one that ended before any device posted its keys.
    A secure round stuck on its keys step read like a plain round waiting for uploads."""
    if not (plan if plan is not None else json.loads(r.plan_json)).get("secure_aggregation"):
        return None
    row = s.get(SecAggRound, r.id)
    if row is None:   # no row until the first device posts its keys
        return "keys" if r.status == RoundStatus.OPEN else None
    return row.phase


def revoked(s: Session, device_id: str) -> bool:
    """Whether the device is revoked (or gone), its row locked to the end of the transaction. A
    request is authenticated before its work; a revocation committed meanwhile took back the
    device's updates and reports, so what the request stores after it would be counted all the
    same. Read here, in the transaction that stores, such a revocation is seen, and one that comes
    later waits for that transaction and then takes back what it stored."""
    dev = s.get(Device, device_id, with_for_update=True)
    return dev is None or dev.revoked
