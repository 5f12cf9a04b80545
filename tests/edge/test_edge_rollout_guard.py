"""The device's anti-downgrade rules on signed rollout statements."""

from __future__ import annotations

from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edge_runtime.rollout_guard import RolloutRefused, check, remember
from protocol.rollout_state import RolloutState

KEY = Ed25519PrivateKey.generate()
PUB = KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
NOW = 1_800_000_000


def signed(**kw) -> RolloutState:
    st = RolloutState(**({"device_id": "d-1", "version_id": "v5", "channel": "stable", "seq": 10, "version_seq": 5,
                          "rollback": False, "expires_at": NOW + 3600} | kw))
    return replace(st, signature=KEY.sign(st.signing_bytes()).hex())


def ok(st, tmp_path, now=NOW):
    return check(st, version_id=st.version_id, device_id="d-1", public_key=PUB, data_dir=tmp_path, now=now)


def test_rules(tmp_path):
    remember(ok(signed(), tmp_path), tmp_path)
    ok(signed(seq=10), tmp_path)                                              # the same statement again
    with pytest.raises(RolloutRefused, match="replay"):
        ok(signed(seq=9, version_id="v6", version_seq=6), tmp_path)
    with pytest.raises(RolloutRefused, match="no rollback"):
        ok(signed(seq=11, version_id="v4", version_seq=4), tmp_path)
    ok(signed(seq=11, version_id="v4", version_seq=4, rollback=True), tmp_path)   # a signed rollback
    with pytest.raises(RolloutRefused, match="expired"):
        ok(signed(seq=12, expires_at=NOW - 3600), tmp_path)
    with pytest.raises(RolloutRefused, match="signature"):
        ok(replace(signed(seq=12), channel="canary"), tmp_path)
    other = Ed25519PrivateKey.generate()
    st = signed(seq=12)
    with pytest.raises(RolloutRefused, match="signature"):
        ok(replace(st, signature=other.sign(st.signing_bytes()).hex()), tmp_path)
    with pytest.raises(RolloutRefused, match="no signed"):
        check(None, version_id="v5", device_id="d-1", public_key=PUB, data_dir=tmp_path)


def test_the_version_in_use_is_no_move_and_a_fast_clock_is_named(tmp_path):
    """A kill between a rollback's pointer and its statement left the newest statement on the
    rejected version: every later check-in refused, as a downgrade, the version already in use.
    And a clock days fast refused every statement as expired without a word about the clock."""
    remember(ok(signed(seq=10, version_id="v6", version_seq=6), tmp_path), tmp_path)
    back = signed(seq=11, version_id="v5", version_seq=5)                  # in use already: no rollback
    with pytest.raises(RolloutRefused, match="no rollback"):
        ok(back, tmp_path)
    assert check(back, version_id="v5", device_id="d-1", public_key=PUB, data_dir=tmp_path, now=NOW,
                 switching=False) == back
    with pytest.raises(RolloutRefused, match="signature"):                 # still only a genuine one
        check(replace(back, channel="canary"), version_id="v5", device_id="d-1", public_key=PUB,
              data_dir=tmp_path, now=NOW, switching=False)
    fresh = signed(seq=NOW * 1000, expires_at=NOW + 7 * 86400)
    with pytest.raises(RolloutRefused, match="this device's clock reads .* if this device's clock is wrong"):
        ok(fresh, tmp_path, now=NOW + 8 * 86400)


def test_a_coordinator_clock_days_behind_is_named(tmp_path):
    """A coordinator whose clock went days back numbers its statements past its last one (their
    `seq` ahead of its clock), and signs them expired: the device's refusal said nothing of a
    clock, since the hint was judged from `seq`."""
    behind = signed(seq=NOW * 1000 + 10 * 86400 * 1000, expires_at=NOW - 3 * 86400)   # signed 10 days "ago"
    with pytest.raises(RolloutRefused, match="72 h past it: .* the coordinator's is behind"):
        ok(behind, tmp_path, now=NOW)


def test_a_damaged_rollout_state_is_said_not_silently_forgotten(tmp_path, caplog):
    """The last signed statement is what the device may not go back from; damaged, it was dropped
    without a word."""
    import logging

    from edge_runtime import rollout_guard
    from edge_runtime.paths import ROLLOUT_STATE_FILE

    (tmp_path / ROLLOUT_STATE_FILE).write_text("{not json")
    with caplog.at_level(logging.WARNING):
        assert rollout_guard.last_state(tmp_path) is None
    assert ROLLOUT_STATE_FILE in caplog.text and "forgotten" in caplog.text
    caplog.clear()
    (tmp_path / ROLLOUT_STATE_FILE).unlink()
    assert rollout_guard.last_state(tmp_path) is None and not caplog.text   # none yet: nothing to say
