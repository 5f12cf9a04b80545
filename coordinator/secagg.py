"""The secure-aggregation round mode on the coordinator: it relays, waits and unmasks only the sum.

Phases of one round (protocol.secagg_wire has the device's view):

    keys    devices that trained post two public keys; frozen into a cohort of n at the goal
            (or at the phase timeout with at least min_count): indices, SecAgg+ graph, scale, mu
    shares  each member posts one encrypted share bundle per neighbour; U2 = those who did
    masked  each of U2 posts its masked vector (kept as a blob); U3 = those who did, >= n_min
    unmask  each of U3 is told which neighbours survived / dropped and reveals self-mask shares
            of survivors and mask-key shares of the dropped; with t shares per secret the
            masks are removed from the sum -> summed; the round then closes like a plain one
            (coordinator.rounds takes the mean from `round_mean`)

A phase also advances at `secagg_phase_timeout_s` if enough devices are left; otherwise the
round fails. What the database and blob store ever hold: public keys, ciphertexts the
coordinator cannot open, masked vectors, revealed shares (deleted after the sum), the sum.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from coordinator import discovery, round_end, selection
from coordinator.errors import ApiError, CoordinatorError
from coordinator.models import Round, Version, utcnow
from coordinator.models_secagg import SecAggMember, SecAggReveal, SecAggRound, SecAggShare
from coordinator.states import RoundStatus, SecAggPhase
from protocol import artifact, ddp, secagg, wire
from protocol import secagg_wire as sw

if TYPE_CHECKING:
    from coordinator.service import Coordinator

log = logging.getLogger(__name__)
KEYS, SHARES, MASKED, UNMASK, SUMMING, SUMMED, FAILED = SecAggPhase


def _plan(r: Round) -> wire.TrainPlan:
    return wire.TrainPlan.from_dict(json.loads(r.plan_json))


def joined(s: Session, round_id: int, device_id: str) -> int | None:
    """The member id if this device already posted keys (it must not get the same train task again)."""
    return s.scalar(select(SecAggMember.id).where(SecAggMember.round_id == round_id,
                                                  SecAggMember.device_id == device_id))


def _open_round(s: Session, round_id: int, device_id: str) -> tuple[Round, SecAggRound | None]:
    r = s.get(Round, round_id, with_for_update=True) if 1 <= round_id <= wire.MAX_INT else None
    if r is None:
        raise ApiError(404, wire.E_UNKNOWN_ROUND, f"no round {round_id}")
    if not _plan(r).secure_aggregation:
        raise ApiError(409, wire.E_CONFLICT, f"round {round_id} is not a secure-aggregation round")
    if not selection.is_selected(s, r.id, device_id):   # registered for the draw is not selected
        raise ApiError(403, wire.E_NOT_SELECTED, f"device was not selected for round {r.id}")
    if r.status != RoundStatus.OPEN:
        raise ApiError(409, wire.E_LATE, f"round {r.id} is {r.status}")
    return r, s.get(SecAggRound, round_id)


def _member(s: Session, round_id: int, device_id: str) -> SecAggMember:
    m = s.scalar(select(SecAggMember).where(SecAggMember.round_id == round_id, SecAggMember.device_id == device_id))
    if m is None or m.idx is None:
        raise ApiError(409, wire.E_LATE, "device is not in this round's cohort")
    return m


def _wait(coord: Coordinator, phase: str) -> dict[str, Any]:
    return sw.wait(phase, sw.poll_wait(coord.config.secagg_poll_s))


def _params(row: SecAggRound) -> dict[str, Any]:
    return json.loads(row.params_json)


def _graph(p: dict[str, Any]) -> list[list[int]]:
    return secagg.neighbours(p["n"], p["k"], bytes.fromhex(p["seed"]))


# --- device steps ------------------------------------------------------------------------------

def post_keys(coord: Coordinator, device_id: str, round_id: int, keys: sw.SecAggKeys) -> dict[str, Any]:
    if not (secagg.usable_public_key(keys.enc_pk) and secagg.usable_public_key(keys.mask_pk)):
        raise ApiError(400, wire.E_BAD_REQUEST, "a public key is a point no key can be agreed with (low order)")
    with coord.tx() as s:
        r, row = _open_round(s, round_id, device_id)
        if row is None:
            row = SecAggRound(round_id=r.id, phase=KEYS, phase_started_at=utcnow(), params_json="{}", survivors=0,
                              stats_json="{}")
            s.add(row)
        if joined(s, r.id, device_id) is not None:
            raise ApiError(409, wire.E_DUPLICATE, "keys already posted for this round")
        if row.phase != KEYS:
            raise ApiError(409, wire.E_LATE, f"the cohort of round {r.id} is already fixed")
        s.add(SecAggMember(round_id=r.id, device_id=device_id, enc_pk=keys.enc_pk.hex(), mask_pk=keys.mask_pk.hex(),
                           shared=False, revealed=False))
    advance(coord, round_id)
    return {"protocol_version": wire.PROTOCOL_VERSION, "accepted": True}


def roster(coord: Coordinator, device_id: str, round_id: int) -> dict[str, Any]:
    advance(coord, round_id)
    with coord.tx() as s:
        r, row = _open_round(s, round_id, device_id)
        if row is None or row.phase == KEYS:
            return _wait(coord, KEYS)
        m = _member(s, round_id, device_id)
        p = _params(row)
        mine = _graph(p)[m.idx]
        by_idx = {x.idx: x for x in s.scalars(select(SecAggMember).where(SecAggMember.round_id == round_id,
                                                                         SecAggMember.idx.in_(mine)))}
        nbs = tuple(sw.Neighbour(j, bytes.fromhex(by_idx[j].enc_pk), bytes.fromhex(by_idx[j].mask_pk)) for j in mine)
        return sw.SecAggRoster(round_id=round_id, index=m.idx, n=p["n"], k=p["k"], t=p["t"], n_min=p["n_min"],
                               graph_seed=bytes.fromhex(p["seed"]), dim=p["dim"], scale=p["scale"], mu=p["mu"],
                               neighbours=nbs).to_dict()


def post_shares(coord: Coordinator, device_id: str, round_id: int, body: dict[str, Any]) -> dict[str, Any]:
    msg = sw.SecAggShares.from_dict(body, secagg.CIPHERTEXT_BYTES)
    with coord.tx() as s:
        _, row = _open_round(s, round_id, device_id)
        m = _member(s, round_id, device_id)
        if m.shared:
            raise ApiError(409, wire.E_DUPLICATE, "shares already received")
        if row is None or row.phase != SHARES:
            raise ApiError(409, wire.E_LATE, "not accepting shares from this device now")
        if sorted(msg.shares) != _graph(_params(row))[m.idx]:
            raise ApiError(400, wire.E_BAD_REQUEST, "one share per neighbour, no more, no less")
        for j, ct in msg.shares.items():
            s.add(SecAggShare(round_id=round_id, sender=m.idx, recipient=j, ciphertext=ct.hex()))
        m.shared = True
        m.seed_sha256 = msg.seed_sha256.hex() if msg.seed_sha256 is not None else None
    advance(coord, round_id)
    return {"protocol_version": wire.PROTOCOL_VERSION, "accepted": True}


def inbox(coord: Coordinator, device_id: str, round_id: int) -> dict[str, Any]:
    advance(coord, round_id)
    with coord.tx() as s:
        _, row = _open_round(s, round_id, device_id)
        if row is None or row.phase in (KEYS, SHARES):
            return _wait(coord, row.phase if row else KEYS)
        m = _member(s, round_id, device_id)
        if not m.shared:
            raise ApiError(409, wire.E_LATE, "device did not share its seeds in time")
        rows = s.execute(select(SecAggShare.sender, SecAggShare.ciphertext).where(
            SecAggShare.round_id == round_id, SecAggShare.recipient == m.idx)).all()
        return sw.SecAggInbox({i: bytes.fromhex(ct) for i, ct in rows}).to_dict()


def post_masked(coord: Coordinator, device_id: str, round_id: int, body: bytes) -> dict[str, Any]:
    with coord.tx() as s:
        _, row = _open_round(s, round_id, device_id)
        m = _member(s, round_id, device_id)
        if m.masked_sha256 is not None:
            raise ApiError(409, wire.E_DUPLICATE, "masked vector already received")
        if row is None or row.phase != MASKED or not m.shared:
            raise ApiError(409, wire.E_LATE, "not accepting a masked vector from this device now")
        if len(body) != 4 * _params(row)["dim"]:
            raise ApiError(422, wire.E_MALFORMED, f"a masked vector is {4 * _params(row)['dim']} bytes")
    digest = round_end.store_upload(coord, round_id, body)       # fsynced before the row points to it
    if digest is None:
        raise ApiError(409, wire.E_LATE, "the round ended meanwhile")
    with round_end.dropped_on_failure(coord, round_id, digest), coord.tx() as s:
        # The round row locked, as every other step does: on PostgreSQL a phase check without it
        # could pass while another worker's advance() moved on, and the vector then landed after
        # the cohort's survivors were fixed, so some neighbours would be told it dropped.
        r = s.get(Round, round_id, with_for_update=True)
        m = _member(s, round_id, device_id)
        row = s.get(SecAggRound, round_id)
        # Posted twice at once, both passed the check above: the second is a duplicate here too
        # (otherwise three of six such posts could be answered 200, and only the last one's vector summed).
        earlier = m.masked_sha256
        late = r.status != RoundStatus.OPEN or row.phase != MASKED
        if earlier is None and not late:
            round_end.keep_upload(coord, round_id, digest, body)
            m.masked_sha256 = digest
    if earlier is not None:
        if earlier != digest:   # the same bytes are the same file, which the member's row names
            round_end.drop_refused_upload(coord, round_id, digest)
        raise ApiError(409, wire.E_DUPLICATE, "masked vector already received")
    if late:
        round_end.drop_refused_upload(coord, round_id, digest)
        raise ApiError(409, wire.E_LATE, "the masked-input phase closed meanwhile")
    advance(coord, round_id)
    return {"protocol_version": wire.PROTOCOL_VERSION, "accepted": True}


def unmask_request_for(s: Session, row: SecAggRound, m: SecAggMember) -> sw.SecAggUnmaskRequest:
    """Of m's neighbours that shared: who sent a masked vector (survivor) and who did not."""
    mine = set(_graph(_params(row))[m.idx])
    members = s.scalars(select(SecAggMember).where(SecAggMember.round_id == row.round_id,
                                                   SecAggMember.shared.is_(True))).all()
    surv = tuple(sorted(x.idx for x in members if x.idx in mine and x.masked_sha256 is not None))
    drop = tuple(sorted(x.idx for x in members if x.idx in mine and x.masked_sha256 is None))
    return sw.SecAggUnmaskRequest(surv, drop, row.survivors)


