"""The device agent: enroll once, then check in, swap versions, train or evaluate, repeat.

`run_once` is one check-in and whatever the coordinator asks for (the testable unit);
`run_loop` calls it forever, sleeping as the coordinator says (plus our own jitter) and
backing off exponentially on transient errors. Each task ends in exactly one summary log
line with counts only: no log line, request or file outside the data directory carries
typed text (the text cache is the only place it lives).

Layout of the data directory::

    device.json          identity: device id, token, coordinator URL, its public key (0600)
    text_cache.sqlite3   the text cache (edge_runtime.cache)
    last_keystroke       mtime = time of the last keystroke (edge_runtime.eligibility)
    models/              model versions (edge_runtime.versions)
    privacy_ledger.json  every update released: round, noise multiplier (edge_runtime.plan_guard)
    rollout_state.json   newest signed rollout statement followed (edge_runtime.rollout_guard)
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import math
import os
import platform
import random
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from edge_runtime import channel, personal_copy, personalize, rollout_guard, secagg_client, trainer, unsent
from edge_runtime.cache import CacheError, TextCache, open_cache
from edge_runtime.client import (
    ClientError,
    CoordinatorClient,
    RejectedError,
    TransientError,
)
from edge_runtime.collector import release_freed
from edge_runtime.config import ConfigError, EdgeConfig
from edge_runtime.eligibility import ActivityClock, Decision, Eligibility, Policy
from edge_runtime.errors import EdgeError, Stopping, failure
from edge_runtime.identity import Identity, coordinator_key, load_identity, save_identity
from edge_runtime.paths import ACTIVITY_FILE, ENROLL_REQUEST_FILE, IDENTITY_FILE, RUN_LOCK
from edge_runtime.plan_guard import EvaluationRecord, LedgerError, PlanFloor, PrivacyLedger
from edge_runtime.unsent import Unsent
from edge_runtime.versions import VersionError, VersionStore, coordinator_public_key
from edge_runtime.word_metrics import TypingSession, WordCounts, word_counts
from protocol import discovery, wire
from protocol.artifact import TOKENIZER, ArtifactError, atomic_write, read_manifest
from protocol.vocab import dictionary

log = logging.getLogger(__name__)

DEFAULT_EVAL_WORDS = 300        # an evaluate task that names no word budget
_FATAL_CODES = frozenset({wire.E_UNAUTHORIZED, wire.E_FORBIDDEN, wire.E_PROTOCOL_VERSION})


class AgentError(EdgeError, RuntimeError):
    """The agent cannot go on (not enrolled, revoked, bad setup); the message says why."""


# --- enrollment ------------------------------------------------------------------------------

def device_platform() -> str:
    """Free text the coordinator may see: OS and CPU, nothing about the user."""
    return f"{platform.system().lower()}-{platform.machine().lower()}"[: wire.MAX_ID_LEN]


def enroll(config: EdgeConfig, enrollment_key: str, *, force: bool = False,
           session: requests.Session | None = None) -> Identity:
    """Trade the enrollment key for an identity and store it in the data directory.

    Enrolling again (`force`) takes the device loop's lock: a `run` reads its identity once, so
    beside a running one the new identity (and a use of the key) would wait unused while the loop
    went on as the old device, which stayed enrolled."""
    key = enrollment_key.strip()   # pasted with a space or newline around it; a key holds none
    with run_lock(config.require_data_dir()) if force else contextlib.nullcontext():
        return _enroll(config, key, force=force, session=session)


def _enroll(config: EdgeConfig, enrollment_key: str, *, force: bool,
            session: requests.Session | None) -> Identity:
    data_dir = config.require_data_dir()
    if not config.coordinator:
        raise AgentError("no coordinator URL: pass --coordinator")
    # With --force a damaged identity file is replaced, as its error message says (it is not read first:
    # its damage would refuse the very command that repairs it).
    existing = load_identity(data_dir) if (data_dir / IDENTITY_FILE).exists() and not force else None
    if existing is not None:
        raise AgentError(f"already enrolled as {existing.device_id}; pass --force to enroll again")
    client = CoordinatorClient(config.coordinator, session=session, timeout=(5.0, config.http_timeout_s))
    signing = client.signing_key()
    served = signing.public_key_hex.lower()
    public_key = config.public_key.lower()
    if public_key and public_key != served:   # both 64 hex characters (EdgeConfig checks the configured one)
        # A mistyped key would enroll (using up a use of the enrollment key) and then refuse every
        # version as "signature does not verify". Security still rests on that later check.
        raise AgentError(f"--public-key {public_key[:16]}… is not the key {config.coordinator} signs with "
                         f"({served[:16]}…): check it (python -m coordinator public-key on the coordinator); "
                         "not enrolled, the enrollment key is unused")
    made = not data_dir.exists()
    _check_writable(data_dir)   # a data dir that cannot hold the identity would waste the key's use
    # A coordinator from before takes no request id: there each try may make a device, so one try.
    retries = signing.enroll_request_ids
    request_id = _enroll_request(data_dir, config.coordinator, enrollment_key) if retries else ""
    try:
        resp = _with_retries(lambda: client.enroll(enrollment_key, platform=device_platform(), request_id=request_id),
                             attempts=ENROLL_ATTEMPTS if retries else 1, first_wait=1.0, max_wait=8.0,
                             sleep=time.sleep)
    except (RejectedError, TransientError) as e:
        if retries and isinstance(e, TransientError):   # the device may exist: a new `enroll` asks for it again
            raise TransientError(f"{e}; enrolling again is safe: it asks for the same device, using no more of "
                                 "the key", status=e.status, code=e.code, retry_after=e.retry_after) from e
        # refused (the coordinator made no device), or one try to a coordinator from before: the
        # next enrollment starts afresh, and no empty data directory is left behind
        with contextlib.suppress(OSError):
            (data_dir / ENROLL_REQUEST_FILE).unlink()
        if made:
            with contextlib.suppress(OSError):
                data_dir.rmdir()
        raise
    # Anything else (Ctrl-C, an answer this release cannot read) keeps the request id: the device may
    # exist, and a new `enroll` asks for it.
    if not public_key:
        public_key = served
        log.warning("no --public-key given: trusting the coordinator's key %s… on first use", public_key[:16])
    ident = Identity(resp.device_id, resp.token, config.coordinator.rstrip("/"), public_key)
    save_identity(data_dir, ident)
    with contextlib.suppress(OSError):
        (data_dir / ENROLL_REQUEST_FILE).unlink()
    log.info("enrolled as device %s with %s", ident.device_id, ident.coordinator)
    return ident


ENROLL_ATTEMPTS = 3


def _enroll_request(data_dir: Path, coordinator: str, enrollment_key: str) -> str:
    """This enrollment's own random id, kept in the data directory until it is answered: a retry
    whose first answer was lost (a reply cut off, a timeout after the coordinator committed) gets
    the same device and uses no more of the key. Without it such a retry would make a second device, and
    with a single-use key none at all. Another coordinator or key: a new id."""
    path = data_dir / ENROLL_REQUEST_FILE
    which = {"coordinator": coordinator.rstrip("/"),
             "key_sha256": hashlib.sha256(enrollment_key.encode()).hexdigest()}
    try:
        kept = json.loads(path.read_text())
        if {k: kept.get(k) for k in which} == which and wire.EnrollRequest.from_dict(
                {"protocol_version": wire.PROTOCOL_VERSION, "enrollment_key": enrollment_key,
                 "request_id": kept.get("request_id")}).request_id:
            return str(kept["request_id"])
    except (OSError, ValueError, TypeError, AttributeError):   # none yet, or damaged: a new one
        pass
    request_id = secrets.token_hex(16)
    atomic_write(path, json.dumps(which | {"request_id": request_id}).encode())
    os.chmod(path, 0o600)   # with the key, it could take the device over before its first check-in
    return request_id


def _check_writable(data_dir: Path) -> None:
    """Make the data directory and write a file into it: an OSError here (a file in its place, no
    permission, a full disk) comes before the enrollment key is used, not after."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    probe = data_dir / f".enroll-{os.getpid()}.tmp"
    try:
        probe.write_bytes(b"")
    finally:
        probe.unlink(missing_ok=True)


