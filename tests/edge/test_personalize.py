"""The user's own copy of the LSTM (edge_runtime.personalize): trained on the device's text only,
kept in its data directory, used by the keyboard, forgotten with the cache, never sent.

Runs on a real exported version in the slim interpreter (no TensorFlow)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from edge_runtime import agent, model_slot, personal_copy, personalize, trainer
from edge_runtime.cache import TextCache
from edge_runtime.config import EdgeConfig
from edge_runtime.eligibility import Decision
from edge_runtime.identity import Identity
from edge_runtime.model_slot import ModelSlot
from edge_runtime.paths import PERSONAL_DIR
from edge_runtime.versions import VersionStore, directory_fetch
from protocol import wire
from protocol.arch import EVALUATE_OUTPUTS, SIG_EVALUATE
from protocol.artifact import ArtifactError, load_version, read_manifest
from protocol.interpreter import Model

USER_TEXT = [f"the purple lighthouse keeper sends invoice {i % 4} to marguerite" for i in range(40)]


def loss_on(version_dir: Path, weights: dict[str, np.ndarray] | None, texts: list[str]) -> float:
    """Mean next-token loss of the version's model (or of `weights` of it) on `texts`."""
    manifest, own = load_version(version_dir)
    model = trainer.load_model(version_dir)
    model.set_weights(weights if weights is not None else own)
    data = trainer.text_windows(version_dir, texts, manifest)
    batch = manifest.architecture().model.train_batch
    totals = dict.fromkeys(EVALUATE_OUTPUTS, 0.0)
    for i in range(0, len(data), batch):
        res = model.runner(SIG_EVALUATE)(**dict(zip(("x", "y", "mask"), trainer.fixed_batch(
            data, np.arange(i, min(i + batch, len(data))), batch))))
        for k in totals:
            totals[k] += float(np.asarray(res[k]).reshape(-1)[0])
    return totals["loss_sum"] / totals["count"]


def test_fine_tune_fits_the_users_text_and_leaves_the_version_alone(exported_version: Path):
    before = {k: v.copy() for k, v in load_version(exported_version)[1].items()}
    weights = personalize.fine_tune(exported_version, USER_TEXT, personalize.PersonalPlan(epochs=3))
    assert weights is not None and set(weights) == set(before)
    assert loss_on(exported_version, weights, USER_TEXT) < loss_on(exported_version, None, USER_TEXT)
    after = load_version(exported_version)[1]
    assert all(np.array_equal(before[k], after[k]) for k in before)   # the version's own weights untouched


def test_too_little_text_keeps_the_global_model(exported_version: Path):
    assert personalize.fine_tune(exported_version, [], personalize.PersonalPlan()) is None
    assert personalize.fine_tune(exported_version, ["hi"], personalize.PersonalPlan(min_examples=50)) is None


def test_stored_copy_round_trips_replaces_other_versions_and_is_forgotten(tmp_path: Path):
    w = {"a": np.arange(6, dtype=np.float32).reshape(2, 3)}
    personal_copy.save(tmp_path, "v1", w, "10:200")
    assert personal_copy.stamp_of(tmp_path, "v1") == "10:200" and personal_copy.stamp_of(tmp_path, "v2") is None
    assert np.array_equal(personal_copy.load(tmp_path, "v1")["a"], w["a"])
    left = personal_copy.weights_path(tmp_path, "v1").with_suffix(".tmp")
    left.write_bytes(b"half a copy")                     # a kill mid-save: 5.4 MB that stayed until a wipe
    personal_copy.save(tmp_path, "v2", w, "11:210")
    assert personal_copy.load(tmp_path, "v1") is None and personal_copy.stamp_of(tmp_path, "v2") == "11:210"
    assert not left.exists()
    personal_copy.weights_path(tmp_path, "v2").write_bytes(b"not a safetensors file")
    assert personal_copy.load(tmp_path, "v2") is None and personal_copy.stamp_of(tmp_path, "v2") is None
    personal_copy.forget(tmp_path)
    assert not (tmp_path / PERSONAL_DIR).exists()


def test_a_copy_damaged_into_other_numbers_is_refused_and_trained_again(tmp_path: Path):
    """A flipped bit in a stored weight reads as another number (up to 3e38): the copy was loaded
    without a check and suggested with until the cache changed."""
    from safetensors import safe_open

    w = {"a": np.arange(6, dtype=np.float32).reshape(2, 3)}
    path = personal_copy.save(tmp_path, "v1", w, "10:200")
    with safe_open(str(path), "np") as f:
        assert f.metadata()["sha256"]
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x40                                     # the last weight's exponent: still finite
    path.write_bytes(bytes(data))
    assert personal_copy.load(tmp_path, "v1") is None
    assert personal_copy.stamp_of(tmp_path, "v1") is None  # so the next refresh trains it again