def unmask(coord: Coordinator, device_id: str, round_id: int) -> dict[str, Any]:
    advance(coord, round_id)
    with coord.tx() as s:
        _, row = _open_round(s, round_id, device_id)
        if row is None or row.phase in (KEYS, SHARES, MASKED):
            return _wait(coord, row.phase if row else KEYS)
        m = _member(s, round_id, device_id)
        if m.masked_sha256 is None:
            raise ApiError(409, wire.E_LATE, "device sent no masked vector: nothing to unmask for it")
        if row.phase != UNMASK or m.revealed:
            return _wait(coord, row.phase)
        return unmask_request_for(s, row, m).to_dict()


def post_reveal(coord: Coordinator, device_id: str, round_id: int, body: dict[str, Any]) -> dict[str, Any]:
    msg = sw.SecAggReveal.from_dict(body, secagg.SHARE_BYTES)
    with coord.tx() as s:
        _, row = _open_round(s, round_id, device_id)
        m = _member(s, round_id, device_id)
        if m.revealed:
            raise ApiError(409, wire.E_DUPLICATE, "shares already revealed")
        if row is None or row.phase != UNMASK or m.masked_sha256 is None:
            raise ApiError(409, wire.E_LATE, "not accepting shares from this device now")
        req = unmask_request_for(s, row, m)
        if not set(msg.self_shares) <= set(req.survivors) or not set(msg.key_shares) <= set(req.dropped):
            raise ApiError(400, wire.E_BAD_REQUEST, "revealed shares for devices that were not asked for")
        for kind, shares in (("self", msg.self_shares), ("key", msg.key_shares)):
            for owner, share in shares.items():
                s.add(SecAggReveal(round_id=round_id, revealer=m.idx, owner=owner, kind=kind, share=share.hex()))
        m.revealed = True
    advance(coord, round_id)
    return {"protocol_version": wire.PROTOCOL_VERSION, "accepted": True}


