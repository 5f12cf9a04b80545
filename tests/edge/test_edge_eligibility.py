"""Eligibility policy and its providers, on fake sysfs/procfs trees and a fake Termux."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_runtime.eligibility import (
    ActivityClock,
    DeviceState,
    Eligibility,
    LinuxNetwork,
    Policy,
    PowerStatus,
    SysfsPower,
    TermuxPower,
    decide,
)


def supply(root: Path, name: str, **files: str) -> None:
    d = root / name
    d.mkdir(parents=True)
    for k, v in files.items():
        (d / k).write_text(v + "\n")


def route_table(proc: Path, default_iface: str | None) -> None:
    (proc / "net").mkdir(parents=True)
    lines = ["Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT",
             "lo\t0000007F\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0"]
    if default_iface:
        lines.append(f"{default_iface}\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0")
    (proc / "net" / "route").write_text("\n".join(lines) + "\n")


GOOD_POWER = PowerStatus(on_mains=True, battery_status="charging", battery_percent=50, has_battery=True)
GOOD = DeviceState(power=GOOD_POWER, unmetered=True, idle_seconds=3600, load_per_cpu=0.1)


def test_all_conditions_met_is_eligible():
    d = decide(GOOD, Policy())
    assert d.eligible and bool(d) and d.reasons == ()


@pytest.mark.parametrize(("change", "reason"), [
    ({"power": PowerStatus(on_mains=False, battery_status="discharging", has_battery=True)}, "not on mains power"),
    ({"power": PowerStatus(on_mains=None, battery_status=None)}, "not on mains power"),
    ({"power": PowerStatus(on_mains=True, battery_status="discharging", has_battery=True)}, "battery not charging"),
    ({"unmetered": False}, "network metered"),
    ({"unmetered": None}, "network metered"),
    ({"idle_seconds": 30.0}, "keyboard in use"),
    ({"load_per_cpu": 0.9}, "system load"),
    ({"load_per_cpu": None}, "system load"),
])
def test_each_lapsed_condition_makes_ineligible(change, reason):
    state = DeviceState(**{**GOOD.__dict__, **change})
    d = decide(state, Policy())
    assert not d.eligible
    assert any(r.startswith(reason) for r in d.reasons), d.reasons


@pytest.mark.parametrize("status", ["charging", "full", "not charging"])
def test_powered_battery_states(status):
    state = DeviceState(**{**GOOD.__dict__, "power": PowerStatus(True, status, 100, True)})
    assert decide(state, Policy())


def test_policy_can_drop_requirements():
    state = DeviceState(power=PowerStatus(False, "discharging", 40, True), unmetered=False,
                        idle_seconds=700, load_per_cpu=0.1)
    assert decide(state, Policy(require_power=False, require_unmetered=False))


def test_sysfs_laptop_on_ac_charging(tmp_path: Path):
    supply(tmp_path, "AC", type="Mains", online="1")
    supply(tmp_path, "BAT0", type="Battery", status="Charging", capacity="57")
    p = SysfsPower(tmp_path).read()
    assert p == PowerStatus(on_mains=True, battery_status="charging", battery_percent=57.0, has_battery=True)


def test_sysfs_laptop_unplugged(tmp_path: Path):
    supply(tmp_path, "AC", type="Mains", online="0")
    supply(tmp_path, "BAT0", type="Battery", status="Discharging", capacity="80")
    p = SysfsPower(tmp_path).read()
    assert p.on_mains is False and p.battery_status == "discharging"


def test_sysfs_phone_full_on_usb_ignores_peripheral_batteries(tmp_path: Path):
    supply(tmp_path, "hid-mouse-battery", type="Battery", scope="Device", status="Discharging", capacity="10")
    supply(tmp_path, "usb", type="USB", online="1")
    supply(tmp_path, "battery", type="Battery", status="Full", capacity="100")
    p = SysfsPower(tmp_path).read()
    assert p.on_mains is True and p.battery_status == "full"


def test_sysfs_board_without_battery_is_on_mains(tmp_path: Path):
    p = SysfsPower(tmp_path).read()  # empty power_supply dir (Raspberry Pi)
    assert p.on_mains is True and p.has_battery is False
    state = DeviceState(**{**GOOD.__dict__, "power": p})
    assert decide(state, Policy())


def test_sysfs_missing_tree_is_unknown(tmp_path: Path):
    assert SysfsPower(tmp_path / "nope").read().on_mains is None


def test_termux_battery_status():
    out = {"health": "GOOD", "percentage": 100, "plugged": "PLUGGED_AC", "status": "FULL", "temperature": 30.1}
    p = TermuxPower(run=lambda argv: json.dumps(out)).read()
    assert p == PowerStatus(on_mains=True, battery_status="full", battery_percent=100.0, has_battery=True)
    out = {"percentage": 41, "plugged": "UNPLUGGED", "status": "DISCHARGING"}
    p = TermuxPower(run=lambda argv: json.dumps(out)).read()
    assert p.on_mains is False and p.battery_status == "discharging"


def test_termux_failure_is_unknown():
    def broken(argv):
        raise OSError("termux-api not installed")

    assert TermuxPower(run=broken).read().on_mains is None
    assert TermuxPower(run=lambda argv: "not json").read().on_mains is None


@pytest.mark.parametrize(("iface", "wireless", "expected"), [
    ("wlan0", True, True), ("eth0", False, True), ("enp3s0", False, True),
    ("rmnet_data0", False, False), ("wwan0", False, False), ("ppp0", False, False),
    ("tun0", False, None), (None, False, None),
])
def test_network_from_default_route(tmp_path: Path, iface, wireless, expected):
    route_table(tmp_path / "proc", iface)
    if iface:
        (tmp_path / "sys" / "class" / "net" / iface).mkdir(parents=True)
        if wireless:
            (tmp_path / "sys" / "class" / "net" / iface / "wireless").mkdir()
    assert LinuxNetwork(tmp_path / "proc", tmp_path / "sys").unmetered() is expected


def test_activity_clock_across_processes(tmp_path: Path):
    t = [1000.0]
    keyboard = ActivityClock(tmp_path / "last_keystroke", clock=lambda: t[0])
    t[0] = 2000.0
    trainer = ActivityClock(tmp_path / "last_keystroke", clock=lambda: t[0])  # started later
    t[0] = 2100.0
    assert trainer.idle_seconds() == pytest.approx(100.0)  # counts from its own start, conservatively
    keyboard.note_keystroke()
    t[0] = 2160.0
    assert trainer.idle_seconds() == pytest.approx(60.0)   # sees the keyboard's keystroke via the file
    t[0] = 2160.0 - 3600   # the clock set back an hour: the file kept the future time, and typing
    trainer.idle_seconds()  # went unseen, so training ran while the user typed
    for _ in range(30):
        keyboard.note_keystroke()
        t[0] += 30
        assert trainer.idle_seconds() <= 30


def test_override_forces_the_answer(tmp_path: Path):
    bad = Eligibility(power=SysfsPower(tmp_path / "none"), network=lambda: None, load=lambda: None)
    assert not bad.check()
    bad.override = True
    assert bad.check().eligible
    good = Eligibility(Policy(min_idle_s=0), power=SysfsPower(tmp_path), network=lambda: True,
                       load=lambda: 0.0, override=False)
    d = good.check()
    assert not d and d.reasons == ("disabled by override",)


def test_full_check_with_fake_providers(tmp_path: Path):
    supply(tmp_path / "ps", "AC", type="Mains", online="1")
    supply(tmp_path / "ps", "BAT0", type="Battery", status="Charging", capacity="57")
    t = [0.0]
    e = Eligibility(Policy(min_idle_s=600), power=SysfsPower(tmp_path / "ps"), network=lambda: True,
                    activity=ActivityClock(clock=lambda: t[0]), load=lambda: 0.2)
    assert not e.check()            # just started: not idle long enough
    t[0] = 601.0
    assert e.check()
    (tmp_path / "ps" / "AC" / "online").write_text("0\n")
    (tmp_path / "ps" / "BAT0" / "status").write_text("Discharging\n")
    assert not e.check()            # unplugged: lapses immediately


def test_a_new_clock_reads_the_keystroke_file_and_a_future_stamp_is_now(tmp_path):
    """A clock counted idle time from its creation even with the keystroke file there, so
    `status` (a process of a moment) always said "keyboard in use recently"; and a keystroke
    stamped while the clock ran days ahead kept training waiting until the clock caught up."""
    import os

    from edge_runtime.eligibility import ActivityClock

    f = tmp_path / "last_keystroke"
    f.touch()
    os.utime(f, (1_000_000.0, 1_000_000.0))
    now = [1_000_000.0 + 5 * 3600]
    assert ActivityClock(f, clock=lambda: now[0]).idle_seconds() == 5 * 3600
    os.utime(f, (now[0] + 3 * 86400, now[0] + 3 * 86400))          # typed while the clock ran ahead
    clock = ActivityClock(f, clock=lambda: now[0])
    assert clock.idle_seconds() == 0.0 and f.stat().st_mtime == now[0]   # taken as now, and the file says so
    now[0] += 600
    assert clock.idle_seconds() == 600
    assert ActivityClock(tmp_path / "none", clock=lambda: now[0]).idle_seconds() == 0.0   # none known: from now


def test_times_this_process_read_while_its_clock_ran_ahead_are_now_once_it_is_set_right(tmp_path):
    """A device loop started, or a keystroke noted, while the clock ran 5 hours ahead: set right,
    the clock counted idle time from that future moment, so the device was never idle (and never
    trained) until the clock caught up, years for one that read 2035, or the process restarted."""
    now = [1_700_000_000.0 + 5 * 3600]
    started = ActivityClock(tmp_path / "none", clock=lambda: now[0])     # no keystroke known
    typed = ActivityClock(tmp_path / "last_keystroke", clock=lambda: now[0])
    typed.note_keystroke()
    now[0] = 1_700_000_000.0                                             # set right
    assert started.idle_seconds() == 0.0 and typed.idle_seconds() == 0.0
    now[0] += 600
    assert started.idle_seconds() == 600 and typed.idle_seconds() == 600   # the full idle period from then
    typed.note_keystroke()
    now[0] += 30
    assert typed.idle_seconds() == 30


def test_long_work_does_not_yield_to_its_own_load(monkeypatch):
    """Training's own thread adds about 1 to the load average: counted, it aborted the training
    it belonged to after about 40 s on one core at the default max_load_per_cpu of 0.5."""
    import os

    from edge_runtime.eligibility import ActivityClock, Eligibility, Policy

    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    e = Eligibility(Policy(require_power=False, require_unmetered=False, min_idle_s=0, max_load_per_cpu=0.5),
                    activity=ActivityClock(), load=lambda: 1.3, network=lambda: True)
    assert not e.check() and "system load high or unknown" in e.check().reasons     # before starting: busy
    assert e.check(working=True)                                                    # 0.3 besides its own
