"""A device told to pin a coordinator key that is not the coordinator's refuses to enroll, before
it uses up a use of the enrollment key (it would otherwise enroll and then refuse every version
as "signature does not verify", with nothing saying why)."""

from __future__ import annotations

import pytest

from edge_runtime import agent
from edge_runtime.config import EdgeConfig
from edge_runtime.identity import load_identity
from edge_runtime.paths import IDENTITY_FILE
from tests.helpers.coordinator_fakes import make_config, serve


def test_a_mistyped_public_key_is_refused_and_the_enrollment_key_stays_unused(tmp_path):
    with serve(make_config(tmp_path)) as s:
        key = s.coord.create_enrollment_key(uses=1)
        right = s.coord.public_key_hex
        wrong = ("0" if right[0] != "0" else "1") + right[1:]
        cfg = EdgeConfig(data_dir=str(tmp_path / "dev"), coordinator=s.url, public_key=wrong)
        with pytest.raises(agent.AgentError, match="is not the key .* signs with.*the enrollment key is unused"):
            agent.enroll(cfg, key)
        assert not (tmp_path / "dev" / IDENTITY_FILE).exists()
        ident = agent.enroll(cfg.with_overrides({"public_key": right}), key)   # its one use still there
        assert ident.public_key == right


def test_a_data_dir_that_cannot_hold_the_identity_is_refused_before_the_key_is_used(tmp_path, capsys):
    """`enroll --data-dir` naming a file said "is a file, not a folder" after the coordinator had
    enrolled the device, so a key of one use was gone and the retry was refused (401)."""
    from edge_runtime.__main__ import main as device_main

    with serve(make_config(tmp_path)) as s:
        key = s.coord.create_enrollment_key(uses=1)
        (tmp_path / "a-file").write_text("x")
        args = ["enroll", "--coordinator", s.url, "--enrollment-key", key, "--public-key", s.coord.public_key_hex]
        assert device_main([*args, "--data-dir", str(tmp_path / "a-file")]) == 2
        assert "is a file, not a folder" in capsys.readouterr().err
        assert s.coord.status()["devices"] == 0
        assert device_main([*args, "--data-dir", str(tmp_path / "dev")]) == 0      # its one use still there
        assert (tmp_path / "dev" / IDENTITY_FILE).exists()


def test_enroll_force_replaces_a_damaged_identity(tmp_path, capsys):
    """A damaged device.json said "enroll again with --force", and enroll --force refused with the
    same error: it read the file before looking at --force."""
    from edge_runtime.__main__ import main as device_main

    with serve(make_config(tmp_path)) as s:
        key = s.coord.create_enrollment_key()
        (tmp_path / "dev").mkdir()
        (tmp_path / "dev" / IDENTITY_FILE).write_text("{half a file")
        args = ["enroll", "--data-dir", str(tmp_path / "dev"), "--coordinator", s.url, "--enrollment-key", key,
                "--public-key", s.coord.public_key_hex]
        assert device_main(args) == 2 and "enroll again with --force" in capsys.readouterr().err
        assert device_main([*args, "--force"]) == 0
        assert load_identity(tmp_path / "dev").coordinator == s.url


def test_a_refused_enrollment_leaves_no_empty_data_dir(tmp_path):
    """A wrong enrollment key left the data directory it had made, empty."""
    from edge_runtime.client import RejectedError

    with serve(make_config(tmp_path)) as s:
        cfg = EdgeConfig(data_dir=str(tmp_path / "dev"), coordinator=s.url, public_key=s.coord.public_key_hex)
        with pytest.raises(RejectedError):
            agent.enroll(cfg, "fk-not-a-key")
        assert not (tmp_path / "dev").exists()
        (tmp_path / "mine").mkdir()                    # one the user made stays
        with pytest.raises(RejectedError):
            agent.enroll(cfg.with_overrides({"data_dir": str(tmp_path / "mine")}), "fk-not-a-key")
        assert (tmp_path / "mine").is_dir()