# --- the device's parts ----------------------------------------------------------------------

def make_eligibility(config: EdgeConfig) -> Eligibility:
    policy = Policy(min_idle_s=config.min_idle_s, max_load_per_cpu=config.max_load_per_cpu,
                    require_power=config.require_power, require_unmetered=config.require_unmetered)
    activity = ActivityClock(config.require_data_dir() / ACTIVITY_FILE)
    return Eligibility(policy, activity=activity, override=config.override)


def predictor_session(version_dir: Path, *, base_ngram: str = "") -> TypingSession:
    """A typing session of the keyboard's predictor on a version (the canary's word metrics), with
    this device's base n-gram (`base_ngram`). With the default strip (`block_offensive` on)
    whatever this device's setting, so every canary device measures candidate and stable the same way."""
    from edge_runtime.model_slot import load_predictor

    return load_predictor(version_dir, base_ngram=base_ngram).session()


@dataclass
class Device:
    """Everything `run_once` works with; tests build one with fakes for any part."""

    config: EdgeConfig
    identity: Identity
    client: CoordinatorClient
    store: VersionStore
    cache: TextCache
    eligibility: Eligibility
    rng: random.Random = field(default_factory=random.Random)   # jitter only, not privacy-relevant
    loader: trainer.ModelLoader = trainer.load_model
    sessions: Callable[[Path], TypingSession] = predictor_session   # canary word metrics
    rollout_key: str | None = None      # coordinator's key (hex): version switches need its signed state
    stopping: threading.Event = field(default_factory=threading.Event)   # the loop's stop event (run_loop)
    unsent: Unsent | None = None   # an update charged and not delivered: sent again, never trained again
    asked_again: str | None = None   # a candidate this device answered that the coordinator asked of it again

    @classmethod
    def open(cls, config: EdgeConfig, *, session: requests.Session | None = None) -> Device:
        data_dir = config.require_data_dir()
        ident = load_identity(data_dir)
        if ident is None:
            raise AgentError(f"{data_dir} holds no enrolled device: run `python -m edge_runtime enroll` first")
        url = (config.coordinator or ident.coordinator).rstrip("/")
        client = CoordinatorClient(url, device_id=ident.device_id, token=ident.token, session=session,
                                   timeout=(5.0, config.http_timeout_s))
        key = coordinator_key(config.public_key, ident)
        if key is None:
            log.warning("no coordinator public key configured: model manifests are not signature-checked")
        cache = open_cache(config, damaged_ok=True)
        kept = unsent.load(data_dir, ident.device_id)   # an earlier run's charged update, for its round
        if kept is not None and _withdrawn_since(cache, kept.wipe_mark) is not None:
            unsent.discard(data_dir)
            kept = None
        return cls(config=config, identity=ident, client=client, store=VersionStore(data_dir, public_key=key),
                   cache=cache, eligibility=make_eligibility(config),
                   sessions=functools.partial(predictor_session, base_ngram=config.base_ngram), rollout_key=key,
                   unsent=kept)

    def close(self) -> None:
        self.cache.close()

    def may_work(self) -> Decision:
        """Eligibility for long work (training, evaluation, the personal copy), checked between its
        steps: not once the device is stopping, so SIGTERM ends it within a step, not minutes later."""
        if self.stopping.is_set():
            return Decision(False, ("the device is stopping",))
        try:   # paused while the work runs (the page's toggle): it stops at the next step
            if self.cache.paused:
                return Decision(False, ("learning paused",))
        except CacheError:
            return Decision(False, ("the text cache cannot be read",))
        return self.eligibility.check(working=True)


