"""tool_dispatcher: a Dispatch built from plain Python functions."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable, Mapping
from typing import Any

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
            if inspect.iscoroutinefunction(fn):
                value = await fn(**call.args)
            else:
                value = await asyncio.to_thread(fn, **call.args)
                if inspect.isawaitable(value):
                    value = await value
        except Exception as exc:
            return DispatchResult(content=str(exc) or type(exc).__name__, is_error=True)
        return _reply(call.name, value)

    return dispatch


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
        reply = await dispatch(call)
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
