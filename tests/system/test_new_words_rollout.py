"""New softmax words reach a device the way every version does: `tools.add_words` writes the
version, the coordinator imports it as a canary candidate, a canary device evaluates it, and
after promotion the device installs it, fetching the new tokenizer by the hash in the signed
manifest (real coordinator, real HTTP, real device agent)."""

from __future__ import annotations

from pathlib import Path

from edge_runtime import agent
from edge_runtime import cache as text_cache
from edge_runtime.config import EdgeConfig
from edge_runtime.predictor import Predictor
from protocol.artifact import TOKENIZER
from protocol.interpreter import Model
from protocol.text import load_tokenizer
from protocol.vocab import add_words
from tests.helpers.coordinator_fakes import make_config, serve

TEXTS = ["see you at the station tomorrow morning", "thanks for the lovely dinner last night",
         "can you send me the notes from the meeting", "my train is running late again today",
         "the zorblax update is out, try the zorblax app", "did you read the zorblax notes"] * 3


def test_a_version_with_new_words_goes_through_the_canary_to_the_device(tmp_path, exported_version):
    new_dir = tmp_path / "with-words"
    added = add_words(exported_version, ["zorblax"], new_dir)
    with serve(make_config(tmp_path, canary_fraction=1.0, canary_min_reports=1, canary_tolerance=1.0)) as s:
        s.coord.import_version(exported_version)
        cand = s.coord.import_version(new_dir)
        assert cand == added.version_id
        assert s.coord.status()["candidate_version_id"] == cand
        cfg = EdgeConfig(data_dir=str(tmp_path / "dev"), eligibility="override:eligible", coordinator=s.url,
                         public_key=s.coord.public_key_hex, min_wait_s=0.1)
        agent.enroll(cfg, s.coord.create_enrollment_key())
        for t in TEXTS:
            assert text_cache.type_text(cfg, t, "message")
        dev = agent.Device.open(cfg)
        try:
            first = agent.run_once(dev)
            assert first.kind == "evaluate" and first.outcome == "reported", first
            s.coord.maintenance()
            assert s.coord.status()["stable_version_id"] == cand
            agent.run_once(dev)
            assert dev.store.current_id == cand
            installed = Path(dev.store.path(cand))
        finally:
            dev.close()
    assert (installed / TOKENIZER).read_bytes() == (new_dir / TOKENIZER).read_bytes()
    keyboard = Predictor(Model.load(installed), load_tokenizer(installed / TOKENIZER))
    assert keyboard.session().update("have you tried zorb")[0] == "zorblax"
