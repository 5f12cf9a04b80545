"""The device's side of a secure-aggregation round: it uploads only a masked, noised, quantized
vector and reveals shares only in the one way that cannot unmask anyone.

Steps (protocol.secagg_wire): keys -> roster -> encrypted seed shares -> inbox -> masked vector
-> unmask request -> reveal. Secrets (two X25519 private keys, the self-mask seed, the shares
neighbours sent) live only in this process's memory for the length of the round; a device that
restarts has nothing left to reveal and simply counts as dropped.

The honest device's rules at the unmask step (`Revealer`): it refuses to reveal, for the same
neighbour, both the self-mask share (asked when that neighbour survived) and the mask-key share
(asked when it dropped) — together they would unmask that neighbour's individual update —
within one request or across requests; it refuses when the coordinator claims it dropped
although it uploaded, when fewer than n_min devices survived (the noise would be short; the
coordinator's count must agree with the survivors it lists, and in a complete graph the list is
the count), and for devices that are not neighbours that shared with it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from edge_runtime.client import CoordinatorClient, RejectedError, TransientError
from edge_runtime.errors import EdgeError, Stopping
from protocol import ddp, discovery, secagg, wire
from protocol import secagg_wire as sw

log = logging.getLogger(__name__)


class Refused(EdgeError):
    """The device stops taking part: the coordinator asked for something an honest device refuses."""


def local_plan(plan: wire.TrainPlan) -> wire.TrainPlan:
    """In secure mode the device adds no Gaussian noise: its noise is a Skellam share, added later."""
    return dataclasses.replace(plan, noise_multiplier=0.0) if plan.secure_aggregation else plan


class Revealer:
    """Answers unmask requests, never revealing both kinds of share of one neighbour."""

    def __init__(self, index: int, shares: dict[int, tuple[bytes, bytes]], n_min: int, *,
                 complete: bool = False) -> None:
        """`complete`: every other device of the cohort is a neighbour (k = n - 1, every cohort
        up to 17), so the survivors a request lists are all of them but this one."""
        self.index, self.shares, self.n_min, self.complete = index, shares, n_min, complete
        self.revealed: dict[int, str] = {}          # neighbour -> "self" | "key", across requests

    def answer(self, req: sw.SecAggUnmaskRequest) -> sw.SecAggReveal:
        surv, drop = set(req.survivors), set(req.dropped)
        both = surv & drop
        if both:
            raise Refused(f"asked for both the self-mask and the mask-key share of devices {sorted(both)}")
        if self.index in drop:
            raise Refused("the coordinator claims this device dropped, but it uploaded")
        unknown = (surv | drop) - set(self.shares)
        if unknown:
            raise Refused(f"asked for shares of devices {sorted(unknown)[:5]} that did not share with this device")
        # The count is the coordinator's word; the lists must not contradict it, and where they are
        # the whole cohort they are the count: a list of one other survivor with a count of 7 would
        # unmask a sum of two updates, with 2/7 of the noise charged.
        if len(surv) + 1 > req.survivor_count:
            raise Refused(f"{len(surv) + 1} survivors listed, but a survivor count of {req.survivor_count}")
        listed = len(surv) + 1 if self.complete else req.survivor_count
        if listed < self.n_min:
            raise Refused(f"only {listed} survivors, fewer than the {self.n_min} the noise needs")
        flips = [j for j in surv if self.revealed.get(j) == "key"] + [j for j in drop if self.revealed.get(j) == "self"]
        if flips:
            raise Refused(f"devices {sorted(flips)} were already reported the other way: that would unmask them")
        self.revealed.update(dict.fromkeys(surv, "self") | dict.fromkeys(drop, "key"))
        return sw.SecAggReveal({j: self.shares[j][0] for j in surv}, {j: self.shares[j][1] for j in drop})


# A Skellam share's Poisson mean the device samples. Past 2^53 (9e15) numpy's Poisson draws fall on
# a lattice (every draw a multiple of 16 at 1e17), so the sum's low bits would carry no noise at all:
# a coordinator that inflates the scale 100-fold would get a plan whose ledger charges 0.03 epsilon
# through every device's checks, with the sum exact mod 16. Below 2^53 a double holds every
# integer, so a draw's last bit is still random at 2^52. The coordinator keeps its mu under
# ddp.MAX_SAMPLED_MU (1e13) since that cap; one from before it sends up to about 2.6e15 (a cohort
# of 2 at noise multiplier 4), which passes.
MAX_MU = 2.0 ** 52


def check_roster(r: sw.SecAggRoster, plan: wire.TrainPlan, dim: int) -> dict[int, sw.Neighbour]:
    """The roster must be the SecAgg+ graph its own seed fixes, with a majority threshold, and its
    noise must be what the plan promises: the device recomputes its Skellam share from the plan
    rather than take the coordinator's `mu` (a roster with mu = 0 or n_min = 1 would otherwise
    let the sum, or one device's vector, go out with no noise)."""
    if r.round_id != plan.round_id:   # masks are derived with the roster's id, shares bound to the plan's
        raise Refused(f"the roster is for round {r.round_id}, the plan for round {plan.round_id}")
    if r.k < secagg.degree_floor(r.n):   # t of the coordinator's own devices beside this one unmask it
        raise Refused(f"{r.k} neighbours in a cohort of {r.n} is under the floor of {secagg.degree_floor(r.n)}: "
                      "too few devices would be needed to unmask this one")
    if r.t != r.k // 2 + 1:
        raise Refused(f"threshold {r.t} of {r.k} is not a majority: shares could be collected both ways")
    if dim != r.dim:
        raise Refused(f"update has {dim} values, the round expects {r.dim}")
    if not (2 * r.n_min > r.n and 2 <= r.n_min <= r.n):
        raise Refused(f"at least {r.n_min} of {r.n} survivors is not a majority of the cohort")
    clip = discovery.SENSITIVITY if plan.discover_words else plan.clip_norm
    try:
        want_mu = ddp.skellam_mu(plan.noise_multiplier, r.scale, clip, r.dim, r.n_min) if r.scale > 0 else math.inf
    except OverflowError:
        raise Refused(f"scale {r.scale:g} is out of range") from None
    if not r.mu <= MAX_MU:   # NaN too; past it numpy's Poisson sampler raises (mu 1e30, or scale 1e12)
        raise Refused(f"Skellam share mu {r.mu:g} is out of range: past {MAX_MU:g} the sampler's draws lose "
                      "their low bits, and the sum would go out without noise there")
    if r.mu < want_mu * (1 - 1e-9):
        raise Refused(f"Skellam share mu {r.mu:g} is less than the plan's noise needs ({want_mu:g})")
    want = secagg.neighbours(r.n, r.k, r.graph_seed)[r.index]
    got = sorted(nb.index for nb in r.neighbours)
    if got != want:
        raise Refused("the roster's neighbours are not the graph its seed defines")
    return {nb.index: nb for nb in r.neighbours}


