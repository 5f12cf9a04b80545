"""The agent's step function and loop with fake parts: task handling, retries, pacing, privacy."""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass, field, replace

import pytest

from edge_runtime import agent, identity, trainer
from edge_runtime.cache import TextCache, open_cache, type_text
from edge_runtime.client import RejectedError, TransientError
from edge_runtime.config import EdgeConfig
from edge_runtime.eligibility import Decision
from edge_runtime.identity import Identity, IdentityError, load_identity, save_identity
from edge_runtime.update import Update
from edge_runtime.versions import VersionError
from protocol import wire

PLAN = wire.TrainPlan(round_id=7, epochs=1, batch_size=4, learning_rate=0.1, clip_norm=1.0,
                      noise_multiplier=0.5, max_examples=100)
SECRET = "my secret canary text qqq"


def train_task(**kw) -> wire.Task:
    return wire.Task(kind=wire.TASK_TRAIN, retry_after=100.0, use_version_id="v1", base_version_id="v1",
                     plan=PLAN, time_limit_s=60.0, **kw)


def eval_task() -> wire.Task:
    return wire.Task(kind=wire.TASK_EVALUATE, retry_after=50.0, use_version_id="c2", candidate_version_id="c2",
                     evaluate_version_ids=("c2", "v1"), max_eval_examples=40)


@dataclass
class FakeClient:
    tasks: list = field(default_factory=list)
    uploads: list = field(default_factory=list)
    upload_errors: list = field(default_factory=list)
    reports: list = field(default_factory=list)
    report_errors: list = field(default_factory=list)
    checkins: list = field(default_factory=list)

    def checkin(self, req):
        self.checkins.append(req)
        t = self.tasks.pop(0)
        if isinstance(t, Exception):
            raise t
        return t

    def upload_update(self, delta, meta):
        self.uploads.append((delta, meta))
        if self.upload_errors:
            raise self.upload_errors.pop(0)
        return wire.UpdateReceipt(update_id=3, round_id=meta.round_id)

    def report_evaluation(self, report):
        self.reports.append(report)
        if self.report_errors:
            raise self.report_errors.pop(0)
        return wire.EvaluationReceipt(report.candidate_version_id)

    def fetch(self, version_id, filename):
        raise AssertionError("the fake store never downloads")


@dataclass
class FakeStore:
    current_id: str | None = None
    previous_id: str | None = None
    ensured: list = field(default_factory=list)

    def install(self, vid, fetch, abandon=False):
        self.previous_id, self.current_id = None if abandon else self.current_id, vid

    def is_valid(self, vid):
        return vid in (self.current_id, self.previous_id)

    def in_use(self):
        return self.current_id

    def current(self):   # no real version directory: the personal model has nothing to start from
        raise VersionError("no usable model version on this device")

    def ensure(self, vid, fetch):
        self.ensured.append(vid)
        return f"/versions/{vid}"

    def prune(self, keep=()):
        pass


class FakeEligibility:
    def __init__(self, answers):
        self.answers = list(answers)

    def check(self, **kw):
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


@pytest.fixture
def device(tmp_path):
    cfg = EdgeConfig(data_dir=str(tmp_path), jitter=0.1, min_wait_s=1.0, backoff_initial_s=0.01, backoff_max_s=0.02)
    cache = TextCache(tmp_path)
    for i in range(10):
        cache.add(f"{SECRET} number {i}", "message")
    dev = agent.Device(config=cfg, identity=Identity("dev-1", "tok", "http://c"), client=FakeClient(),
                       store=FakeStore(), cache=cache, eligibility=FakeEligibility([Decision(True)]),
                       rng=random.Random(0))
    yield dev
    dev.close()


@pytest.fixture
def fake_train(monkeypatch):
    calls = []

    def train(version_dir, texts, plan, **kw):
        calls.append((version_dir, list(texts), plan, kw))
        up = Update(delta=b"delta-bytes", example_count=5, base_version_id="v1", encoding="float16",
                    rel_error=1e-4, norm_before_clip=2.0, clipped=True)
        return trainer.TrainResult(up, steps=3, examples=5, first_loss=4.0, last_loss=3.0, seconds=0.1)

    monkeypatch.setattr(trainer, "train", train)
    return calls


def test_train_task_trains_on_training_records_and_uploads(device, fake_train, caplog):
    caplog.set_level(logging.DEBUG)
    device.client.tasks = [train_task()]
    res = agent.run_once(device)
    assert (res.kind, res.outcome) == ("train", "uploaded")
    assert device.store.current_id == "v1" and device.store.ensured == ["v1"]
    (vdir, texts, plan, kw), = fake_train
    assert vdir == "/versions/v1" and plan == PLAN and kw["time_limit_s"] == 60.0
    assert len(texts) == device.cache.stats()["training"] == 9          # held-out part not trained on
    (delta, meta), = device.client.uploads
    assert delta == b"delta-bytes" and meta.round_id == 7 and meta.example_count == 5 and meta.encoding == "float16"
    req = device.client.checkins[0]
    assert req.eligible and req.can_evaluate and req.current_version_id is None
    assert 90.0 <= res.wait_s <= 110.0                                   # the coordinator's wait, +-10 %
    summaries = [r.getMessage() for r in caplog.records if r.name == "edge_runtime.agent"]
    assert len(summaries) == 1 and summaries[0].startswith("task train: uploaded")
    assert not [r for r in caplog.records if "secret" in r.getMessage()]


def test_upload_retries_transient_errors_with_the_same_idempotency_key(device, fake_train):
    device.client.tasks = [train_task()]
    device.client.upload_errors = [TransientError("503", status=503, retry_after=0.01), TransientError("timeout")]
    res = agent.run_once(device, sleep=lambda s: None)
    assert res.outcome == "uploaded" and len(device.client.uploads) == 3
    assert len({m.idempotency_key for _, m in device.client.uploads}) == 1


