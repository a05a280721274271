"""Oasis: let LLM agents run code that calls their tools, in a sandbox.

Runners live in `oasis.code` (GrpcRunner, HTTPRunner); the agent layer in
`oasis.agent`. This module re-exports the names applications use most.
"""

from ._types import (
    CodeFile,
    CodeRequest,
    CodeResult,
    CodeRunner,
    Dispatch,
    DispatchResult,
    LogChunk,
    Status,
    ToolCall,
)
from .errors import (
    CapacityExhausted,
    FailedPrecondition,
    InvalidRequest,
    OasisError,
    SandboxError,
    SandboxUnavailable,
    ToolError,
    Unauthenticated,
)

__all__ = [
    "CapacityExhausted",
    "CodeFile",
    "CodeRequest",
    "CodeResult",
    "CodeRunner",
    "Dispatch",
    "DispatchResult",
    "FailedPrecondition",
    "InvalidRequest",
    "LogChunk",
    "OasisError",
    "SandboxError",
    "SandboxUnavailable",
    "Status",
    "ToolCall",
    "ToolError",
    "Unauthenticated",
]
