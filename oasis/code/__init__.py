"""Runners: send code to a sandbox and route its tool calls back to the application.

async with GrpcRunner("127.0.0.1:50051") as runner:
    result = await runner.run(CodeRequest(code=...), tool_dispatcher({...}))
"""

from typing import TYPE_CHECKING, Any

from ._base import RetryAttempt
from ._grpc import GrpcOptions, GrpcRunner
from ._info import SandboxInfo, SandboxLimits, SandboxStateful
from ._sync import SyncDispatch, SyncGrpcRunner
from ._wire import KiB, MiB

__all__ = [
    "GrpcOptions",
    "GrpcRunner",
    "HTTPRunner",
    "KiB",
    "MiB",
    "RetryAttempt",
    "SandboxInfo",
    "SandboxLimits",
    "SandboxStateful",
    "SyncDispatch",
    "SyncGrpcRunner",
]


if TYPE_CHECKING:
    from ._http import HTTPRunner


def __getattr__(name: str) -> Any:
    # HTTPRunner pulls in aiohttp (~0.2 s): load it only for those who use it.
    if name == "HTTPRunner":
        from ._http import HTTPRunner

        return HTTPRunner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
