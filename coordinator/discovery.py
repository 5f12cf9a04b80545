"""Closing a word-discovery round: the unmasked sum of votes -> the words that clear the noise ->
a canary candidate with those words as softmax rows (`protocol.discovery` has the why and the
math; `protocol.vocab.swap_rows` the version).

The coordinator holds only the sum (a secure-aggregation round; the plan rule refuses a plain
one), and only until the round closes: the histogram is then deleted. What it records: how
many words passed and the bar, in the round's reason and the candidate's metrics; the words
themselves are in the candidate's word list, which every device of the cohort downloads anyway.
The server optimizer's state is not carried over: its per-word rows would belong to other words
after the swap.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy.orm import Session

from coordinator import queries, round_end, versions
from coordinator.models import Round, Version, utcnow
from coordinator.models_secagg import SecAggRound
from coordinator.states import RoundStatus
from protocol import artifact, ddp, discovery, vocab, wire

if TYPE_CHECKING:
    from coordinator.service import Coordinator

log = logging.getLogger(__name__)


def dictionary(coord: Coordinator, base: Version) -> list[str]:
    """The words a discovery round on `base` votes over: its word list's tail."""
    V = queries.manifest(base).architecture().model.vocab_size
    return vocab.dictionary(coord.blobs.get(base.tokenizer_sha256), V)


def vote_shape(coord: Coordinator, base: Version) -> tuple[int, float]:
    """(length, L2 bound) of one device's vote on `base`: a secure round's dimension and clip."""
    return len(dictionary(coord, base)), discovery.SENSITIVITY


def close(coord: Coordinator, s: Session, r: Round, plan: wire.TrainPlan) -> None:
    """Threshold the summed votes of round `r`; write a candidate if any word passed."""
    row = s.get(SecAggRound, r.id)
    p = json.loads(row.params_json)
    base = s.get(Version, r.base_version_id)
    manifest = queries.manifest(base)
    V = manifest.architecture().model.vocab_size
    tokenizer = coord.blobs.get(base.tokenizer_sha256)
    words = vocab.dictionary(tokenizer, V)
    k = plan.discover_words
    digest = row.sum_sha256
    if digest is None or not coord.uploads.exists(r.id, digest):   # never expected: say so rather than crash every tick
        round_end.fail_round(coord, s, r, "word discovery: the vote sum is gone")
        log.error("round %d failed: %s", r.id, r.reason)
        return
    vote_sum = ddp.decode_sum(np.frombuffer(coord.uploads.get(r.id, digest), dtype="<u4"), p["scale"], 1)
    std = discovery.count_std(k, p["mu"], row.survivors, p["scale"])
    chosen, bar = discovery.found(vote_sum, words, k, std, int(vocab.MAX_SHARE * V))
    # The whole histogram is not kept: below the bar it counts words that one or two devices
    # typed (at a low noise, a cohort member's rare surname or town, for whoever reads the blob
    # store or a backup). Only the words that passed remain, in the candidate's word list. The
    # file goes once the row no longer names it is committed: a close that fails after this
    # point (a full disk writing the candidate) rolls back and is retried with its sum.
    row.sum_sha256 = None
    round_end.discard_sum(coord, s, r.id, digest)
    summary = f"{len(chosen)} of {len(words)} words reached {bar:.1f} votes of {row.survivors} devices"
    if not chosen:
        r.status, r.closed_at, r.reason = RoundStatus.DONE, utcnow(), f"word discovery: {summary}; no new version"
        log.info("round %d done: %s", r.id, r.reason)
        return
    weights = artifact.decode_weights(coord.blobs.get(base.weights_sha256))
    new_tok, new_weights, added = vocab.swap_rows(tokenizer, weights, V, chosen)
    tok_sha = coord.blobs.put(new_tok)
    note = {"word_discovery": {"words": len(added.added), "vote_threshold": round(bar, 3),
                               "dictionary": len(words), "words_per_device": k}}
    vid, priv = versions.write_candidate(
        coord, s, r, base, manifest, new_weights, plan,
        sampling_rate=queries.sampling_rate(r),
        metrics={"updates": row.survivors, "discovered_words": len(added.added), "vote_threshold": round(bar, 3)},
        note=note, tokenizer_sha=tok_sha)
    r.reason = f"word discovery: {summary}"
    log.info("round %d done: %s -> version %s (epsilon_local %.3g, sampled eps %.3g at delta %g)", r.id, summary,
             vid, priv["epsilon_local"], priv["epsilon"], coord.config.privacy_delta)
