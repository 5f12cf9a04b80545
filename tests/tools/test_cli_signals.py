"""A tool stopped with Ctrl-C or a plain `kill` ends its worker processes and children with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tools._cli import worker_pool

ROOT = Path(__file__).resolve().parents[2]


def test_a_pool_left_by_an_error_terminates_its_running_workers_instead_of_waiting():
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="stop"):
        with worker_pool(2) as pool:
            futs = [pool.submit(time.sleep, 60) for _ in range(4)]    # two run, two wait
            while not any(f.running() for f in futs):
                time.sleep(0.05)
            procs = list(pool._processes.values())
            raise RuntimeError("stop")
    assert time.monotonic() - t0 < 30
    assert procs and all(not p.is_alive() for p in procs)
    assert all(f.done() for f in futs)      # none left waiting


def _terminated(script: str) -> tuple[int, str, str]:
    """Run `script`, SIGTERM it once it prints 'ready': (exit code, rest of stdout, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    return proc.returncode, out, err


def test_sigterm_is_an_interrupt_that_runs_the_cleanup(tmp_path):
    """`kill PID` reaches only the tool: before, it died at once, leaving the coordinator it
    started and its device workers running. Now `finally` blocks run, and it exits 143."""
    marker = tmp_path / "cleaned"
    script = (
        "import time, sys\n"
        "from tools._cli import run\n"
        "def main(argv):\n"
        "    try:\n"
        "        print('ready', flush=True)\n"
        "        time.sleep(60)\n"
        "    finally:\n"
        f"        open({str(marker)!r}, 'w').write('yes')\n"
        "run(main)\n")
    rc, _, err = _terminated(script)
    assert rc == 143 and err.strip() == "terminated", err
    assert marker.read_text() == "yes"


def test_the_arm_tool_cleans_up_on_sigterm_too(tmp_path):
    """`tools.arm` did not go through `run`: a plain `kill` of `e2e` left its coordinator child
    serving, orphaned, while Ctrl-C stopped it."""
    marker = tmp_path / "coordinator stopped"
    script = (
        "import time, sys\n"
        "from tools.arm import tasks\n"
        "from tools.arm.__main__ import main\n"
        "def e2e(board, **kw):\n"
        "    try:\n"
        "        print('ready', flush=True)\n"
        "        time.sleep(60)\n"
        "    finally:\n"
        f"        open({str(marker)!r}, 'w').write('yes')\n"
        "tasks.e2e = e2e\n"
        f"sys.exit(main(['--cache-dir', {str(tmp_path)!r}, 'e2e', '--no-board']))\n")
    rc, out, err = _terminated(script)
    assert rc == 143 and "terminated" in out, (out, err)
    assert marker.read_text() == "yes"


@pytest.mark.parametrize("package, module, argv", [
    ("edge_runtime", "edge_runtime.cache", ["--help"]),
    # the keyboard and the device loop, imported by the commands that use them only, once their
    # arguments are read
    ("edge_runtime", "edge_runtime.keyboard", ["keyboard", "--data-dir", "{tmp}"]),
    ("edge_runtime", "edge_runtime.agent", ["enroll", "--data-dir", "{tmp}", "--coordinator", "http://127.0.0.1:9",
                                            "--enrollment-key", "k"]),
    ("coordinator", "coordinator.listing", ["--help"])])
def test_ctrl_c_while_a_command_loads_is_one_line_not_an_import_traceback(package, module, argv, tmp_path):
    """Ctrl-C pressed in a command's first tenths of a second, while its imports were still
    loading, printed their traceback. Here the Ctrl-C lands deterministically, as
    `module` is imported by `python -m package`."""
    script = (
        "import runpy, sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name == {module!r}:\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        f"sys.argv = {[package, *(a.format(tmp=tmp_path / 'dev') for a in argv)]!r}\n"
        f"runpy.run_module({package!r}, run_name='__main__', alter_sys=True)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr.strip(), done.stdout) == (130, "interrupted", "")