def test_a_copy_saved_before_checksums_is_kept_after_the_upgrade(tmp_path: Path, caplog):
    """Releases before 5 December 2026 saved the copy with its version and stamp only: the upgraded
    keyboard called it damaged and suggested with the global model until the device next trained
    one, idle and charging. Its stamp still says which cache state it was trained on."""
    from safetensors.numpy import save_file

    w = {"a": np.arange(6, dtype=np.float32).reshape(2, 3)}
    path = personal_copy.weights_path(tmp_path, "v1")
    path.parent.mkdir()
    save_file(w, str(path), metadata={"version_id": "v1", "stamp": "10:436:None"})   # as those releases did
    with caplog.at_level("WARNING", logger="edge_runtime.personal_copy"):
        got = personal_copy.load(tmp_path, "v1")
        assert got is not None and np.array_equal(got["a"], w["a"])
        assert personal_copy.stamp_of(tmp_path, "v1") == "10:436:None"
    assert not caplog.records
    save_file({"a": np.full((2, 3), np.nan, np.float32)}, str(path), metadata={"version_id": "v1", "stamp": "1"})
    assert personal_copy.load(tmp_path, "v1") is None and personal_copy.stamp_of(tmp_path, "v1") is None


def test_a_full_disk_while_saving_the_copy_is_an_os_error_and_keeps_the_old_one(tmp_path: Path, monkeypatch):
    """safetensors raises its own error on a full disk, past the device's handling of OSError: the
    whole iteration failed, backing off and fine-tuning again each time, and the log never said why."""
    from safetensors import SafetensorError

    w = {"a": np.ones((2, 3), np.float32)}
    personal_copy.save(tmp_path, "v1", w, "1:1")

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half")
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                              "message: \"No space left on device\" })")

    monkeypatch.setattr(personal_copy, "save_file", full)
    with pytest.raises(OSError, match="cannot save the personal model: .*No space left on device"):
        personal_copy.save(tmp_path, "v2", w, "2:2")
    assert personal_copy.stamp_of(tmp_path, "v1") == "1:1"
    assert [p.name for p in (tmp_path / PERSONAL_DIR).iterdir()] == ["v1.safetensors"]


def test_refresh_trains_once_per_cache_state_and_stops_when_ineligible(tmp_path: Path, exported_version: Path):
    plan = personalize.PersonalPlan()
    read: list[int] = []
    args = (tmp_path, exported_version, "v1", lambda: read.append(1) or USER_TEXT)
    assert personalize.refresh(*args, "40:100", plan) == "trained"
    mtime = personal_copy.weights_path(tmp_path, "v1").stat().st_mtime_ns
    assert personalize.refresh(*args, "40:100", plan) == "up to date"
    assert len(read) == 1                                      # an up-to-date copy reads no text
    assert personal_copy.weights_path(tmp_path, "v1").stat().st_mtime_ns == mtime
    assert personalize.refresh(*args, "41:120", plan, eligible=lambda: Decision(False, ("typing",))) \
        == "aborted (typing)"
    assert personal_copy.stamp_of(tmp_path, "v1") == "40:100"   # the old copy stays until a new one is complete


def test_a_copy_trained_across_a_wipe_is_not_saved_and_too_little_text_drops_an_old_one(
        tmp_path: Path, exported_version: Path):
    """The device loop's copy, trained on text read before a `wipe` and saved after it, brought the
    wiped text back into suggestions; and with the cache empty the old copy was never deleted."""
    plan = personalize.PersonalPlan()
    args = (tmp_path, exported_version, "v1", lambda: USER_TEXT)
    assert personalize.refresh(*args, "40:100:m1", plan, unchanged=lambda: False) \
        == "discarded (the cache was wiped meanwhile)"
    assert not personal_copy.weights_path(tmp_path, "v1").exists()
    marks = iter([True, False])            # a wipe between the check and the save
    assert personalize.refresh(*args, "40:100:m1", plan, unchanged=lambda: next(marks)) \
        == "discarded (the cache was wiped meanwhile)"
    assert not personal_copy.weights_path(tmp_path, "v1").exists()
    assert personalize.refresh(*args, "40:100:m1", plan, unchanged=lambda: True) == "trained"
    assert personalize.refresh(tmp_path, exported_version, "v1", lambda: [], "0:0:m2", plan) == "too little text"
    assert not personal_copy.weights_path(tmp_path, "v1").exists()



def test_a_copy_saved_while_the_cache_cannot_answer_is_not_kept(tmp_path: Path, exported_version: Path):
    """A wipe in place (a damaged cache, a full disk) leaves no cache file for a moment: the check
    after the save raised instead of answering, and the copy trained on the wiped text stayed (the
    new cache starts paused, so nothing trained it again, and the keyboard loaded it)."""
    from edge_runtime.cache import CacheError

    def gone() -> bool:
        raise CacheError("the text cache file is gone")

    for checks in ([gone], [lambda: True, gone]):   # before the save, and between it and the check after
        it = iter(checks)
        assert personalize.refresh(tmp_path, exported_version, "v1", lambda: USER_TEXT, "40:100:m1",
                                   personalize.PersonalPlan(), unchanged=lambda it=it: next(it)()) \
            == "discarded (the cache was wiped meanwhile)"
        assert not personal_copy.weights_path(tmp_path, "v1").exists()

