"""Issue 13: statuses and actions are defined once and every surface takes them from there; a
round's server step is pure math."""

import numpy as np
import pytest

from coordinator import aggregation, openapi
from coordinator.__main__ import build_parser
from coordinator.states import VERSION_ACTIONS, RoundStatus, VersionAction, VersionStatus
from protocol import wire


def test_the_action_list_is_written_once():
    doc = openapi.build()
    op = doc["paths"]["/v1/admin/versions/{version_id}/{action}"]["post"]
    (param,) = [p for p in op["parameters"] if p["name"] == "action"]
    assert param["schema"]["enum"] == list(VERSION_ACTIONS) == [a.value for a in VersionAction]
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(VERSION_ACTIONS) <= set(sub.choices)
    task = doc["components"]["schemas"]["Task"]["properties"]
    assert task["kind"]["enum"] == [k.value for k in wire.TaskKind] and task["use_channel"]["enum"] == ["stable",
                                                                                                        "canary"]


def test_enums_are_their_strings():
    assert VersionStatus.STABLE == "stable" and f"{RoundStatus.OPEN}" == "open" and str(VersionAction.PIN) == "pin"
    assert wire.Task(kind=wire.TaskKind.COME_BACK, retry_after=1.0, use_channel=wire.Channel.CANARY).to_dict()[
        "use_channel"] == "canary"


def test_round_step_is_optimizer_then_finite_check_then_stats():
    base, delta = np.ones(4, np.float32), np.full(4, 0.5, np.float32)
    step = aggregation.round_step(base, delta, {}, [3, 5], sampling_rate=0.2, optimizer="fedavg", lr=1.0)
    np.testing.assert_allclose(step.weights, 1.5)
    assert step.state == {} and step.stats == {"updates": 2, "examples": 8, "mean_delta_norm": pytest.approx(1.0),
                                               "sampling_rate": 0.2}
    m = aggregation.round_step(base, delta, {}, [1], sampling_rate=1.0, optimizer="fedavgm", lr=1.0)
    assert set(m.state) == {"momentum"} and m.stats["sampling_rate"] == 1.0
    bad = aggregation.round_step(base, np.array([np.inf, 0, 0, 0], np.float32), {}, [1], sampling_rate=1.0,
                                 optimizer="fedavg", lr=1.0)
    assert bad.weights is None and bad.state == {}


def test_every_coordinator_and_protocol_module_imports_on_its_own():
    """An import cycle shows only when a module is imported first: `coordinator.schedule` alone
    once failed (schedule → queries → secagg → ... → canary → queries, half-built), so a test file
    importing it first could not be collected on its own. One fresh interpreter per module."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    files = [p for pkg in ("coordinator", "protocol") for p in sorted((root / pkg).rglob("*.py"))
             if p.name != "__main__.py" and "migrations" not in p.parts]   # alembic scripts, not modules
    modules = [".".join(p.relative_to(root).parent.parts if p.name == "__init__.py"
                        else p.relative_to(root).with_suffix("").parts) for p in files]
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    failed = []
    for m in modules:
        r = subprocess.run([sys.executable, "-c", code, m], cwd=root, capture_output=True, text=True, timeout=120,
                           check=False)
        if r.returncode:
            failed.append(f"{m}: {(r.stderr.strip().splitlines() or ['exit ' + str(r.returncode)])[-1]}")
    assert len(modules) > 40 and not failed, failed
