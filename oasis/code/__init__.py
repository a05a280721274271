"""Runners: send code to a sandbox and route its tool calls back to the application.

async with GrpcRunner("127.0.0.1:50051") as runner:
    result = await runner.run(CodeRequest(code=...), tool_dispatcher({...}))
"""

from ._grpc import GrpcOptions, GrpcRunner
from ._http import HTTPRunner
from ._info import SandboxInfo, SandboxLimits
from ._sync import SyncDispatch, SyncGrpcRunner
from ._wire import KiB, MiB

__all__ = [
    "GrpcOptions",
    "GrpcRunner",
    "HTTPRunner",
    "KiB",
    "MiB",
    "SandboxInfo",
    "SandboxLimits",
    "SyncDispatch",
    "SyncGrpcRunner",
]