# --- phase machine -----------------------------------------------------------------------------

_STUCK: set[tuple[str, int]] = set()   # (database, secure round) whose advance failed, said once


def advance_open(coord: Coordinator) -> None:
    """Advance every open secure round (called from Coordinator.maintenance)."""
    with coord._sessions() as s:
        ids = s.scalars(select(SecAggRound.round_id).join(Round, Round.id == SecAggRound.round_id)
                        .where(Round.status == RoundStatus.OPEN)).all()
    for rid in ids:
        try:
            advance(coord, rid)
        except Exception:   # one round's fault must not stop the maintenance (deadlines, canary, retention)
            # said in full once per round and process: the maintenance runs on every request
            said = (coord.config.resolved_database_url, rid)
            (log.debug if said in _STUCK else log.exception)("secure round %s: its phase could not be advanced", rid)
            _STUCK.add(said)


def _fail(coord: Coordinator, s: Session, r: Round, reason: str) -> None:
    round_end.fail_round(coord, s, r, f"secure aggregation: {reason}")


class _CannotFreeze(CoordinatorError):
    """The cohort's ring and scale cannot carry the plan's noise (`ddp.choose_scale`)."""


def _freeze(coord: Coordinator, s: Session, r: Round, row: SecAggRound) -> None:
    members = s.scalars(select(SecAggMember).where(SecAggMember.round_id == r.id).order_by(SecAggMember.id)).all()
    n = len(members)
    c = coord.config
    k, t = secagg.graph_degree(n, c.secagg_dropout)
    n_min = min(n, max(r.min_count, math.ceil((1 - c.secagg_dropout) * n), 2))
    plan = _plan(r)
    base = s.get(Version, r.base_version_id)
    if plan.discover_words:   # a vote over the word list's tail, L2 norm <= 1 (protocol.discovery)
        dim, clip = discovery.vote_shape(coord, base)
    else:
        dim, clip = artifact.Manifest.from_dict(json.loads(base.manifest_json)).num_params, plan.clip_norm
    try:
        scale = ddp.choose_scale(clip, n, plan.noise_multiplier, dim, n_min)
    except ValueError as e:   # e.g. noise too large for the ring: said once, not a 500 on every roster
        raise _CannotFreeze(str(e)) from None
    mu = ddp.skellam_mu(plan.noise_multiplier, scale, clip, dim, n_min)
    for i, m in enumerate(members):
        m.idx = i
    row.params_json = json.dumps({"n": n, "k": k, "t": t, "n_min": n_min, "seed": os.urandom(32).hex(), "dim": dim,
                                  "scale": scale, "mu": mu, "dropout": c.secagg_dropout})
    log.info("round %d: secure cohort of %d fixed (k=%d neighbours, t=%d, at least %d survivors)", r.id, n, k, t,
             n_min)


