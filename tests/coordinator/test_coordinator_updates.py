"""Every bad-update kind is rejected with its reason, and recorded; idempotent retries succeed."""

from __future__ import annotations

import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from protocol import artifact, wire
from tests.helpers.coordinator_fakes import (
    SHAPES,
    FakeDevice,
    make_config,
    make_version,
    random_delta,
    serve,
)


@pytest.fixture
def world(tmp_path):
    with serve(make_config(tmp_path, goal_count=5, min_count=1, clip_norm=1.0, max_examples=100)) as s:
        make_version(tmp_path / "v0")
        s.coord.import_version(tmp_path / "v0")
        key = s.coord.create_enrollment_key()
        devices = [FakeDevice(s.url, key) for _ in range(4)]
        rid = s.coord.start_round()
        for d in devices[:3]:
            assert d.checkin().kind == wire.TASK_TRAIN
        yield s, devices, rid


def _small(seed: int = 0) -> dict[str, np.ndarray]:
    return random_delta(seed, scale=0.01)   # norm well under clip_norm=1


def _expect(resp, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    body = wire.ErrorBody.from_dict(resp.json())
    assert body.error == code and body.message


def test_each_bad_update_kind_is_rejected_with_its_reason(world):
    s, (a, b, c, outsider), rid = world
    bad_shape = _small() | {"embedding": np.zeros((3, 3), np.float32)}
    missing = {k: v for k, v in _small().items() if k != "out_bias"}
    nan = _small() | {"lstm_bias": np.full(SHAPES["lstm_bias"], np.nan, np.float32)}
    cases = [
        (a.upload(_small(), round_id=999, base="v0000", examples=5), 404, wire.E_UNKNOWN_ROUND),
        (outsider.upload(_small(), round_id=rid, base="v0000", examples=5), 403, wire.E_NOT_SELECTED),
        (a.upload(_small(), round_id=rid, base="v9999", examples=5), 409, wire.E_STALE),
        (a.upload(_small(), round_id=rid, base="v0000", examples=0), 422, wire.E_EXAMPLE_COUNT),
        (a.upload(_small(), round_id=rid, base="v0000", examples=101), 422, wire.E_EXAMPLE_COUNT),
        (a.upload({}, round_id=rid, base="v0000", examples=5, body=b"\x00garbage"), 422, wire.E_MALFORMED),
        (a.upload(bad_shape, round_id=rid, base="v0000", examples=5), 422, wire.E_MALFORMED),
        (a.upload(missing, round_id=rid, base="v0000", examples=5), 422, wire.E_MALFORMED),
        (a.upload(nan, round_id=rid, base="v0000", examples=5), 422, wire.E_MALFORMED),
        (a.upload(_small(), round_id=rid, base="v0000", examples=5, encoding="float16",
                  body=artifact.encode_weights(_small(), "float32")),
         422, wire.E_MALFORMED),    # declared float16, sent float32
        (a.upload(random_delta(0, scale=5.0), round_id=rid, base="v0000", examples=5), 422, wire.E_NORM),
    ]
    for resp, status, code in cases:
        _expect(resp, status, code)
    # A float16 overflow becomes inf: malformed, not silently clipped.
    with np.errstate(over="ignore"):
        big = _small() | {"out_bias": np.full(SHAPES["out_bias"], 70000.0, np.float32).astype(np.float16)}
    body = artifact.encode_weights({k: v.astype(np.float16) for k, v in big.items()})
    _expect(a.upload({}, round_id=rid, base="v0000", examples=5, encoding="float16", body=body), 422, wire.E_MALFORMED)

    # Nothing bad was accepted; the good upload still goes through; then duplicates are refused.
    ok = a.upload(_small(), round_id=rid, base="v0000", examples=5, key="k-1")
    assert ok.status_code == 200, ok.text
    retry = a.upload(_small(), round_id=rid, base="v0000", examples=5, key="k-1")
    assert retry.status_code == 200 and retry.json() == ok.json()      # same idempotency key: same receipt
    # The same key with another update is not a retry: answering it with the receipt would drop it.
    for other in (a.upload(_small(7), round_id=rid, base="v0000", examples=5, key="k-1"),
                  a.upload(_small(), round_id=rid, base="v0000", examples=6, key="k-1")):
        _expect(other, 409, wire.E_DUPLICATE)
        assert "k-1" in other.json()["message"] and "other contents" in other.json()["message"]
    _expect(a.upload(_small(1), round_id=rid, base="v0000", examples=5, key="k-2"), 409, wire.E_DUPLICATE)

    # Late: after the round is closed.
    assert b.upload(_small(2), round_id=rid, base="v0000", examples=5).status_code == 200
    s.admin("POST", f"/v1/admin/rounds/{rid}/close?force=1")
    _expect(c.upload(_small(3), round_id=rid, base="v0000", examples=5), 409, wire.E_LATE)

    reasons = [x["reason"] for x in s.admin("GET", f"/v1/admin/rejections?round_id={rid}").json()["rejections"]]
    for code in (wire.E_NOT_SELECTED, wire.E_STALE, wire.E_EXAMPLE_COUNT, wire.E_MALFORMED, wire.E_NORM,
                 wire.E_DUPLICATE, wire.E_LATE):
        assert code in reasons
    _expect(s.admin("GET", f"/v1/admin/rejections?round_id={rid + 100}"), 404, wire.E_NOT_FOUND)
    # a listing holds the newest, and says how many there are (all came at once: 300 a round at scale)
    every = s.admin("GET", "/v1/admin/rejections").json()
    newest = s.admin("GET", "/v1/admin/rejections?limit=2").json()
    assert every["total"] == len(every["rejections"]) > 2 and newest["total"] == every["total"]
    assert newest["rejections"] == every["rejections"][-2:]
    _expect(s.admin("GET", "/v1/admin/rejections?limit=0"), 400, wire.E_BAD_REQUEST)
    assert s.coord.rejection_counts(rid) == dict(Counter(reasons)) != s.coord.rejection_counts()
    assert newest["by_reason"] == every["by_reason"] == s.coord.rejection_counts()
    rnd = s.admin("GET", f"/v1/admin/rounds/{rid}").json()
    assert rnd["accepted"] == 2 and rnd["status"] == "done"
    assert "fedkeys_updates_total{result=\"norm_exceeded\"} 1.0" in s.admin("GET", "/metrics").text


def test_bad_metadata_header_and_empty_body(world):
    s, (a, *_), rid = world
    import requests
    r = requests.post(s.url + wire.PATH_UPDATES, data=b"x", headers=a.headers, timeout=5)
    _expect(r, 400, wire.E_BAD_REQUEST)
    r = requests.post(s.url + wire.PATH_UPDATES, data=b"x", timeout=5,
                      headers=a.headers | {wire.UPDATE_META_HEADER: '{"protocol_version": 1, "round_id": "x"}'})
    _expect(r, 400, wire.E_BAD_REQUEST)
    meta = wire.UpdateMeta(round_id=rid, base_version_id="v0000", example_count=1, idempotency_key="k")
    r = requests.post(s.url + wire.PATH_UPDATES, data=b"", timeout=5,
                      headers=a.headers | {wire.UPDATE_META_HEADER: meta.to_header()})
    _expect(r, 400, wire.E_BAD_REQUEST)


def test_concurrent_retries_of_one_upload_all_get_its_receipt(tmp_path, monkeypatch):
    """A device that re-sends while its first upload is still being validated (its answer timed
    out) gets the stored update's receipt for every copy, even when the first filled the round.
    The copies are held at validation until all four are there, so each passed the first check
    before any was stored (they got 409 "a concurrent upload won", or "late")."""
    import threading

    from coordinator import updates

    together = threading.Barrier(4, timeout=20)
    real = updates.validate_update

    def validate_together(*args, **kw):
        together.wait()
        return real(*args, **kw)

    monkeypatch.setattr(updates, "validate_update", validate_together)
    with serve(make_config(tmp_path, goal_count=1, min_count=1, overselect=2.0, clip_norm=1.0,
                           max_examples=100)) as s:
        make_version(tmp_path / "v0")
        s.coord.import_version(tmp_path / "v0")
        dev = FakeDevice(s.url, s.coord.create_enrollment_key())
        rid = s.coord.start_round()
        assert dev.checkin().kind == wire.TASK_TRAIN
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: dev.upload(_small(), round_id=rid, base="v0000", examples=5,
                                                         key="same"), range(4)))
        assert [r.status_code for r in answers] == [200] * 4, [r.text for r in answers]
        assert len({r.json()["update_id"] for r in answers}) == 1
        assert s.coord.get_round(rid)["accepted"] == 1
        assert s.admin("GET", f"/v1/admin/rejections?round_id={rid}").json()["rejections"] == []


