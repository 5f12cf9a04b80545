"""The training plan is declared once (protocol.plan) and every door applies it: the wire codec,
the coordinator's config, the admin API, the CLI and the device; the device's ε arithmetic
matches dp-accounting."""

from __future__ import annotations

import math

import pytest

from edge_runtime.plan_guard import PlanFloor, gaussian_epsilon
from protocol import wire
from protocol.plan import PLAN_FIELDS, TrainPlan

GOOD = {"round_id": 1, "epochs": 1, "batch_size": 8, "learning_rate": 0.1, "clip_norm": 1.0,
        "noise_multiplier": 0.5, "max_examples": 100}


@pytest.mark.parametrize("field, value", [("clip_norm", 0), ("clip_norm", -1.0), ("learning_rate", 0.0),
                                          ("epochs", 0), ("epochs", 101), ("noise_multiplier", -0.1),
                                          ("max_examples", 0), ("clip_norm", float("inf")), ("epochs", True)])
def test_wire_codec_refuses_out_of_bounds_plans(field, value):
    with pytest.raises(wire.WireError, match=field):
        TrainPlan.from_dict(GOOD | {field: value})
    with pytest.raises(wire.WireError, match=field):
        TrainPlan(**(GOOD | {field: value}))


def test_every_plan_field_is_in_the_codec_and_the_openapi_schema():
    from coordinator.openapi import SCHEMAS
    props = SCHEMAS["TrainPlan"]["properties"]
    for f in PLAN_FIELDS:
        if f.kind is bool:   # a round mode (secure_aggregation): no bounds, a boolean with its default
            assert props[f.name]["type"] == "boolean" and props[f.name]["default"] == f.default
        else:
            assert props[f.name]["minimum"] == f.lo and props[f.name]["maximum"] == f.hi
    assert props["clip_norm"]["exclusiveMinimum"] is True
    assert set(TrainPlan.from_dict(GOOD).to_dict()) == set(GOOD)


def test_secure_aggregation_is_declared_with_the_plan_and_optional_on_the_wire():
    """Merged from issue-14: the round mode lives in the one declaration; a plain plan's wire form
    is unchanged (the field is sent only when true), and only a JSON boolean is accepted."""
    from coordinator.openapi import SCHEMAS
    assert "secure_aggregation" in {f.name for f in PLAN_FIELDS}
    assert "secure_aggregation" not in SCHEMAS["TrainPlan"]["required"]
    assert TrainPlan.from_dict(GOOD).secure_aggregation is False
    secure = TrainPlan.from_dict(GOOD | {"secure_aggregation": True})
    assert secure.secure_aggregation is True and secure.to_dict() == GOOD | {"secure_aggregation": True}
    for bad in (1, "true", None):
        with pytest.raises(wire.WireError, match="secure_aggregation"):
            TrainPlan.from_dict(GOOD | {"secure_aggregation": bad})


def test_the_device_default_floor_is_declared_once_and_named_part_by_part():
    """The device's default floor is declared in protocol.plan: the device's config and PlanFloor
    match it, and `beyond_default_devices` names each part of a plan that such devices refuse."""
    from edge_runtime.config import EdgeConfig
    from protocol.plan import DEVICE_DEFAULT_FLOOR, beyond_default_devices

    cfg = EdgeConfig()
    assert (cfg.min_noise_multiplier, cfg.max_clip_norm, cfg.max_epochs, cfg.max_train_examples) == tuple(
        DEVICE_DEFAULT_FLOOR[k] for k in ("min_noise_multiplier", "max_clip_norm", "max_epochs", "max_examples"))
    assert PlanFloor.from_config(cfg) == PlanFloor()
    plan = GOOD | {"epochs": 21, "clip_norm": 10.5, "noise_multiplier": 0.0, "max_examples": 5000}
    assert beyond_default_devices(plan) == ["noise_multiplier 0 is below the 0.01 a device accepts by default",
                                            "clip_norm 10.5 is above the 10 a device accepts by default",
                                            "epochs 21 is above the 20 a device accepts by default"]
    assert PlanFloor().refusal(TrainPlan(**plan)) is not None   # the device does refuse it
    assert beyond_default_devices(GOOD | {"clip_norm": 10.0, "epochs": 20}) == []
    assert PlanFloor().refusal(TrainPlan(**(GOOD | {"clip_norm": 10.0, "epochs": 20}))) is None


