"""Enrollment and auth failures, limits, and JSON errors for every bad input (never a 5xx)."""

from __future__ import annotations

import requests

from coordinator.app import create_app
from protocol import wire
from tests.helpers.coordinator_fakes import ADMIN_TOKEN, FakeDevice, make_config, make_version, serve


def _err(resp, status: int, code: str) -> wire.ErrorBody:
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    body = wire.ErrorBody.from_dict(resp.json() if callable(resp.json) else resp.json)   # requests or Flask
    assert body.error == code, body
    return body


def _enroll(url: str, key: str) -> requests.Response:
    return requests.post(url + wire.PATH_ENROLL, json=wire.EnrollRequest(key).to_dict(), timeout=5)


def test_enrollment_keys(served):
    _err(_enroll(served.url, "wrong-key"), 401, wire.E_UNAUTHORIZED)
    r = served.admin("POST", "/v1/admin/enrollment-keys", json={"label": "lab", "uses": 1})
    assert r.status_code == 201
    key = r.json()["enrollment_key"]
    first = _enroll(served.url, key)
    assert first.status_code == 200
    _err(_enroll(served.url, key), 401, wire.E_UNAUTHORIZED)       # used up
    resp = wire.EnrollResponse.from_dict(first.json())
    assert resp.device_id.startswith("d-") and len(resp.token) >= 40
    # The token is stored only as a hash.
    from coordinator.models import Device
    with served.coord._sessions() as s:
        dev = s.get(Device, resp.device_id)
        assert dev.token_hash != resp.token and resp.token not in dev.token_hash


def test_a_retried_enrollment_gets_the_same_device_until_it_checks_in(served):
    """A device whose enrollment answer was lost enrolled again as a second device, and with a
    single-use key could not enroll at all. The same request id now gets the
    same device with a new token, and uses no more of the key, until that device checks in."""
    key = served.coord.create_enrollment_key(uses=1)
    rid = "ab" * 16

    def enroll(request_id: str) -> requests.Response:
        return requests.post(served.url + wire.PATH_ENROLL, timeout=5,
                             json=wire.EnrollRequest(key, request_id=request_id).to_dict())

    first, again = (wire.EnrollResponse.from_dict(enroll(rid).json()) for _ in range(2))
    assert again.device_id == first.device_id and again.token != first.token
    assert served.coord.status()["devices"] == 1
    assert requests.get(served.url + wire.PATH_SIGNING_KEY, timeout=5).json()["enroll_request_ids"] is True
    # ... and only within an hour of the first try (not for a device powered on weeks later)
    from datetime import timedelta

    from sqlalchemy import text

    from coordinator.enrollment import RETRY_WINDOW
    from coordinator.models import utcnow

    later = wire.EnrollRequest(served.coord.create_enrollment_key(), request_id="ef" * 16).to_dict()
    assert requests.post(served.url + wire.PATH_ENROLL, timeout=5, json=later).status_code == 200
    with served.coord.engine.begin() as c:
        c.execute(text("UPDATE devices SET created_at = :t WHERE id != :id"),
                  {"t": utcnow() - RETRY_WINDOW - timedelta(seconds=5), "id": first.device_id})
    _err(requests.post(served.url + wire.PATH_ENROLL, timeout=5, json=later), 409, wire.E_CONFLICT)
    body = wire.CheckinRequest(eligible=True).to_dict()

    def checkin(token: str) -> requests.Response:
        return requests.post(served.url + wire.PATH_CHECKIN, json=body, timeout=5,
                             headers=wire.device_headers(first.device_id, token))

    _err(checkin(first.token), 401, wire.E_UNAUTHORIZED)   # the lost answer's token is no longer good
    assert checkin(again.token).status_code == 200
    _err(enroll(rid), 409, wire.E_CONFLICT)                # in use: a replay cannot take the device over
    _err(enroll("cd" * 16), 401, wire.E_UNAUTHORIZED)      # another request: the key's one use is gone
    _err(requests.post(served.url + wire.PATH_ENROLL, timeout=5, json={**wire.EnrollRequest(key).to_dict(),
                                                                      "request_id": "not hex"}),
         400, wire.E_BAD_REQUEST)
    assert checkin(again.token).status_code == 200