# --- one step --------------------------------------------------------------------------------

@dataclass(frozen=True)
class StepResult:
    kind: str                     # the task kind, or "error"
    outcome: str                  # uploaded, rejected, skipped, aborted, reported, idle, failed
    wait_s: float                 # how long to sleep before the next check-in
    version_id: str | None        # the version in use for suggestions afterwards
    counts: dict[str, Any] = field(default_factory=dict)   # numbers only, never text
    version_failed: bool = False  # the version the coordinator named could not be used (kept the current)

    def summary(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in self.counts.items())
        return (f"task {self.kind}: {self.outcome}{' ' + extra if extra else ''}; "
                f"model {self.version_id or 'none'}; next check-in in {self.wait_s:.0f}s")


def jittered(seconds: float, config: EdgeConfig, rng: random.Random) -> float:
    """`seconds` +- config.jitter, within [min_wait_s, max_wait_s]."""
    value = seconds * (1.0 + rng.uniform(-config.jitter, config.jitter))
    return min(max(value, config.min_wait_s), config.max_wait_s)


def _with_retries(fn: Callable[[], Any], attempts: int, first_wait: float, max_wait: float,
                  sleep: Callable[[float], Any]) -> Any:
    """Call fn, retrying TransientError up to `attempts` times with exponential backoff."""
    wait = first_wait
    for i in range(attempts):
        try:
            return fn()
        except TransientError as e:
            if i == attempts - 1:
                raise
            delay = min(max(wait, e.retry_after or 0.0), max_wait)
            log.info("transient error (%s: %s); retry %d/%d in %.0fs", e.code or "network", e, i + 1, attempts - 1,
                     delay)
            if sleep(delay):      # the agent's stop event: the device is stopping, no more attempts
                raise Stopping("the device is stopping during an upload") from e
            wait = min(wait * 2, max_wait)
    raise AssertionError("unreachable")


def _use_version(dev: Device, task: wire.Task) -> bool:
    """Switch suggestions to the coordinator's version; a failed download keeps the current one
    (False: `run --once` then exits 1, as the loop goes on with the current version).

    With the coordinator's key configured, only on a fresh signed rollout statement for this
    device (`rollout_guard`): a replayed or downgrading reply is refused before any download."""
    version_id = task.use_version_id
    if not version_id:
        return True
    data_dir = dev.config.require_data_dir()
    state = None
    switching = version_id != dev.store.current_id or not dev.store.is_valid(version_id)  # missing, or damaged
    if dev.rollout_key:
        try:
            state = rollout_guard.check(task.rollout, version_id=version_id, device_id=dev.identity.device_id,
                                        public_key=dev.rollout_key, data_dir=data_dir, switching=switching)
        except rollout_guard.RolloutRefused as e:
            if switching:
                log.error("not switching to model version %s: %s; keeping %s", version_id, e, dev.store.current_id)
            else:   # the version in use: nothing is switched, only its statement is not taken
                log.error("model version %s, in use, stays: its rollout statement is refused: %s", version_id, e)
            return False
    if switching:
        try:   # a rollback leaves the version it leaves (a rejected candidate) no place as a fallback
            dev.store.install(version_id, dev.client.fetch, abandon=state is not None and state.rollback)
        except VersionError as e:
            log.error("cannot use model version %s: %s; keeping %s", version_id, e, dev.store.current_id)
            return False
        except OSError as e:  # e.g. ENOSPC mid-download: the store keeps the current version intact
            log.error("cannot install model version %s: %s; keeping %s", version_id, failure(e),
                      dev.store.current_id)
            return False
        except TransientError as e:   # a download cut off: caught, or the check-in's task would be dropped
            if dev.stopping.is_set():
                raise
            log.error("cannot download model version %s: %s; keeping %s", version_id, e, dev.store.current_id)
            return False
    if state is not None:
        rollout_guard.remember(state, data_dir)
    return True