def advance(coord: Coordinator, round_id: int) -> None:
    """Move the round's phase on when everyone expected answered, or at the phase timeout. A round
    id no database column can hold is no round: the step that called it answers 404 (a device's
    `/v1/secagg/2147483648/roster` got a 500 from PostgreSQL's "integer out of range")."""
    if not 1 <= round_id <= wire.MAX_INT:
        return
    summing = False
    with coord.tx() as s:
        r = s.get(Round, round_id, with_for_update=True)
        row = s.get(SecAggRound, round_id)
        if r is None or row is None or r.status != RoundStatus.OPEN:
            return
        timed_out = utcnow() >= row.phase_started_at + timedelta(seconds=coord.config.secagg_phase_timeout_s)
        q = select(func.count()).select_from(SecAggMember).where(SecAggMember.round_id == round_id)
        cnt = lambda *w: int(s.scalar(q.where(*w)) or 0)  # noqa: E731
        p = _params(row)
        nxt = None
        if row.phase == KEYS:
            n = cnt()
            if n >= max(r.goal_count, 2) or (timed_out and n >= max(r.min_count, 2)):   # a sum needs 2
                try:
                    _freeze(coord, s, r, row)
                    nxt = SHARES
                except _CannotFreeze as e:
                    _fail(coord, s, r, f"this plan's noise cannot be carried ({e})")
        elif row.phase == SHARES:
            shared = cnt(SecAggMember.shared.is_(True))
            if shared == p["n"] or timed_out:
                nxt = MASKED if shared >= p["n_min"] else None
                if nxt is None:
                    _fail(coord, s, r, f"only {shared} of {p['n']} devices shared their seeds, need {p['n_min']}")
        elif row.phase == MASKED:
            shared, masked = cnt(SecAggMember.shared.is_(True)), cnt(SecAggMember.masked_sha256.is_not(None))
            if masked == shared or timed_out:
                if masked >= p["n_min"]:
                    nxt, row.survivors = UNMASK, masked
                else:
                    _fail(coord, s, r, f"only {masked} masked vectors, need {p['n_min']}")
        elif row.phase == UNMASK:
            masked = cnt(SecAggMember.masked_sha256.is_not(None))
            revealed = cnt(SecAggMember.revealed.is_(True))
            if revealed == masked or timed_out:
                nxt, summing = SUMMING, True
        elif row.phase == SUMMING and timed_out:   # a summing worker died: try again
            nxt, summing = SUMMING, True
        if nxt is not None:
            row.phase, row.phase_started_at = nxt, utcnow()
    if summing:   # minutes at 500 devices: never inside the request that completed the phase
        key = (id(coord), round_id)
        with _SUMMING_LOCK:   # one unmask per round in this process: a sum longer than the phase
            if key in _summing:   # timeout was started again at every timeout, all at once
                return
            _summing.add(key)
        if not coord.serving:   # a command (`tick`, `start-round`): a thread would die when it exits
            _sum_logged(coord, round_id, key)
            return
        try:
            threading.Thread(target=_sum_logged, args=(coord, round_id, key), name=f"secagg-sum-{round_id}",
                             daemon=True).start()
        except BaseException:   # never started: the next timeout must be free to try again
            with _SUMMING_LOCK:
                _summing.discard(key)
            raise


