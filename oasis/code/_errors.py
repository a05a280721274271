"""The one place where gRPC failures become oasis exceptions."""

from __future__ import annotations

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

_BY_CODE: dict[grpc.StatusCode, type[SandboxError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.RESOURCE_EXHAUSTED: CapacityExhausted,
    grpc.StatusCode.UNAVAILABLE: SandboxUnavailable,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: Unauthenticated,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExecuted,
}


def from_grpc(exc: grpc.aio.AioRpcError) -> SandboxError:
    """The library error for a failed RPC, keeping its status code name and message.

    Raise the result `from exc` so the original status and debug string stay
    reachable through `__cause__`.
    """
    return from_status(exc.code(), exc.details())


def from_status(status: grpc.StatusCode, details: str | None) -> SandboxError:
    """The library error for an RPC status (as `from_grpc`, where no exception was raised)."""
    message = str(details or "") or f"the RPC failed with status {status.name}"
    return _BY_CODE.get(status, SandboxError)(message, code=status.name)
