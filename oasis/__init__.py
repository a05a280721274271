"""Oasis: let LLM agents run code that calls their tools, in a sandbox.

Runners live in `oasis.code` (GrpcRunner, HTTPRunner); the agent layer in
`oasis.agent`. This module re-exports the names applications use most.
"""

from ._dispatch import tool_dispatcher
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
from .agent import (
    AgentDefinitionError,
    AgentError,
    AgentResult,
    AgentTask,
    Attachment,
    LLMAgent,
    Network,
    Provider,
    ProviderError,
    Step,
    Tool,
    Usage,
    tool,
)
from .errors import (
    AlreadyExecuted,
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
    "AgentDefinitionError",
    "AgentError",
    "AgentResult",
    "AgentTask",
    "AlreadyExecuted",
    "Attachment",
    "CapacityExhausted",
    "CodeFile",
    "CodeRequest",
    "CodeResult",
    "CodeRunner",
    "Dispatch",
    "DispatchResult",
    "FailedPrecondition",
    "InvalidRequest",
    "LLMAgent",
    "LogChunk",
    "Network",
    "OasisError",
    "Provider",
    "ProviderError",
    "SandboxError",
    "SandboxUnavailable",
    "Status",
    "Step",
    "Tool",
    "ToolCall",
    "ToolError",
    "Unauthenticated",
    "Usage",
    "tool",
    "tool_dispatcher",
]