def test_a_retried_enrollment_gets_its_device_after_its_key_is_revoked_or_expires(served):
    """A key revoked (or expired) between an enrollment and its retry left the device it made on
    the coordinator, never to be reached, and the device without an enrollment: the retry was
    refused as a new enrollment. The device was enrolled already, and a revoked key's devices keep
    working; only a key revoked with its devices refuses it. A new request is still refused."""
    from datetime import timedelta

    from sqlalchemy import text

    from coordinator.keys import hash_secret
    from coordinator.models import utcnow

    def enroll(key: str, request_id: str) -> requests.Response:
        return requests.post(served.url + wire.PATH_ENROLL, timeout=5,
                             json=wire.EnrollRequest(key, request_id=request_id).to_dict())

    revoked, expired, with_devices = (served.coord.create_enrollment_key() for _ in range(3))
    first = [wire.EnrollResponse.from_dict(enroll(k, rid).json())
             for k, rid in ((revoked, "a1" * 16), (expired, "b2" * 16), (with_devices, "c3" * 16))]
    served.coord.revoke_enrollment_key(key=revoked)
    with served.coord.engine.begin() as c:
        c.execute(text("UPDATE enrollment_keys SET expires_at = :t WHERE key_hash = :h"),
                  {"t": utcnow() - timedelta(seconds=1), "h": hash_secret(expired)})
    served.coord.revoke_enrollment_key(key=with_devices, devices=True)
    for key, rid, made in ((revoked, "a1" * 16, first[0]), (expired, "b2" * 16, first[1])):
        again = wire.EnrollResponse.from_dict(enroll(key, rid).json())
        assert again.device_id == made.device_id and again.token != made.token
        body = wire.CheckinRequest(eligible=True).to_dict()
        assert requests.post(served.url + wire.PATH_CHECKIN, json=body, timeout=5,
                             headers=wire.device_headers(again.device_id, again.token)).status_code == 200
        _err(enroll(key, "d4" * 16), 401, wire.E_UNAUTHORIZED)   # no new device under it
    _err(enroll(with_devices, "c3" * 16), 409, wire.E_CONFLICT)  # its devices were revoked with it
    with served.coord.engine.begin() as c:   # no device made but the three first tries'
        assert c.execute(text("SELECT count(*) FROM devices")).scalar() == 3


def test_an_enrollment_key_is_listed_and_revoked_over_the_admin_api(served):
    key = served.coord.create_enrollment_key(label="leaked")
    dev = FakeDevice(served.url, key)
    body = wire.CheckinRequest(eligible=True).to_dict()
    checkin = lambda: requests.post(served.url + wire.PATH_CHECKIN, json=body, headers=dev.headers,  # noqa: E731
                                    timeout=5)
    _err(requests.get(served.url + "/v1/admin/enrollment-keys", timeout=5), 401, wire.E_UNAUTHORIZED)
    listed = served.admin("GET", "/v1/admin/enrollment-keys").json()["enrollment_keys"]
    (mine,) = [k for k in listed if k["label"] == "leaked"]
    assert mine["devices"] == 1 and not mine["revoked"] and key not in str(listed)
    path = f"/v1/admin/enrollment-keys/{mine['id']}/revoke"
    _err(served.admin("POST", path, json={"devices": "yes"}), 400, wire.E_BAD_REQUEST)
    _err(served.admin("POST", "/v1/admin/enrollment-keys/99999/revoke"), 404, wire.E_NOT_FOUND)
    r = served.admin("POST", path)                      # no body: the key only, its devices keep working
    assert r.status_code == 200 and r.json()["devices_revoked"] == 0
    _err(_enroll(served.url, key), 401, wire.E_UNAUTHORIZED)
    assert checkin().status_code == 200
    assert served.admin("POST", path, json={"devices": True}).json()["devices_revoked"] == 1
    _err(checkin(), 401, wire.E_UNAUTHORIZED)


def test_device_auth_failures(served):
    key = served.coord.create_enrollment_key()
    a, b = FakeDevice(served.url, key), FakeDevice(served.url, key)
    body = wire.CheckinRequest(eligible=True).to_dict()
    post = lambda headers: requests.post(served.url + wire.PATH_CHECKIN, json=body, headers=headers, timeout=5)
    _err(post({}), 401, wire.E_UNAUTHORIZED)
    _err(post(wire.device_headers(a.device_id, "nope")), 401, wire.E_UNAUTHORIZED)
    _err(post(wire.device_headers(b.device_id, a.token)), 401, wire.E_UNAUTHORIZED)   # a cannot act as b
    _err(post({wire.AUTH_HEADER: "Basic abc", wire.DEVICE_HEADER: a.device_id}), 401, wire.E_UNAUTHORIZED)
    assert post(a.headers).status_code == 200
    # Devices are not admins, admins need the admin token.
    _err(requests.get(served.url + "/v1/admin/status", headers=a.headers, timeout=5), 401, wire.E_UNAUTHORIZED)
    _err(requests.get(served.url + "/v1/admin/status", timeout=5), 401, wire.E_UNAUTHORIZED)
    assert served.admin("GET", "/v1/admin/status").status_code == 200
    # Version files need auth too; a revoked device is locked out.
    _err(requests.get(served.url + "/v1/versions/v0000/weights", timeout=5), 401, wire.E_UNAUTHORIZED)
    assert a.get(wire.PATH_VERSION_WEIGHTS, "v0000").status_code == 200
    assert served.admin("POST", f"/v1/admin/devices/{a.device_id}/revoke").status_code == 200
    _err(post(a.headers), 401, wire.E_UNAUTHORIZED)