_SUMMING_LOCK = threading.Lock()
_summing: set[tuple[int, int]] = set()   # (coordinator, round) this process is unmasking now


def _sum_logged(coord: Coordinator, round_id: int, key: tuple[int, int]) -> None:
    try:
        _sum(coord, round_id)
    except Exception:  # the phase stays `summing`; advance() retries it after the phase timeout
        log.exception("round %d: unmasking failed; will retry after the phase timeout", round_id)
    finally:
        with _SUMMING_LOCK:
            _summing.discard(key)


def restart_phase_clocks(coord: Coordinator) -> None:
    """A service process starts: an open secure round whose phase timed out meanwhile gets its
    whole timeout again, from now. Counted from before an outage longer than the timeout, the
    first request after it closed the phase with whoever got through first, and devices that were
    retrying all along were dropped (a 10 s outage at a 6 s timeout failed every phase tried).
    A phase still within its timeout is left alone: gunicorn starts (and replaces) workers while
    others serve, and a worker's start must not move another's phase. An unmask (`summing`) is
    not touched: its timeout already starts it again when the process doing it is gone."""
    now = utcnow()
    since = now - timedelta(seconds=coord.config.secagg_phase_timeout_s)
    with coord.tx() as s:
        open_ids = select(Round.id).where(Round.status == RoundStatus.OPEN)
        for row in s.scalars(select(SecAggRound).where(SecAggRound.round_id.in_(open_ids),
                                                       SecAggRound.phase.in_((KEYS, SHARES, MASKED, UNMASK)),
                                                       SecAggRound.phase_started_at <= since)):
            row.phase_started_at = now


# Sets of t shares tried per secret: with 32, 3 wrong revealers of 9 shares (t = 5) leave a quarter
# of the secrets unfound. An interpolation costs well under a millisecond at small t
# and 0.27 s at t = 1,001, so the tries also stop after TRY_SECONDS per secret.
TRIES = 256
TRY_SECONDS = 5.0


def _recovered(got: list[bytes], t: int, fits: Callable[[bytes], bool] | None) -> bytes | None:
    """A secret from its revealed shares: the first t, else other sets of t (each owner has up
    to k shares, and devices may have revealed wrong ones), at most TRIES tries or TRY_SECONDS;
    None if none reconstructs. It must also `fit` what its owner posted: a mask key the public
    key, a self-mask seed its sha256 (a forged share otherwise recovered another seed)."""
    if math.comb(len(got), t) <= TRIES:
        tries = list(itertools.combinations(got, t))
    else:
        rng = random.Random(0)
        tries = [got[:t]] + [rng.sample(got, t) for _ in range(TRIES - 1)]
    give_up = time.monotonic() + TRY_SECONDS
    for n, shares in enumerate(tries):
        if n and time.monotonic() > give_up:
            break
        try:
            secret = secagg.recover_secret(shares, t)
        except secagg.SecAggError:
            continue
        if fits is None or fits(secret):
            return secret
    return None