def test_an_update_whose_upload_failed_is_sent_again_never_trained_again(device, fake_train):
    """An upload that failed past its retries (the coordinator's disk full, a long outage) left the
    round asking this device again, and it trained again and released the same text once more
    under fresh noise, each time charged. The same bytes now go again under the same key."""
    import json

    from edge_runtime.paths import LEDGER_FILE

    down = [TransientError("disk full", status=503, retry_after=0.01)] * device.config.upload_attempts
    device.client.tasks = [train_task(), train_task(), train_task()]
    device.client.upload_errors = list(down)
    with pytest.raises(TransientError):
        agent.run_once(device, sleep=lambda s: None)
    assert len(fake_train) == 1 and device.unsent is not None
    res = agent.run_once(device, sleep=lambda s: None)
    assert res.outcome == "uploaded" and len(fake_train) == 1 and device.unsent is None
    assert len({m.idempotency_key for _, m in device.client.uploads}) == 1
    assert {d for d, _ in device.client.uploads} == {b"delta-bytes"}
    releases = json.loads((device.config.require_data_dir() / LEDGER_FILE).read_text())["releases"]
    assert [e["round_id"] for e in releases] == [PLAN.round_id]   # one release, charged once
    assert agent.run_once(device, sleep=lambda s: None).outcome.startswith("refused (")   # asked once more
    assert not list(device.config.require_data_dir().glob("unsent_update*"))   # delivered: nothing kept


def reopened(device: agent.Device) -> agent.Device:
    """The same data directory opened as a restarted device would (`Device.open`), with the fakes."""
    import dataclasses

    data_dir = device.config.require_data_dir()
    identity.save_identity(data_dir, device.identity)
    opened = agent.Device.open(device.config)
    opened.close()
    device.cache.close()
    return dataclasses.replace(device, cache=TextCache(data_dir), unsent=opened.unsent)


def test_a_charged_update_outlives_a_restart_and_goes_to_its_round(device, fake_train):
    """A device stopped, or restarted, between charging an update and its delivery forgot the bytes:
    the round then refused it as a second release and its slot stayed taken until the deadline.
    The bytes are kept on disk until answered, and the restarted device sends them, not a new
    update; any other round's ask deletes them."""
    import dataclasses

    down = [TransientError("disk full", status=503, retry_after=0.01)] * device.config.upload_attempts
    device.client.tasks = [train_task()]
    device.client.upload_errors = list(down)
    with pytest.raises(TransientError):
        agent.run_once(device, sleep=lambda s: None)
    sent = device.client.uploads[-1][1]
    dev = reopened(device)
    assert dev.unsent is not None and dev.unsent.meta == sent and dev.unsent.plan == PLAN
    dev.client.tasks = [train_task()]
    dev.client.upload_errors = []
    res = agent.run_once(dev, sleep=lambda s: None)
    assert res.outcome == "uploaded" and len(fake_train) == 1
    assert dev.client.uploads[-1] == (b"delta-bytes", sent)   # the same bytes under the same key
    data_dir = dev.config.require_data_dir()
    assert not list(data_dir.glob("unsent_update*"))
    dev = reopened(dev)
    assert dev.unsent is None
    # stopped mid-upload (systemd's stop): kept for the next start; then its round is gone
    nxt = dataclasses.replace(PLAN, round_id=PLAN.round_id + 1)
    dev.client.tasks = [wire.Task(kind=wire.TASK_TRAIN, retry_after=100.0, use_version_id="v1",
                                  base_version_id="v1", plan=nxt, time_limit_s=60.0)]
    dev.client.upload_errors = [TransientError("timeout")]
    assert agent.run_once(dev, sleep=lambda s: True).outcome.startswith("stopped")   # the stop event, set
    assert agent.status(dev.config)["update_waiting_for_round"] == nxt.round_id
    dev = reopened(dev)
    assert dev.unsent is not None and dev.unsent.plan == nxt
    third = dataclasses.replace(PLAN, round_id=PLAN.round_id + 2)
    dev.client.tasks = [wire.Task(kind=wire.TASK_TRAIN, retry_after=100.0, use_version_id="v1",
                                  base_version_id="v1", plan=third, time_limit_s=60.0)]
    assert agent.run_once(dev, sleep=lambda s: None).outcome == "uploaded" and len(fake_train) == 3
    assert not list(data_dir.glob("unsent_update*")) and agent.status(dev.config)["update_waiting_for_round"] is None


def test_a_kept_update_is_deleted_by_a_wipe_and_never_sent(device, fake_train):
    """The kept bytes were learned from the text: `wipe` deletes them with it, and a copy from
    before a wipe (or a damaged one, or another enrollment's) is never sent."""
    from edge_runtime import unsent
    from edge_runtime.__main__ import main

    device.client.tasks = [train_task()]
    device.client.upload_errors = [TransientError("down", status=503, retry_after=0.01)] * device.config.upload_attempts
    with pytest.raises(TransientError):
        agent.run_once(device, sleep=lambda s: None)
    data_dir = device.config.require_data_dir()
    kept = sorted(p.name for p in data_dir.glob("unsent_update*"))
    assert kept == ["unsent_update.json", "unsent_update.safetensors"]
    u = unsent.load(data_dir, "dev-1")
    assert u is not None and unsent.load(data_dir, "another-device") is None   # and deleted
    assert not list(data_dir.glob("unsent_update*"))
    unsent.save(data_dir, u)
    (data_dir / "unsent_update.safetensors").write_bytes(b"delta-bytez")   # damaged: not sent
    assert unsent.load(data_dir, "dev-1") is None and not list(data_dir.glob("unsent_update*"))
    unsent.save(data_dir, u)
    device.cache.close()
    assert main(["wipe", "--data-dir", str(data_dir)]) == 0
    assert not list(data_dir.glob("unsent_update*"))
    unsent.save(data_dir, u)   # as a loop would have kept it before the wipe: its mark is old now
    device.cache = TextCache(data_dir)
    assert reopened(device).unsent is None and not list(data_dir.glob("unsent_update*"))