class _Channel:
    """JSON/bytes calls on the device's authenticated connection, counting bytes both ways.

    Transient errors (coordinator restarting, rate limit, network) are retried with backoff until
    the round's deadline: the secrets exist only in this process, so giving up means dropping out.
    A POST retried after a lost answer that the coordinator did record comes back `duplicate`,
    which counts as done.
    """

    def __init__(self, client: CoordinatorClient, round_id: int, deadline: float,
                 sleep: Callable[[float], Any]) -> None:
        self.client, self.round_id, self.deadline, self.sleep = client, round_id, deadline, sleep
        self.up = self.down = 0

    def _call(self, method: str, step: str, *, answer_json: bool = False, **kw: Any) -> Any:
        """The answer (its JSON object with `answer_json`: one that is not JSON, cut off in its
        headers, is retried like any other transient failure)."""
        wait, retried = 1.0, False
        while True:
            try:
                resp = self.client._request(method, sw.secagg_path(self.round_id, step), **kw)
                out = self.client._json(resp) if answer_json else resp
                break
            except TransientError as e:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    raise
                log.info("secure aggregation, round %d: %s; retrying", self.round_id, e)
                self._wait(min(max(wait, e.retry_after or 0.0), left))
                wait, retried = min(wait * 2, 30.0), True
            except RejectedError as e:
                if retried and method == "POST" and e.code == wire.E_DUPLICATE:
                    return None
                raise
        self.up += len(resp.request.body or b"")
        self.down += len(resp.content)
        return out

    def _wait(self, seconds: float) -> None:
        """Sleep between calls; the agent's sleep is its stop event's `wait`, true once the device
        is stopping, and then no call follows (returning at once instead, the device would poll
        the coordinator in a tight loop until the round's deadline)."""
        if self.sleep(seconds):
            raise Stopping(f"the device is stopping during round {self.round_id}")

    def get(self, step: str) -> dict[str, Any]:
        return dict(self._call("GET", step, answer_json=True))

    def post(self, step: str, body: dict[str, Any] | None = None, data: bytes | None = None) -> None:
        headers = {"Content-Type": sw.MASKED_MEDIA_TYPE} if data is not None else None
        self._call("POST", step, json_body=body, data=data, headers=headers)

    def poll(self, step: str) -> dict[str, Any]:
        while True:
            d = self.get(step)
            if sw.is_ready(d):
                return d
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise Refused(f"secure aggregation timed out waiting at {step} ({d.get('phase')})")
            self._wait(min(sw.poll_wait(d.get("retry_after")), left))


def masked_vector(vector: np.ndarray, roster: sw.SecAggRoster, mask_sk: bytes, self_seed: bytes,
                  peers: dict[int, sw.Neighbour], seed: int | None = None) -> np.ndarray:
    """Quantize with Skellam noise, add the self mask and one pairwise mask per peer that shared."""
    y = ddp.encode(vector, roster.scale, roster.mu, seed=seed)
    secagg.add_mask(y, self_seed, +1)
    for j, nb in peers.items():
        s_ij = secagg.agree(mask_sk, nb.mask_pk, b"mask", roster.round_id, roster.index, j)
        secagg.add_mask(y, s_ij, secagg.pair_sign(roster.index, j))
    return y


