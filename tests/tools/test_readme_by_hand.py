"""README's "Running a coordinator and a device by hand", run as written: one coordinator and
one device on loopback end with a version promoted to stable.

The only substitutions are the ones a reader makes: `python` is this interpreter, KEY is what
create-enrollment-key printed, `models/v0` is the test's tiny version, and the two fixed ports
become free ones (another job on this machine may hold 8750)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import requests

from tools.coordinator_process import free_port

REPO = Path(__file__).resolve().parents[2]


def readme_block() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Running a coordinator and a device by hand", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    lines = [re.sub(r"\s+#.*$", "", ln).strip() for ln in block.splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def test_readme_by_hand_loop_promotes_a_version(tmp_path, exported_version):
    lines = readme_block()
    assert any(" serve " in ln and ln.endswith("&") for ln in lines) and any(" run " in ln for ln in lines)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "v0").symlink_to(exported_version)
    ports = {"8750": str(free_port()), "8760": str(free_port())}
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDKEYS_")}
    env |= {"PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    background: list[subprocess.Popen] = []
    logs = []
    key = ""
    out = ""
    try:
        for line in lines:
            for old, new in ports.items():
                line = line.replace(old, new)
            bg = line.endswith("&")
            argv = shlex.split(line.rstrip("&").strip())
            assert argv[0] == "python", line
            argv = [sys.executable, *argv[1:]]
            argv = [key if a == "KEY" else a for a in argv]
            if bg:
                log = open(tmp_path / f"bg{len(background)}.log", "wb")    # noqa: SIM115 (closed at the end)
                logs.append(log)
                background.append(subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=log, stderr=log))
                if " serve " in line:
                    url = f"http://127.0.0.1:{ports['8750']}/healthz"
                    deadline = time.monotonic() + 60
                    while True:
                        assert background[-1].poll() is None, (tmp_path / "bg0.log").read_text()[-2000:]
                        try:
                            if requests.get(url, timeout=1).status_code == 200:
                                break
                        except requests.ConnectionError:
                            pass
                        assert time.monotonic() < deadline, "coordinator did not come up"
                        time.sleep(0.2)
                continue
            if argv[3:4] == ["versions"]:
                deadline = time.monotonic() + 240
                while True:
                    r = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
                    assert r.returncode == 0, r.stderr
                    versions = json.loads(r.stdout)
                    stable = [v for v in versions if v["status"] == "stable"]
                    if stable and stable[0]["version_id"] != "v0000" and stable[0]["parent_id"]:
                        out = r.stdout
                        break
                    for p in background:
                        assert p.poll() is None, [f.read_text()[-2000:] for f in tmp_path.glob("bg*.log")]
                    assert time.monotonic() < deadline, (r.stdout[-3000:],
                                                         [f.read_text()[-3000:] for f in tmp_path.glob("bg*.log")])
                    time.sleep(2)
                continue
            r = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, (line, r.stdout[-1000:], r.stderr[-2000:])
            if "create-enrollment-key" in line:
                key = r.stdout.strip().splitlines()[-1]
        promoted = [v for v in json.loads(out) if v["status"] == "stable"][0]
        assert any(d["action"] == "promote" for d in promoted["decisions"]), promoted
        # DP is on by default: the promoted version carries a finite epsilon against the coordinator.
        assert isinstance(promoted["privacy"]["epsilon_local"], float), promoted["privacy"]
        # The next round opened by itself (round_interval_s of the small profile).
        deadline = time.monotonic() + 60
        while True:
            rounds = json.loads(subprocess.run([sys.executable, "-m", "coordinator", "rounds", "--data-dir", "coord"],
                                               cwd=tmp_path, env=env, capture_output=True, text=True,
                                               timeout=60).stdout)
            if len(rounds) >= 2:
                break
            assert time.monotonic() < deadline, rounds
            time.sleep(1)
    finally:
        for p in background:
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        for f in logs:
            f.close()
