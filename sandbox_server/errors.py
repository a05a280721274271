"""Errors the service reports to clients as protocol-level failures.

Failures of the user's code are never raised: they travel in-band as results.
Only problems with the request itself (or with capacity) become a
`RequestError`, which the gRPC and HTTP adapters map to their status codes.
"""

from __future__ import annotations

import enum


class Code(enum.Enum):
    """Why a request is refused, in both transports: the member's name is the gRPC
    status code (also the `code` field of the facade's error bodies), its first
    value the facade's HTTP status. Adding a code is one line here.

    The second value says what the code means; it also keeps the values apart,
    so that two codes with the same HTTP status do not become one member.
    """

    INVALID_ARGUMENT = 400, "the request is malformed or over a limit"
    FAILED_PRECONDITION = 409, "the server's state refuses it now (the session is busy)"
    ALREADY_EXISTS = 409, "the execution id was used before"
    RESOURCE_EXHAUSTED = 503, "at capacity (executions, sessions); retry later"
    UNAVAILABLE = 503, "the server is shutting down"
    UNAUTHENTICATED = 401, "the bearer token is missing or wrong"
    PERMISSION_DENIED = 403, "the caller may not use this endpoint"
    NOT_FOUND = 404, "there is no such endpoint"
    UNIMPLEMENTED = 405, "the endpoint does not take this method"

    def __init__(self, http_status: int, meaning: str) -> None:
        self.http_status = http_status
        self.meaning = meaning


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