def _note_channel(dev: Device, task: wire.Task) -> None:
    """Remember whether the version in use is stable or canary (shown by the keyboard page)."""
    if not dev.config.data_dir:
        return
    try:
        channel.record_channel(dev.config.data_dir, task, dev.store.current_id)
    except OSError as e:
        log.warning("cannot record the model channel: %s", e.strerror)


def _ledger(dev: Device) -> PrivacyLedger:
    return PrivacyLedger(dev.config.require_data_dir(), budget=dev.config.local_epsilon_budget,
                         delta=dev.config.local_delta)


def _guarded(dev: Device, plan: wire.TrainPlan) -> tuple[PrivacyLedger, str | None]:
    """The device's ledger, and why it refuses `plan` (its own floor, its own budget) or None."""
    ledger = _ledger(dev)
    refusal = PlanFloor.from_config(dev.config).refusal(plan) or ledger.refusal(plan)
    if refusal:
        log.warning("refusing the plan of round %d: %s", plan.round_id, refusal)
    return ledger, refusal


def _budget_left(dev: Device) -> bool:
    """Whether any release still fits the local privacy budget. One spent to the budget can fit
    none, whatever the plan: such a device was selected, refused the plan, and kept the slot, so
    the round waited for it, and for it again in every later round. (A damaged ledger: none.)
    An unlimited budget always has room, even after a noiseless release spent an infinite
    epsilon: `PlanGuard` allows any plan then, and inf < inf had left such a device asking for
    no training ever again, without a word."""
    ledger = _ledger(dev)
    try:
        spent = ledger.spent()   # read first: a damaged ledger refuses whatever the budget
        return ledger.budget == math.inf or spent < ledger.budget
    except LedgerError as e:
        log.error("%s", e)   # "... is damaged; refusing to train": said at every check-in until it is fixed
        return False


class _Withdrawn(EdgeError):
    """The user wiped the cache or paused learning while its text was learned from: what was
    learned is not sent (the message says which)."""


def _withdrawn(dev: Device, mark: str | None) -> str | None:
    """Why what was learned from the cache since `mark` was read must not leave: a wipe ran since
    (or whether one did can no longer be told: the private answer), or learning was paused. A
    wipe or pause in another process (`python -m edge_runtime wipe`, the page's Clear or toggle)
    while the device trained on, or scored, that text: otherwise the update or report would still be
    sent, minutes later if the coordinator was down, or after a secure round's wait."""
    return _withdrawn_since(dev.cache, mark)


def _withdrawn_since(cache: TextCache, mark: str | None) -> str | None:
    try:
        if cache.wipe_mark() != mark:
            return "the text was wiped meanwhile"
        if cache.paused:
            return "learning was paused meanwhile"
    except CacheError:
        return "the text cache cannot be read"
    return None


def _discover(dev: Device, task: wire.Task, sleep: Callable[[float], Any]) -> tuple[str, dict[str, Any]]:
    """A word-discovery round (protocol.discovery): vote for this device's most typed words of
    the version's word-list tail, only through secure aggregation; charged like a training round."""
    plan = task.plan
    assert plan is not None and task.base_version_id is not None and plan.secure_aggregation  # wire.TrainPlan
    ledger, refusal = _guarded(dev, plan)
    if refusal:
        return f"refused ({refusal})", {"round": plan.round_id}
    base_dir = dev.store.ensure(task.base_version_id, dev.client.fetch)
    words = dictionary((base_dir / TOKENIZER).read_bytes(), read_manifest(base_dir).architecture().model.vocab_size)
    mark = dev.cache.wipe_mark()
    texts = [r.text for r in dev.cache.training_records()]
    try:
        vector, voted = discovery.vote(texts, words, plan.discover_words)
    finally:
        del texts
    if (why := _withdrawn(dev, mark)) is not None:
        return f"discarded ({why})", {"round": plan.round_id}
    outcome, counts = secagg_client.contribute(dev.client, plan, vector, task.time_limit_s, sleep,
                                               withdrawn=lambda: _withdrawn(dev, mark),
                                               charge=lambda: round(ledger.charge(plan), 4))
    return outcome, {**counts, "task": "discover", "words_voted": voted}