def test_a_round_of_a_restored_coordinator_with_a_lost_rounds_id_is_trained(device, fake_train):
    """A coordinator restored from a backup numbers its rounds again from the backup's, on the same
    stable version as a rule: a device that took part in the lost round 7 refused the new round 7
    as a second release, and held its slot until the deadline. The round's
    random key tells the two apart; the same key is still refused."""
    import dataclasses

    def task(key: str) -> wire.Task:
        return dataclasses.replace(train_task(), plan=dataclasses.replace(PLAN, round_key=key))

    device.client.tasks = [task("aa" * 8), task("aa" * 8), task("bb" * 8)]
    assert agent.run_once(device, sleep=lambda s: None).outcome == "uploaded"
    assert agent.run_once(device, sleep=lambda s: None).outcome.startswith(f"refused (round {PLAN.round_id} had")
    assert agent.run_once(device, sleep=lambda s: None).outcome == "uploaded" and len(fake_train) == 2
    # an update of the lost round whose upload never went through is not sent to the new round
    # of the same id (noised under the lost round's plan, accounted under the new one's)
    down = [TransientError("down", status=503, retry_after=0.01)] * device.config.upload_attempts
    lost = dataclasses.replace(train_task(), plan=dataclasses.replace(PLAN, round_id=8, round_key="cc" * 8))
    new = dataclasses.replace(lost, plan=dataclasses.replace(lost.plan, round_key="dd" * 8, noise_multiplier=2.0))
    device.client.tasks, device.client.upload_errors = [lost, new], list(down)
    with pytest.raises(TransientError):
        agent.run_once(device, sleep=lambda s: None)
    sent = len(device.client.uploads)
    assert agent.run_once(device, sleep=lambda s: None).outcome == "uploaded" and len(fake_train) == 4
    assert fake_train[-1][2].noise_multiplier == 2.0 and len(device.client.uploads) == sent + 1
    with pytest.raises(wire.WireError):
        dataclasses.replace(PLAN, round_key="not hex")


def test_rejected_upload_is_an_outcome_not_an_error(device, fake_train):
    device.client.tasks = [train_task()]
    device.client.upload_errors = [RejectedError("late", status=409, code=wire.E_LATE)]
    res = agent.run_once(device)
    assert res.outcome == "rejected (late)" and len(device.client.uploads) == 1


def test_no_training_when_eligibility_lapsed_before_training(device, fake_train):
    device.eligibility = FakeEligibility([Decision(True), Decision(False, ("not on mains power",))])
    device.client.tasks = [train_task()]
    res = agent.run_once(device)
    assert res.outcome.startswith("skipped") and not fake_train and not device.client.uploads


def test_training_aborted_midway_uploads_nothing(device, monkeypatch):
    def aborted(*a, **kw):
        raise trainer.TrainingAborted("not on mains power", 2)

    monkeypatch.setattr(trainer, "train", aborted)
    device.client.tasks = [train_task()]
    res = agent.run_once(device)
    assert res.outcome == "aborted (not on mains power)" and not device.client.uploads


def test_evaluate_task_reports_aggregates_of_heldout_text(device, monkeypatch):
    seen = {}

    def evaluate(dirs, texts, **kw):
        seen["dirs"], seen["texts"], seen["kw"] = list(dirs), list(texts), kw
        return [wire.VersionMetrics(v.rsplit("/", 1)[1], 10.0, 2.0, 3.0, 5.0) for v in dirs]

    monkeypatch.setattr(trainer, "evaluate", evaluate)
    device.client.tasks = [eval_task()]
    res = agent.run_once(device)
    assert (res.kind, res.outcome) == ("evaluate", "reported") and device.store.current_id == "c2"
    assert seen["dirs"] == ["/versions/c2", "/versions/v1"] and seen["kw"]["max_examples"] == 40
    assert len(seen["texts"]) == 1 and seen["texts"][0].endswith("number 9")   # the newest record only
    report, = device.client.reports
    assert report.candidate_version_id == "c2" and [m.version_id for m in report.results] == ["c2", "v1"]
    assert SECRET not in str(report.to_dict())


def test_come_back_when_ineligible(device):
    device.eligibility = FakeEligibility([Decision(False, ("keyboard in use recently",))])
    device.client.tasks = [wire.Task(kind=wire.TASK_COME_BACK, retry_after=0.2, use_version_id=None)]
    res = agent.run_once(device)
    assert res.outcome == "idle (keyboard in use recently)" and res.wait_s == 1.0     # min_wait_s
    assert device.client.checkins[0].eligible is False


def test_a_device_whose_cache_fails_still_checks_in_for_versions(device, caplog):
    """Retention ran before the check-in: a damaged cache failed every iteration there, so the
    device never checked in again (no new version, no rollback), and the log said only
    "DamagedCacheError"."""
    from edge_runtime.cache import DamagedCacheError

    def damaged():
        raise DamagedCacheError("the text cache at X is damaged (database disk image is malformed); "
                                "`python -m edge_runtime wipe --data-dir X` (or Clear on the keyboard page) deletes it")

    device.cache.enforce_retention = damaged
    device.client.tasks = [wire.Task(kind=wire.TASK_COME_BACK, retry_after=5.0, use_version_id="v7")]
    res = agent.run_once(device)
    req = device.client.checkins[0]
    assert req.eligible is False and req.can_evaluate is False     # nothing to train or score on
    assert res.version_id == "v7"                                  # the version it was told to use
    assert "edge_runtime wipe" in caplog.text


def test_loop_backs_off_on_transient_errors_and_stops(device):
    device.config = device.config.with_overrides({"min_wait_s": 0.001})
    stop = threading.Event()
    waits = []

    class Stopper(threading.Event):
        def wait(self, timeout=None):
            waits.append(timeout)
            if len(waits) >= 3:
                stop.set()
            return stop.is_set()

        def is_set(self):
            return stop.is_set()

    device.client.tasks = [TransientError("down"), TransientError("down", retry_after=0.015),
                           wire.Task(kind=wire.TASK_COME_BACK, retry_after=5.0)]
    stopper = Stopper()
    assert agent.run_loop(device, stop=stopper) == 0
    assert device.client.stopping is stopper   # an answer coming in ends at the stop too (client.py)
    assert waits[0] == pytest.approx(0.01, rel=0.2) and waits[1] == pytest.approx(0.02, rel=0.2)
    assert 4.5 <= waits[2] <= 5.5


