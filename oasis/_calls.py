"""Call a user-supplied function that may be sync or async, without blocking the loop."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable
from typing import Any


async def call_off_loop(function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """`function(*args, **kwargs)`, awaited; a sync function runs in a worker thread.

    Sync callables (a database query, an HTTP request, a file read) would stall
    every other execution's tool calls if run on the event loop. A sync
    callable that returns an awaitable (a lambda around a coroutine) is awaited
    too, so either style works wherever a tool or dispatch is accepted.
    """
    if inspect.iscoroutinefunction(function):
        return await function(*args, **kwargs)
    result = await asyncio.to_thread(functools.partial(function, *args, **kwargs))
    if inspect.isawaitable(result):
        result = await result
    return result