def test_a_stopping_device_ends_long_work_between_steps(tmp_path: Path):
    """After SIGTERM the loop's training, evaluation and personal copy ran on (minutes) until systemd
    killed the process: they checked only eligibility between steps."""
    import threading

    from edge_runtime.eligibility import Eligibility, Policy

    dev = agent.Device(config=EdgeConfig(data_dir=str(tmp_path)), identity=None, client=None, store=None,
                       cache=TextCache(tmp_path), eligibility=Eligibility(Policy(), override=True))
    try:
        assert dev.may_work()
        stop = threading.Event()
        dev.stopping = stop
        stop.set()
        decision = dev.may_work()
        assert not decision and decision.reasons == ("the device is stopping",)
    finally:
        dev.close()


def test_model_load_refuses_weights_of_another_shape(exported_version: Path):
    _, own = load_version(exported_version)
    bad = {**own, next(iter(own)): np.zeros((1, 1), np.float32)}
    with pytest.raises(ArtifactError, match="do not fit"):
        Model.load(exported_version, weights=bad)


def test_keyboard_suggests_with_the_copy_and_falls_back_when_it_is_forgotten(tmp_path: Path, exported_version: Path,
                                                                             monkeypatch):
    monkeypatch.setattr(model_slot, "MODEL_CHECK_S", 0.0)
    vid = read_manifest(exported_version).version_id
    VersionStore(tmp_path).install(vid, directory_fetch(exported_version))
    slot = ModelSlot(data_dir=tmp_path, model_dir=None, channel=None)
    slot.refresh()
    assert slot.version_id == vid and not slot.personal
    global_probs = slot.predictor.session().nodes[-1].logprobs.copy()
    generation = slot.generation
    weights = personalize.fine_tune(exported_version, USER_TEXT, personalize.PersonalPlan(epochs=3))
    personal_copy.save(tmp_path, vid, weights, "40:100")
    slot.refresh()
    assert slot.personal and slot.generation == generation + 1
    assert not np.allclose(slot.predictor.session().nodes[-1].logprobs, global_probs)
    slot.forget_personal()
    assert not slot.personal and not (tmp_path / PERSONAL_DIR).exists()
    assert np.allclose(slot.predictor.session().nodes[-1].logprobs, global_probs)
    # `personalize = false` means the global model only: a keyboard with it ignored a copy on disk
    personal_copy.save(tmp_path, vid, weights, "40:100")
    off = ModelSlot(data_dir=tmp_path, model_dir=None, channel=None, personalize=False)
    off.refresh()
    assert off.version_id == vid and not off.personal


def test_agent_personalizes_when_eligible_and_never_sends_the_copy(tmp_path: Path, exported_version: Path):
    vid = read_manifest(exported_version).version_id
    store = VersionStore(tmp_path)
    store.install(vid, directory_fetch(exported_version))
    cache = TextCache(tmp_path)
    for t in USER_TEXT:
        assert cache.add(t, "message")
    sent: list[object] = []

    class Client:
        def checkin(self, req):
            sent.append(req)
            return wire.Task(kind=wire.TASK_COME_BACK, retry_after=60.0, use_version_id=vid)

        def fetch(self, version_id, filename):
            raise AssertionError("nothing to download")

    answers = [Decision(True)]
    dev = agent.Device(config=EdgeConfig(data_dir=str(tmp_path)), identity=Identity("d", "t", "http://c"),
                       client=Client(), store=store, cache=cache,
                       eligibility=type("E", (), {"check": staticmethod(lambda **kw: answers[0])})(),
                       rng=random.Random(0))
    try:
        assert agent.run_once(dev).counts["personal_model"] == "trained"
        assert personal_copy.load(tmp_path, vid) is not None
        assert agent.run_once(dev).counts["personal_model"] == "up to date"
        answers[0] = Decision(False, ("charging",))
        assert "personal_model" not in agent.run_once(dev).counts    # not eligible: not even looked at
        assert dev.config.personalize and not EdgeConfig(data_dir=str(tmp_path), personalize=False).personalize
        # a copy of a version no longer in use, trained on text since deleted, is deleted; with
        # personalize turned off, every copy (both stayed); and one a kill left half written (it
        # stayed for good once no copy was saved again)
        (tmp_path / PERSONAL_DIR / "v-old.safetensors").write_bytes((tmp_path / PERSONAL_DIR / f"{vid}.safetensors")
                                                                     .read_bytes())
        (tmp_path / PERSONAL_DIR / "v-old.tmp").write_bytes(b"half of a copy")
        agent.run_once(dev)
        assert [p.name for p in (tmp_path / PERSONAL_DIR).iterdir()] == [f"{vid}.safetensors"]
        dev.config = dev.config.with_overrides({"personalize": False})
        agent.run_once(dev)
        assert not list((tmp_path / PERSONAL_DIR).iterdir())
    finally:
        dev.close()
    assert all("purple" not in repr(r) for r in sent)
    assert not [p.name for p in tmp_path.rglob("*.safetensors") if PERSONAL_DIR in p.parts]