def test_a_stop_during_an_uploads_retry_wait_ends_it_as_a_stop(device, fake_train, caplog):
    """A plain upload retries a transient failure after a wait on the stop event. A stop during
    that wait ended the task with the transient error, and the loop logged a task error and a
    check-in that never came; now it ends as a secure round's device leaves one: stopped."""
    device.client.tasks = [train_task()]
    device.client.upload_errors = [TransientError("down")]
    with caplog.at_level(logging.INFO, logger="edge_runtime.agent"):
        res = agent.run_once(device, sleep=lambda seconds: True)    # the stop event is set meanwhile
    assert res.outcome == "stopped (the device is stopping)", res
    assert len(device.client.uploads) == 1                          # no attempt after the stop
    said = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "edge_runtime.agent"]
    assert any("the device is stopping" in m for _, m in said) and all(lv < logging.WARNING for lv, _ in said), said


def test_loop_once_exit_codes_and_fatal_rejection(device, caplog):
    device.client.tasks = [TransientError("down")]
    with caplog.at_level(logging.WARNING, logger="edge_runtime.agent"):
        assert agent.run_loop(device, once=True) == 1
    assert "down" in caplog.text and "next check-in" not in caplog.text   # --once exits: no next check-in
    device.client.tasks = [wire.Task(kind=wire.TASK_COME_BACK, retry_after=5.0)]
    assert agent.run_loop(device, once=True) == 0
    device.client.tasks = [RejectedError("revoked", status=401, code=wire.E_UNAUTHORIZED)]
    with pytest.raises(agent.AgentError, match="enroll again"):
        agent.run_loop(device, once=True)


def test_identity_round_trip_is_private(tmp_path):
    ident = Identity("d1", "secret-token", "http://c", "ab" * 32)
    save_identity(tmp_path, ident)
    assert load_identity(tmp_path) == ident
    assert (tmp_path / agent.IDENTITY_FILE).stat().st_mode & 0o077 == 0
    assert "secret-token" not in repr(ident)
    (tmp_path / agent.IDENTITY_FILE).write_text("{")
    with pytest.raises(IdentityError, match="damaged"):
        load_identity(tmp_path)


def test_type_text_respects_sensitive_fields_and_pause(tmp_path):
    cfg = EdgeConfig(data_dir=str(tmp_path))
    assert type_text(cfg, "hello there", "message")
    assert not type_text(cfg, "hunter2", "password")
    with open_cache(cfg) as c:
        c.set_paused(True)
    assert not type_text(cfg, "while paused", "message")
    assert (tmp_path / agent.ACTIVITY_FILE).exists()
    with open_cache(cfg) as c:   # what `type` and the page say instead of "one of three reasons"
        assert c.why_not("while paused", "message") == "learning paused"
        assert c.why_not("hunter2", "Password") == "sensitive field (password)"
        assert c.why_not("hunter2", "message", private=True) == "private field"
        assert c.why_not("...", "message") == "no words in it"
    st = agent.status(cfg)
    assert st["cache"]["records"] == 1 and st["learning_paused"] and not st["enrolled"]


class FixedSession:
    """A typing session that always suggests the same three words (counts are then exact)."""

    def __init__(self, words):
        self.words, self.fed = words, []

    def reset(self):
        self.fed = []

    def feed(self, chunk):
        self.fed.append(chunk)
        return -1.0

    def suggest(self, prefix="", k=3):
        return [w for w in self.words if w.startswith(prefix)][:k]


def test_evaluate_task_reports_word_level_counts_within_the_word_budget(device, monkeypatch):
    monkeypatch.setattr(trainer, "evaluate", lambda dirs, texts, **kw: [
        wire.VersionMetrics(v.rsplit("/", 1)[1], float("nan"), 0.0, 0.0, 5.0) for v in dirs])
    device.sessions = lambda vdir: FixedSession(["my", "secret", "canary"] if vdir.name == "c2" else ["x", "y", "z"])
    device.client.tasks = [wire.Task(kind=wire.TASK_EVALUATE, retry_after=50.0, use_version_id="c2",
                                     candidate_version_id="c2", evaluate_version_ids=("c2", "v1"),
                                     max_eval_examples=40, max_eval_words=4)]
    res = agent.run_once(device)
    assert res.outcome == "reported", res
    cand, stable = device.client.reports[0].results
    # "my secret canary text": 3 of 4 words in the strip, "my" first; letters saved 2+6+6 of 3+7+7+5
    assert (cand.words, cand.word_top1, cand.word_top3, cand.saved, cand.typed) == (4, 1, 3, 14, 22)
    assert (stable.words, stable.word_top3, stable.saved) == (4, 0, 0)
    assert cand.loss_sum == 0.0 and cand.count == 0.0          # non-finite next-piece figures: "not measured"
    wire.EvaluationReport.from_dict(device.client.reports[0].to_dict())   # what the coordinator accepts


def test_a_device_stopped_during_word_level_evaluation_reports_nothing(device, monkeypatch):
    """The keyboard's own scoring runs word by word through the predictor; a device unplugged or
    told to stop meanwhile stops before the next text, as training does, and sends no report."""
    monkeypatch.setattr(trainer, "evaluate", lambda dirs, texts, **kw: [
        wire.VersionMetrics(v.rsplit("/", 1)[1], 10.0, 2.0, 3.0, 5.0) for v in dirs])
    scored = []

    class StopsTheDevice(FixedSession):
        def reset(self):   # scoring the candidate's text; SIGTERM arrives meanwhile
            scored.append(self.words[0])
            device.stopping.set()
            super().reset()

    for i in range(10):   # 20 records: two held-out texts, so a check per version would score both
        device.cache.add(f"more text number {i}", "message")
    assert len(list(device.cache.heldout_records())) == 2
    device.sessions = lambda vdir: StopsTheDevice([vdir.name])
    device.client.tasks = [wire.Task(kind=wire.TASK_EVALUATE, retry_after=50.0, use_version_id="c2",
                                     candidate_version_id="c2", evaluate_version_ids=("c2", "v1"),
                                     max_eval_examples=40, max_eval_words=100)]
    res = agent.run_once(device)
    assert res.outcome == "aborted (the device is stopping)", res
    assert scored == ["c2"] and not device.client.reports   # stopped before the candidate's second text