def contribute(client: CoordinatorClient, plan: wire.TrainPlan, vector: np.ndarray, time_limit_s: float | None,
               sleep: Callable[[float], Any] = time.sleep, *,
               withdrawn: Callable[[], str | None] | None = None,
               charge: Callable[[], float] | None = None) -> tuple[str, dict[str, Any]]:
    """Run the whole secure-aggregation exchange for one trained update; (outcome, counts).
    `withdrawn()` says why the vector must not be sent after all (the user wiped the text or
    paused learning during the exchange's waits, which last minutes): asked right before the
    masked vector goes, the device then drops out, as the protocol lets any device do.
    `charge()` records the release in the device's privacy ledger (its ε so far, in counts as
    `local_epsilon`), right before the masked vector goes and after every check: nothing that
    depends on the device's data leaves it earlier, and a roster refused, a late arrival or a
    timeout charges no ε (charged earlier, they would spend it for nothing, and a hostile
    coordinator could drain a budget)."""
    rid = plan.round_id
    deadline = time.monotonic() + (time_limit_s if time_limit_s is not None else 3600.0)
    ch = _Channel(client, rid, deadline, sleep)
    counts: dict[str, Any] = {"round": rid, "mode": "secure"}
    enc_sk, enc_pk = secagg.generate_keypair()
    mask_sk, mask_pk = secagg.generate_keypair()
    try:
        ch.post("keys", sw.SecAggKeys(enc_pk, mask_pk).to_dict())
        roster = sw.SecAggRoster.from_dict(ch.poll("roster"))
        nbs = check_roster(roster, plan, vector.size)
        self_seed = os.urandom(secagg.SEED_BYTES)
        seed_shares = secagg.share_secret(self_seed, roster.t, roster.k)
        key_shares = secagg.share_secret(mask_sk, roster.t, roster.k)
        cts = {}
        for (j, nb), a, b in zip(sorted(nbs.items()), seed_shares, key_shares, strict=True):
            key = secagg.agree(enc_sk, nb.enc_pk, b"enc", rid, roster.index, j)
            cts[j] = secagg.encrypt_share(key, rid, roster.index, j, a + b)
        ch.post("shares", sw.SecAggShares(cts, hashlib.sha256(self_seed).digest()).to_dict())
        inbox = sw.SecAggInbox.from_dict(ch.poll("inbox"), secagg.CIPHERTEXT_BYTES)
        if not set(inbox.shares) <= set(nbs):
            raise Refused("the inbox holds shares from devices that are not neighbours")
        held = {}
        for j, ct in inbox.shares.items():
            pt = secagg.decrypt_share(secagg.agree(enc_sk, nbs[j].enc_pk, b"enc", rid, j, roster.index),
                                      rid, j, roster.index, ct)
            held[j] = (pt[:secagg.SHARE_BYTES], pt[secagg.SHARE_BYTES:])
        # Bonawitz et al.'s round-2 abort: with fewer than t neighbours' shares, the vector would
        # carry too few pairwise masks. An inbox withheld by the coordinator (empty) left only the
        # self mask, which the ordinary unmask step reveals: the device's update, or its word
        # vote, in the clear. Honest runs lose nothing: a device with fewer than t neighbours left
        # could not be unmasked anyway.
        if len(held) < roster.t:
            raise Refused(f"only {len(held)} of {len(nbs)} neighbours' shares arrived, fewer than the "
                          f"threshold {roster.t}: too few pairwise masks to hide this device's vector")
        try:
            y = masked_vector(vector, roster, mask_sk, self_seed, {j: nbs[j] for j in held})
        except (OverflowError, ValueError) as e:   # a scale or mu past what a sampler takes (mu 1e30)
            raise Refused(f"the roster's numbers are out of range ({e})") from e
        if withdrawn is not None and (why := withdrawn()) is not None:
            log.info("secure aggregation, round %d: left the round before the masked vector: %s", rid, why)
            return f"discarded ({why})", counts
        if charge is not None:
            counts["local_epsilon"] = charge()
        ch.post("masked", data=y.astype("<u4").tobytes())
        del y, self_seed, mask_sk
        revealer = Revealer(roster.index, held, roster.n_min, complete=roster.k == roster.n - 1)
        req = sw.SecAggUnmaskRequest.from_dict(ch.poll("unmask"))
        ch.post("unmask", revealer.answer(req).to_dict())
        counts.update(cohort=roster.n, neighbours=roster.k, kB_up=round(ch.up / 1024, 1),
                      kB_down=round(ch.down / 1024, 1))
        return "uploaded", counts
    except Stopping:
        log.info("secure aggregation, round %d: left the round, the device is stopping", rid)
        return "stopped (the device is stopping)", counts
    except Refused as e:
        log.warning("secure aggregation, round %d: refused: %s", rid, e)
        return f"refused ({e})", counts
    except (RejectedError, TransientError, secagg.SecAggError, wire.WireError) as e:
        log.warning("secure aggregation, round %d: %s", rid, e)
        code = getattr(e, "code", None) or e.__class__.__name__
        return f"rejected ({code})", counts
