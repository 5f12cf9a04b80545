"""The device's one validated settings object: defaults < JSON file < environment < flags.

Loading is protocol.settings.load_settings, shared with the coordinator. Unknown keys are
errors at every layer (a misspelt setting silently ignored is a setting not set). Environment
variables are ``FEDKEYS_EDGE_<KEY>`` (upper case); the file is JSON, named by ``--config`` or
``FEDKEYS_EDGE_CONFIG``. Flags given as None are "not given".
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from edge_runtime.errors import EdgeError
from protocol.settings import LOG_LEVELS, coerce_settings, load_settings

if TYPE_CHECKING:
    from edge_runtime.personalize import PersonalPlan

log = logging.getLogger(__name__)
ENV_PREFIX = "FEDKEYS_EDGE_"
ENV_CONFIG_FILE = ENV_PREFIX + "CONFIG"
ELIGIBILITY_MODES = ("auto", "override:eligible", "override:ineligible")
# The longest wait, backoff or HTTP timeout a setting may ask for: a socket refuses a timeout of
# 1e10 s and a thread's wait one past threading.TIMEOUT_MAX (OverflowError), so a larger one
# failed every call or ended the device loop with a traceback.
MAX_SECONDS = 365 * 86400.0


class ConfigError(EdgeError, ValueError):
    """A setting is unknown or has an invalid value."""


def _http_url(url: str) -> bool:
    """An http(s) URL the client can connect to: "http://[::1" or port 99999 failed on the first
    request as "InvalidURL", exit 1, instead of naming the setting."""
    try:
        parts = urlsplit(url)
        port = parts.port
        return parts.scheme in ("http", "https") and bool(parts.hostname) and (port is None or 1 <= port <= 65535)
    except ValueError:   # an unclosed "[", a port that is not a number or out of range
        return False


def plain_http_warning(url: str) -> str | None:
    """A warning when `url` is plain http to another machine, else None. Plans, rosters and the
    device's token are not signed or sealed above TLS (only versions are signed), so on such a
    link anyone on the network can act as the coordinator, up to unmasking secure rounds.
    A warning, not a refusal: a lab network or an emulator's host is a choice."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme != "http" or host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return (f"warning: {url} is plain HTTP to another machine: the device's token, its updates and secure "
            "rounds' keys travel in clear, and anyone on the network can act as the coordinator; "
            "use https:// (deploy/README.md)")