@pytest.mark.parametrize("act", ["wiped", "paused"])
@pytest.mark.parametrize("when", ["during training", "between upload tries"])
def test_an_update_learned_from_text_wiped_meanwhile_is_not_sent(device, fake_train, monkeypatch, when, act):
    """`python -m edge_runtime wipe` (or the page's Clear) in another process while the device
    trained on the text it deletes: the update was still uploaded, minutes later if the
    coordinator was down; the personal model already dropped such a copy. Pausing
    learning meanwhile stopped nothing either."""
    other = TextCache(device.config.data_dir)

    def withdraw() -> None:
        other.wipe() if act == "wiped" else other.set_paused(True)

    if when == "during training":
        real = trainer.train

        def train_then_withdraw(*a, **kw):
            out = real(*a, **kw)
            withdraw()
            return out

        monkeypatch.setattr(trainer, "train", train_then_withdraw)
    else:
        device.client.upload_errors = [TransientError("503", status=503, retry_after=0.01)]
    device.client.tasks = [train_task()]
    res = agent.run_once(device, sleep=lambda s: withdraw())
    other.close()
    assert res.outcome == "discarded (the text was wiped meanwhile)" if act == "wiped" else \
        res.outcome == "discarded (learning was paused meanwhile)", res.outcome
    assert len(device.client.uploads) == (0 if when == "during training" else 1)   # the first try only
    if act == "paused":
        assert not device.may_work() and device.may_work().reasons == ("learning paused",)   # long work stops


def test_a_canary_report_on_text_wiped_meanwhile_is_not_sent(device, monkeypatch):
    other = TextCache(device.config.data_dir)

    def evaluate(dirs, texts, **kw):
        other.wipe()
        return [wire.VersionMetrics(v.rsplit("/", 1)[1], 10.0, 2.0, 3.0, 5.0) for v in dirs]

    monkeypatch.setattr(trainer, "evaluate", evaluate)
    device.client.tasks = [eval_task()]
    res = agent.run_once(device)
    other.close()
    assert res.outcome == "discarded (the text was wiped meanwhile)" and not device.client.reports


def test_a_paused_device_learns_nothing_and_one_without_training_text_takes_no_slot(device):
    """Paused, the device still trained, uploaded and personalized on the cache it had ("Pause
    learning" on the page); and a device with all its text held out took a training slot it could
    not fill, and the round waited for it."""
    device.client.tasks = [wire.Task(kind=wire.TASK_COME_BACK, retry_after=5.0)] * 2
    device.cache.set_paused(True)
    agent.run_once(device)
    assert device.client.checkins[-1].eligible is False
    device.cache.set_paused(False)
    device.cache.wipe()
    device.cache.add("one text, held out", "message")
    agent.run_once(device)
    req = device.client.checkins[-1]
    assert req.eligible is True and req.can_train is False and req.can_evaluate is True


def test_a_device_that_spent_its_budget_takes_no_slot(device):
    """A device whose local epsilon budget was spent was selected, refused the plan, and kept the
    slot: the round waited for it, and for it again in every later round."""
    from edge_runtime.plan_guard import PrivacyLedger

    device.client.tasks = [wire.Task(kind=wire.TASK_COME_BACK, retry_after=5.0)] * 2
    agent.run_once(device)
    assert device.client.checkins[-1].can_train is True
    device.config = device.config.with_overrides({"local_epsilon_budget": 1.0})
    PrivacyLedger(device.config.data_dir, budget=1.0, delta=device.config.local_delta).charge(PLAN)
    agent.run_once(device)
    assert device.client.checkins[-1].can_train is False


def test_a_noiseless_release_under_an_unlimited_budget_leaves_the_device_training(device):
    """After one release without noise the ledger's epsilon is infinite; with the default budget,
    also infinite, `inf < inf` had the device ask for no training ever again, and say nothing.
    The plan guard allows any plan under an unlimited budget; so does the check-in."""
    import dataclasses

    from edge_runtime.plan_guard import PrivacyLedger

    assert device.config.local_epsilon_budget == float("inf")
    device.client.tasks = [wire.Task(kind=wire.TASK_COME_BACK, retry_after=5.0)]
    PrivacyLedger(device.config.data_dir, budget=float("inf"), delta=device.config.local_delta).charge(
        dataclasses.replace(PLAN, noise_multiplier=0.0))
    agent.run_once(device)
    assert device.client.checkins[-1].can_train is True


