"""The coordinator <-> device wire protocol: paths, limits, headers and message shapes.

This is the one module both sides import, so a change here is a protocol change. It imports
only the standard library: the edge runtime installs it on a phone-class device.

Conventions
-----------
* JSON bodies, UTF-8, for every message below; binary bodies (weights, updates) are
  safetensors. Every JSON message carries ``protocol_version``; a peer speaking another
  version is refused with a ``protocol_version`` error rather than misread.
* Device calls send ``Authorization: Bearer <token>`` and ``X-FedKeys-Device: <device_id>``;
  a device can only act as itself. Admin calls send ``Authorization: Bearer <admin token>``
  and no ``X-FedKeys-Device`` (a call naming a device is that device's, on every path).
* Every error is a 4xx/5xx JSON :class:`ErrorBody` with a machine-readable ``error`` code
  (one of the ``E_*`` constants) and a human ``message``. Rate-limited and "come back"
  answers carry ``Retry-After`` (seconds).
* Update upload: ``POST /v1/updates`` with the safetensors delta as the body and the
  :class:`UpdateMeta` as compact JSON in the ``X-FedKeys-Update`` header. Re-sending the same
  upload with the same ``idempotency_key`` after a lost response returns the original
  :class:`UpdateReceipt` (200); a second, different upload for the same round is a
  ``duplicate`` (409).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from protocol.fields import (  # noqa: F401  (re-exported: the wire protocol's public names)
    MAX_ID_LEN,
    MAX_INT,
    ProtocolVersionError,
    WireError,
    _bool,
    _float,
    _int,
    _req,
    _str,
)
from protocol.plan import TrainPlan  # noqa: F401  (re-exported: part of the Task message)
from protocol.rollout_state import Channel, RolloutState  # noqa: F401  (re-exported: part of the Task message)

PROTOCOL_VERSION = 1

# --- Paths -----------------------------------------------------------------------------------
API_PREFIX = "/v1"
PATH_ENROLL = f"{API_PREFIX}/devices/enroll"                  # POST EnrollRequest -> EnrollResponse
PATH_CHECKIN = f"{API_PREFIX}/checkin"                        # POST CheckinRequest -> Task
PATH_UPDATES = f"{API_PREFIX}/updates"                        # POST safetensors + X-FedKeys-Update -> UpdateReceipt
PATH_EVALUATIONS = f"{API_PREFIX}/evaluations"                # POST EvaluationReport -> EvaluationReceipt
PATH_SIGNING_KEY = f"{API_PREFIX}/signing-key"                # GET -> SigningKey (no auth)
PATH_VERSION_MANIFEST = f"{API_PREFIX}/versions/{{version_id}}/manifest"    # GET -> signed manifest JSON
PATH_VERSION_WEIGHTS = f"{API_PREFIX}/versions/{{version_id}}/weights"      # GET -> weights.safetensors
PATH_VERSION_WEIGHTS_Q8 = f"{API_PREFIX}/versions/{{version_id}}/weights.q8"  # GET -> weights.q8.safetensors
PATH_VERSION_GRAPH = f"{API_PREFIX}/versions/{{version_id}}/model.tflite"   # GET -> model.tflite
PATH_VERSION_TOKENIZER = f"{API_PREFIX}/versions/{{version_id}}/tokenizer.model"  # GET -> tokenizer.model
PATH_HEALTH = "/healthz"
PATH_OPENAPI = "/openapi.json"
PATH_METRICS = "/metrics"

# --- Headers -----------------------------------------------------------------------------------
AUTH_HEADER = "Authorization"
AUTH_SCHEME = "Bearer"
DEVICE_HEADER = "X-FedKeys-Device"
UPDATE_META_HEADER = "X-FedKeys-Update"
RETRY_AFTER_HEADER = "Retry-After"
SAFETENSORS_MEDIA_TYPE = "application/octet-stream"

# --- Limits (the coordinator enforces them; the device should not exceed them) ----------------
MAX_JSON_BYTES = 64 * 1024            # any JSON request body
MAX_UPDATE_BYTES = 64 * 1024 * 1024   # a safetensors update body (default model: ~3 MB float32)
MAX_META_HEADER_BYTES = 4096          # the X-FedKeys-Update header
MAX_VERSIONS_PER_EVALUATION = 4
MAX_REPLY_JSON_BYTES = 1024 * 1024            # any JSON answer a device reads (it refuses larger)
MAX_VERSION_FILE_BYTES = 64 * 1024 * 1024     # one version file a device downloads (default model: ~8 MB)
# MAX_ID_LEN (ids, 128) and MAX_INT (2**31 - 1, counts) live in protocol.fields
MIN_RETRY_AFTER_S = 1.0
MAX_RETRY_AFTER_S = 24 * 3600.0

# --- Enumerations (StrEnum: the JSON stays the plain strings) ----------------------------------
# TaskKind: what a check-in reply tells the device to do (Task.kind); the TASK_* names are its members.
TaskKind = StrEnum("TaskKind", {"TRAIN": "train", "EVALUATE": "evaluate", "COME_BACK": "come_back"})
TASK_TRAIN, TASK_EVALUATE, TASK_COME_BACK = TaskKind.TRAIN, TaskKind.EVALUATE, TaskKind.COME_BACK
TASK_KINDS = tuple(k.value for k in TaskKind)
USE_CHANNELS = tuple(c.value for c in Channel)   # Task.use_channel: protocol.rollout_state.Channel
ENCODINGS = ("float16", "float32")

# --- Error codes (ErrorBody.error) ------------------------------------------------------------
E_BAD_REQUEST = "bad_request"          # malformed JSON / missing or wrongly typed field
E_PROTOCOL_VERSION = "protocol_version"
E_UNAUTHORIZED = "unauthorized"        # missing or wrong token
E_FORBIDDEN = "forbidden"              # authenticated, but not allowed (e.g. not selected)
E_NOT_FOUND = "not_found"
E_METHOD = "method_not_allowed"
E_TOO_LARGE = "too_large"
E_RATE_LIMITED = "rate_limited"        # retry after Retry-After
E_UNKNOWN_ROUND = "unknown_round"
E_NOT_SELECTED = "not_selected"        # device has no assignment in that round
E_LATE = "late"                        # round closed or past its deadline
E_DUPLICATE = "duplicate"              # device already contributed to this round
E_STALE = "stale"                      # base version is not the round's base version
E_MALFORMED = "malformed"              # body not safetensors / names, shapes, dtypes, NaN/Inf
E_NORM = "norm_exceeded"               # L2 norm above the plan's bound (clip + noise allowance)
E_EXAMPLE_COUNT = "bad_example_count"  # example count < 1 or above the plan's max_examples
E_NOT_EVALUATING = "not_evaluating"    # evaluation report for a version not in canary
E_CONFLICT = "conflict"
E_INTERNAL = "internal"
RETRYABLE_ERRORS = frozenset({E_RATE_LIMITED, E_INTERNAL})
# A rejection's reason that no request answers (the update codes above are the others): an
# accepted update withdrawn afterwards because its device was revoked.
E_REVOKED = "revoked"


def _check_version(d: Mapping[str, Any]) -> None:
    if isinstance(d, Mapping) and "protocol_version" not in d:
        raise ProtocolVersionError("missing field 'protocol_version'")
    v = _req(d, "protocol_version")
    if type(v) is not int or v != PROTOCOL_VERSION:   # `true == 1.0 == 1` in Python: not the version number
        raise ProtocolVersionError(f"protocol_version {v!r} not supported (this side speaks {PROTOCOL_VERSION})")


# --- Messages ----------------------------------------------------------------------------------

_ENROLL_REQUEST = re.compile(r"[0-9a-f]{32,64}")


@dataclass(frozen=True)
class EnrollRequest:
    """Device -> coordinator: trade a shared enrollment key for an identity."""

    enrollment_key: str
    platform: str = ""                    # free text, e.g. "linux-aarch64"; never user data
    # The device's own random id for this enrollment, the same on every retry of it: a retry whose
    # first answer was lost gets the same device (a new token) and uses no more of the key. "":
    # a device of a release before 7 December 2026, each request a new device.
    request_id: str = ""
    protocol_version: int = PROTOCOL_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = {"protocol_version": self.protocol_version, "enrollment_key": self.enrollment_key,
             "platform": self.platform}
        return d | {"request_id": self.request_id} if self.request_id else d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EnrollRequest:
        _check_version(d)
        platform = d.get("platform", "")
        if not isinstance(platform, str) or len(platform) > MAX_ID_LEN:
            raise WireError("'platform' must be a string of at most 128 characters")
        request_id = d.get("request_id", "")
        if not (isinstance(request_id, str) and (request_id == "" or _ENROLL_REQUEST.fullmatch(request_id))):
            raise WireError("'request_id' must be 32 to 64 lower-case hex digits")
        return cls(enrollment_key=_str(d, "enrollment_key", max_len=256), platform=platform, request_id=request_id)


@dataclass(frozen=True)
class EnrollResponse:
    """Coordinator -> device: the device id and its secret token (shown once, stored hashed)."""

    device_id: str
    token: str
    protocol_version: int = PROTOCOL_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {"protocol_version": self.protocol_version, "device_id": self.device_id, "token": self.token}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EnrollResponse:
        _check_version(d)
        return cls(device_id=_str(d, "device_id"), token=_str(d, "token", max_len=256))


@dataclass(frozen=True)
class CheckinRequest:
    """Device -> coordinator: "I am here; may I work?" (pull-based, Bonawitz et al. 2019)."""

    eligible: bool                        # charging, idle and unmetered right now (may train)
    current_version_id: str | None = None  # the version the device is using for suggestions
    can_evaluate: bool = True             # has held-out local text for evaluation
    protocol_version: int = PROTOCOL_VERSION
    can_train: bool = True                # has local text to train on (a device without took a slot
                                          # it could not fill, and the round waited for it)

    def to_dict(self) -> dict[str, Any]:
        return {"protocol_version": self.protocol_version, "eligible": self.eligible,
                "current_version_id": self.current_version_id, "can_evaluate": self.can_evaluate,
                "can_train": self.can_train}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CheckinRequest:
        _check_version(d)
        current = _str(d, "current_version_id", optional=True)
        if current is not None and not is_safe_id(current):
            raise WireError("'current_version_id' must be a version id ([A-Za-z0-9._-])")
        return cls(eligible=_bool(d, "eligible"), current_version_id=current,
                   can_evaluate=_bool(d, "can_evaluate", default=True), can_train=_bool(d, "can_train", default=True))


@dataclass(frozen=True)
class Task:
    """Coordinator -> device answer to a check-in.

    Always says which version to use for suggestions (`use_version_id`: stable, or the
    candidate for canary devices) and when to check in next (`retry_after`, seconds, already
    jittered); `rollout` is the coordinator's signed statement of that choice. `kind` is
    "train" (with `base_version_id` and `plan`), "evaluate" (with
    `candidate_version_id` and `evaluate_version_ids`: report metrics for each, within
    `max_eval_examples` windows and `max_eval_words` words; the coordinator issues at most one
    per device and candidate and accepts reports only for tasks it issued), or
    "come_back" (nothing to do).
    """

    kind: str
    retry_after: float
    use_version_id: str | None = None
    base_version_id: str | None = None
    plan: TrainPlan | None = None
    time_limit_s: float | None = None      # train: upload within this many seconds
    candidate_version_id: str | None = None
    evaluate_version_ids: tuple[str, ...] = ()
    max_eval_examples: int | None = None
    max_eval_words: int | None = None        # evaluate: word-level budget per version
    rollout: RolloutState | None = None      # signed statement behind use_version_id (anti-downgrade)
    use_channel: str | None = None          # "stable" or "canary": what use_version_id is (badge)
    protocol_version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        if self.use_channel not in (None, *USE_CHANNELS):
            raise WireError(f"use_channel must be one of {USE_CHANNELS}")
        if self.kind not in TASK_KINDS:
            raise WireError(f"unknown task kind {self.kind!r}")
        if self.kind == TASK_TRAIN and (self.plan is None or not self.base_version_id):
            raise WireError("a train task needs base_version_id and plan")
        if self.kind == TASK_EVALUATE and (not self.candidate_version_id or not self.evaluate_version_ids):
            raise WireError("an evaluate task needs candidate_version_id and evaluate_version_ids")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"protocol_version": self.protocol_version, "kind": self.kind,
                             "retry_after": self.retry_after, "use_version_id": self.use_version_id,
                             "rollout": None if self.rollout is None else self.rollout.to_dict()}
        if self.use_channel is not None:
            d["use_channel"] = self.use_channel
        if self.kind == TASK_TRAIN:
            d.update(base_version_id=self.base_version_id, plan=self.plan.to_dict(),  # type: ignore[union-attr]
                     time_limit_s=self.time_limit_s)
        elif self.kind == TASK_EVALUATE:
            d.update(candidate_version_id=self.candidate_version_id,
                     evaluate_version_ids=list(self.evaluate_version_ids),
                     max_eval_examples=self.max_eval_examples, max_eval_words=self.max_eval_words)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Task:
        _check_version(d)
        kind = _str(d, "kind")
        kw: dict[str, Any] = {"kind": kind, "retry_after": _float(d, "retry_after", lo=0.0),
                                  "use_version_id": _str(d, "use_version_id", optional=True),
                                  "use_channel": _str(d, "use_channel", optional=True),
                                  "rollout": None if d.get("rollout") is None
                                  else RolloutState.from_dict(_req(d, "rollout"))}
        if kind == TASK_TRAIN:
            kw.update(base_version_id=_str(d, "base_version_id"), plan=TrainPlan.from_dict(_req(d, "plan")),
                      time_limit_s=None if d.get("time_limit_s") is None else _float(d, "time_limit_s", lo=0.0))
        elif kind == TASK_EVALUATE:
            ids = _req(d, "evaluate_version_ids")
            if (not isinstance(ids, list) or not ids or len(ids) > MAX_VERSIONS_PER_EVALUATION
                    or not all(isinstance(i, str) and 0 < len(i) <= MAX_ID_LEN for i in ids)):
                raise WireError("'evaluate_version_ids' must be a list of 1-4 version ids")
            kw.update(candidate_version_id=_str(d, "candidate_version_id"), evaluate_version_ids=tuple(ids),
                      max_eval_examples=None if d.get("max_eval_examples") is None
                      else _int(d, "max_eval_examples", lo=1),
                      max_eval_words=None if d.get("max_eval_words") is None else _int(d, "max_eval_words", lo=1))
        elif kind != TASK_COME_BACK:
            raise WireError(f"unknown task kind {kind!r}")
        return cls(**kw)


@dataclass(frozen=True)
class UpdateMeta:
    """Metadata of an update upload (sent as JSON in the X-FedKeys-Update header).

    The body is a safetensors file holding `new_weights - base_weights` per manifest tensor,
    every tensor in `encoding` (float16 halves the upload at a small, measured cost).
    """

    round_id: int
    base_version_id: str
    example_count: int
    idempotency_key: str
    encoding: str = "float16"
    protocol_version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise WireError(f"encoding must be one of {ENCODINGS}")

    def to_dict(self) -> dict[str, Any]:
        return {"protocol_version": self.protocol_version, "round_id": self.round_id,
                "base_version_id": self.base_version_id, "example_count": self.example_count,
                "idempotency_key": self.idempotency_key, "encoding": self.encoding}

    def to_header(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UpdateMeta:
        _check_version(d)
        enc = _str(d, "encoding")
        if enc not in ENCODINGS:
            raise WireError(f"'encoding' must be one of {list(ENCODINGS)}")
        return cls(round_id=_int(d, "round_id", lo=1), base_version_id=_str(d, "base_version_id"),
                   example_count=_int(d, "example_count"), idempotency_key=_str(d, "idempotency_key"),
                   encoding=enc)

    @classmethod
    def from_header(cls, value: str | None) -> UpdateMeta:
        if not value:
            raise WireError(f"missing {UPDATE_META_HEADER} header")
        if len(value) > MAX_META_HEADER_BYTES:
            raise WireError(f"{UPDATE_META_HEADER} header longer than {MAX_META_HEADER_BYTES} bytes")
        try:
            d = json.loads(value)
        except json.JSONDecodeError as e:
            raise WireError(f"{UPDATE_META_HEADER} header is not JSON: {e.msg}") from e
        except RecursionError as e:
            raise WireError(f"{UPDATE_META_HEADER} header is nested too deeply") from e
        return cls.from_dict(d)


@dataclass(frozen=True)
class UpdateReceipt:
    """Coordinator -> device: the update is durably stored (it will never be lost)."""

    update_id: int
    round_id: int
    accepted: bool = True
    protocol_version: int = PROTOCOL_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {"protocol_version": self.protocol_version, "update_id": self.update_id,
                "round_id": self.round_id, "accepted": self.accepted}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UpdateReceipt:
        _check_version(d)
        return cls(update_id=_int(d, "update_id", lo=1), round_id=_int(d, "round_id", lo=1),
                   accepted=_bool(d, "accepted"))


@dataclass(frozen=True)
class VersionMetrics:
    """Aggregate metrics of one version on the device's held-out text. Never text itself.

    Next-piece: `loss_sum` is summed token cross-entropy, top1/top3 hit counts over `count`
    scored tokens (at most the task's max_eval_examples windows). Word level, by the device's
    own predictor session (`edge_runtime.word_metrics`): `words` target words (at most the
    task's max_eval_words), `word_top1`/`word_top3` of them in the suggestion strip after the
    space, and keystroke savings `saved` of `typed` characters. Every value is a finite,
    non-negative number: a device that cannot measure reports nothing, and a non-finite
    report is refused rather than read as a verdict.
    """

    version_id: str
    loss_sum: float
    top1: float
    top3: float
    count: float
    words: int = 0
    word_top1: int = 0
    word_top3: int = 0
    saved: int = 0
    typed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"version_id": self.version_id, "loss_sum": self.loss_sum, "top1": self.top1, "top3": self.top3,
                "count": self.count, "words": self.words, "word_top1": self.word_top1, "word_top3": self.word_top3,
                "saved": self.saved, "typed": self.typed}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VersionMetrics:
        m = cls(version_id=_str(d, "version_id"), loss_sum=_float(d, "loss_sum", lo=0.0, hi=1e12),
                top1=_float(d, "top1", lo=0.0, hi=MAX_INT), top3=_float(d, "top3", lo=0.0, hi=MAX_INT),
                count=_float(d, "count", lo=0.0, hi=MAX_INT),
                **{k: _int(d, k, lo=0, default=0) for k in ("words", "word_top1", "word_top3", "saved", "typed")})
        if 0 < m.count < 1:   # a number of tokens: 1e-296 made the per-token loss overflow the canary's mean
            raise WireError("'count' is a number of scored tokens: 0 or at least 1")
        if m.top1 > m.count or m.top3 > m.count:
            raise WireError("hit counts cannot exceed 'count'")
        if m.word_top1 > m.words or m.word_top3 > m.words:
            raise WireError("word hit counts cannot exceed 'words'")
        if m.saved > m.typed:
            raise WireError("'saved' cannot exceed 'typed'")
        return m


@dataclass(frozen=True)
class EvaluationReport:
    """Device -> coordinator: metrics for each version of an evaluate task."""

    candidate_version_id: str
    results: tuple[VersionMetrics, ...]
    protocol_version: int = PROTOCOL_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {"protocol_version": self.protocol_version, "candidate_version_id": self.candidate_version_id,
                "results": [r.to_dict() for r in self.results]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvaluationReport:
        _check_version(d)
        res = _req(d, "results")
        if not isinstance(res, list) or not res or len(res) > MAX_VERSIONS_PER_EVALUATION:
            raise WireError("'results' must be a list of 1-4 version metrics")
        if not all(isinstance(r, Mapping) for r in res):
            raise WireError("each entry of 'results' must be a JSON object of one version's metrics")
        results = tuple(VersionMetrics.from_dict(r) for r in res)
        if len({r.version_id for r in results}) != len(results):
            raise WireError("'results' lists a version twice")
        return cls(candidate_version_id=_str(d, "candidate_version_id"), results=results)


@dataclass(frozen=True)
class EvaluationReceipt:
    """Coordinator -> device: the report was recorded."""

    candidate_version_id: str
    recorded: bool = True
    protocol_version: int = PROTOCOL_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {"protocol_version": self.protocol_version, "candidate_version_id": self.candidate_version_id,
                "recorded": self.recorded}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvaluationReceipt:
        _check_version(d)
        return cls(candidate_version_id=_str(d, "candidate_version_id"), recorded=_bool(d, "recorded"))


@dataclass(frozen=True)
class SigningKey:
    """The coordinator's Ed25519 public key (raw 32 bytes, hex) that signs every manifest.

    Devices should be configured with it out of band; fetching it is for convenience and
    for checking that configuration (trust on first use otherwise)."""

    public_key_hex: str
    algorithm: str = "ed25519"
    # The coordinator answers a repeated `EnrollRequest.request_id` with the same device, so a device
    # may retry an enrollment whose answer was lost; one of an older release says nothing (False): each retry
    # there makes another device.
    enroll_request_ids: bool = False
    protocol_version: int = PROTOCOL_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {"protocol_version": self.protocol_version, "algorithm": self.algorithm,
                "public_key_hex": self.public_key_hex, "enroll_request_ids": self.enroll_request_ids}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SigningKey:
        _check_version(d)
        key = _str(d, "public_key_hex")
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise WireError("'public_key_hex' must be 64 lowercase hex characters")
        alg = _str(d, "algorithm")
        if alg != "ed25519":
            raise WireError(f"unsupported signing algorithm {alg!r}")
        return cls(public_key_hex=key, algorithm=alg, enroll_request_ids=_bool(d, "enroll_request_ids", default=False))


@dataclass(frozen=True)
class ErrorBody:
    """Every error response. `error` is one of the E_* codes; `retry_after` when retryable."""

    error: str
    message: str
    retry_after: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"error": self.error, "message": self.message}
        if self.retry_after is not None:
            d["retry_after"] = self.retry_after
        if self.details:
            d["details"] = dict(self.details)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ErrorBody:
        details = d.get("details") or {}
        if not isinstance(details, dict):
            raise WireError("'details' must be an object")
        return cls(error=_str(d, "error"), message=str(_req(d, "message")),
                   retry_after=None if d.get("retry_after") is None else _float(d, "retry_after", lo=0.0),
                   details=details)

    @property
    def retryable(self) -> bool:
        return self.error in RETRYABLE_ERRORS


# --- Helpers for both sides --------------------------------------------------------------------

def version_path(template: str, version_id: str) -> str:
    """Fill a PATH_VERSION_* template (ids are URL-safe: [A-Za-z0-9._-])."""
    if not is_safe_id(version_id):
        raise WireError(f"version id {version_id!r} is not URL-safe")
    return template.format(version_id=version_id)


def is_safe_id(value: str) -> bool:
    """An id that is safe as one URL path segment and one directory name on both sides:
    [A-Za-z0-9._-], at most MAX_ID_LEN, and not only dots (`.` and `..` name other directories)."""
    return (isinstance(value, str) and 0 < len(value) <= MAX_ID_LEN and value.strip(".") != ""
            and all(c.isascii() and (c.isalnum() or c in "._-") for c in value))


def device_headers(device_id: str, token: str) -> dict[str, str]:
    """The headers every authenticated device request carries."""
    return {AUTH_HEADER: f"{AUTH_SCHEME} {token}", DEVICE_HEADER: device_id}


def bearer_token(header_value: str | None) -> str | None:
    """Extract the token from an Authorization header value, or None."""
    if not header_value:
        return None
    scheme, _, token = header_value.partition(" ")
    if scheme.lower() != AUTH_SCHEME.lower() or not token.strip():   # schemes are case-insensitive (RFC 7235)
        return None
    return token.strip()
