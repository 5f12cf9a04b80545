"""Secure-aggregation wire messages: round trips, and the malformed shapes they refuse."""

from __future__ import annotations

import pytest

from protocol import secagg
from protocol import secagg_wire as sw
from protocol.wire import TrainPlan, WireError


def test_messages_round_trip():
    nb = (sw.Neighbour(1, b"\x01" * 32, b"\x02" * 32), sw.Neighbour(2, b"\x03" * 32, b"\x04" * 32))
    r = sw.SecAggRoster(7, 0, 3, 2, 2, 2, b"\x05" * 32, 100, 12.5, 3.0, nb)
    assert sw.SecAggRoster.from_dict(r.to_dict()) == r
    ct = b"\x09" * secagg.CIPHERTEXT_BYTES
    assert sw.SecAggShares.from_dict(sw.SecAggShares({1: ct}).to_dict(), secagg.CIPHERTEXT_BYTES).shares == {1: ct}
    assert sw.SecAggInbox.from_dict(sw.SecAggInbox({2: ct}).to_dict(), secagg.CIPHERTEXT_BYTES).shares == {2: ct}
    req = sw.SecAggUnmaskRequest((1,), (2,), 5)
    assert sw.SecAggUnmaskRequest.from_dict(req.to_dict()) == req
    share = b"\x07" * secagg.SHARE_BYTES
    rv = sw.SecAggReveal({1: share}, {2: share})
    assert sw.SecAggReveal.from_dict(rv.to_dict(), secagg.SHARE_BYTES) == rv
    assert sw.is_ready(r.to_dict()) and not sw.is_ready(sw.wait("keys", 2.0))
    plan = TrainPlan(1, 1, 1, 0.1, 1.0, 0.5, 10, secure_aggregation=True)
    assert TrainPlan.from_dict(plan.to_dict()) == plan
    assert "secure_aggregation" not in TrainPlan(1, 1, 1, 0.1, 1.0, 0.5, 10).to_dict()


def test_malformed_messages_are_refused():
    share = (b"\x07" * secagg.SHARE_BYTES).hex()
    one = [{"of": 3, "share": share}]
    both = {"protocol_version": 1, "self_shares": one, "key_shares": one}
    with pytest.raises(WireError, match="both kinds"):
        sw.SecAggReveal.from_dict(both, secagg.SHARE_BYTES)
    with pytest.raises(WireError):
        sw.SecAggKeys.from_dict({"protocol_version": 1, "enc_pk": "zz" * 32, "mask_pk": "00" * 32})
    with pytest.raises(WireError):
        sw.SecAggShares.from_dict({"protocol_version": 1, "shares": [{"to": 1, "ct": "00"}]}, secagg.CIPHERTEXT_BYTES)
    with pytest.raises(WireError):
        sw.SecAggUnmaskRequest.from_dict({"protocol_version": 1, "survivors": [1, 1], "dropped": [],
                                          "survivor_count": 2})
    with pytest.raises(WireError):
        sw.secagg_path(1, "../admin")
