"""Errors the service reports to clients as protocol-level failures.

Failures of the user's code are never raised: they travel in-band as results.
Only problems with the request itself (or with capacity) become a
`RequestError`, which the gRPC and HTTP adapters map to their status codes.
"""

from __future__ import annotations

import enum


class Code(enum.Enum):
    INVALID_ARGUMENT = "invalid_argument"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    FAILED_PRECONDITION = "failed_precondition"
    UNAVAILABLE = "unavailable"
    ALREADY_EXISTS = "already_exists"


class RequestError(Exception):
    """The request cannot be served as sent; the message names what was wrong."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class StartError(Exception):
    """The server cannot start here; the message names the setting or what to change.

    The root of every start-up failure that `oasis-sandbox serve` reports in
    one line instead of a traceback.
    """


class InUse(StartError, OSError):
    """A port or workspace root that another process holds."""


def invalid(message: str) -> RequestError:
    return RequestError(Code.INVALID_ARGUMENT, message)
