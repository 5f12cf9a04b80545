"""The coordinator's one validated settings object: defaults < profile < file < environment < flags.

Loading is protocol.settings.load_settings, shared with the device: unknown keys are errors
everywhere (a misspelt setting silently ignored is a setting not set). Environment variables
are ``FEDKEYS_COORDINATOR_<KEY>`` (upper case); the config file is TOML or JSON, named by
``--config`` or ``FEDKEYS_COORDINATOR_CONFIG``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from coordinator.aggregation import AGGREGATORS, SERVER_OPTIMIZERS
from coordinator.errors import CoordinatorError
from protocol.fields import WireError
from protocol.plan import PLAN_FIELDS
from protocol.settings import LOG_LEVELS, coerce_settings, load_settings

ENV_PREFIX = "FEDKEYS_COORDINATOR_"
ENV_CONFIG_FILE = ENV_PREFIX + "CONFIG"
# Named presets applied under file, environment and flags (`profile = "small"` or --profile small).
PROFILES: dict[str, dict[str, Any]] = {
    # One person trying the loop by hand: one device fills a round, one report decides the canary,
    # devices come back within seconds, and the next round opens itself.
    "small": {"goal_count": 1, "min_count": 1, "overselect": 1.0, "round_duration_s": 300.0,
              "checkin_interval_s": 2.0, "canary_fraction": 1.0, "canary_min_reports": 1,
              "round_interval_s": 5.0, "selection_window_s": 0.0},  # one device: nothing to draw among
}


# An operator's own admin token: long enough that the failed-token limit leaves guessing hopeless.
# The service refuses a shorter one (`app.create_app`); admin commands, which never take the token
# over HTTP, still run with it, so a device can be revoked while the token is being replaced.
MIN_ADMIN_TOKEN_CHARS = 16
MAX_GOAL_COUNT = 10**7
MAX_OVERSELECT = 10.0
MAX_ROUND_DURATION_S = 30 * 86400.0
MAX_INTERVAL_S = 365 * 86400.0       # any other duration: round_interval_s, checkin_interval_s, ...


def round_values_fault(goal_count: int, min_count: int, overselect: float, round_duration_s: float,
                       selection_window_s: float) -> str | None:
    """What is wrong with a round's size and timing (None: nothing): the one rule for the settings'
    defaults (`Config`) and an operator's overrides (`coordinator.rounds.start_round`)."""
    if not 1 <= goal_count <= MAX_GOAL_COUNT:
        return f"goal_count must be in [1, {MAX_GOAL_COUNT:.0e}] (it is {goal_count})"
    if min_count < 1:
        return f"min_count must be >= 1 (it is {min_count})"
    if not 1 <= overselect <= MAX_OVERSELECT:
        return f"overselect must be in [1, {MAX_OVERSELECT:g}] (it is {overselect})"
    if not 0 < round_duration_s <= MAX_ROUND_DURATION_S:
        return f"round_duration_s must be in (0, 30 days] (it is {round_duration_s})"
    if not 0 <= selection_window_s < round_duration_s:
        return f"selection_window_s must be in [0, round_duration_s) (it is {selection_window_s})"
    return None


class ConfigError(CoordinatorError, ValueError):
    """A setting is unknown or has an invalid value."""