def test_coordinator_config_refuses_clip_norm_zero():
    from coordinator.config import Config, ConfigError
    with pytest.raises(ConfigError, match="clip_norm"):
        Config(clip_norm=0.0)


def test_device_floor_refusals():
    floor = PlanFloor(min_noise_multiplier=0.3, max_clip_norm=5.0, max_epochs=3, max_examples=500)
    assert floor.refusal(TrainPlan(**GOOD)) is None
    assert "noise_multiplier" in floor.refusal(TrainPlan(**(GOOD | {"noise_multiplier": 0.0})))
    assert "clip_norm" in floor.refusal(TrainPlan(**(GOOD | {"clip_norm": 1e5})))
    assert "epochs" in floor.refusal(TrainPlan(**(GOOD | {"epochs": 30})))
    assert "max_examples" in floor.refusal(TrainPlan(**(GOOD | {"max_examples": 10**6})))


@pytest.mark.parametrize("sigmas", [[1.0], [2.0, 2.0, 2.0], [0.8] * 10, [5.0] * 50, [1.0, 3.0]])
def test_device_epsilon_matches_dp_accounting(sigmas):
    import dp_accounting  # requirements.txt (the coordinator's accountant), not on a slim device
    from dp_accounting.pld import pld_privacy_accountant
    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    for s in sigmas:
        acc.compose(dp_accounting.GaussianDpEvent(s))
    ref = acc.get_epsilon(1e-6)
    ours = gaussian_epsilon(sigmas, 1e-6)
    assert ours == pytest.approx(ref, rel=0.02, abs=1e-3)


def test_device_epsilon_edges():
    assert gaussian_epsilon([], 1e-6) == 0.0
    assert gaussian_epsilon([1.0, 0.0], 1e-6) == math.inf
    assert gaussian_epsilon([1.0] * 4, 1e-6) > gaussian_epsilon([1.0] * 2, 1e-6) > 0


def test_the_coordinator_warns_of_a_round_that_default_devices_refuse(tmp_path, caplog):
    """Allowed (a device may raise its own limits), but said: every default device refuses it."""
    from tests.helpers.coordinator_fakes import make_config, make_version, serve

    with serve(make_config(tmp_path)) as s:
        make_version(tmp_path / "v0")
        s.coord.import_version(tmp_path / "v0")
        with caplog.at_level("WARNING", logger="coordinator.rounds"):
            assert s.coord.start_round(clip_norm=50.0) >= 1
    warned = [r.getMessage() for r in caplog.records if r.name == "coordinator.rounds"]
    assert warned == ["round plan: clip_norm 50 is above the 10 a device accepts by default; devices with "
                      "default settings will refuse this round"], warned


def test_a_ledger_with_one_flipped_bit_is_damaged_not_a_smaller_epsilon(tmp_path):
    """A flipped bit in a recorded σ ("2.0" -> "6.0") kept the ledger valid JSON and lowered the
    epsilon spent (2.25 read as 0.69): the device then released past its budget."""
    from edge_runtime.plan_guard import LedgerError, PrivacyLedger

    ledger = PrivacyLedger(tmp_path, budget=10.0, delta=1e-5)
    plan = TrainPlan(round_id=1, epochs=1, batch_size=4, learning_rate=0.5, clip_norm=1.0, noise_multiplier=2.0,
                     max_examples=50)
    spent = ledger.charge(plan)
    assert ledger.spent() == pytest.approx(spent)
    raw = ledger.path.read_bytes()
    ledger.path.write_bytes(raw.replace(b'"noise_multiplier": 2.0', b'"noise_multiplier": 6.0'))
    with pytest.raises(LedgerError, match="damaged"):
        ledger.spent()
