"""LLM agents whose tools are reachable both directly and from sandboxed code.

An `LLMAgent` asks its `Provider` what to do, runs every tool call of a
response concurrently, and feeds the answers back until the LLM gives a final
answer. With a `code_runner` it also gets the built-in `execute_code` tool
(code that calls the agent's tools), with `plan_execution=True` the built-in
`execute_plan` (parallel tool calls in one step). A `Network` routes between
agents, each seen as a tool `agent_<name>`.
"""

from ._agent import LLMAgent, Network
from ._builtins import EXECUTE_CODE, EXECUTE_PLAN, MAX_PLAN_STEPS
from ._errors import AgentDefinitionError, AgentError, ProviderError, ScriptExhausted
from ._messages import (
    AssistantMessage,
    Message,
    ModelResponse,
    Provider,
    SystemMessage,
    ToolCallPart,
    ToolDefinition,
    ToolMessage,
    Usage,
    UserMessage,
)
from ._results import (
    Agent,
    AgentEvent,
    AgentResult,
    AgentTask,
    Attachment,
    EventHandler,
    ModelResponded,
    Step,
    StepFinished,
    StepStarted,
)
from ._tools import FunctionTool, Tool, tool

__all__ = [
    "EXECUTE_CODE",
    "EXECUTE_PLAN",
    "MAX_PLAN_STEPS",
    "Agent",
    "AgentDefinitionError",
    "AgentError",
    "AgentEvent",
    "AgentResult",
    "AgentTask",
    "AssistantMessage",
    "Attachment",
    "EventHandler",
    "FunctionTool",
    "LLMAgent",
    "Message",
    "ModelResponded",
    "ModelResponse",
    "Network",
    "Provider",
    "ProviderError",
    "ScriptExhausted",
    "Step",
    "StepFinished",
    "StepStarted",
    "SystemMessage",
    "Tool",
    "ToolCallPart",
    "ToolDefinition",
    "ToolMessage",
    "Usage",
    "UserMessage",
    "tool",
]