@dataclass(frozen=True)
class Config:
    data_dir: str = "./coordinator-data"  # blobs, signing key, admin token, SQLite file
    database_url: str = ""                # empty: sqlite:///<data_dir>/coordinator.db
    host: str = "127.0.0.1"  # `serve` only; gunicorn binds FEDKEYS_BIND (deploy/README.md)
    port: int = 8400  # `serve` only; gunicorn binds FEDKEYS_BIND (deploy/README.md)
    admin_token: str = ""  # empty: generated into <data_dir>/admin_token; else 16+ printable Latin-1 characters
    proxy_hops: int = 0                   # reverse proxies in front whose X-Forwarded-For/-Proto are trusted (nginx: 1)
    log_level: str = "INFO"
    log_format: str = "auto"              # json | text | auto (text on a terminal, JSON lines otherwise)
    profile: str = ""                     # a preset from PROFILES under file/env/flags ("" = none)
    # Limits
    max_body_bytes: int = 64 * 1024 * 1024   # hard cap on any request body (413 above)
    rate_limit_per_minute: float = 120.0     # per device and server process (gunicorn: x workers), token bucket
    rate_limit_burst: int = 30
    rate_limit_per_key_per_minute: float = 6000.0  # check-ins of all devices of one enrollment key, per process
    rate_limit_per_key_burst: int = 600
    admin_failures_per_minute: float = 10.0  # wrong admin tokens per client address and process; past them, 429
    admin_failures_burst: int = 20           # before the token is compared (a token bucket like the rate limits)
    # Enrollment keys: every key has a use count and a lifetime (a leaked key mints few sybils)
    enrollment_key_uses: int = 100
    enrollment_key_ttl_s: float = 7 * 86400.0
    # Pace steering: how long devices wait between check-ins (jittered to avoid a herd)
    checkin_interval_s: float = 300.0
    checkin_jitter: float = 0.5              # +- fraction of the interval
    # Round defaults (start-round may override); plan bounds: protocol.plan.PLAN_FIELDS
    goal_count: int = 100
    overselect: float = 1.3                  # select 130 % of goal: some devices drop out
    min_count: int = 50                      # at the deadline, aggregate only with this many
    round_duration_s: float = 1800.0
    selection_window_s: float = 60.0         # check-ins collected, then a random draw (0: first come)
    round_interval_s: float = 0.0            # > 0: next round this long after the last closed (first: start-round)
    epochs: int = 1
    batch_size: int = 16
    learning_rate: float = 0.5
    clip_norm: float = 1.0
    noise_multiplier: float = 0.01           # DP on by default: device noise std = this * clip_norm
    max_examples: int = 1000
    # Aggregation
    max_example_weight: int = 1000           # per-update weight cap: no device dominates the mean
    aggregator: str = "mean"                 # mean (streamed) | trimmed_mean | median (hold every update)
    trim_fraction: float = 0.1               # trimmed_mean: share cut at each end per coordinate
    server_optimizer: str = "fedavg"         # fedavg | fedavgm | fedadam
    server_learning_rate: float = 1.0
    server_momentum: float = 0.9             # FedAvgM (Hard et al. 2018 used 0.9)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    adam_epsilon: float = 1e-3               # FedAdam's tau (Reddi et al. 2021)
    # Privacy accounting
    privacy_delta: float = 1e-6
    # Secure aggregation (docs/privacy.md): the round mode, and its protocol's knobs
    secure_aggregation: bool = False         # start-round default (goal_count >= 2); noise_multiplier is then central
    discover_words: int = 0                  # default for start-round: 0 trains; k > 0 votes for new words
    secagg_dropout: float = 0.3              # design dropout: sizes the SecAgg+ graph and n_min
    secagg_phase_timeout_s: float = 120.0    # a phase closes early when everyone answered
    secagg_poll_s: float = 2.0               # Retry-After while a device waits for the next phase
    # Canary rollout
    canary_fraction: float = 0.1
    rollout_state_ttl_s: float = 7 * 86400.0  # a signed check-in reply is usable this long
    canary_min_reports: int = 5              # canaries that scored words decide; twice as many tasks are out at once
    canary_tolerance: float = 0.005          # candidate top-3 may be this much worse (at least one canary word)
    max_eval_examples: int = 500             # evaluate task: held-out windows per version
    max_eval_words: int = 300                # evaluate task: words scored per version (word top-3, KSR)
    # Storage: older versions' weights are deleted (coordinator.retention); their records stay
    keep_versions: int = 10                  # files kept of the N last retired (rollback) and N last rejected; 0: all

    # Not settings: those a release removed, and what `protocol.settings` says of one still named
    # (an environment file kept across an upgrade stopped the service as if it held a typo).
    REMOVED_SETTINGS: ClassVar[dict[str, str]] = {
        "population_size": "removed on 6 December 2026 (each round's sampled epsilon takes its own draw's rate)"}

    def __post_init__(self) -> None:
        for f in fields(self):   # inf or nan passes most bounds below and fails later, as a 500 or a traceback
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{f.name} must be a finite number (it is {v})")
        round_fault = round_values_fault(self.goal_count, self.min_count, self.overselect, self.round_duration_s,
                                         self.selection_window_s)
        checks = [
            (self.port > 0 and self.port < 65536, "port must be 1-65535"),
            (self.max_body_bytes > 0, "max_body_bytes must be > 0"),
            (1 <= self.enrollment_key_uses <= 2**31 - 1 and 0 < self.enrollment_key_ttl_s <= 3650 * 86400,
             "enrollment_key_uses must be in [1, 2^31-1] and enrollment_key_ttl_s in (0, 10 years]"),
            (self.rate_limit_per_minute > 0 and self.rate_limit_burst >= 1, "rate limits must be positive"),
            (self.rate_limit_per_key_per_minute > 0 and self.rate_limit_per_key_burst >= 1,
             "per-key rate limits must be positive"),
            (self.admin_failures_per_minute > 0 and self.admin_failures_burst >= 1,
             "admin_failures_per_minute must be > 0 and admin_failures_burst >= 1"),
            (0 <= self.proxy_hops <= 10, "proxy_hops must be in [0, 10]: the reverse proxies in front (nginx: 1)"),
            (0 < self.checkin_interval_s <= MAX_INTERVAL_S and 0 <= self.checkin_jitter < 1,
             "checkin_interval_s must be in (0, 365 days] and checkin_jitter in [0, 1)"),
            (round_fault is None, round_fault),
            (self.min_count <= self.goal_count, "min_count must be in [1, goal_count]"),
            (0 <= self.round_interval_s <= MAX_INTERVAL_S,
             "round_interval_s must be in [0, 365 days] (0: rounds only on start-round)"),
            (self.log_format in ("auto", "json", "text"), "log_format must be auto, json or text"),
            (self.log_level.upper() in LOG_LEVELS, f"log_level must be one of {list(LOG_LEVELS)}"),
            (self.profile in ("", *PROFILES), f"profile must be one of {sorted(PROFILES)} or empty"),
            (self.max_example_weight >= 1, "max_example_weight must be >= 1"),
            (self.aggregator in AGGREGATORS and 0 <= self.trim_fraction < 0.5,
             f"aggregator must be one of {AGGREGATORS}, trim_fraction in [0, 0.5)"),
            (self.server_optimizer in SERVER_OPTIMIZERS, f"server_optimizer must be one of {SERVER_OPTIMIZERS}"),
            (self.server_learning_rate > 0, "server_learning_rate must be > 0"),
            (0 <= self.server_momentum < 1, "server_momentum must be in [0, 1)"),
            # FedAdam's: an epsilon of 0 failed every round as "not finite", after the devices trained
            (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1, "adam_beta1 and adam_beta2 must be in [0, 1)"),
            (self.adam_epsilon > 0, "adam_epsilon must be > 0"),
            (0 < self.privacy_delta < 1, "privacy_delta must be in (0, 1)"),
            (0 <= self.secagg_dropout < 0.5 and 0 < self.secagg_phase_timeout_s <= MAX_ROUND_DURATION_S
             and 0 < self.secagg_poll_s <= 3600,
             "secagg_dropout must be in [0, 0.5), secagg_phase_timeout_s in (0, 30 days], secagg_poll_s in (0, 3600]"),
            (not self.secure_aggregation or self.aggregator == "mean",
             "secure_aggregation needs aggregator = mean: the coordinator sees only the sum"),
            (not self.secure_aggregation or self.goal_count >= 2,
             "secure_aggregation needs goal_count >= 2: a sum of one device's update is that update"),
            (not self.discover_words or self.secure_aggregation,
             "discover_words needs secure_aggregation: the coordinator must see only the sum of votes"),
            (0 < self.canary_fraction <= 1, "canary_fraction must be in (0, 1]"),
            (60 <= self.rollout_state_ttl_s <= 365 * 86400, "rollout_state_ttl_s must be in [60 s, 365 days]"),
            (self.canary_min_reports >= 1, "canary_min_reports must be >= 1"),
            (self.canary_tolerance >= 0, "canary_tolerance must be >= 0"),
            (1 <= self.max_eval_examples <= 10**6 and 1 <= self.max_eval_words <= 10**6,
             "max_eval_examples and max_eval_words must be in [1, 1e6]"),
            (0 <= self.keep_versions <= 10**6, "keep_versions must be in [0, 1e6] (0: keep every version's files)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        for f in PLAN_FIELDS:  # the round defaults obey the one plan declaration
            try:
                f.check(getattr(self, f.name))
            except WireError as e:
                raise ConfigError(str(e)) from e

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        # Escaped as a URL: a data directory named "q?x" put the database in a file "q" beside it.
        from sqlalchemy.engine import URL

        return URL.create("sqlite", database=str(Path(self.data_dir).resolve() / "coordinator.db")).render_as_string()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_overrides(self, overrides: Mapping[str, Any], *, source: str = "overrides") -> Config:
        """A copy with `overrides` applied; strings are coerced to the field's type."""
        return replace(self, **_coerce_all(overrides, source))


# Set for each process (where it listens, logs and finds its data): an admin command keeps its own.
PROCESS_SETTINGS = frozenset({"data_dir", "database_url", "host", "port", "admin_token", "proxy_hops", "log_level",
                              "log_format", "profile"})


def deployment_settings(cfg: Config) -> dict[str, Any]:
    """The settings that decide how rounds run and candidates are judged (everything but
    PROCESS_SETTINGS): what a serving coordinator records for admin commands (coordinator.deployment)."""
    return {k: v for k, v in cfg.to_dict().items() if k not in PROCESS_SETTINGS}


def process_config(*, config_file: str | None = None, environ: Mapping[str, str] | None = None,
                   flags: Mapping[str, Any] | None = None) -> Config:
    """Only PROCESS_SETTINGS from the file, environment and flags, the rest defaults: where an admin
    command finds its data, database and logs before it reads the settings the service recorded,
    with which its own are then validated (`load_config(served=...)`): a flag valid only with the
    service's settings (discover_words with its secure_aggregation) must not be refused first."""
    merged = load_settings(Config, ConfigError, env_prefix=ENV_PREFIX, config_file=config_file, environ=environ,
                           flags=flags)
    return Config(**{k: v for k, v in merged.items() if k in PROCESS_SETTINGS})


def _coerce_all(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    return coerce_settings(Config, values, source, ConfigError)


def _profile(merged: dict[str, Any]) -> dict[str, Any]:
    """The named profile's settings, to go under file, environment and flags."""
    profile = merged.get("profile", "")
    if not profile:
        return {}
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; known: {sorted(PROFILES)}")
    return _coerce_all(PROFILES[profile], f"profile {profile}")


def load_config(*, config_file: str | None = None, environ: Mapping[str, str] | None = None,
                flags: Mapping[str, Any] | None = None, served: Mapping[str, Any] | None = None) -> Config:
    """Build the config: defaults < `served` < profile < file < environment < flags (None flags
    are ignored); the file is TOML, or JSON when named *.json (protocol.settings.load_settings).
    `served`: the settings a serving coordinator recorded (an admin command's defaults)."""
    under = {} if not served else _coerce_all(served, "the serving coordinator's recorded settings")
    merged = load_settings(Config, ConfigError, env_prefix=ENV_PREFIX, config_file=config_file, environ=environ,
                           flags=flags, presets=lambda m: under | _profile(m))
    # Validated once, on the merged result: a file may raise goal_count while a flag raises min_count.
    try:
        return Config(**merged)
    except ConfigError as e:
        if not served:
            raise
        raise ConfigError(f"{e} (this command's settings over the ones the serving coordinator recorded: "
                          "give it the others this needs with --set, or restart the service with them)") from None
