"""Decisions taken by two coordinator processes on one database at the same moment.

gunicorn runs several workers, and admin commands run as processes of their own. On SQLite
every write transaction already waits for the others (BEGIN IMMEDIATE); on PostgreSQL nothing
ordered two processes' decisions, and two workers got two stable versions at once,
a canary that never decided and two rounds open together. Each test runs two `Coordinator`s
(two workers' worth of state: each its own in-process lock) on the test database, PostgreSQL in
CI (FEDKEYS_TEST_DATABASE_URL)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import requests
from sqlalchemy import func, select

from coordinator.errors import ApiError
from coordinator.models import Round, Version
from coordinator.service import Coordinator
from coordinator.states import RoundStatus, VersionStatus
from protocol import wire
from tests.coordinator.test_coordinator_canary import _candidate_from_round, _metrics, world  # noqa: F401
from tests.helpers.coordinator_fakes import make_config, make_version

TRIES = 6


def _together(*calls: Callable[[], object]) -> list[object]:
    """Run the calls at the same moment, each on its own thread; their results or exceptions."""
    gate = threading.Barrier(len(calls))
    out: list[object] = [None] * len(calls)

    def run(i: int, call: Callable[[], object]) -> None:
        gate.wait()
        try:
            out[i] = call()
        except Exception as e:   # noqa: BLE001 - the caller asserts on what each got
            out[i] = e

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


@pytest.fixture
def workers(tmp_path):
    cfg = make_config(tmp_path)
    a = Coordinator(cfg)
    b = Coordinator(cfg)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_two_workers_never_open_two_rounds(workers, tmp_path):
    a, b = workers
    make_version(tmp_path / "v0")
    a.import_version(tmp_path / "v0")
    for _ in range(TRIES):
        got = _together(a.start_round, b.start_round)
        assert sum(isinstance(g, int) for g in got) == 1, got
        assert all(isinstance(g, int) or (isinstance(g, ApiError) and g.status == 409) for g in got), got
        with a._sessions() as s:
            assert s.scalar(select(func.count()).select_from(Round).where(Round.status == RoundStatus.OPEN)) == 1
        a.close_round(next(g for g in got if isinstance(g, int)), force=True)


def test_two_rollbacks_at_once_leave_one_stable_version(workers, tmp_path):
    a, b = workers
    for i in range(3):   # each import as stable retires the one before: v0000 and v0001 retired
        make_version(tmp_path / f"v{i}", f"v000{i}", seed=i)
        a.import_version(tmp_path / f"v{i}", as_candidate=False)
    for _ in range(TRIES):
        with a._sessions() as s:
            retired = sorted(s.scalars(select(Version.id).where(Version.status == VersionStatus.RETIRED)))
        got = _together(lambda r=retired[0]: a.admin_decide(r, "rollback"),
                        lambda r=retired[1]: b.admin_decide(r, "rollback"))
        assert not any(isinstance(g, Exception) and not isinstance(g, ApiError) for g in got), got
        with a._sessions() as s:
            assert s.scalar(select(func.count()).select_from(Version)
                            .where(Version.status == VersionStatus.STABLE)) == 1, got


@pytest.mark.parametrize("attempt", range(3))
def test_the_last_two_canary_reports_at_once_decide_the_candidate(world, attempt):  # noqa: F811
    """Each report's transaction did not see the other's, so neither decided, and with every
    canary reported no further report would: the candidate stayed pending for good."""
    s, devices, canaries, _ = world
    other = Coordinator(s.coord.config)   # a second worker of the same service
    other.serving = True
    try:
        cand = _candidate_from_round(s, devices, 0.01)
        tasks = [d.checkin() for d in canaries[:2]]
        assert all(t.kind == wire.TASK_EVALUATE for t in tasks)
        reports = [wire.EvaluationReport(candidate_version_id=cand, results=(
            _metrics(t.evaluate_version_ids[0], 41), _metrics(t.evaluate_version_ids[1], 40))) for t in tasks]
        got = _together(lambda: s.coord.report_evaluation(canaries[0].device_id, reports[0]),
                        lambda: other.report_evaluation(canaries[1].device_id, reports[1]))
        assert all(isinstance(g, wire.EvaluationReceipt) for g in got), got
        status = s.coord.status()
        assert status["stable_version_id"] == cand and status["candidate_version_id"] is None
    finally:
        other.close()


def test_a_device_revoked_while_its_update_is_validated_is_not_counted(world, monkeypatch):  # noqa: F811
    """Revoking a device takes back its updates in the open round, but an upload authenticated
    before the revocation and stored after it was counted all the same (3 of 5 tries)."""
    from coordinator import updates
    from tests.helpers.coordinator_fakes import random_delta

    s, devices, _, _ = world
    rid = s.coord.start_round(goal_count=2, min_count=2)
    dev = devices[0]
    task = dev.checkin()
    assert task.kind == wire.TASK_TRAIN
    validate = updates.validate_update

    def revoked_meanwhile(*args, **kw):
        s.coord.revoke_device(dev.device_id)     # the operator's revoke lands while the bytes are checked
        return validate(*args, **kw)

    monkeypatch.setattr(updates, "validate_update", revoked_meanwhile)
    r = dev.upload(random_delta(0), round_id=rid, base=task.base_version_id, examples=10)
    assert r.status_code == 401, r.text
    assert s.coord.get_round(rid)["accepted"] == 0


def test_a_device_revoked_during_its_checkin_takes_no_round_slot(world, monkeypatch):  # noqa: F811
    """A check-in authenticated before a revocation still gave the device a training task and a
    selected slot in the open round, which counted toward the round's selection limit."""
    from sqlalchemy import select as sel

    from coordinator import rounds
    from coordinator.models import Assignment

    s, devices, _, _ = world
    rid = s.coord.start_round(goal_count=2, min_count=2, overselect=1.0)
    dev = devices[0]
    real = rounds.safe_maintenance

    def revoked_meanwhile(coord):
        coord.revoke_device(dev.device_id)     # the operator's revoke lands after authentication
        return real(coord)

    monkeypatch.setattr(rounds, "safe_maintenance", revoked_meanwhile)
    r = requests.post(s.url + wire.PATH_CHECKIN, headers=dev.headers, timeout=10,
                      json=wire.CheckinRequest(eligible=True).to_dict())
    assert r.status_code == 401, r.text
    with s.coord._sessions() as sess:
        assert sess.scalars(sel(Assignment).where(Assignment.round_id == rid,
                                                  Assignment.device_id == dev.device_id)).all() == []


def test_a_report_from_a_device_revoked_after_its_authentication_is_refused(world):  # noqa: F811
    """The report's transaction reads the device row: a revocation committed after the request's
    authentication had already taken back the device's reports, and this one would count."""
    s, devices, canaries, _ = world
    cand = _candidate_from_round(s, devices, 0.01)
    task = canaries[0].checkin()
    assert task.kind == wire.TASK_EVALUATE
    s.coord.revoke_device(canaries[0].device_id)      # after authentication: the call below skips it
    report = wire.EvaluationReport(candidate_version_id=cand, results=(
        _metrics(task.evaluate_version_ids[0], 41), _metrics(task.evaluate_version_ids[1], 40)))
    with pytest.raises(ApiError) as e:
        s.coord.report_evaluation(canaries[0].device_id, report)
    assert e.value.status == 401