def _train(dev: Device, task: wire.Task, sleep: Callable[[float], Any]) -> tuple[str, dict[str, Any]]:
    plan = task.plan
    assert plan is not None and task.base_version_id is not None  # wire.Task guarantees it
    decision = dev.eligibility.check()
    if not decision:
        return "skipped (no longer eligible)", {"round": plan.round_id}
    if plan.discover_words:
        return _discover(dev, task, sleep)
    kept, dev.unsent = dev.unsent, None
    if kept is not None and kept.plan == plan and kept.meta.base_version_id == task.base_version_id:
        log.info("sending round %d's update again: its upload did not go through", plan.round_id)
        return _upload(dev, kept, sleep)
    if kept is not None:   # its round asks no more: the coordinator closed it, or was restored without it
        unsent.discard(dev.config.require_data_dir())
    ledger, refusal = _guarded(dev, plan)
    if refusal is None and not plan.secure_aggregation and (when := _released_before(ledger, task)):
        refusal = f"round {plan.round_id} had this device's update at {when}; a second one would release its text again"
    if refusal:
        return f"refused ({refusal})", {"round": plan.round_id}
    mark = dev.cache.wipe_mark()
    texts = [r.text for r in dev.cache.training_records()]
    if not texts:
        return "skipped (no training text)", {"round": plan.round_id}
    base_dir = dev.store.ensure(task.base_version_id, dev.client.fetch)
    try:
        res = trainer.train(base_dir, texts, secagg_client.local_plan(plan), eligible=dev.may_work,
                            time_limit_s=task.time_limit_s, loader=dev.loader)
    except trainer.TrainingAborted as e:
        return f"aborted ({e.reason})", {"round": plan.round_id, "steps": e.steps_done}
    finally:
        del texts
    counts: dict[str, Any] = {"round": plan.round_id, "steps": res.steps, "examples": res.examples,
                              "encoding": res.update.encoding, "kB": round(len(res.update.delta) / 1024, 1)}
    if (why := _withdrawn(dev, mark)) is not None:
        return f"discarded ({why})", counts
    # Charged before anything that depends on the text leaves the device. A secure round is
    # charged at the plan's (central) noise_multiplier: the coordinator sees only the sum, whose
    # Skellam noise has that std once n_min devices survive, and the device refuses to reveal
    # shares below n_min (secagg_client); it is charged right before its masked vector goes.
    if plan.secure_aggregation:   # the float delta never leaves the device: only its masked form
        return secagg_client.contribute(dev.client, plan, res.update.vector, task.time_limit_s, sleep,
                                        withdrawn=lambda: _withdrawn(dev, mark),
                                        charge=lambda: round(ledger.charge(plan), 4))
    counts["local_epsilon"] = round(ledger.charge(plan, base_version_id=task.base_version_id), 4)
    meta = wire.UpdateMeta(round_id=plan.round_id, base_version_id=res.update.base_version_id,
                           example_count=res.examples, idempotency_key=uuid.uuid4().hex,
                           encoding=res.update.encoding)
    until = time.time() + (task.time_limit_s if task.time_limit_s is not None else unsent.TTL_S)
    u = Unsent(meta, res.update.delta, mark, counts, plan, dev.identity.device_id, until)
    unsent.save(dev.config.require_data_dir(), u)   # charged: from now on only these bytes go for this round
    return _upload(dev, u, sleep)


def _upload(dev: Device, u: Unsent, sleep: Callable[[float], Any] = time.sleep) -> tuple[str, dict[str, Any]]:
    """Send a charged update, with retries. Out of tries it stays in `dev.unsent` (and on disk,
    `unsent`) for its round's next ask; once answered, refused or withdrawn it is deleted."""
    counts = dict(u.counts)
    data_dir = dev.config.require_data_dir()

    def upload() -> wire.UpdateReceipt:
        if (why := _withdrawn(dev, u.wipe_mark)) is not None:   # before each try: a retry can leave minutes later
            raise _Withdrawn(why)
        return dev.client.upload_update(u.delta, u.meta)

    try:
        receipt = _with_retries(upload, dev.config.upload_attempts, dev.config.backoff_initial_s,
                                dev.config.backoff_max_s, sleep)
    except _Withdrawn as e:
        unsent.discard(data_dir)
        return f"discarded ({e})", counts
    except RejectedError as e:
        unsent.discard(data_dir)
        return f"rejected ({e.code or e.status})", counts
    except Stopping:   # kept on disk: the next start sends it if its round asks again
        log.info("left round %d before the upload went through: the device is stopping", u.meta.round_id)
        return "stopped (the device is stopping)", counts
    except ClientError:   # out of tries (a transient failure): the same bytes at the next ask
        dev.unsent = u
        raise
    unsent.discard(data_dir)
    counts["update_id"] = receipt.update_id
    return "uploaded", counts


