"""When the device may train: charging on mains, idle, on an unmetered network.

Training costs battery, CPU and (for the upload) data, and a keyboard must never feel slow,
so the device only works when the user would not notice (Bonawitz et al., "Towards
Federated Learning at Scale", 2019). The policy is a pure function of a `DeviceState`;
providers read the state from the platform:

- `SysfsPower`: Linux `/sys/class/power_supply` (root injectable, tests use a fake tree);
- `TermuxPower`: Android through Termux:API's `termux-battery-status` JSON;
- `LinuxNetwork`: the default route's interface from /proc/net/route (Wi-Fi and Ethernet
  count as unmetered, cellular/PPP/tethering as metered);
- `ActivityClock`: time since the last keystroke (persisted as a file's mtime so a separate
  training process can see the keyboard's activity);
- an explicit override (`Eligibility(override=True/False)`) for emulators and simulation.

Unknown state is never eligible: a provider that cannot tell says None, and the policy
treats None as "no".
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PowerStatus:
    on_mains: bool | None           # an external supply is online (AC, USB, wireless charger)
    battery_status: str | None      # "charging", "discharging", "full", "not charging", or None
    battery_percent: float | None = None
    has_battery: bool | None = None


@dataclass(frozen=True)
class DeviceState:
    power: PowerStatus
    unmetered: bool | None
    idle_seconds: float | None
    load_per_cpu: float | None      # 1-minute load average divided by CPU count


@dataclass(frozen=True)
class Policy:
    min_idle_s: float = 600.0       # no keystroke for 10 minutes: the user has put the phone down
    max_load_per_cpu: float = 0.5   # leave headroom for whatever else the device is doing
    require_power: bool = True
    require_unmetered: bool = True

    def __post_init__(self) -> None:
        if self.min_idle_s < 0 or self.max_load_per_cpu <= 0:
            raise ValueError("min_idle_s must be >= 0 and max_load_per_cpu > 0")


@dataclass(frozen=True)
class Decision:
    eligible: bool
    reasons: tuple[str, ...] = ()   # why not (empty when eligible); no user data

    def __bool__(self) -> bool:
        return self.eligible


# Battery states that count as "charging (or full) on mains". "not charging" on mains is a
# battery held at a charge limit (laptops, phones with battery protection): not draining.
_POWERED_STATUSES = frozenset({"charging", "full", "not charging"})


def decide(state: DeviceState, policy: Policy) -> Decision:
    """The eligibility policy, as a pure function."""
    reasons: list[str] = []
    p = state.power
    if policy.require_power:
        if p.on_mains is not True:
            reasons.append("not on mains power")
        elif p.has_battery is not False and p.battery_status not in _POWERED_STATUSES:
            reasons.append(f"battery not charging ({p.battery_status or 'unknown'})")
    if policy.require_unmetered and state.unmetered is not True:
        reasons.append("network metered or unknown")
    if state.idle_seconds is None or state.idle_seconds < policy.min_idle_s:
        reasons.append("keyboard in use recently")
    if state.load_per_cpu is None or state.load_per_cpu > policy.max_load_per_cpu:
        reasons.append("system load high or unknown")
    return Decision(not reasons, tuple(reasons))


# --- power providers ---------------------------------------------------------------------------

class PowerProvider(Protocol):
    def read(self) -> PowerStatus: ...


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


class SysfsPower:
    """Linux power_supply class: Mains/USB/Wireless supplies with `online`, Battery with `status`.

    A machine with no battery at all (a Raspberry Pi, a desktop) is mains-powered by
    definition: it reports on_mains=True, has_battery=False.
    """

    def __init__(self, root: str | os.PathLike = "/sys/class/power_supply") -> None:
        self.root = Path(root)

    def read(self) -> PowerStatus:
        if not self.root.is_dir():
            return PowerStatus(on_mains=None, battery_status=None)
        supplies_online: list[bool] = []
        batteries: list[tuple[str | None, float | None]] = []
        for entry in sorted(self.root.iterdir()):
            kind = (_read(entry / "type") or "").lower()
            if kind == "battery":
                if _read(entry / "scope") == "Device":
                    continue  # a mouse's or headset's battery, not ours
                cap = _read(entry / "capacity")
                status = _read(entry / "status")
                batteries.append((status.lower() if status else None, float(cap) if cap and cap.isdigit() else None))
            elif kind:  # Mains, USB, USB_C, Wireless, UPS ...
                online = _read(entry / "online")
                if online is not None:
                    supplies_online.append(online == "1")
        if not batteries:
            return PowerStatus(on_mains=True, battery_status=None, has_battery=False)
        status, percent = batteries[0]
        if supplies_online:
            on_mains: bool | None = any(supplies_online)
        else:  # some laptops expose no supply node; the battery status still tells
            on_mains = True if status in ("charging", "full") else (False if status == "discharging" else None)
        return PowerStatus(on_mains=on_mains, battery_status=status, battery_percent=percent, has_battery=True)


class TermuxPower:
    """Android via Termux:API. `run` returns the command's stdout (injectable for tests)."""

    COMMAND = "termux-battery-status"

    def __init__(self, run: Callable[[list[str]], str] | None = None, timeout_s: float = 10.0) -> None:
        self._run = run or (lambda argv: subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout_s, check=True).stdout)

    @classmethod
    def available(cls) -> bool:
        return shutil.which(cls.COMMAND) is not None

    def read(self) -> PowerStatus:
        try:
            d = json.loads(self._run([self.COMMAND]))
        except (OSError, subprocess.SubprocessError, ValueError) as e:
            log.warning("termux-battery-status failed: %s", e)
            return PowerStatus(on_mains=None, battery_status=None)
        plugged = str(d.get("plugged", "")).upper()
        status = str(d.get("status", "")).lower().replace("_", " ") or None
        pct = d.get("percentage")
        return PowerStatus(
            on_mains=None if not plugged else plugged.startswith("PLUGGED"),
            battery_status=status,
            battery_percent=float(pct) if isinstance(pct, (int, float)) else None,
            has_battery=True,
        )


