"""tool_dispatcher: a Dispatch built from plain Python functions."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable, Mapping
from typing import Any

from ._calls import call_off_loop
from ._types import Dispatch, DispatchResult, ToolCall


def tool_dispatcher(tools: Mapping[str, Callable[..., Any]]) -> Dispatch:
    """A dispatch that calls `tools[call.name](**call.args)`.

    Functions may be sync or async; sync ones run in a worker thread so a
    slow tool does not hold up the others. A returned string is sent as is,
    a DispatchResult as given, anything else as JSON. An exception becomes a
    tool error carrying its message, which the code sees as an exception; so
    does a call to a tool that is not in `tools`.
    """
    table = dict(tools)
    for name, fn in table.items():
        if not isinstance(name, str):
            raise TypeError(f"tool names must be strings, got {name!r}")
        if not callable(fn):
            raise TypeError(f"tool {name!r} is not callable")

    async def dispatch(call: ToolCall) -> DispatchResult:
        fn = table.get(call.name)
        if fn is None:
            known = ", ".join(sorted(table)) or "none"
            return DispatchResult(
                content=f"unknown tool {call.name!r}; known tools: {known}", is_error=True
            )
        try:
            value = await call_off_loop(fn, **call.args)
        except Exception as exc:
            return DispatchResult(content=str(exc) or type(exc).__name__, is_error=True)
        return _reply(call.name, value)

    return dispatch


Tools = Mapping[str, Callable[..., Any]]
"""Tools by name, accepted wherever a dispatch is: runners wrap it with tool_dispatcher."""

ASYNC_DISPATCH = "an async function taking one ToolCall and returning a DispatchResult"
"""What GrpcRunner and HTTPRunner accept as dispatch, besides a mapping of tools."""


def as_dispatch(dispatch: object, *, expected: str = ASYNC_DISPATCH) -> Callable[[ToolCall], Any]:
    """`dispatch` checked before anything is sent; a mapping of tools becomes a tool_dispatcher.

    TypeError, naming what was passed and `expected`, when it is neither a
    mapping of tools nor a callable that accepts one ToolCall positionally.
    """
    if isinstance(dispatch, Mapping):
        return tool_dispatcher(dispatch)
    wanted = f"dispatch must be {expected}, or a dict of tools (name -> function)"
    if not callable(dispatch):
        raise TypeError(f"{wanted}; got {_describe(dispatch)}")
    try:
        signature = inspect.signature(dispatch)
    except (TypeError, ValueError):
        return dispatch  # nothing to check (some builtins); calls will tell
    try:
        signature.bind(None)
    except TypeError:
        raise TypeError(
            f"{wanted}; got {_describe(dispatch)}, whose signature {signature} "
            "does not accept a single ToolCall"
        ) from None
    return dispatch


def _describe(value: object) -> str:
    name = getattr(value, "__qualname__", None)
    if isinstance(name, str) and callable(value):
        return name
    if callable(value):
        return f"a {type(value).__name__} object"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _reply(name: str, value: Any) -> DispatchResult:
    if isinstance(value, DispatchResult):
        return value
    if isinstance(value, str):
        return DispatchResult(content=value)
    try:
        return DispatchResult(content=json.dumps(value, ensure_ascii=False))
    except (TypeError, ValueError) as exc:
        return DispatchResult(
            content=f"tool {name!r} returned a value that is not JSON: {exc}", is_error=True
        )


async def dispatch_safely(dispatch: Dispatch, call: ToolCall) -> DispatchResult:
    """The dispatch's answer; an exception becomes a tool error carrying its message.

    Every runner calls the application's dispatch through this one function.
    """
    try:
        pending = dispatch(call)
        if not inspect.isawaitable(pending):
            return DispatchResult(
                content=f"dispatch returned {type(pending).__name__}, not an awaitable: "
                "this runner needs an async dispatch (use SyncGrpcRunner for plain functions)",
                is_error=True,
            )
        reply = await pending
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # we are being cancelled: the execution is over
        return DispatchResult(content="the tool was cancelled", is_error=True)
    except Exception as exc:
        return DispatchResult(content=str(exc) or type(exc).__name__, is_error=True)
    if not isinstance(reply, DispatchResult):
        return DispatchResult(
            content=f"dispatch returned {type(reply).__name__}, not DispatchResult", is_error=True
        )
    return reply