def test_a_value_a_device_sent_cannot_forge_a_line_of_the_text_log(world, caplog):
    """The rejection's log line quotes the update's base version id as the device sent it. With a
    line break and a timestamp in it, the text log (log_format text, the default on a terminal)
    showed a second line the operator would take for the coordinator's, and an ESC sequence
    reached the terminal."""
    from coordinator.logs import TextFormatter

    s, (a, *_), rid = world
    forged = "v9)\n2026-12-06 06:00:00,000 WARNING coordinator.rounds: round 1 failed\x1b[2K"
    with caplog.at_level("INFO", logger="coordinator"):
        _expect(a.upload(_small(), round_id=rid, base=forged, examples=5), 409, wire.E_STALE)
    (record,) = [r for r in caplog.records if "rejected update" in r.getMessage()]
    assert "\n2026-12-06" in record.getMessage()   # the device's value reached the message as sent
    line = TextFormatter().format(record)
    assert "\n" not in line and "\x1b" not in line
    assert "\\n2026-12-06 06:00:00,000 WARNING" in line and "failed\\x1b[2K, round" in line


def test_a_traceback_quoting_a_sent_value_cannot_forge_a_line_of_the_text_log():
    """Messages were escaped, tracebacks not: an exception whose message quoted what a device sent
    wrote its line break and ESC sequence into the text log as they were."""
    import logging

    from coordinator.logs import TextFormatter

    forged = "v9\n2026-12-06 06:00:00,000 WARNING coordinator.rounds: round 1 failed\x1b[2K"
    try:
        raise ValueError(f"no such version {forged}")
    except ValueError:
        record = logging.LogRecord("coordinator.api", logging.ERROR, __file__, 1, "request failed", None,
                                   sys.exc_info(), stack_info="Stack (most recent call last):\n  x\x1b[2K")
    lines = TextFormatter().format(record).split("\n")
    assert lines[0].endswith("ERROR coordinator.api: request failed") and len(lines) > 4
    assert all(line.startswith("  ") for line in lines[1:]) and "\x1b" not in "".join(lines)
    assert "  2026-12-06 06:00:00,000 WARNING coordinator.rounds: round 1 failed\\x1b[2K" in lines
    assert any(line.strip() == "Traceback (most recent call last):" for line in lines)


def test_a_device_whose_upload_was_refused_is_not_handed_the_round_again(world):
    """A device never trains a round twice (its text would be released again): one whose upload
    was refused was handed the round's train task at every check-in until the deadline, and
    refused it each time. Now it is told to come back; the others still train."""
    s, (a, b, c, outsider), rid = world
    _expect(a.upload(random_delta(0, scale=5.0), round_id=rid, base="v0000", examples=5), 422, wire.E_NORM)
    assert a.checkin().kind == wire.TASK_COME_BACK
    assert b.checkin().kind == wire.TASK_TRAIN