def detect_power_provider(sysfs_root: str | os.PathLike = "/sys/class/power_supply") -> PowerProvider:
    """Termux when its battery command exists (Android), Linux sysfs otherwise."""
    if TermuxPower.available():
        return TermuxPower()
    return SysfsPower(sysfs_root)


# --- network ---------------------------------------------------------------------------------

_METERED_PREFIXES = ("wwan", "rmnet", "ccmni", "ppp", "usb", "rndis", "wwp", "qmi")
_UNMETERED_PREFIXES = ("eth", "en", "wl", "wlan")


class LinuxNetwork:
    """Metered or not, from the interface of the default route.

    Linux has no portable "metered" flag without NetworkManager's D-Bus API, so this is the
    usual heuristic: Wi-Fi and Ethernet are unmetered, cellular modems, PPP and USB
    tethering are metered, anything else is unknown (not eligible).
    """

    def __init__(self, proc_root: str | os.PathLike = "/proc", sys_root: str | os.PathLike = "/sys") -> None:
        self.proc_root = Path(proc_root)
        self.sys_root = Path(sys_root)

    def default_interface(self) -> str | None:
        text = _read(self.proc_root / "net" / "route")
        if not text:
            return None
        for line in text.splitlines()[1:]:
            cols = line.split()
            if len(cols) >= 2 and cols[1] == "00000000":
                return cols[0]
        return None

    def unmetered(self) -> bool | None:
        iface = self.default_interface()
        if iface is None:
            return None
        if (self.sys_root / "class" / "net" / iface / "wireless").exists():
            return True
        if iface.startswith(_METERED_PREFIXES):
            return False
        if iface.startswith(_UNMETERED_PREFIXES):
            return True
        return None


# --- activity and load -----------------------------------------------------------------------

FUTURE_SLACK_S = 60.0   # a keystroke stamped further ahead than this was stamped by a wrong clock


