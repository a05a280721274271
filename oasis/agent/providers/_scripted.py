"""Scripted test doubles: a provider and a code runner that replay fixed answers.

For tests and the offline demo. Script functions are test code and run on the
event loop (not in a thread as tools do): they are quick, and they may touch
loop-bound objects, such as `dispatch` or an asyncio.Event.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from ..._types import CodeFile, CodeRequest, CodeResult, Dispatch, Status
from .._errors import ScriptExhausted
from .._messages import Message, ModelResponse, ToolCallPart, ToolDefinition

ScriptFunction = Callable[
    [Sequence[Message], Sequence[ToolDefinition]],
    ModelResponse | str | Awaitable[ModelResponse | str],
]
ScriptItem = ModelResponse | str | ScriptFunction
"""A response; a string (a final text answer); or a function of the conversation returning one."""

CodeScriptFunction = Callable[[CodeRequest, Dispatch], CodeResult | Awaitable[CodeResult]]
CodeScriptItem = CodeResult | CodeScriptFunction
"""A result; or a function of the request and dispatch (it may call tools) returning one."""


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
        if isinstance(item, ModelResponse):
            return item
        answer = item if isinstance(item, str) else item(messages, tools)
        if inspect.isawaitable(answer):
            answer = await answer
        return ModelResponse(text=answer, model=self.name) if isinstance(answer, str) else answer


class ScriptedRunner:
    """A CodeRunner that answers each run() with the next item of `script`, running nothing.

    An item can be a function of the request and dispatch, so scripted "code"
    can call the agent's tools. `requests` records every request;
    `delete_workspace` forgets the sessions requests used, like a server would.
    Running out of script raises ScriptExhausted (the agent shows it to the LLM
    as the execution's error).
    """

    def __init__(self, script: Iterable[CodeScriptItem] = (), *, name: str = "scripted") -> None:
        self.script = list(script)
        self.name = name
        self.requests: list[CodeRequest] = []
        self.deleted: list[str] = []
        """Session ids passed to delete_workspace, in order."""
        self._workspaces: set[str] = set()

    @property
    def remaining(self) -> int:
        return len(self.script) - len(self.requests)

    async def run(self, request: CodeRequest, dispatch: Dispatch) -> CodeResult:
        index = len(self.requests)
        self.requests.append(request)
        if request.session_id:
            self._workspaces.add(request.session_id)
        if index >= len(self.script):
            raise ScriptExhausted(
                f"{self.name} runner: the script has {len(self.script)} result(s) and the agent "
                f"asked for run {index + 1}"
            )
        item = self.script[index]
        result = item if isinstance(item, CodeResult) else item(request, dispatch)
        return await result if inspect.isawaitable(result) else result

    async def delete_workspace(self, session_id: str) -> bool:
        self.deleted.append(session_id)
        if session_id not in self._workspaces:
            return False
        self._workspaces.discard(session_id)
        return True


def tool_calls(
    *calls: tuple[str, dict[str, object]] | ToolCallPart, text: str = ""
) -> ModelResponse:
    """A response asking for tool calls: `tool_calls(("add", {"a": 1}), ("mul", {"b": 2}))`."""
    parts = [
        c if isinstance(c, ToolCallPart) else ToolCallPart(name=c[0], args=dict(c[1]))
        for c in calls
    ]
    return ModelResponse(text=text, tool_calls=parts, model="scripted")


def code_result(
    output: object = None,
    *,
    logs: str = "",
    error: str = "",
    status: Status = Status.OK,
    exit_code: int | None = None,
    files: Sequence[CodeFile] = (),
) -> CodeResult:
    """A CodeResult for ScriptedRunner: `code_result({"total": 3}, logs="hi\\n")`.

    The exit code defaults to 0 for an OK status, else 1.
    """
    if exit_code is None:
        exit_code = 0 if status is Status.OK else 1
    return CodeResult(
        output=output,
        logs=logs,
        exit_code=exit_code,
        error=error,
        files=list(files),
        status=status,
    )
