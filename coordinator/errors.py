"""The coordinator's one root error, `CoordinatorError`, and the API error every request maps to.

`ApiError` carries an HTTP status and a wire error code; `ConfigError` (coordinator.config) and
`UpdateRejected` (coordinator.validation) derive from the same root, with `ValueError` as a second
base because callers catch that too."""

from __future__ import annotations

from typing import Any

from protocol import wire


class CoordinatorError(Exception):
    """Root of the coordinator's errors."""


class DatabaseUnavailable(CoordinatorError):
    """The configured database cannot be opened: a URL that is not one, or a server or file that
    cannot be reached. Said in one line with the password left out."""


class DatabaseUrlError(DatabaseUnavailable):
    """database_url is not a URL of a database this coordinator runs on: the operator's input, so
    the command line exits 2 as for any bad setting (a server out of reach exits 1)."""


class ApiError(CoordinatorError):
    """Raised anywhere in request handling; rendered as a JSON wire.ErrorBody."""

    def __init__(self, status: int, code: str, message: str, *, retry_after: float | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.details = details or {}

    def body(self) -> dict[str, Any]:
        return wire.ErrorBody(self.code, self.message, self.retry_after, self.details).to_dict()


def bad_request(message: str) -> ApiError:
    return ApiError(400, wire.E_BAD_REQUEST, message)


def not_found(message: str) -> ApiError:
    return ApiError(404, wire.E_NOT_FOUND, message)