def test_a_device_answers_each_canary_candidate_once_and_a_few_a_day(device, monkeypatch):
    """A canary report is exact counts over the held-out text, a question a crafted version can
    ask. The device answered the same candidate again and four versions per task, taking the
    coordinator's word for its one-per-candidate rule: now it answers each
    candidate once, for it and one other version, and at most `max_evaluations_per_day`."""
    import json

    from edge_runtime.paths import EVALUATIONS_FILE

    monkeypatch.setattr(trainer, "evaluate", lambda dirs, texts, **kw: [
        wire.VersionMetrics(v.rsplit("/", 1)[1], 1.0, 0.0, 0.0, 5.0) for v in dirs])
    device.sessions = lambda vdir: FixedSession(["my", "secret"])

    def task(cand, *others):
        return wire.Task(kind=wire.TASK_EVALUATE, retry_after=5.0, use_version_id=None, candidate_version_id=cand,
                         evaluate_version_ids=(cand, *others), max_eval_words=50)

    device.client.tasks = [task("c2", "v1"), task("c2", "v1"), task("c3", "p1", "p2", "p3"), task("c4", "c4"),
                           task("c5", "v1"), task("c6", "v1")]
    device.config = device.config.with_overrides({"max_evaluations_per_day": 2})
    outcomes = [agent.run_once(device).outcome for _ in range(6)]
    assert outcomes[0] == "reported" and outcomes[4] == "reported", outcomes
    assert outcomes[1] == "reported"   # asked again with the same versions: the same counts, not a new answer
    assert "at most one other version" in outcomes[2] and "at most one other version" in outcomes[3]
    assert "2 evaluations in the last 24 hours" in outcomes[5], outcomes
    assert [r.candidate_version_id for r in device.client.reports] == ["c2", "c2", "c5"]
    assert device.client.reports[1] == device.client.reports[0]
    record = json.loads((device.config.require_data_dir() / EVALUATIONS_FILE).read_text())["evaluated"]
    assert [e["candidate"] for e in record] == ["c2", "c5"] and SECRET not in json.dumps(record)
    # a damaged record answers nothing: the device cannot tell what it has answered
    (device.config.require_data_dir() / EVALUATIONS_FILE).write_text("{not json")
    device.config = device.config.with_overrides({"max_evaluations_per_day": float("inf")})
    device.client.tasks = [task("c7", "v1")]
    res = agent.run_once(device)
    assert res.outcome.startswith("refused (") and "is damaged" in res.outcome and len(device.client.reports) == 3


def test_a_device_at_its_daily_evaluation_cap_says_so_at_check_in(device):
    """A canary device that had answered `max_evaluations_per_day` candidates still checked in as
    able to evaluate: the coordinator handed it the next candidate's task at every check-in (and so
    no training task), the device refused it with a warning every few seconds, and the candidate
    waited with no report (an operator probe: README's by-hand pair stopped after 48 versions)."""
    from edge_runtime.plan_guard import EvaluationRecord

    device.client.tasks = [wire.Task(kind=wire.TASK_COME_BACK, retry_after=5.0)] * 3
    device.config = device.config.with_overrides({"max_evaluations_per_day": 2})
    record = EvaluationRecord(device.config.require_data_dir(), per_day=2)
    record.record("c1")
    agent.run_once(device)
    assert device.client.checkins[-1].can_evaluate is True   # one more answer left today
    record.record("c2", report={"kept": "until the coordinator has it"})
    agent.run_once(device)
    assert device.client.checkins[-1].can_evaluate is True   # its lost report goes again when asked
    record.delivered("c2")
    agent.run_once(device)
    assert device.client.checkins[-1].can_evaluate is False
    # A report kept for a candidate the coordinator decided meanwhile is never asked for again: once
    # it asks about another candidate (refused at the cap), the kept one no longer holds the door open.
    record.record("c3", report={"kept": "c3 decided before it went"})
    device.client.tasks = [wire.Task(kind=wire.TASK_COME_BACK, retry_after=5.0),
                           wire.Task(kind=wire.TASK_EVALUATE, retry_after=5.0, use_version_id=None,
                                     candidate_version_id="c4", evaluate_version_ids=("c4", "v1"), max_eval_words=50),
                           wire.Task(kind=wire.TASK_COME_BACK, retry_after=5.0)]
    agent.run_once(device)
    assert device.client.checkins[-1].can_evaluate is True
    assert "evaluations in the last 24 hours" in agent.run_once(device).outcome
    agent.run_once(device)
    assert device.client.checkins[-1].can_evaluate is False


def test_a_device_asked_again_for_a_candidate_it_answered_says_so_at_check_in(device):
    """Enrolled again after a wipe (or checking in with a coordinator restored from a backup), a
    canary device that had answered the pending candidate under its old identity was handed that
    candidate's task at every check-in, refused it ("evaluated on this device already") and was
    handed no training task until the canary decided, holding one of its places meanwhile. (Also
    when the candidate's download fails, so the device stays on another version.)"""
    from edge_runtime.plan_guard import EvaluationRecord

    def cut_off(vid, fetch, abandon=False):
        raise VersionError(f"{vid}: download cut off")

    EvaluationRecord(device.config.require_data_dir(), per_day=48).record("c2")   # answered as "dev-0"
    device.store.install = cut_off
    come_back = wire.Task(kind=wire.TASK_COME_BACK, retry_after=5.0, use_version_id="c2",
                          use_channel=wire.Channel.CANARY)
    device.client.tasks = [eval_task(), come_back, replace(come_back, use_version_id="c3"), come_back]
    assert "evaluated on this device already" in agent.run_once(device).outcome
    agent.run_once(device)
    assert device.client.checkins[-1].can_evaluate is False   # c2 still: a train task can come
    agent.run_once(device)                                   # still c2: a new candidate, c3, comes next
    assert device.client.checkins[-1].can_evaluate is False
    agent.run_once(device)
    assert device.client.checkins[-1].can_evaluate is True    # c3 is one to answer
    assert [c.can_evaluate for c in device.client.checkins] == [True, False, False, True]


def test_a_candidate_answered_long_ago_is_not_answered_again(tmp_path):
    """The record kept its newest 1,000 entries: at the default 48 a day, a candidate answered
    21 days before was forgotten and would be answered again."""
    from edge_runtime.plan_guard import EvaluationRecord

    record = EvaluationRecord(tmp_path, per_day=48)
    for i in range(1500):
        record.record(f"c{i}", now=1_800_000_000 + i * 1800.0)   # 48 a day, for a month
    task = wire.Task(kind=wire.TASK_EVALUATE, retry_after=5.0, use_version_id=None, candidate_version_id="c0",
                     evaluate_version_ids=("c0", "v1"), max_eval_words=50)
    assert record.refusal(task, now=1_800_000_000 + 1500 * 1800.0 + 2 * 86400) == \
        "c0 was evaluated on this device already"


