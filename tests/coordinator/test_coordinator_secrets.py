"""Secrets handed to users must survive a command line."""

from coordinator.keys import new_secret


def test_secrets_never_look_like_a_flag():
    secrets = [new_secret() for _ in range(2000)]
    assert not any(s.startswith("-") for s in secrets)
    assert len(set(secrets)) == len(secrets) and all(len(s) >= 40 for s in secrets)
