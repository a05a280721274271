"""What an agent exchanges with its LLM provider: messages, tool definitions, responses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol


@dataclass(frozen=True, kw_only=True)
class ToolDefinition:
    """A tool as the LLM sees it."""

    name: str
    description: str
    parameters: dict[str, Any]
    """JSON Schema of the arguments object."""


@dataclass(frozen=True, kw_only=True)
class ToolCallPart:
    """A tool call the LLM asked for."""

    name: str
    args: dict[str, Any] | str = field(default_factory=dict)
    """Parsed arguments, or the raw text when the model produced invalid JSON."""
    id: str = ""
    """The provider's call id; empty lets the agent number the call."""


@dataclass(frozen=True, kw_only=True)
class SystemMessage:
    content: str
    role: Literal["system"] = "system"


@dataclass(frozen=True, kw_only=True)
class UserMessage:
    content: str
    role: Literal["user"] = "user"


@dataclass(frozen=True, kw_only=True)
class AssistantMessage:
    """What the LLM answered: text, tool calls, or both."""

    content: str = ""
    tool_calls: tuple[ToolCallPart, ...] = ()
    role: Literal["assistant"] = "assistant"


@dataclass(frozen=True, kw_only=True)
class ToolMessage:
    """The answer to one tool call."""

    call_id: str
    name: str
    content: str
    is_error: bool = False
    role: Literal["tool"] = "tool"


Message = SystemMessage | UserMessage | AssistantMessage | ToolMessage


@dataclass(frozen=True, kw_only=True)
class Usage:
    """Tokens and requests spent; adds up across turns and sub-agents."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            requests=self.requests + other.requests,
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
        )


@dataclass(frozen=True, kw_only=True)
class ModelResponse:
    """One LLM answer: final text when there are no tool calls."""

    text: str = ""
    tool_calls: Sequence[ToolCallPart] = ()
    usage: Usage = field(default_factory=lambda: Usage(requests=1))
    model: str = ""
    finish_reason: str = ""


class Provider(Protocol):
    """An LLM: send the conversation and the tools, get text and/or tool calls back."""

    async def request(
        self, messages: Sequence[Message], tools: Sequence[ToolDefinition]
    ) -> ModelResponse: ...