def test_bad_inputs_get_json_4xx(served):
    dev = FakeDevice(served.url, served.coord.create_enrollment_key())
    url, h = served.url, dev.headers
    cases = [
        (requests.post(url + wire.PATH_CHECKIN, data=b"{not json", headers=h, timeout=5), 400, wire.E_BAD_REQUEST),
        (requests.post(url + wire.PATH_CHECKIN, json=[1, 2], headers=h, timeout=5), 400, wire.E_BAD_REQUEST),
        (requests.post(url + wire.PATH_CHECKIN, json={"protocol_version": 1}, headers=h, timeout=5), 400,
         wire.E_BAD_REQUEST),
        (requests.post(url + wire.PATH_CHECKIN, json={"protocol_version": 7, "eligible": True}, headers=h,
                       timeout=5), 400, wire.E_PROTOCOL_VERSION),
        (requests.post(url + wire.PATH_CHECKIN, data=b"\xff\xfe", headers=h, timeout=5), 400, wire.E_BAD_REQUEST),
        (requests.post(url + wire.PATH_CHECKIN, data=b" " * (wire.MAX_JSON_BYTES + 1), headers=h, timeout=5), 413,
         wire.E_TOO_LARGE),
        (requests.get(url + wire.PATH_CHECKIN, headers=h, timeout=5), 405, wire.E_METHOD),
        (requests.get(url + "/v1/nothing-here", timeout=5), 404, wire.E_NOT_FOUND),
        (dev.get(wire.PATH_VERSION_WEIGHTS, "v7777"), 404, wire.E_NOT_FOUND),
        (requests.get(url + "/v1/versions/..%2f..%2fetc/weights", headers=h, timeout=5), 404, wire.E_NOT_FOUND),
        (requests.post(url + wire.PATH_EVALUATIONS, json={"protocol_version": 1, "candidate_version_id": "v1",
                                                          "results": [{"version_id": "v1"}]}, headers=h, timeout=5),
         400, wire.E_BAD_REQUEST),
        (requests.post(url + wire.PATH_EVALUATIONS, json=wire.EvaluationReport(
            "v0000", (wire.VersionMetrics("v0000", 1, 1, 1, 1),)).to_dict(), headers=h, timeout=5), 409,
         wire.E_NOT_EVALUATING),
        (served.admin("POST", "/v1/admin/rounds", json={"goal_count": "many"}), 400, wire.E_BAD_REQUEST),
        (served.admin("POST", "/v1/admin/rounds", json={"colour": "blue"}), 400, wire.E_BAD_REQUEST),
        (served.admin("POST", "/v1/admin/rounds", json={"learning_rate": -1}), 400, wire.E_BAD_REQUEST),
        (served.admin("POST", "/v1/admin/versions/v0000/explode"), 400, wire.E_BAD_REQUEST),
        (served.admin("POST", "/v1/admin/versions/v0000/promote"), 409, wire.E_CONFLICT),
        (served.admin("GET", "/v1/admin/rounds/12345"), 404, wire.E_NOT_FOUND),
        (served.admin("GET", "/v1/admin/rejections?round_id=x"), 400, wire.E_BAD_REQUEST),
        (served.admin("POST", "/v1/admin/enrollment-keys", json={"uses": "lots"}), 400, wire.E_BAD_REQUEST),
    ]
    for resp, status, code in cases:
        _err(resp, status, code)


def test_request_size_cap_and_rate_limit(tmp_path):
    with serve(make_config(tmp_path, max_body_bytes=4096, rate_limit_per_minute=60.0, rate_limit_burst=3)) as s:
        make_version(tmp_path / "v0")
        s.coord.import_version(tmp_path / "v0")
        dev = FakeDevice(s.url, s.coord.create_enrollment_key())
        big = requests.post(s.url + wire.PATH_UPDATES, data=b"\0" * 10_000, headers=dev.headers, timeout=5)
        _err(big, 413, wire.E_TOO_LARGE)
        codes = [requests.post(s.url + wire.PATH_CHECKIN, json=wire.CheckinRequest(eligible=False).to_dict(),
                               headers=dev.headers, timeout=5) for _ in range(3)]
        limited = [r for r in codes if r.status_code == 429]
        assert limited, [r.status_code for r in codes]
        body = _err(limited[0], 429, wire.E_RATE_LIMITED)
        assert body.retryable and body.retry_after > 0 and int(limited[0].headers["Retry-After"]) >= 1


