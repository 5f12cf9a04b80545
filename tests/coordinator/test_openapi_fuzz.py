"""Property-based fuzzing of the served API from its own /openapi.json, with schemathesis.

Every operation in the document gets schema-valid (positive) and schema-violating (negative)
requests, each sent as a device, as the admin or with no credentials, against a coordinator
with a stable version and an open round on loopback. No answer may be a 5xx, and every 4xx
must be a JSON wire.ErrorBody. FEDKEYS_FUZZ_EXAMPLES sets examples per operation and mode.
"""

from __future__ import annotations

import json
import os

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from protocol import wire
from tests.helpers.coordinator_fakes import FakeDevice, make_config, make_version, serve

EXAMPLES = int(os.environ.get("FEDKEYS_FUZZ_EXAMPLES", "8"))


def test_schemathesis_finds_no_server_error(tmp_path):
    # A device's token on an admin route is a wrong admin token: keep the budget for them out of
    # the way, or past its 20 every admin call of the run would read 429.
    with serve(make_config(tmp_path, goal_count=50, min_count=50, canary_fraction=0.01,
                           admin_failures_burst=100_000)) as s:
        make_version(tmp_path / "v0")
        s.coord.import_version(tmp_path / "v0")
        dev = FakeDevice(s.url, s.coord.create_enrollment_key())
        s.coord.start_round()
        assert dev.checkin().kind == wire.TASK_TRAIN
        auths = {"device": dev.headers, "admin": {wire.AUTH_HEADER: f"Bearer {s.config.admin_token}"}, "none": {}}

        schema = schemathesis.openapi.from_url(s.url + wire.PATH_OPENAPI)
        operations = [r.ok() for r in schema.get_all_operations()]
        assert len(operations) >= 20
        failures: list[str] = []
        calls = {"n": 0}
        skipped: list[str] = []

        for op in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                try:
                    _fuzzer(op, mode, s.url, auths, failures, calls)()
                except Unsatisfiable:   # nothing in the operation can be made invalid (no parameters)
                    assert mode == GenerationMode.NEGATIVE, op.path
                    skipped.append(op.path)
        assert not failures, f"{len(failures)} of {calls['n']} calls failed:\n" + "\n".join(failures[:20])
        assert calls["n"] >= len(operations) * 2
        print(f"schemathesis: {calls['n']} calls over {len(operations)} operations ({len(skipped)} without a "
              f"negative case), 0 server errors")


def _fuzzer(op, mode: GenerationMode, url: str, auths: dict[str, dict[str, str]], failures: list[str],
            calls: dict[str, int]):
    """A hypothesis test over one operation in one generation mode; collects failures."""
    label = f"{op.method.upper()} {op.path} [{mode.value}"

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=mode), auth=st.sampled_from(sorted(auths)))
    def fuzz(case, auth):
        case.headers = {k: v for k, v in (case.headers or {}).items()
                        if k.lower() not in ("authorization", wire.DEVICE_HEADER.lower())}
        resp = case.call(base_url=url, headers=auths[auth], timeout=10)
        calls["n"] += 1
        ok = resp.status_code < 500
        if ok and resp.status_code >= 400:
            try:
                ok = isinstance(wire.ErrorBody.from_dict(json.loads(resp.content)).message, str)
            except (ValueError, wire.WireError):
                ok = False
        if not ok:
            failures.append(f"{label}, {auth}] -> {resp.status_code} {resp.content[:200]!r}\n"
                            f"  {case.as_curl_command()}")

    return fuzz