def _released_before(ledger: PrivacyLedger, task: wire.Task) -> str | None:
    """When this device's ledger charged an update for the task's round already, else None. A
    round id repeats after the coordinator is restored from a backup, so the round's random key
    tells the rounds apart; where the entry or the plan has none (either from before 7 December
    2026), the base version does, as far as it can (entries from before 6 December name none)."""
    plan = task.plan
    assert plan is not None

    def same_round(e: dict) -> bool:
        if e.get("round_id") != plan.round_id or e.get("secure_aggregation"):
            return False
        if e.get("round_key") and plan.round_key:
            return e["round_key"] == plan.round_key
        return e.get("base_version_id", task.base_version_id) == task.base_version_id

    return next((time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(e.get("at", 0)))
                 for e in ledger.entries() if same_round(e)), None)


def _evaluate(dev: Device, task: wire.Task) -> tuple[str, dict[str, Any]]:
    if not dev.eligibility.check():
        return "skipped (no longer eligible)", {}
    evaluated = EvaluationRecord(dev.config.require_data_dir(), per_day=dev.config.max_evaluations_per_day)
    try:
        evaluated.asked_about(task.candidate_version_id)
        pending = evaluated.pending(task)
        refusal = None if pending is not None else evaluated.refusal(task)
    except LedgerError as e:   # it cannot tell what it answered: it answers nothing
        pending, refusal = None, str(e)
    if pending is not None:   # its report was lost in transit: the same counts again, nothing new
        kept, scored_under = pending
        try:
            report = wire.EvaluationReport.from_dict(kept)
        except wire.WireError as e:
            evaluated.drop(task.candidate_version_id)
            return f"refused (its kept report of {task.candidate_version_id} does not read: {e})", {}
        if (why := _withdrawn(dev, scored_under)) is not None:   # scored on text wiped since: never sent
            evaluated.drop(task.candidate_version_id)
            return f"discarded ({why})", {}
        log.info("sending the report on %s again: the coordinator asks for it again (a report lost in transit, "
                 "or a coordinator restored from a backup)", task.candidate_version_id)
        return _send_report(dev, evaluated, report)
    if refusal is not None:
        log.warning("evaluation of %s refused: %s", task.candidate_version_id, refusal)
        if evaluated.answered(task.candidate_version_id):   # the coordinator has no report of it: see run_once
            dev.asked_again = task.candidate_version_id
        return f"refused ({refusal})", {}
    mark = dev.cache.wipe_mark()
    texts = [r.text for r in dev.cache.heldout_records()]
    if not texts:
        return "skipped (no held-out text)", {}
    dirs = [dev.store.ensure(v, dev.client.fetch) for v in task.evaluate_version_ids]
    try:
        metrics = trainer.evaluate(dirs, texts, max_examples=task.max_eval_examples,
                                   eligible=dev.may_work, loader=dev.loader)
        words = [_word_counts(dev, d, texts, task.max_eval_words or DEFAULT_EVAL_WORDS) for d in dirs]
    except trainer.TrainingAborted as e:
        return f"aborted ({e.reason})", {}
    finally:
        del texts
        dev.store.prune()
    assert task.candidate_version_id is not None
    results = tuple(_with_words(m, w) for m, w in zip(metrics, words, strict=True))
    report = wire.EvaluationReport(candidate_version_id=task.candidate_version_id, results=results)
    if (why := _withdrawn(dev, mark)) is not None:
        return f"discarded ({why})", {}
    # recorded before the report goes: a lost reply buys no second answer, only this one again
    evaluated.record(task.candidate_version_id, report=report.to_dict(), wipe_mark=mark)
    return _send_report(dev, evaluated, report)


def _send_report(dev: Device, evaluated: EvaluationRecord, report: wire.EvaluationReport) -> tuple[str, dict[str, Any]]:
    """Post a canary report; kept for the next ask unless the coordinator took or refused it (a
    transport failure propagates, as every check-in step's does)."""
    cand = report.candidate_version_id
    try:
        dev.client.report_evaluation(report)
    except RejectedError as e:
        if e.code == wire.E_DUPLICATE:   # the report arrived, its reply did not
            evaluated.delivered(cand)
            return "reported (received before)", {}
        evaluated.drop(cand)
        return f"rejected ({e.code or e.status})", {}
    evaluated.delivered(cand)
    results = report.results
    counts: dict[str, Any] = {m.version_id: f"word_top3={m.word_top3 / m.words:.3f}" if m.words else "n=0"
                              for m in results}
    counts["tokens"] = int(results[0].count) if results else 0
    counts["words"] = results[0].words if results else 0
    return "reported", counts