def test_an_enrollment_whose_answers_were_lost_gets_its_device_on_a_retry(tmp_path):
    """The coordinator made the device and its answer was lost: `enroll` said "cannot connect",
    a second `enroll` made a second device, and with a single-use key none.
    The device's own retries, and a later `enroll`, now ask for the same device."""
    import json

    import requests

    from edge_runtime.client import TransientError
    from edge_runtime.paths import ENROLL_REQUEST_FILE
    from protocol import wire

    class LosesAnswers(requests.Session):
        def __init__(self, lose: int, how: type[BaseException] = requests.ConnectionError, old: bool = False) -> None:
            super().__init__()
            self.lose, self.how, self.old = lose, how, old

        def send(self, request, **kw):
            resp = super().send(request, **kw)   # the coordinator has answered: the device exists
            if request.path_url == wire.PATH_SIGNING_KEY and self.old:   # a coordinator from before
                body = json.loads(resp.raw.read())
                resp.close()
                resp._content = json.dumps({k: v for k, v in body.items() if k != "enroll_request_ids"}).encode()
            if request.path_url == wire.PATH_ENROLL and self.lose > 0:
                self.lose -= 1
                resp.close()
                raise self.how("the answer was lost on the way")
            return resp

    with serve(make_config(tmp_path)) as s:
        key = s.coord.create_enrollment_key(uses=1)
        cfg = EdgeConfig(data_dir=str(tmp_path / "dev"), coordinator=s.url, public_key=s.coord.public_key_hex)
        ident = agent.enroll(cfg, key, session=LosesAnswers(1))   # retried within the command
        assert s.coord.status()["devices"] == 1 and not (tmp_path / "dev" / ENROLL_REQUEST_FILE).exists()

        key = s.coord.create_enrollment_key(uses=1)
        cfg = cfg.with_overrides({"data_dir": str(tmp_path / "dev2")})
        with pytest.raises(TransientError, match="enrolling again is safe"):   # the network's: exit 1, not 2
            agent.enroll(cfg, key, session=LosesAnswers(agent.ENROLL_ATTEMPTS))
        assert s.coord.status()["devices"] == 2   # it was made; its answers never arrived
        again = agent.enroll(cfg, key)            # a second `enroll`: the same device, no second use of the key
        assert s.coord.status()["devices"] == 2 and again.device_id != ident.device_id
        assert requests.post(s.url + wire.PATH_CHECKIN, json=wire.CheckinRequest(eligible=True).to_dict(), timeout=5,
                             headers=wire.device_headers(again.device_id, again.token)).status_code == 200

        # Ctrl-C after the coordinator made the device keeps the request id (it was deleted)
        key = s.coord.create_enrollment_key(uses=1)
        cfg = cfg.with_overrides({"data_dir": str(tmp_path / "dev3")})
        with pytest.raises(KeyboardInterrupt):
            agent.enroll(cfg, key, session=LosesAnswers(1, KeyboardInterrupt))
        assert (tmp_path / "dev3" / ENROLL_REQUEST_FILE).exists() and s.coord.status()["devices"] == 3
        agent.enroll(cfg, key)
        assert s.coord.status()["devices"] == 3

        # A coordinator from before takes no request id: one try, for each try may make a device
        key = s.coord.create_enrollment_key(uses=5)
        cfg = cfg.with_overrides({"data_dir": str(tmp_path / "dev4")})
        with pytest.raises(TransientError) as e:
            agent.enroll(cfg, key, session=LosesAnswers(1, old=True))
        assert "enrolling again is safe" not in str(e.value) and s.coord.status()["devices"] == 4
        assert not (tmp_path / "dev4").exists()


def test_enrolling_again_under_a_running_device_loop_is_refused(tmp_path):
    """`enroll --force` beside a running `run` wrote a new identity and used a use of the key, while
    the loop went on checking in, training and uploading as the old device (its identity is read
    at start): the coordinator then held two devices for one data directory, the new one unused
    until a restart and the old one enrolled for good. It is refused while a loop runs."""
    with serve(make_config(tmp_path)) as s:
        key = s.coord.create_enrollment_key(uses=2)
        cfg = EdgeConfig(data_dir=str(tmp_path / "dev"), coordinator=s.url, public_key=s.coord.public_key_hex)
        first = agent.enroll(cfg, key)
        with agent.run_lock(tmp_path / "dev"), pytest.raises(agent.AgentError, match="another `run` is using"):
            agent.enroll(cfg, key, force=True)
        assert load_identity(tmp_path / "dev") == first and s.coord.status()["devices"] == 1
        assert agent.enroll(cfg, key, force=True).device_id != first.device_id   # once the loop stops


def test_a_pasted_key_with_spaces_around_it_enrolls(tmp_path):
    """A key pasted with a space or a newline around it (a terminal selection) was refused as
    "enrollment key unknown, revoked, expired or used up", and each try counted against the
    address's budget of wrong keys. Keys hold no whitespace: it is dropped."""
    with serve(make_config(tmp_path)) as s:
        key = s.coord.create_enrollment_key(uses=1)
        cfg = EdgeConfig(data_dir=str(tmp_path / "dev"), coordinator=s.url, public_key=s.coord.public_key_hex)
        assert agent.enroll(cfg, f" {key}\n").device_id