def _fits(m: SecAggMember, kind: str) -> Callable[[bytes], bool] | None:
    """What `m`'s recovered secret of `kind` must match, None for a seed a device from before
    this check did not commit to (taken unchecked, as it was)."""
    if kind == "key":
        public = bytes.fromhex(m.mask_pk)
        return lambda secret: secagg.public_key(secret) == public
    if m.seed_sha256 is None:
        return None
    digest = bytes.fromhex(m.seed_sha256)
    return lambda secret: hashlib.sha256(secret).digest() == digest


def _secrets(s: Session, round_id: int, t: int) -> tuple[dict[int, bytes], dict[int, bytes], list[int], list[int]]:
    """(self seeds of survivors, mask keys of dropped, owners with fewer than t shares, owners
    whose shares reconstruct nothing)."""
    shares: dict[tuple[str, int], list[bytes]] = {}
    for kind, owner, share in s.execute(select(SecAggReveal.kind, SecAggReveal.owner, SecAggReveal.share)
                                        .where(SecAggReveal.round_id == round_id)):
        shares.setdefault((kind, owner), []).append(bytes.fromhex(share))
    members = s.scalars(select(SecAggMember).where(SecAggMember.round_id == round_id,
                                                   SecAggMember.shared.is_(True))).all()
    seeds, keys, short, bad = {}, {}, [], []
    for m in members:
        kind = "self" if m.masked_sha256 is not None else "key"
        got = shares.get((kind, m.idx), [])
        if len(got) < t:
            short.append(m.idx)
            continue
        secret = _recovered(got, t, _fits(m, kind))
        if secret is None:
            bad.append(m.idx)
        else:
            (seeds if kind == "self" else keys)[m.idx] = secret
    return seeds, keys, short, bad