def _word_counts(dev: Device, version_dir: Path, texts: list[str], max_words: int) -> WordCounts:
    """Word-level counts by the keyboard's own predictor; a version that cannot suggest scores none."""
    try:
        return word_counts(dev.sessions(Path(version_dir)), texts, max_words=max_words,
                           before_text=lambda: trainer.check_eligible(dev.may_work))  # unplugged: stop
    except (ValueError, RuntimeError, FloatingPointError, IndexError) as e:
        log.warning("word-level evaluation of %s failed (%s): reporting no words", Path(version_dir).name,
                    e.__class__.__name__)
        return WordCounts(0, 0, 0, 0, 0)


def _with_words(m: wire.VersionMetrics, w: WordCounts) -> wire.VersionMetrics:
    """The report for one version; non-finite next-piece figures (a broken model) are "not
    measured" (zeros), because the wire refuses non-finite numbers."""
    piece = (m.loss_sum, m.top1, m.top3, m.count)
    if not all(math.isfinite(x) for x in piece):
        piece = (0.0, 0.0, 0.0, 0.0)
    return wire.VersionMetrics(m.version_id, *piece, words=w.words, word_top1=w.top1, word_top3=w.top3,
                               saved=w.saved, typed=w.typed)


def _personalize(dev: Device) -> str:
    """Keep the user's own copy of the version in use trained on the cache (never uploaded)."""
    try:
        version_dir = dev.store.current()
    except VersionError:
        return "no model"
    stats, mark = dev.cache.stats(), dev.cache.wipe_mark()
    stamp = f"{stats['records']}:{stats['bytes']}:{mark}"   # counts only: the cache changed, or not

    def texts() -> list[str]:
        return [r.text for r in (*dev.cache.training_records(), *dev.cache.heldout_records())]

    try:
        return personalize.refresh(dev.config.require_data_dir(), version_dir, version_dir.name, texts, stamp,
                                   dev.config.personal_plan, eligible=dev.may_work, loader=dev.loader,
                                   unchanged=lambda: dev.cache.wipe_mark() == mark)
    except (OSError, ArtifactError) as e:   # e.g. a full disk: suggestions keep the model they have
        return f"failed ({failure(e)})"


def run_once(dev: Device, *, sleep: Callable[[float], Any] = time.sleep) -> StepResult:
    """One check-in and the task it brings. Transient errors propagate (the loop backs off);
    a rejected upload or report is an outcome, not an error."""
    if dev.unsent is not None and dev.unsent.expired():   # its round takes nothing now (or took it: a lost reply)
        log.info("round %d's undelivered update is deleted: the round's deadline has passed", dev.unsent.meta.round_id)
        unsent.discard(dev.config.require_data_dir())
        dev.unsent = None
    try:
        dev.cache.enforce_retention()
        stats = dev.cache.stats()
        heldout, trainable = stats["heldout"], stats["records"] - stats["heldout"]
        # Paused, the page's "Pause learning" means it: nothing is cached, and nothing is trained,
        # evaluated or personalized on what was (not only caching stops).
        learning = not dev.cache.paused
    except CacheError as e:
        # Still check in: a device whose cache fails (damaged, a full disk) must still take new
        # versions and rollbacks, not fail every iteration here and never check in.
        log.error("checking in without training or evaluating: %s", e)
        heldout, trainable, learning = 0, 0, False
    decision = dev.eligibility.check()
    # Not while the coordinator names a candidate this device answered and was asked for again: it
    # has no report of it (the device enrolled again after a wipe, the coordinator was restored from
    # a backup) and handed it that task at every check-in, refused each time, and no training task,
    # until the canary decided. A reply naming another version (a new candidate) ends that.
    answers = heldout > 0 and dev.asked_again is None and EvaluationRecord(
        dev.config.require_data_dir(), per_day=dev.config.max_evaluations_per_day).can_answer()
    req = wire.CheckinRequest(eligible=bool(decision) and learning, current_version_id=dev.store.in_use(),
                              can_evaluate=answers, can_train=trainable > 0 and _budget_left(dev))
    task = dev.client.checkin(req)
    if task.use_version_id != dev.asked_again:
        dev.asked_again = None
    version_ok = _use_version(dev, task)
    _note_channel(dev, task)
    if task.kind == wire.TASK_TRAIN:
        outcome, counts = _train(dev, task, sleep)
    elif task.kind == wire.TASK_EVALUATE:
        outcome, counts = _evaluate(dev, task)
    else:
        outcome = "idle" if decision else "idle (" + "; ".join(getattr(decision, "reasons", ())) + ")"
        counts = {}
    if decision and learning and dev.config.personalize and not dev.stopping.is_set():
        counts = {**counts, "personal_model": _personalize(dev)}
    try:   # only the copy of the version in use (when one is: a store that cannot tell deletes nothing),
        # and none when personalize is off
        if not dev.config.personalize:
            personal_copy.keep_only(dev.config.require_data_dir(), None)
        elif (in_use := dev.store.in_use()) is not None:
            personal_copy.keep_only(dev.config.require_data_dir(), in_use)
    except OSError as e:
        log.warning("cannot delete an unused personal model (%s)", failure(e))
    if task.kind in (wire.TASK_TRAIN, wire.TASK_EVALUATE) or "personal_model" in counts:
        release_freed()   # the models those built are gone; glibc kept their pages
    result = StepResult(task.kind, outcome, jittered(task.retry_after, dev.config, dev.rng),
                        dev.store.current_id, counts, version_failed=not version_ok)
    log.info("%s", result.summary())
    return result