def test_a_canary_report_lost_in_transit_is_sent_again_as_it_was(device, monkeypatch):
    """The device records a candidate as answered before its report goes, so a report lost in
    transit was never sent again: the coordinator asked again and was refused, and a flaky
    network cost the canary that report. The same counts now go again (nothing new is told), once
    the coordinator asks; a duplicate answer means it had arrived; a wipe since, that it never goes."""
    import json

    from edge_runtime.client import RejectedError, TransientError
    from edge_runtime.paths import EVALUATIONS_FILE

    scored = []

    def evaluate(dirs, texts, **kw):
        scored.append(len(texts))
        return [wire.VersionMetrics(v.rsplit("/", 1)[1], 1.0 + len(scored), 0.0, 0.0, 5.0) for v in dirs]

    monkeypatch.setattr(trainer, "evaluate", evaluate)
    device.sessions = lambda vdir: FixedSession(["my", "secret"])

    def task(cand, *others):
        return wire.Task(kind=wire.TASK_EVALUATE, retry_after=5.0, use_version_id=None, candidate_version_id=cand,
                         evaluate_version_ids=(cand, *others), max_eval_words=50)

    record = device.config.require_data_dir() / EVALUATIONS_FILE
    device.client.report_errors = [TransientError("connection reset")]
    device.client.tasks = [task("c2", "v1")]
    with pytest.raises(TransientError):
        agent.run_once(device)
    assert SECRET not in record.read_text() and "report" in json.loads(record.read_text())["evaluated"][0]
    device.client.tasks = [task("c2", "v2"), task("c2", "v1"), task("c2", "v1")]
    outcomes = [agent.run_once(device).outcome for _ in range(3)]
    assert "c2 was evaluated on this device already" in outcomes[0]   # another comparison: a second answer
    # delivered, and asked again (a coordinator restored from a backup taken before it arrived):
    # the same again, where it was refused as answered and the canary stayed a report short
    assert outcomes[1:] == ["reported", "reported"], outcomes
    assert len(scored) == 1 and device.client.reports[2] == device.client.reports[1] == device.client.reports[0]
    assert json.loads(record.read_text())["evaluated"][0]["delivered"] is True
    # the report arrived and its reply did not: the coordinator says duplicate, and it is delivered
    device.client.report_errors = [TransientError("timed out"), RejectedError("already", status=409,
                                                                              code=wire.E_DUPLICATE)]
    device.client.tasks = [task("c3", "v1"), task("c3", "v1")]
    with pytest.raises(TransientError):
        agent.run_once(device)
    assert agent.run_once(device).outcome == "reported (received before)"
    kept = {e["candidate"]: e for e in json.loads(record.read_text())["evaluated"]}
    assert "report" not in kept["c2"] and kept["c3"]["delivered"] is True   # asked about c3: c2's is not kept
    # scored on text wiped since: never sent
    device.client.report_errors = [TransientError("connection reset")]
    device.client.tasks = [task("c4", "v1"), task("c4", "v1")]
    with pytest.raises(TransientError):
        agent.run_once(device)
    sent = len(device.client.reports)
    device.cache.wipe()
    device.cache.add("a text after the wipe", "message")
    assert agent.run_once(device).outcome == "discarded (the text was wiped meanwhile)"
    assert len(device.client.reports) == sent and len(scored) == 3


class _RefusedRoster:
    """A coordinator's side of a secure round whose roster every device refuses (its noise mu 0)."""

    def __init__(self, base):
        self.base, self.paths = base, []

    def __getattr__(self, name):
        return getattr(self.base, name)

    def _request(self, method, path, json_body=None, data=None, headers=None, **kw):
        import json
        import types

        from protocol import secagg_wire as sw
        self.paths.append(path)
        body = {"protocol_version": wire.PROTOCOL_VERSION, "accepted": True}
        if path.endswith("/roster"):
            body = sw.SecAggRoster(9, 0, 3, 2, 2, 2, bytes(32), 10, 1000.0, 0.0,
                                   (sw.Neighbour(1, b"\x09" * 32, b"\x09" * 32),
                                    sw.Neighbour(2, b"\x09" * 32, b"\x09" * 32))).to_dict()
        return types.SimpleNamespace(request=types.SimpleNamespace(body=b""), content=json.dumps(body).encode(),
                                     json=lambda: body)

    @staticmethod
    def _json(resp):
        return resp.json()


def test_a_secure_round_refused_before_the_masked_vector_charges_no_epsilon(device, monkeypatch):
    """The ledger was charged before the exchange began, so a roster the device refused, a late
    arrival or a timeout each cost epsilon with nothing released (three refused
    rosters, three entries). It is charged right before the masked vector goes."""
    import dataclasses

    import numpy as np

    from edge_runtime.paths import LEDGER_FILE
    up = Update(delta=b"", example_count=5, base_version_id="v1", encoding="float16", rel_error=0.0,
                norm_before_clip=1.0, clipped=False, vector=np.zeros(10, np.float32))
    monkeypatch.setattr(trainer, "train", lambda *a, **kw: trainer.TrainResult(up, 3, 5, 4.0, 3.0, 0.1))
    device.client = _RefusedRoster(device.client)
    plan = dataclasses.replace(PLAN, round_id=9, noise_multiplier=1.0, secure_aggregation=True)
    device.client.base.tasks = [wire.Task(kind=wire.TASK_TRAIN, retry_after=1.0, use_version_id=None,
                                          base_version_id="v1", plan=plan, time_limit_s=60.0)] * 2
    for _ in range(2):
        res = agent.run_once(device)
        assert res.outcome.startswith("refused (Skellam share mu 0"), res.outcome
        assert "local_epsilon" not in res.counts
    assert not any(p.endswith("/masked") for p in device.client.paths)
    assert not (device.config.require_data_dir() / LEDGER_FILE).exists()


def kept_after_a_failed_upload(device: agent.Device, plan: wire.TrainPlan = PLAN, **task) -> tuple:
    """A charged update whose upload ran out of tries: kept in memory and on disk."""
    from edge_runtime import unsent

    device.client.tasks = [wire.Task(kind=wire.TASK_TRAIN, retry_after=100.0, use_version_id="v1",
                                     base_version_id="v1", plan=plan, **{"time_limit_s": 60.0, **task})]
    device.client.upload_errors = [TransientError("down", status=503, retry_after=0.01)] * device.config.upload_attempts
    with pytest.raises(TransientError):
        agent.run_once(device, sleep=lambda s: None)
    data_dir = device.config.require_data_dir()
    u = unsent.load(data_dir, device.identity.device_id)
    assert u is not None and device.unsent is not None
    return data_dir, u


