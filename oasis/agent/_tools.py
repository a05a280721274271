"""Tools: the `Tool` protocol, and the `@tool` decorator for typed Python functions."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import re
from collections.abc import Callable
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, overload, runtime_checkable

from .._calls import call_off_loop
from ._errors import AgentDefinitionError
from ._messages import ToolDefinition
from ._schema import ToolArguments, parse_docstring

P = ParamSpec("P")
R = TypeVar("R")

TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@runtime_checkable
class Tool(Protocol):
    """Anything the agent can call: a name, a description, a JSON Schema, and `call`.

    `call` returns any JSON-serializable value (a string is passed as is). Raising
    makes the call a tool error that the LLM sees; it never ends the run.
    """

    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...

    @property
    def parameters(self) -> dict[str, Any]: ...

    async def call(self, args: dict[str, Any]) -> Any: ...


class FunctionTool(Generic[P, R]):
    """A typed Python function (sync or async) as a tool; still callable as the function."""

    def __init__(
        self, function: Callable[P, R], *, name: str | None = None, description: str | None = None
    ) -> None:
        functools.update_wrapper(self, function)
        self.function = function
        self.name = name or function.__name__
        check_tool_name(self.name)
        summary, _ = parse_docstring(inspect.getdoc(function))
        self.description = description or summary
        if not self.description:
            raise AgentDefinitionError(
                f"tool {self.name!r} has no description: give the function a docstring "
                "or pass @tool(description=...); the LLM reads it to decide when to call the tool"
            )
        self.arguments = ToolArguments.of(function, self.name)
        self.parameters = self.arguments.schema

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.function(*args, **kwargs)

    def __repr__(self) -> str:
        return f"FunctionTool({self.name!r})"

    async def call(self, args: dict[str, Any]) -> Any:
        """Validate the arguments against the signature, then run the function.

        Sync functions run in a worker thread. Arguments that do not fit raise
        ToolError, naming each one, and the function is not called.
        """
        return await call_off_loop(self.function, **self.arguments.validate(args))


@overload
def tool(function: Callable[P, R], /) -> FunctionTool[P, R]: ...


@overload
def tool(
    *, name: str | None = None, description: str | None = None
) -> Callable[[Callable[P, R]], FunctionTool[P, R]]: ...


def tool(
    function: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
) -> FunctionTool[P, R] | Callable[[Callable[P, R]], FunctionTool[P, R]]:
    """Turn a typed function into a tool: `@tool` or `@tool(name=..., description=...)`.

    The parameters' JSON Schema and the check of each call's arguments come from
    the type hints and defaults, through pydantic (any type it validates: str,
    int, list, dict, Literal, Enum, Optional, unions, models, dataclasses,
    TypedDicts); the description from the docstring, with per-parameter text
    from its `Args:` section or `Annotated[T, "text"]`.
    """
    if function is not None:
        return FunctionTool(function, name=name, description=description)

    def decorate(fn: Callable[P, R]) -> FunctionTool[P, R]:
        return FunctionTool(fn, name=name, description=description)

    return decorate


def check_tool_name(name: str) -> None:
    if not TOOL_NAME.fullmatch(name):
        raise AgentDefinitionError(
            f"tool name {name!r} is invalid: use 1 to 64 letters, digits, '_' or '-'"
        )


def definition(t: Tool) -> ToolDefinition:
    return ToolDefinition(name=t.name, description=t.description, parameters=t.parameters)


def truncate(text: str, limit: int) -> str:
    """Keep the head of `text`, saying how much was cut."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"... [{len(text) - limit} more characters]"


def tail(text: str, limit: int) -> str:
    """Keep the end of `text` (where errors are), saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"[{len(text) - limit} earlier characters cut] ..." + text[-limit:]


def result_text(value: Any) -> str:
    """A tool's return value as the text the LLM (or the code) receives: JSON unless a string."""
    if isinstance(value, str):
        return value
    return json.dumps(value, default=_json_default, ensure_ascii=False)


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