def _client_at(app, address: str):
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return client


def test_wrong_admin_tokens_from_one_address_get_429_before_the_token_is_compared(tmp_path):
    app = create_app(make_config(tmp_path, admin_failures_per_minute=1.0, admin_failures_burst=3))
    try:
        guesser, operator = _client_at(app, "203.0.113.7"), _client_at(app, "198.51.100.2")
        wrong = {wire.AUTH_HEADER: "Bearer not-the-admin-token"}
        right = {wire.AUTH_HEADER: f"Bearer {ADMIN_TOKEN}"}
        for _ in range(5):   # no token at all spends nothing: a probe without one is not a guess
            _err(guesser.get("/v1/admin/status"), 401, wire.E_UNAUTHORIZED)
        for _ in range(3):
            _err(guesser.get("/v1/admin/status", headers=wrong), 401, wire.E_UNAUTHORIZED)
        body = _err(guesser.get("/v1/admin/status", headers=wrong), 429, wire.E_RATE_LIMITED)
        assert body.retry_after > 0
        # Past the budget even the right token is refused from that address, so a guess that hits
        # is not told apart from one that misses ...
        _err(guesser.get("/v1/admin/status", headers=right), 429, wire.E_RATE_LIMITED)
        # ... on the routes a device or the operator may call too, while the operator elsewhere is served.
        manifest = wire.PATH_VERSION_MANIFEST.format(version_id="1")
        _err(guesser.get(manifest, headers=right), 429, wire.E_RATE_LIMITED)
        assert operator.get("/v1/admin/status", headers=right).status_code == 200
        # A device naming itself on those routes is never an admin guess, whatever its token.
        device = _client_at(app, "192.0.2.9")
        for _ in range(5):
            _err(device.get(manifest, headers=wrong | {wire.DEVICE_HEADER: "d-unknown"}), 401, wire.E_UNAUTHORIZED)
        assert device.get("/v1/admin/status", headers=right).status_code == 200
    finally:
        app.extensions["fedkeys"].close()


def test_an_ipv6_client_is_its_64_so_its_addresses_share_one_budget(tmp_path):
    app = create_app(make_config(tmp_path, admin_failures_per_minute=1.0, admin_failures_burst=1))
    try:
        wrong = {wire.AUTH_HEADER: "Bearer not-the-admin-token"}
        _err(_client_at(app, "2001:db8:1:2::5").get("/v1/admin/status", headers=wrong), 401, wire.E_UNAUTHORIZED)
        _err(_client_at(app, "2001:db8:1:2:ffff::9").get("/v1/admin/status", headers=wrong), 429,
             wire.E_RATE_LIMITED)                                      # same /64: the same client
        _err(_client_at(app, "2001:db8:1:3::5").get("/v1/admin/status", headers=wrong), 401,
             wire.E_UNAUTHORIZED)                                      # another /64
        _err(_client_at(app, "::ffff:192.0.2.1").get("/v1/admin/status", headers=wrong), 401,
             wire.E_UNAUTHORIZED)                                      # IPv4 in IPv6: that IPv4 address
        _err(_client_at(app, "192.0.2.1").get("/v1/admin/status", headers=wrong), 429, wire.E_RATE_LIMITED)
    finally:
        app.extensions["fedkeys"].close()


def test_behind_a_proxy_the_forwarded_address_is_the_client_and_unproxied_it_is_ignored(tmp_path, caplog):
    limits = {"rate_limit_per_minute": 1.0, "rate_limit_burst": 1}   # enrollment: per client address
    for hops, separate in ((1, True), (0, False)):
        app = create_app(make_config(tmp_path / str(hops), proxy_hops=hops, **limits))
        try:
            proxy = _client_at(app, "127.0.0.1")
            codes = [proxy.post(wire.PATH_ENROLL, json=wire.EnrollRequest("wrong-key").to_dict(),
                                headers={"X-Forwarded-For": f"192.0.2.{i}"}).status_code for i in (1, 2)]
            # With the proxy trusted, two clients behind it have a budget each; without it the
            # header is anyone's to write, so it is ignored and both share the sender's.
            assert codes == ([401, 401] if separate else [401, 429]), (hops, codes)
        finally:
            app.extensions["fedkeys"].close()
        # Unproxied, the header means a proxy that proxy_hops does not know of: said once, with the fix.
        said = [r.getMessage() for r in caplog.records if "proxy_hops is 0" in r.getMessage()]
        assert len(said) == (0 if hops else 1) and all("set proxy_hops" in m for m in said), said
        caplog.clear()
