"""Edge training, evaluation, versions and privacy against a real exported model version.

Needs the `exported_version` fixture (a pathlib.Path to a complete version directory, from
tests/conftest.py); runs in the slim interpreter, no TensorFlow.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests
from requests.adapters import BaseAdapter

from edge_runtime.cache import TextCache
from edge_runtime.client import CoordinatorClient
from edge_runtime.trainer import TrainingAborted, evaluate, train
from edge_runtime.update import NoiseSource, decode_delta
from edge_runtime.versions import VersionStore, directory_fetch
from protocol import wire
from protocol.artifact import Manifest, flatten, load_version, unflatten, write_version
from protocol.interpreter import Model

CANARIES = [
    "zanzibar quokka merriment at the lighthouse",
    "please send the purple invoice to marguerite tomorrow",
    "the quick brown fox jumps over the lazy dog",
    "we will meet at seven near the old mill by the river",
    "thou art more lovely and more temperate than the morning",
]


def corpus(n: int = 60) -> list[str]:
    return [f"{CANARIES[i % len(CANARIES)]} {i}" if i % 3 else CANARIES[i % len(CANARIES)] for i in range(n)]


def plan(**kw) -> wire.TrainPlan:
    base = {"round_id": 1, "epochs": 2, "batch_size": 16, "learning_rate": 0.5, "clip_norm": 5.0,
            "noise_multiplier": 0.0, "max_examples": 1000}
    return wire.TrainPlan(**{**base, **kw})


@pytest.fixture
def cache(tmp_path: Path):
    c = TextCache(tmp_path / "data")
    for t in corpus():
        assert c.add(t, "message")
    c.add("my password is hunter2-canary", "password")
    yield c
    c.close()


def test_training_lowers_the_loss_and_yields_a_decodable_update(exported_version: Path, cache: TextCache):
    texts = [r.text for r in cache.training_records()]
    res = train(exported_version, texts, plan(epochs=4), shuffle_seed=0)
    assert res.steps > 0 and np.isfinite(res.last_loss)
    assert res.last_loss < res.first_loss
    manifest, _ = load_version(exported_version)
    up = res.update
    assert up.base_version_id == manifest.version_id and up.example_count == res.examples
    delta = decode_delta(up.delta, manifest.tensors)
    assert delta.shape == (manifest.num_params,)
    assert 0 < np.linalg.norm(delta) <= 5.0 * (1 + 1e-3)
    if up.encoding == "float16":
        assert up.rel_error < 1e-3


def test_update_is_clipped_and_noised_on_the_real_model(exported_version: Path, cache: TextCache):
    texts = [r.text for r in cache.training_records()]
    res = train(exported_version, texts, plan(clip_norm=1e-3, noise_multiplier=2.0), shuffle_seed=0,
                noise=NoiseSource(bytes(32)))
    manifest, _ = load_version(exported_version)
    assert res.update.clipped
    delta = decode_delta(res.update.delta, manifest.tensors)
    assert float(delta.std()) == pytest.approx(2e-3, rel=0.05)


def test_training_stops_when_eligibility_lapses(exported_version: Path, cache: TextCache):
    texts = [r.text for r in cache.training_records()]
    budget = iter([True, True, True])

    with pytest.raises(TrainingAborted) as e:
        train(exported_version, texts, plan(epochs=3), eligible=lambda: next(budget, False))
    assert e.value.steps_done == 2


def test_evaluate_two_versions_on_held_out_text(exported_version: Path, cache: TextCache, tmp_path: Path):
    texts = [r.text for r in cache.training_records()]
    res = train(exported_version, texts, plan(epochs=6), shuffle_seed=0)
    manifest, base = load_version(exported_version)
    # The candidate: base + the (noise-free) update, written as a new version directory.
    cand_dir = tmp_path / "v-cand"
    shutil.copytree(exported_version, cand_dir)
    cand = Manifest.from_dict({**manifest.to_dict(), "version_id": "v-cand", "parent": manifest.version_id})
    new = flatten(base, manifest.tensors) + decode_delta(res.update.delta, manifest.tensors)
    write_version(cand_dir, cand, unflatten(new, manifest.tensors))

    held_records = list(cache.heldout_records())
    held = [r.text for r in held_records]
    assert held and min(r.id for r in held_records) > max(r.id for r in cache.training_records())
    base_m, cand_m = evaluate([exported_version, cand_dir], held)
    assert (base_m.version_id, cand_m.version_id) == (manifest.version_id, "v-cand")
    assert base_m.count == cand_m.count > 0
    for m in (base_m, cand_m):
        assert 0 <= m.top1 <= m.top3 <= m.count and np.isfinite(m.loss_sum)
    # The held-out text resembles the training text, so the fine-tuned candidate does better.
    assert cand_m.loss_sum < base_m.loss_sum


def test_version_store_installs_the_export_and_the_interpreter_runs_it(exported_version: Path, tmp_path: Path):
    manifest, _ = load_version(exported_version)
    store = VersionStore(tmp_path / "dev")
    store.install(manifest.version_id, directory_fetch(exported_version))
    model = Model.load(store.current())
    assert set(model.get_weights()) == {t.name for t in manifest.tensors}


class Recorder(BaseAdapter):
    """Answers like a coordinator would and keeps every request the device sent."""

    def __init__(self, manifest: Manifest, version_dir: Path) -> None:
        super().__init__()
        self.sent: list[requests.PreparedRequest] = []
        self.manifest, self.dir = manifest, version_dir

    def send(self, request, **kw):
        self.sent.append(request)
        path = request.path_url
        if path == wire.PATH_UPDATES:
            msg: object = wire.UpdateReceipt(update_id=1, round_id=1)
        elif path == wire.PATH_EVALUATIONS:
            msg = wire.EvaluationReceipt(self.manifest.version_id)
        elif path == wire.PATH_CHECKIN:
            msg = wire.Task(kind=wire.TASK_TRAIN, retry_after=60, base_version_id=self.manifest.version_id,
                            plan=plan(epochs=1))
        else:
            msg = None
        resp = requests.Response()
        resp.status_code, resp.request, resp.url = 200, request, request.url
        if msg is None:  # a version file
            name = {"manifest": "manifest.json", "weights": "weights.safetensors"}.get(path.rsplit("/", 1)[1],
                                                                                      path.rsplit("/", 1)[1])
            resp._content = (self.dir / name).read_bytes()
        else:
            resp._content = json.dumps(msg.to_dict()).encode()  # type: ignore[attr-defined]
        return resp

    def close(self) -> None:
        pass


def test_no_cached_text_leaves_the_device(exported_version: Path, cache: TextCache, tmp_path: Path):
    manifest, _ = load_version(exported_version)
    rec = Recorder(manifest, exported_version)
    session = requests.Session()
    session.mount("http://coord", rec)
    client = CoordinatorClient("http://coord", device_id="dev-1", token="tok", session=session)

    store = VersionStore(tmp_path / "dev")
    store.install(manifest.version_id, client.fetch)
    task = client.checkin(wire.CheckinRequest(eligible=True, current_version_id=store.current_id))
    res = train(store.current(), [r.text for r in cache.training_records()], task.plan)
    u = res.update
    client.upload_update(u.delta, wire.UpdateMeta(round_id=task.plan.round_id, base_version_id=u.base_version_id,
                                                  example_count=u.example_count, idempotency_key="k1",
                                                  encoding=u.encoding))
    metrics = evaluate([store.current()], [r.text for r in cache.heldout_records()])
    client.report_evaluation(wire.EvaluationReport(manifest.version_id, tuple(metrics)))

    assert {r.path_url for r in rec.sent} >= {wire.PATH_UPDATES, wire.PATH_EVALUATIONS, wire.PATH_CHECKIN}
    everything = b"".join(
        (r.body if isinstance(r.body, bytes) else (r.body or "").encode()) + repr(dict(r.headers)).encode()
        + r.url.encode() for r in rec.sent)
    secrets = [t.encode() for t in CANARIES] + [w.encode() for t in CANARIES for w in t.split() if len(w) >= 6]
    secrets.append(b"hunter2")
    leaked = [s for s in secrets if s in everything]
    assert not leaked, leaked