@dataclass(frozen=True)
class EdgeConfig:
    data_dir: str = ""                   # the device's directory: identity, text cache, models
    coordinator: str = ""                # base URL; empty: the one the device enrolled with
    public_key: str = ""                 # coordinator's Ed25519 key (hex); empty: the enrolled one
    eligibility: str = "auto"            # auto | override:eligible | override:ineligible
    # Eligibility policy (auto mode)
    min_idle_s: float = 600.0            # no keystroke for this long before training
    max_load_per_cpu: float = 0.5
    require_power: bool = True
    require_unmetered: bool = True
    # Text cache
    retention_days: float = 60.0
    max_cache_bytes: int = 4 * 1024 * 1024
    holdout_fraction: float = 0.1        # newest part kept for local evaluation only
    # Privacy floor: plans outside it are refused, whatever the coordinator says (plan_guard)
    min_noise_multiplier: float = 0.01   # the coordinator's default noise: plans without noise are refused
    max_clip_norm: float = 10.0
    max_epochs: int = 20
    max_train_examples: int = 5000
    local_epsilon_budget: float = math.inf  # total epsilon this device spends against the coordinator
    local_delta: float = 1e-6
    max_evaluations_per_day: float = 48.0  # canary candidates evaluated in 24 h (each once; plan_guard)
    # The user's own copy of the LSTM, fine-tuned on the cache when eligible, never uploaded (personalize)
    personalize: bool = True             # fine-tune a personal copy when eligible; false: global model, copy deleted
    personal_learning_rate: float = 0.2  # SGD rate (0.5, the federated rate, overfits one user's text)
    personal_epochs: int = 1
    personal_max_examples: int = 256     # the newest windows of the cache (20 words each)
    # Suggestions
    block_offensive: bool = True         # slurs, strong swear words and explicit slang only once this user typed them
    base_ngram: str = ""                 # the base n-gram file; empty: the one shipped with the app; "off": none
    # Pacing: the coordinator says when to come back; we add our own jitter and bounds
    jitter: float = 0.1                  # +- fraction added to every wait (no thundering herd)
    min_wait_s: float = 1.0
    max_wait_s: float = 6 * 3600.0
    backoff_initial_s: float = 5.0       # first wait after a transient error, doubled each time
    backoff_max_s: float = 900.0
    upload_attempts: int = 4             # tries for one upload (same idempotency key) before giving up
    http_timeout_s: float = 30.0
    log_level: str = "INFO"
    # Demo keyboard page (edge_runtime.keyboard); non-loopback hosts need --keyboard-host itself
    keyboard_host: str = "127.0.0.1"
    keyboard_port: int = 0               # `run`: 0 = no page; `keyboard`: 0 = any free port

    def __post_init__(self) -> None:
        checks = [
            (self.eligibility in ELIGIBILITY_MODES, f"eligibility must be one of {list(ELIGIBILITY_MODES)}"),
            (self.coordinator == "" or _http_url(self.coordinator),
             f"coordinator must be an http:// or https:// URL with a host and a port in 1-65535, "
             f"not {self.coordinator!r}"),
            (self.public_key == "" or (len(self.public_key) == 64
                                       and all(c in "0123456789abcdefABCDEF" for c in self.public_key)),
             "public_key must be 64 hex characters"),
            (self.min_idle_s >= 0 and self.max_load_per_cpu > 0, "min_idle_s >= 0 and max_load_per_cpu > 0"),
            (self.retention_days > 0 and self.max_cache_bytes > 0, "retention_days and max_cache_bytes must be > 0"),
            (0 < self.holdout_fraction < 1, "holdout_fraction must be in (0, 1)"),
            (0 <= self.jitter < 1, "jitter must be in [0, 1)"),
            (0 < self.min_wait_s <= self.max_wait_s <= MAX_SECONDS,
             "need 0 < min_wait_s <= max_wait_s, finite, at most a year"),
            (0 < self.backoff_initial_s <= self.backoff_max_s <= MAX_SECONDS,
             "need 0 < backoff_initial_s <= backoff_max_s, finite, at most a year"),
            (self.upload_attempts >= 1, "upload_attempts must be >= 1"),
            (0 <= self.min_noise_multiplier < math.inf and 0 < self.max_clip_norm < math.inf,
             "need 0 <= min_noise_multiplier and 0 < max_clip_norm, both finite"),
            (self.max_epochs >= 1 and self.max_train_examples >= 1, "max_epochs and max_train_examples must be >= 1"),
            (self.local_epsilon_budget > 0 and 0 < self.local_delta < 1,
             "local_epsilon_budget must be > 0 (inf: unlimited) and local_delta in (0, 1)"),
            (self.max_evaluations_per_day >= 0, "max_evaluations_per_day must be >= 0 (inf: unlimited, 0: none)"),
            (0 < self.personal_learning_rate < math.inf and self.personal_epochs >= 1
             and self.personal_max_examples >= 1,
             "personal_learning_rate must be > 0, personal_epochs and personal_max_examples >= 1"),
            (0 < self.http_timeout_s <= MAX_SECONDS,   # inf, or 1e10 s: every call fails (a socket's limit)
             "http_timeout_s must be > 0 and finite, at most a year"),
            (self.log_level.upper() in LOG_LEVELS, f"log_level must be one of {list(LOG_LEVELS)}"),
            (bool(self.keyboard_host.strip()), "keyboard_host must not be empty"),
            (0 <= self.keyboard_port <= 65535, "keyboard_port must be in [0, 65535]"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)

    @property
    def personal_plan(self) -> PersonalPlan:
        from edge_runtime.personalize import PersonalPlan

        return PersonalPlan(learning_rate=self.personal_learning_rate, epochs=self.personal_epochs,
                            max_examples=self.personal_max_examples)

    @property
    def override(self) -> bool | None:
        """The eligibility override (None in auto mode)."""
        return {"override:eligible": True, "override:ineligible": False}.get(self.eligibility)

    def require_data_dir(self) -> Path:
        if not self.data_dir:
            raise ConfigError("no data directory: pass --data-dir or set FEDKEYS_EDGE_DATA_DIR")
        return Path(self.data_dir)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_overrides(self, overrides: Mapping[str, Any], *, source: str = "overrides") -> EdgeConfig:
        return replace(self, **_coerce_all(overrides, source))


def _coerce_all(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    return coerce_settings(EdgeConfig, values, source, ConfigError)


def _old_base_ngram(environ: Mapping[str, str]) -> Mapping[str, str]:
    """`environ` with FEDKEYS_BASE_NGRAM (read by releases up to 5 December 2026; "" was none) read
    as the `base_ngram` setting, with a warning. The device unit those releases shipped sets it: a
    refusal would have systemd restart every upgraded device every 30 s."""
    from edge_runtime.base_ngram import OFF, OLD_VARIABLE

    if OLD_VARIABLE not in environ:
        return environ
    env = dict(environ)
    value, setting = env.pop(OLD_VARIABLE) or OFF, ENV_PREFIX + "BASE_NGRAM"
    if env.get(setting, value) != value:
        raise ConfigError(f"{OLD_VARIABLE}={value!r} and {setting}={env[setting]!r} disagree: remove {OLD_VARIABLE}, "
                          "which the base_ngram setting replaced")
    env[setting] = value
    log.warning("%s is read as the base_ngram setting (%s); it will not be for ever: remove the line, or set %s "
                "(the shipped file is the default)", OLD_VARIABLE, value, setting)
    return env


def load_config(*, config_file: str | None = None, environ: Mapping[str, str] | None = None,
                flags: Mapping[str, Any] | None = None) -> EdgeConfig:
    """defaults < JSON file < FEDKEYS_EDGE_* < flags (None flags ignored); validated once, merged
    (protocol.settings.load_settings)."""
    from protocol.interpreter import backend_refusal

    environ = _old_base_ngram(os.environ if environ is None else environ)
    # checked at start: read where the interpreter is made, deep in a task, a typo would be logged
    # only as "iteration failed: ValueError" (its message withheld, as any might quote text)
    if (why := backend_refusal(environ.get("FEDKEYS_INTERPRETER"))):
        raise ConfigError(why)
    return EdgeConfig(**load_settings(EdgeConfig, ConfigError, env_prefix=ENV_PREFIX, config_file=config_file,
                                      environ=environ, flags=flags, toml=False))