def _sum(coord: Coordinator, round_id: int) -> None:
    """Recover the seeds, add the masked vectors, remove the masks; outside the lock (heavy)."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    with coord._sessions() as s:
        row = s.get(SecAggRound, round_id)
        r = s.get(Round, round_id)
        if r is None or row is None or r.status != RoundStatus.OPEN or row.phase != SUMMING:
            return   # closed meanwhile (forced, its deadline, a stable change): nothing to unmask
        p = _params(row)
        seeds, keys, short, bad = _secrets(s, round_id, p["t"])
        survivors = s.execute(select(SecAggMember.idx, SecAggMember.mask_pk, SecAggMember.masked_sha256).where(
            SecAggMember.round_id == round_id, SecAggMember.masked_sha256.is_not(None))).all()
    total = np.zeros(p["dim"], np.uint32)
    lost = False   # a survivor's masked vector gone from the data directory: no unmask can ever read it
    if not short and not bad:
        for _, _, digest in survivors:
            try:
                total += np.frombuffer(coord.uploads.get(round_id, digest), dtype="<u4")
            except FileNotFoundError:   # the round ended meanwhile and its uploads went with it
                with coord._sessions() as s:
                    if s.get(Round, round_id).status != RoundStatus.OPEN:
                        return
                lost = True
                break
        if not lost:
            total = secagg.unmask_sum(total, seeds, keys, {i: bytes.fromhex(pk) for i, pk, _ in survivors},
                                      _graph(p), round_id)
    # With the round's uploads, not among the blobs: a kill before the row below names it, and the
    # round then closed, left the survivors' noised sum (a discovery round's votes) for good.
    digest = None if short or bad or lost else coord.uploads.put(round_id, total.astype("<u4").tobytes())
    orphan = None
    with coord.tx(decides=True) as s:
        r = s.get(Round, round_id, with_for_update=True)
        row = s.get(SecAggRound, round_id)
        if r.status != RoundStatus.OPEN or row.phase != SUMMING:
            # Closed while this ran: the sum it made is kept nowhere (its blob held the survivors'
            # exact noised mean, or a discovery round's vote histogram, for good). It was computed,
            # so it counts as seen (`queries.noise_seen`): a failed round that says `summed`.
            if digest is not None and digest != row.sum_sha256:   # not another worker's sum of the same
                orphan = digest
                if row.phase != SUMMED:
                    row.phase, row.survivors = SUMMED, len(survivors)
        elif short:
            _fail(coord, s, r, f"too few shares revealed to unmask devices {short[:10]}")
        elif lost:   # as a plain round's missing update: it would fail at every retry until the deadline
            _fail(coord, s, r, "a masked vector's file is missing from the data directory")
        elif bad:   # the same shares fail the same way at every retry: the round ends now, saying why
            _fail(coord, s, r, f"the revealed shares of devices {bad[:10]} reconstruct no secret "
                               "(devices revealed wrong shares, or those devices dealt inconsistent ones)")
        else:
            row.phase, row.sum_sha256, row.survivors = SUMMED, digest, len(survivors)
            row.stats_json = json.dumps({"unmask_seconds": round(time.perf_counter() - t0, 3),
                                         "unmask_cpu_seconds": round(time.process_time() - cpu0, 3),
                                         "dropped_after_sharing": len(keys), "survivors": len(survivors)})
        s.execute(delete(SecAggReveal).where(SecAggReveal.round_id == round_id))
    if orphan is not None:   # the close deleted the round's folder before this put made it again
        coord.uploads.discard_round(round_id)
        log.warning("round %d: closed while its sum was unmasked: the sum is discarded (counted as seen)", round_id)
        return
    if not short and not bad and not lost:   # failed above: no sum was made, nothing to close
        log.info("round %d: sum of %d masked updates unmasked (%d dropped devices' masks removed)", round_id,
                 len(survivors), len(keys))
        coord.close_round(round_id, force=True)   # the sum is final: fewer than the goal is fine


class MalformedSum(CoordinatorError):
    """A secure round's sum that honest devices' vectors cannot make (`round_mean`)."""


def round_mean(coord: Coordinator, s: Session, r: Round, plan: wire.TrainPlan, updates: list,
               plain_mean: Callable[[], np.ndarray]) -> tuple[np.ndarray, list, dict]:
    """For rounds._aggregate: (mean update, update rows, privacy notes for the version).

    Plain rounds: the configured aggregator (mean, trimmed_mean, median) over the stored
    updates. Secure rounds: the survivors' mean from the unmasked sum (unweighted: example
    counts are not revealed in secure mode; no robust aggregator, as no update is seen alone),
    with stand-ins (no digest, 0 examples) for the update rows."""
    if not plan.secure_aggregation:
        return plain_mean(), updates, {}
    row = s.get(SecAggRound, r.id)
    p = _params(row)
    ring_sum = np.frombuffer(coord.uploads.get(r.id, row.sum_sha256), dtype="<u4")
    mean = ddp.decode_sum(ring_sum, p["scale"], row.survivors)
    # A masked vector of the right length not made by `encode` (random bytes, NaN floats) was
    # summed into a random mean, written as the candidate: no vector is seen alone, the mean is.
    bound = ddp.mean_norm_bound(plan.clip_norm, p["scale"], p["mu"], row.survivors, p["dim"])
    if not (norm := float(np.linalg.norm(mean.astype(np.float64)))) <= bound:
        raise MalformedSum(f"the unmasked mean's norm {norm:.3g} is beyond what {row.survivors} clipped, noised "
                           f"updates reach ({bound:.3g}): a device sent a masked vector not made as the protocol says")
    note = {"secure_aggregation": {"survivors": row.survivors, "cohort": p["n"], "k": p["k"], "t": p["t"],
                                   "n_min": p["n_min"], "scale": p["scale"], "skellam_mu_per_device": p["mu"],
                                   "quantization_bound": ddp.mean_error_bound(p["scale"])},
            "assumptions": "secure aggregation with distributed Skellam noise: the coordinator sees only the sum, "
                           "whose noise has std >= noise_multiplier * sensitivity when at least n_min devices "
                           "survive; epsilon_local (no sampling amplification) is the central epsilon against the "
                           "coordinator, epsilon adds amplification by sampling (Gaussian RDP for the Skellam sum)"}
    return mean, [(None, 0)] * row.survivors, note
