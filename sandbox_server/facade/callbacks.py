"""The tool-callback client: the code's tool calls, POSTed to the request's callback_url.

Every failure (unreachable, slow, oversize, a non-2xx answer) becomes a tool
error for the code, which may handle it; the execution itself goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Coroutine
from typing import Any

import aiohttp

from oasis.code._wire import MiB

from ..errors import RequestError
from ..execution import Execution
from ..model import ToolCallEvent
from .request import OFF_LOOP, load_json

MAX_TOOL_ANSWER = 16 * MiB
"""Largest callback answer read; the code's channel takes lines up to this size."""
CALL_BYTES_PER_EXECUTION = 32 * MiB
"""Tool-call arguments one execution may have in flight to its callback; more wait."""
CALL_BYTES_TOTAL = 256 * MiB
"""Tool-call arguments all executions together may have in flight; more wait."""


class ByteBudget:
    """Bytes that may be in use at once; `acquire` waits until enough are free."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        """The most ever in use at once (for diagnostics and tests)."""
        self._freed = asyncio.Event()

    async def acquire(self, size: int) -> None:
        while self.used + size > self.limit:
            self._freed.clear()
            await self._freed.wait()
        self.used += size
        self.peak = max(self.peak, self.used)

    def release(self, size: int) -> None:
        self.used -= size
        self._freed.set()


class Callbacks:
    """Forwards the code's tool calls to callback_url, concurrently, one task per call.

    The argument bytes in flight are bounded per execution and, through
    `shared`, across the facade: a call over budget waits for earlier calls
    to finish. While it waits the execution's next events wait too, and so
    does the code (its call_tool blocks longer), so waiting calls do not pile
    up in memory either.
    """

    def __init__(
        self,
        client: aiohttp.ClientSession,
        execution: Execution,
        execution_id: str,
        url: str,
        shared: ByteBudget,
    ) -> None:
        self._client = client
        self._execution = execution
        self._execution_id = execution_id
        self._url = url
        self._deadline = asyncio.get_running_loop().time() + execution.timeout
        self._tasks: set[asyncio.Task[None]] = set()
        self.budget = ByteBudget(CALL_BYTES_PER_EXECUTION)
        self._shared = shared

    async def start(self, call: ToolCallEvent) -> None:
        """Forward `call` as soon as its arguments fit both budgets."""
        if not self._url:
            error = f"tool {call.name!r} is unavailable: the request gave no callback_url"
            self._spawn(call, self._answer(call.call_id, "", error))
            return
        body = self._body(call)
        size = len(body)
        limit = min(self.budget.limit, self._shared.limit)
        if size > limit:
            error = f"tool {call.name!r}: the call is {size} bytes, more than the {limit} bytes a callback may take"
            self._spawn(call, self._answer(call.call_id, "", error))
            return
        await self.budget.acquire(size)
        try:
            await self._shared.acquire(size)
        except BaseException:
            self.budget.release(size)
            raise
        task = self._spawn(call, self._forward(call.call_id, call.name, body))
        # A done callback, not a finally: a task cancelled before it ran never enters its body.
        task.add_done_callback(lambda _: self._release(size))

    async def aclose(self) -> None:
        """Abandon calls still in flight (the code that made them has ended), and await them."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, call: ToolCallEvent, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=f"tool-callback {call.call_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _release(self, size: int) -> None:
        self.budget.release(size)
        self._shared.release(size)

    def _body(self, call: ToolCallEvent) -> bytes:
        """The callback's JSON body. args_json is JSON the server wrote itself: it is
        spliced in as is, not parsed and dumped again (a copy per step, for megabytes)."""
        head = json.dumps({"execution_id": self._execution_id, "name": call.name})
        return f'{head[:-1]},"args":{call.args_json}}}'.encode()

    async def _forward(self, call_id: str, name: str, body: bytes) -> None:
        data, error = await self._call(name, body)
        await self._answer(call_id, data, error)

    async def _answer(self, call_id: str, data: str, error: str) -> None:
        # The execution may have ended meanwhile; then nobody waits for this answer.
        with contextlib.suppress(RequestError):
            await self._execution.send_tool_result(call_id, data, error)

    async def _call(self, name: str, body: bytes) -> tuple[str, str]:
        """The (data, error) pair for one call; every failure is a tool error for the code."""
        # Bounded by the execution's own deadline: after it nobody needs the answer.
        budget = max(self._deadline - asyncio.get_running_loop().time(), 0.001)
        try:
            async with asyncio.timeout(budget):
                async with self._client.post(
                    self._url, data=body, headers={"Content-Type": "application/json"}
                ) as response:
                    answer = await _read_capped(response.content, MAX_TOOL_ANSWER)
                    status = response.status
        except TimeoutError:
            return "", f"tool {name!r}: the callback did not answer within {budget:.0f} s"
        except aiohttp.ClientError as exc:
            return (
                "",
                f"tool {name!r}: the callback could not be reached ({exc or type(exc).__name__})",
            )
        except _TooLarge:
            return "", f"tool {name!r}: the callback answer is larger than {MAX_TOOL_ANSWER} bytes"
        if len(answer) > OFF_LOOP:
            return await asyncio.to_thread(_tool_answer, name, status, answer)
        return _tool_answer(name, status, answer)


def _tool_answer(name: str, status: int, body: bytes) -> tuple[str, str]:
    """The (data, error) pair from the callback's HTTP answer."""
    answer = _json_object(body)
    if not 200 <= status < 300:
        detail = answer.get("error") if answer else body[:500].decode(errors="replace").strip()
        return "", f"tool {name!r}: the callback answered HTTP {status}" + (
            f": {detail}" if detail else ""
        )
    if answer is None:
        return "", f"tool {name!r}: the callback answer is not a JSON object"
    data, error = answer.get("data"), answer.get("error")
    if error:
        return "", error if isinstance(error, str) else json.dumps(error)
    if data is None:
        return "", ""
    return (data if isinstance(data, str) else json.dumps(data)), ""


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = load_json(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class _TooLarge(Exception):
    pass


async def _read_capped(stream: aiohttp.StreamReader, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while chunk := await stream.read(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        parts.append(chunk)
    return b"".join(parts)