# --- the loop --------------------------------------------------------------------------------

def run_loop(dev: Device, *, once: bool = False, stop: threading.Event | None = None) -> int:
    """Check in until `stop` is set (or once). Returns a process exit code.

    No iteration's failure ends the loop: whatever a reply, the network or the disk does, the
    agent logs one line, backs off and tries again. A refusal of this device (revoked, wrong
    protocol) slows it to the longest backoff instead: that answer may come from a
    man-in-the-middle, and an agent that exits is an attack that worked."""
    stop = stop or threading.Event()
    dev.stopping = stop   # long work checks it between steps (Device.may_work)
    dev.client.stopping = stop   # and an answer coming in, between its chunks
    backoff = dev.config.backoff_initial_s
    while not stop.is_set():
        try:
            result = run_once(dev, sleep=stop.wait)
            backoff = dev.config.backoff_initial_s
            wait = result.wait_s
        except RejectedError as e:
            if e.code in _FATAL_CODES:
                if once:
                    raise AgentError(f"the coordinator refuses this device ({e.code}): enroll again") from e
                backoff = dev.config.backoff_max_s
                log.error("the coordinator refuses this device (%s): enroll again if it persists", e.code)
            wait = jittered(backoff, dev.config, dev.rng)
            backoff = min(backoff * 2, dev.config.backoff_max_s)
            log.warning("task error: %s%s", e, _next(once, wait))
            if once:
                return 1
        except (ClientError, VersionError, LedgerError) as e:
            retry_after = getattr(e, "retry_after", None) or 0.0
            wait = jittered(max(backoff, retry_after), dev.config, dev.rng)
            backoff = min(backoff * 2, dev.config.backoff_max_s)
            log.warning("task error: %s%s", e, _next(once, wait))
            if once:
                return 1
        except Exception as e:  # noqa: BLE001  (the loop outlives any one iteration)
            wait = jittered(backoff, dev.config, dev.rng)
            backoff = min(backoff * 2, dev.config.backoff_max_s)
            log.error("iteration failed: %s%s", failure(e), _next(once, wait))
            if once:
                return 1
        if once:
            return 1 if result.version_failed else 0   # only a run_once that returned gets here
        stop.wait(wait)
    return 0


def _next(once: bool, wait: float) -> str:
    """When the loop checks in again: never, for `run --once`, which exits after this one."""
    return "" if once else f"; next check-in in {wait:.0f}s"


@contextlib.contextmanager
def run_lock(data_dir: Path) -> Iterator[None]:
    """One device loop per data directory: two would both train and upload, and read-modify-write
    the privacy ledger and the version store under each other (easy to start by hand beside the
    systemd unit). The lock goes with the process, however it ends."""
    if not data_dir.is_dir():   # nothing to guard yet: Device.open says what is missing
        yield
        return
    with open(data_dir / RUN_LOCK, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AgentError(f"another `run` is using {data_dir} (a systemd unit, or one started by hand): "
                             "stop it first; one device loop per data directory") from None
        yield


def status(config: EdgeConfig) -> dict[str, Any]:
    """What `status` prints: identity (no token), models, cache counts, pause, eligibility."""
    data_dir = config.require_data_dir()
    ident = load_identity(data_dir)
    store = VersionStore(data_dir)
    try:
        with open_cache(config) as cache:
            stats, paused = cache.stats(), cache.paused
    except CacheError as e:   # the rest of the status still says what the device runs and why it waits
        stats, paused = {"error": str(e)}, None
    decision = make_eligibility(config).check()
    key, key_error = coordinator_key(config.public_key, ident), None
    if key is not None:   # `run` and `notices` refuse a key that is not one: not "checked" here either
        try:
            coordinator_public_key(key)
        except ConfigError as e:
            key_error = f"{e} (`run` and `keyboard` stop at start until then)"
    return {
        "enrolled": ident is not None,
        "device_id": ident.device_id if ident else None,
        "coordinator": (config.coordinator or (ident.coordinator if ident else "")) or None,
        "signature_checked": key is not None and key_error is None,
        **({"signature_key_error": key_error} if key_error else {}),
        "model": {"current": store.current_id, "previous": store.previous_id, "installed": store.installed()},
        "cache": stats,
        "learning_paused": paused,
        "eligible": bool(decision),
        "ineligible_because": list(decision.reasons),
        "update_waiting_for_round": unsent.waiting_round(data_dir),   # charged, not yet delivered
    }