def test_a_kept_update_goes_once_its_rounds_deadline_has_passed(device, fake_train):
    """A round whose reply was lost to a kill (the coordinator committed the update) or that closed
    never asks again: the kept bytes, learned from the text, stayed on disk for good and `status`
    said they waited. They go at the round's deadline, as the task's time limit gave it."""
    import time

    data_dir, _ = kept_after_a_failed_upload(device, time_limit_s=0.3)
    assert agent.status(device.config)["update_waiting_for_round"] == PLAN.round_id
    time.sleep(0.4)
    assert agent.status(device.config)["update_waiting_for_round"] is None
    device.client.tasks = [wire.Task(kind=wire.TASK_COME_BACK, retry_after=100.0)]
    agent.run_once(device, sleep=lambda s: None)
    assert device.unsent is None and not list(data_dir.glob("unsent_update*"))
    import dataclasses

    later = dataclasses.replace(PLAN, round_id=PLAN.round_id + 1)
    data_dir, u = kept_after_a_failed_upload(device, later, time_limit_s=0.3)   # and at a restart after it
    time.sleep(0.4)
    assert reopened(device).unsent is None and not list(data_dir.glob("unsent_update*"))


def test_an_update_kept_by_the_release_before_deadlines_is_kept_after_the_upgrade(device, fake_train, caplog):
    """The first release that kept a charged update (7 December 2026, 04:49) wrote no deadline: the
    upgraded device read its file as damaged (KeyError 'expires_at'), deleted the update its
    ledger had charged without sending it, and `status` said none waited. It is kept a day from
    when it was saved, as a task without a time limit keeps one, and goes when its round asks."""
    import json
    import os
    import time

    from edge_runtime import unsent
    from edge_runtime.paths import UNSENT_META

    data_dir, u = kept_after_a_failed_upload(device)
    meta = json.loads((data_dir / UNSENT_META).read_text())
    del meta["expires_at"]   # as that release saved it
    (data_dir / UNSENT_META).write_text(json.dumps(meta))
    assert agent.status(device.config)["update_waiting_for_round"] == PLAN.round_id
    with caplog.at_level(logging.WARNING, logger="edge_runtime.unsent"):
        dev = reopened(device)
    assert not [r for r in caplog.records if r.name == "edge_runtime.unsent"], caplog.text
    assert dev.unsent is not None and dev.unsent.meta == u.meta and dev.unsent.delta == u.delta
    day_ago = time.time() - unsent.TTL_S - 60
    os.utime(data_dir / UNSENT_META, (day_ago, day_ago))
    assert agent.status(device.config)["update_waiting_for_round"] is None
    assert reopened(device).unsent is None and not list(data_dir.glob("unsent_update*"))


def test_wipe_deletes_an_update_the_loop_kept_while_it_ran(device, fake_train, monkeypatch):
    """`wipe` deleted the kept update before the cache's wipe only: one a running loop saved
    meanwhile stayed on disk after "wiped"."""
    from edge_runtime import unsent
    from edge_runtime.__main__ import main

    data_dir, u = kept_after_a_failed_upload(device)
    unsent.discard(data_dir)
    device.cache.close()
    real_wipe = TextCache.wipe

    def wipe_while_the_loop_saves(self, **kw):
        unsent.save(data_dir, u)
        return real_wipe(self, **kw)

    monkeypatch.setattr(TextCache, "wipe", wipe_while_the_loop_saves)
    assert main(["wipe", "--data-dir", str(data_dir)]) == 0
    assert not list(data_dir.glob("unsent_update*"))


def test_wipe_deletes_the_half_saved_update_a_kill_left(device, fake_train):
    """`unsent.save` writes each file to a temporary one beside it (`atomic_write`) and renames it;
    a kill or a power cut in between (a Pi unplugged while it saves 2.6 MB) left that temporary
    file, the update's bytes learned from the text, in the data directory for good: `wipe` did
    not delete it, nor did the next save or discard."""
    import tempfile

    from edge_runtime import unsent
    from edge_runtime.__main__ import main

    data_dir, u = kept_after_a_failed_upload(device)
    unsent.discard(data_dir)
    for name, data in (("unsent_update.safetensors", u.delta), ("unsent_update.json", b"{")):   # as a kill
        fd, _ = tempfile.mkstemp(dir=data_dir, prefix=f".{name}.")                           # mid-write leaves
        with open(fd, "wb") as f:
            f.write(data)
    device.cache.close()
    assert main(["wipe", "--data-dir", str(data_dir)]) == 0
    assert not [p.name for p in data_dir.iterdir() if p.is_file() and u.delta in p.read_bytes()]
    assert not list(data_dir.glob("*unsent_update*"))


def test_a_disk_gone_read_only_still_lets_the_charged_update_go(device, fake_train, monkeypatch):
    """On a disk remounted read-only after an I/O error, deleting a file that is not there is
    EROFS, not ENOENT: `save`'s clean-up raised past the charge, and the update was neither sent
    nor kept. It is now kept in memory and sent; a failed delete is logged, not raised."""
    import errno
    from pathlib import Path

    from edge_runtime import unsent

    def failing_write(path, data, **kw):
        raise OSError(errno.EIO, "Input/output error")

    real_unlink = Path.unlink

    def read_only_unlink(self, missing_ok=False):
        if self.name.startswith("unsent_update"):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(unsent, "atomic_write", failing_write)
    monkeypatch.setattr(Path, "unlink", read_only_unlink)
    device.client.tasks = [train_task()]
    assert agent.run_once(device, sleep=lambda s: None).outcome == "uploaded"
    assert unsent.discard(device.config.require_data_dir()) is False
