"""Round-trip and rejection tests for every wire message (the contract with the edge runtime)."""

from __future__ import annotations

import json

import pytest

from protocol import wire as w


def _roundtrip(msg):
    """Through real JSON, as on the wire."""
    return type(msg).from_dict(json.loads(json.dumps(msg.to_dict(), allow_nan=False)))


PLAN = w.TrainPlan(round_id=3, epochs=1, batch_size=16, learning_rate=0.5, clip_norm=1.0,
                   noise_multiplier=0.8, max_examples=500)

MESSAGES = [
    w.EnrollRequest(enrollment_key="k" * 40, platform="linux-aarch64"),
    w.EnrollResponse(device_id="d-abc", token="t" * 43),
    w.CheckinRequest(eligible=True, current_version_id="v0001", can_evaluate=False),
    w.CheckinRequest(eligible=False),
    w.Task(kind=w.TASK_TRAIN, retry_after=30.0, use_version_id="v0", base_version_id="v0", plan=PLAN,
           time_limit_s=600.0),
    w.Task(kind=w.TASK_EVALUATE, retry_after=60.0, use_version_id="v1", candidate_version_id="v1",
           evaluate_version_ids=("v1", "v0"), max_eval_examples=200),
    w.Task(kind=w.TASK_COME_BACK, retry_after=120.5, use_version_id="v0"),
    w.UpdateMeta(round_id=3, base_version_id="v0", example_count=120, idempotency_key="abc-1", encoding="float32"),
    w.UpdateReceipt(update_id=7, round_id=3),
    w.EvaluationReport(candidate_version_id="v1", results=(
        w.VersionMetrics("v1", loss_sum=120.5, top1=30, top3=55, count=100),
        w.VersionMetrics("v0", loss_sum=130.0, top1=28, top3=50, count=100))),
    w.EvaluationReceipt(candidate_version_id="v1"),
    w.SigningKey(public_key_hex="ab" * 32),
    w.ErrorBody(error=w.E_RATE_LIMITED, message="slow down", retry_after=2.0, details={"limit": 60}),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(msg):
    assert _roundtrip(msg) == msg


def test_update_meta_header_round_trip():
    meta = w.UpdateMeta(round_id=1, base_version_id="v0", example_count=5, idempotency_key="k1")
    assert w.UpdateMeta.from_header(meta.to_header()) == meta
    assert meta.encoding == "float16"


@pytest.mark.parametrize("bad", [{"loss_sum": "nan"}, {"count": "inf"}, {"count": 1e12}, {"top3": -1},
                                 {"words": 5, "word_top3": 6}, {"saved": 9, "typed": 8}, {"words": 1.5}])
def test_metrics_must_be_finite_bounded_and_consistent(bad):
    good = w.VersionMetrics("v1", 10.0, 1, 2, 10, words=5, word_top1=1, word_top3=2, saved=3, typed=8).to_dict()
    assert w.VersionMetrics.from_dict(good).words == 5
    with pytest.raises(w.WireError):
        w.VersionMetrics.from_dict(good | bad)


@pytest.mark.parametrize("cls,d,needle", [
    (w.EnrollRequest, {"enrollment_key": "x"}, "protocol_version"),
    (w.EnrollRequest, {"protocol_version": 99, "enrollment_key": "x"}, "not supported"),
    (w.CheckinRequest, {"protocol_version": 1, "eligible": "yes"}, "eligible"),
    (w.CheckinRequest, {"protocol_version": True, "eligible": True}, "not supported"),        # true == 1
    (w.CheckinRequest, {"protocol_version": 1.0, "eligible": True}, "not supported"),         # 1.0 == 1
    (w.CheckinRequest, {"protocol_version": 1, "eligible": True, "current_version_id": "../../etc"},
     "current_version_id"),
    (w.UpdateMeta, {"protocol_version": 1, "round_id": 0, "base_version_id": "v", "example_count": 1,
                    "idempotency_key": "k", "encoding": "float16"}, "round_id"),
    (w.UpdateMeta, {"protocol_version": 1, "round_id": 1, "base_version_id": "v", "example_count": 1,
                    "idempotency_key": "k", "encoding": "int8"}, "encoding"),
    (w.Task, {"protocol_version": 1, "kind": "dance", "retry_after": 1}, "kind"),
    (w.Task, {"protocol_version": 1, "kind": "train", "retry_after": 1, "base_version_id": "v"}, "plan"),
    (w.EvaluationReport, {"protocol_version": 1, "candidate_version_id": "v1", "results": []}, "results"),
    (w.EvaluationReport, {"protocol_version": 1, "candidate_version_id": "v1", "results": [
        {"version_id": "v1", "loss_sum": 1, "top1": 5, "top3": 20, "count": 10}]}, "exceed"),
    (w.EvaluationReport, {"protocol_version": 1, "candidate_version_id": "v1", "results": [7]},
     "each entry of 'results' must be a JSON object"),
    (w.EnrollRequest, {"protocol_version": 1, "enrollment_key": "a\x00b"}, "'enrollment_key' contains a NUL"),
    (w.SigningKey, {"protocol_version": 1, "algorithm": "ed25519", "public_key_hex": "zz"}, "hex"),
    (w.EnrollRequest, ["not", "an", "object"], "object"),
])
def test_malformed_messages_are_rejected_with_a_reason(cls, d, needle):
    with pytest.raises(w.WireError, match=needle):
        cls.from_dict(d)


def test_a_message_of_another_protocol_version_says_so_by_its_class():
    """The coordinator answers `protocol_version`, which a device takes as final, for these alone
    (it once chose that code by finding "protocol_version" in the message's text)."""
    for d in ({"enrollment_key": "x"}, {"protocol_version": 2, "enrollment_key": "x"},
              {"protocol_version": True, "enrollment_key": "x"}):
        with pytest.raises(w.ProtocolVersionError):
            w.EnrollRequest.from_dict(d)
    with pytest.raises(w.WireError) as e:
        w.EnrollRequest.from_dict({"protocol_version": 1})
    assert not isinstance(e.value, w.ProtocolVersionError)


def test_update_meta_header_errors():
    with pytest.raises(w.WireError, match="missing"):
        w.UpdateMeta.from_header(None)
    with pytest.raises(w.WireError, match="not JSON"):
        w.UpdateMeta.from_header("{nope")


def test_paths_and_helpers():
    assert all(p.startswith(w.API_PREFIX) for p in (w.PATH_ENROLL, w.PATH_CHECKIN, w.PATH_UPDATES,
                                                   w.PATH_EVALUATIONS, w.PATH_SIGNING_KEY))
    assert w.version_path(w.PATH_VERSION_WEIGHTS, "v0001") == "/v1/versions/v0001/weights"
    with pytest.raises(w.WireError):
        w.version_path(w.PATH_VERSION_WEIGHTS, "../etc")
    # `.` and `..` are URL-safe characters but name other directories on both sides
    assert not any(w.is_safe_id(v) for v in (".", "..", "...", "", "a/b", "x" * 129))
    assert all(w.is_safe_id(v) for v in ("v0001", "v0.1", ".hidden", "a..b", "v0-t1000-ab12cd34"))
    h = w.device_headers("d1", "tok")
    assert w.bearer_token(h[w.AUTH_HEADER]) == "tok" and h[w.DEVICE_HEADER] == "d1"
    assert w.bearer_token("Basic xyz") is None and w.bearer_token(None) is None
    assert w.bearer_token("bearer tok") == w.bearer_token("BEARER tok") == "tok"   # schemes: any case
    assert w.ErrorBody(w.E_RATE_LIMITED, "x").retryable and not w.ErrorBody(w.E_STALE, "x").retryable
