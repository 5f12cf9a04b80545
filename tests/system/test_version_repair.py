"""A damaged or tampered version is never served quietly: the device re-fetches a corrupted
current version (and reports what it really uses meanwhile), and the keyboard process, which
has no coordinator connection, still checks the signature of what it loads."""

from __future__ import annotations

import json

from edge_runtime import agent
from edge_runtime.model_slot import ModelSlot
from protocol.artifact import MANIFEST, WEIGHTS_Q8, sha256_file
from tests.helpers.coordinator_fakes import enrolled_observer, make_config, serve


def _flip_byte(path, offset=-100):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupted_current_version_is_refetched_and_signatures_checked_by_the_keyboard(tmp_path, exported_version):
    with serve(make_config(tmp_path, canary_fraction=0.001)) as s:
        v0 = s.coord.import_version(exported_version)
        dev = enrolled_observer(s, tmp_path / "dev")
        try:
            agent.run_once(dev)
            weights = tmp_path / "dev" / "models" / v0 / WEIGHTS_Q8     # the form devices download
            good = weights.read_bytes()
            _flip_byte(weights)
            assert dev.store.in_use() is None                  # what is really served: nothing valid
            res = agent.run_once(dev)                           # the device notices and re-fetches
            assert weights.read_bytes() == good and res.version_id == v0 and dev.store.in_use() == v0
        finally:
            dev.close()

        # Tamper with the weights and re-hash the manifest: hashes match, the signature cannot.
        _flip_byte(weights)
        mpath = tmp_path / "dev" / "models" / v0 / MANIFEST
        m = json.loads(mpath.read_text())
        m["weights_q8_sha256"] = sha256_file(weights)
        mpath.write_text(json.dumps(m))
        slot = ModelSlot(data_dir=tmp_path / "dev", model_dir=None, channel=None)   # the keyboard's view
        slot.refresh()
        assert slot.predictor is None and slot.version_id is None, "keyboard served re-hashed tampered weights"