class ActivityClock:
    """Time since the last keystroke.

    The keyboard calls `note_keystroke()`; the trainer (perhaps another process) calls
    `idle_seconds()`. The time is kept as the mtime of a file in the data directory, touched
    at most once per `resolution_s` so the hot path costs a clock read, not a syscall. With
    no keystroke known, idle time counts from when this clock was created: a freshly started
    process waits the full idle period before it trains (conservative, never a guess).
    """

    def __init__(self, path: str | os.PathLike | None = None, *, resolution_s: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path) if path is not None else None
        self.resolution_s = resolution_s
        self._clock = clock
        self._created = clock()
        self._last: float | None = None   # a keystroke this process noted
        self._written = float("-inf")
        self._failing = False   # said once, until a write succeeds again

    def note_keystroke(self) -> None:
        now = self._clock()
        self._last = now
        # Also when the clock went back (now before the last write): the file would otherwise keep
        # its future time, and typing would go unseen, so training would run while the user types.
        if self.path is not None and not 0 <= now - self._written < self.resolution_s:
            self._written = now
            try:
                self.path.touch()
                os.utime(self.path, (now, now))
                self._failing = False
            except OSError as e:   # the data directory gone or read-only: typing goes on, this process knows
                if not self._failing:
                    log.warning("cannot note the keystroke time in %s (%s): another process (the trainer) "
                                "will not see it until that is fixed", self.path, e.strerror or e)
                self._failing = True

    def idle_seconds(self) -> float:
        """Since the last keystroke this process or the file knows of; with none known, since this
        clock was made. (Counted from creation even with the file there, `status`, a
        process of a moment, would always say "keyboard in use recently".)"""
        now = self._clock()
        # This process's own times, read while the clock ran ahead, are unknown as the file's are:
        # now. Kept, a clock set back (5 hours, or from 2035) left no idle time until it caught up,
        # so a device that had started or typed meanwhile did not train until it was restarted.
        if self._last is not None and self._last > now + FUTURE_SLACK_S:
            self._last = now
        if self._created > now + FUTURE_SLACK_S:
            self._created = now
        known = [] if self._last is None else [self._last]
        if self.path is not None:
            try:
                stamp = self.path.stat().st_mtime
            except FileNotFoundError:
                stamp = None
            if stamp is not None and stamp > now + FUTURE_SLACK_S:
                # Stamped while the clock ran ahead: when is unknown, so now, and the file says so
                # (else training would wait until the clock catches up, days later).
                stamp = now
                with contextlib.suppress(OSError):
                    os.utime(self.path, (now, now))
            if stamp is not None:
                known.append(stamp)
        return max(0.0, now - (max(known) if known else self._created))


OWN_LOAD = 1.0   # the load average one busy thread adds: the device's own training or evaluation


def load_per_cpu() -> float | None:
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:
        return None


# --- the whole check -------------------------------------------------------------------------

class Eligibility:
    """Reads every provider and applies the policy; `override` forces the answer."""

    def __init__(
        self,
        policy: Policy = Policy(),
        *,
        power: PowerProvider | None = None,
        network: Callable[[], bool | None] | None = None,
        activity: ActivityClock | None = None,
        load: Callable[[], float | None] = load_per_cpu,
        override: bool | None = None,
    ) -> None:
        self.policy = policy
        self.power = power or detect_power_provider()
        self.network = network or LinuxNetwork().unmetered
        self.activity = activity or ActivityClock()
        self.load = load
        self.override = override

    def state(self, *, working: bool = False) -> DeviceState:
        load = self.load()
        if working and load is not None:   # the work's own thread is not the load it must yield to
            load = max(0.0, load - OWN_LOAD / (os.cpu_count() or 1))
        return DeviceState(power=self.power.read(), unmetered=self.network(),
                           idle_seconds=self.activity.idle_seconds(), load_per_cpu=load)

    def check(self, *, working: bool = False) -> Decision:
        """`working`: asked between the steps of long work (training, evaluation), whose own busy
        thread adds about 1 to the load average. Counted, it aborted that work after about 40 s
        on one core at the default max_load_per_cpu of 0.5, so no longer plan could finish."""
        if self.override is not None:
            return Decision(self.override, () if self.override else ("disabled by override",))
        return decide(self.state(working=working), self.policy)
