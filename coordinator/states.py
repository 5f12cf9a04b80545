"""The coordinator's statuses and operator actions, defined once.

`StrEnum`s: a member *is* its string, so database rows, JSON answers and metric labels are the
same plain strings as before, and a value read back from the database compares equal to the
member. The API, the OpenAPI document and the CLI all take their lists from here.
"""

from __future__ import annotations

from enum import StrEnum


class VersionStatus(StrEnum):
    STABLE = "stable"          # what every non-canary device uses; exactly one once imported
    CANDIDATE = "candidate"    # a round's result, served to the canary cohort until decided
    REJECTED = "rejected"      # the canary (or an operator, or a newer candidate) turned it down
    RETIRED = "retired"        # was stable once; rollback can make it stable again


class RoundStatus(StrEnum):
    OPEN = "open"              # selecting devices and taking updates
    DONE = "done"              # aggregated into a candidate
    FAILED = "failed"          # too few updates, a non-finite aggregate, or secure aggregation gave up


class SecAggPhase(StrEnum):
    """Where a secure round is (`coordinator.secagg`); the round's own status stays OPEN until it
    is summed and aggregated (DONE) or gives up (FAILED)."""
    KEYS = "keys"              # devices post their public keys
    SHARES = "shares"          # devices post their seeds' shares for each other
    MASKED = "masked"          # devices post their masked updates
    UNMASK = "unmask"          # survivors reveal the shares that remove the masks
    SUMMING = "summing"        # the coordinator recovers the masks and sums
    SUMMED = "summed"          # the sum is ready for aggregation
    FAILED = "failed"          # too few devices at some phase, or the round failed otherwise


class VersionAction(StrEnum):
    """What an operator can do to a version (POST /v1/admin/versions/<id>/<action>, CLI commands);
    the canary's automatic decisions are PROMOTE and REJECT too."""

    PROMOTE = "promote"
    REJECT = "reject"
    PIN = "pin"
    UNPIN = "unpin"
    ROLLBACK = "rollback"

    @property
    def help(self) -> str:
        return _ACTION_HELP[self]


_ACTION_HELP = {
    VersionAction.PROMOTE: "promote a candidate to stable",
    VersionAction.REJECT: "reject a candidate",
    VersionAction.PIN: "make a version stable and turn automatic promotion off",
    VersionAction.UNPIN: "turn automatic promotion back on",
    VersionAction.ROLLBACK: "make a retired version stable again",
}
VERSION_ACTIONS = tuple(a.value for a in VersionAction)
