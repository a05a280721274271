"""The one place where transport failures (gRPC statuses, HTTP answers) become oasis exceptions.

Both runners speak one vocabulary: `SandboxError.code` is a gRPC status name.
An HTTP error body names it in its `code` field; where that is missing (a
proxy's answer, an older server) it follows from the HTTP status.
"""

from __future__ import annotations

import json

import grpc

from ..errors import (
    AlreadyExecuted,
    CapacityExhausted,
    FailedPrecondition,
    InvalidRequest,
    SandboxError,
    SandboxUnavailable,
    Unauthenticated,
)

_BY_NAME: dict[str, type[SandboxError]] = {
    "INVALID_ARGUMENT": InvalidRequest,
    # What an HTTP sandbox says of a path or method it does not serve.
    "NOT_FOUND": InvalidRequest,
    "UNIMPLEMENTED": InvalidRequest,
    "RESOURCE_EXHAUSTED": CapacityExhausted,
    "UNAVAILABLE": SandboxUnavailable,
    "UNAUTHENTICATED": Unauthenticated,
    "PERMISSION_DENIED": Unauthenticated,
    "FAILED_PRECONDITION": FailedPrecondition,
    "ALREADY_EXISTS": AlreadyExecuted,
}
_KNOWN = frozenset(s.name for s in grpc.StatusCode if s is not grpc.StatusCode.OK)

_BY_HTTP_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    409: "FAILED_PRECONDITION",
    413: "INVALID_ARGUMENT",
    415: "INVALID_ARGUMENT",
    422: "INVALID_ARGUMENT",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    # The sandbox answers 503 when at capacity; one shutting down names UNAVAILABLE.
    503: "RESOURCE_EXHAUSTED",
    504: "UNAVAILABLE",
}
"""The name for an HTTP error whose body names none."""


def from_grpc(exc: grpc.aio.AioRpcError) -> SandboxError:
    """The library error for a failed RPC, keeping its status code name and message.

    Raise the result `from exc` so the original status and debug string stay
    reachable through `__cause__`.
    """
    return from_status(exc.code(), exc.details())


def from_status(status: grpc.StatusCode, details: str | None) -> SandboxError:
    """The library error for an RPC status (as `from_grpc`, where no exception was raised)."""
    message = str(details or "") or f"the RPC failed with status {status.name}"
    return _BY_NAME.get(status.name, SandboxError)(message, code=status.name)


def from_http(status: int, body: bytes) -> SandboxError:
    """The library error for a non-2xx HTTP answer: `{"error": ..., "code": ...}` or any body."""
    message, name = "", ""
    try:
        answer = json.loads(body)
    except ValueError:
        message = body[:1000].decode(errors="replace").strip()
    else:
        if isinstance(answer, dict):
            message = answer["error"] if isinstance(answer.get("error"), str) else ""
            name = answer["code"] if isinstance(answer.get("code"), str) else ""
    if name not in _KNOWN:
        name = _BY_HTTP_STATUS.get(status, "UNKNOWN")
    message = message or f"the sandbox answered HTTP {status}"
    return _BY_NAME.get(name, SandboxError)(message, code=name, http_status=status)
