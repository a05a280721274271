"""A provider that replays a fixed list of responses: for tests and the offline demo."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from .._errors import ScriptExhausted
from .._messages import Message, ModelResponse, ToolCallPart, ToolDefinition

ScriptFunction = Callable[
    [Sequence[Message], Sequence[ToolDefinition]],
    ModelResponse | str | Awaitable[ModelResponse | str],
]
ScriptItem = ModelResponse | str | ScriptFunction
"""A response; a string (a final text answer); or a function of the conversation returning one."""


@dataclass(frozen=True, kw_only=True)
class Request:
    """What the agent sent: recorded so tests can check what the LLM saw."""

    messages: list[Message]
    tools: list[ToolDefinition]


class ScriptedProvider:
    """Answers each request with the next item of `script`; raises ScriptExhausted after the last.

    An item can be a function of the conversation (a "function model"), so a
    scripted answer can quote what a tool really returned.
    """

    def __init__(self, script: Iterable[ScriptItem], *, name: str = "scripted") -> None:
        self.script = list(script)
        self.name = name
        self.requests: list[Request] = []

    @property
    def remaining(self) -> int:
        return len(self.script) - len(self.requests)

    async def request(
        self, messages: Sequence[Message], tools: Sequence[ToolDefinition]
    ) -> ModelResponse:
        index = len(self.requests)
        self.requests.append(Request(messages=list(messages), tools=list(tools)))
        if index >= len(self.script):
            raise ScriptExhausted(
                f"{self.name}: the script has {len(self.script)} response(s) and the agent asked "
                f"for response {index + 1}; add responses or lower max_iterations"
            )
        item = self.script[index]
        if callable(item) and not isinstance(item, ModelResponse):
            produced = item(messages, tools)
            item = await produced if inspect.isawaitable(produced) else produced
        if isinstance(item, str):
            return ModelResponse(text=item, model=self.name)
        return item


def tool_calls(
    *calls: tuple[str, dict[str, object]] | ToolCallPart, text: str = ""
) -> ModelResponse:
    """A response asking for tool calls: `tool_calls(("add", {"a": 1}), ("mul", {"b": 2}))`."""
    parts = [
        c if isinstance(c, ToolCallPart) else ToolCallPart(name=c[0], args=dict(c[1]))
        for c in calls
    ]
    return ModelResponse(text=text, tool_calls=parts, model="scripted")
