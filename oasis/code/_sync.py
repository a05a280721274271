"""SyncGrpcRunner: GrpcRunner for code that is not async."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar, Unpack, cast

from .._calls import call_off_loop
from .._dispatch import Tools, as_dispatch
from .._types import CodeRequest, CodeResult, Dispatch, DispatchResult, LogChunk, ToolCall
from ._grpc import GrpcOptions, GrpcRunner
from ._info import SandboxInfo

T = TypeVar("T")

SyncDispatch = Callable[[ToolCall], DispatchResult | Awaitable[DispatchResult]]
"""A dispatch for SyncGrpcRunner: a plain function, or an async one like `Dispatch`."""

_SYNC_DISPATCH = "a function (plain or async) taking one ToolCall and returning a DispatchResult"


class SyncGrpcRunner:
    """A blocking GrpcRunner: `with SyncGrpcRunner("host:port") as runner: runner.run(...)`.

    It runs a private event loop in a daemon thread and a GrpcRunner on it;
    each method blocks the calling thread until its result is ready, and
    several threads may call it at once. A plain (sync) dispatch function runs
    in a worker thread so a slow tool never stalls other calls; an async
    dispatch (such as one from `oasis.tool_dispatcher`) runs on the loop.
    KeyboardInterrupt (or any exception) while waiting in `run()` cancels the
    execution, and the server kills the code. Options are GrpcRunner's
    (but `channel`); an `on_retry` hook is called in the runner's thread.
    """

    def __init__(self, target: str, **options: Unpack[GrpcOptions]) -> None:
        self._runner = GrpcRunner(target, **options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="oasis-sync-runner", daemon=True
        )
        self._thread.start()
        self._lock = threading.Lock()
        self._closed = False

    def __enter__(self) -> SyncGrpcRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel and stop the loop thread. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._runner.aclose(), self._loop).result()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def run(self, request: CodeRequest, dispatch: SyncDispatch | Tools) -> CodeResult:
        """Run the code to its end and return the result (see GrpcRunner.run).

        `dispatch`: a plain or async function taking a ToolCall, or a dict of
        tools; anything else is a TypeError before the request is sent.
        """
        return self._wait(self._runner.run(request, _adapt(dispatch)))

    def stream(
        self, request: CodeRequest, dispatch: SyncDispatch | Tools
    ) -> Iterator[LogChunk | CodeResult]:
        """Yield log chunks as the code prints them, then the CodeResult.

        `dispatch` is as in run(), and checked when stream() is called.
        Leaving the loop early (or closing the iterator) cancels the execution.
        """
        return self._stream(request, _adapt(dispatch))

    def _stream(self, request: CodeRequest, dispatch: Dispatch) -> Iterator[LogChunk | CodeResult]:
        events = self._runner.stream(request, dispatch)

        async def step() -> LogChunk | CodeResult | None:
            try:
                return await anext(events)
            except StopAsyncIteration:
                return None

        try:
            while (event := self._wait(step())) is not None:
                yield event
        finally:
            if not self._closed:
                # After an interrupt the cancelled step may still be unwinding.
                with contextlib.suppress(RuntimeError):
                    self._wait(events.aclose())

    def delete_workspace(self, session_id: str) -> bool:
        """Remove a session's workspace; False when there was none."""
        return self._wait(self._runner.delete_workspace(session_id))

    def reset_state(self, session_id: str) -> bool:
        """End the session's live interpreters, keeping its files; False when it had none."""
        return self._wait(self._runner.reset_state(session_id))

    def info(self) -> SandboxInfo:
        """The server's runtimes, limits, isolation level and version."""
        return self._wait(self._runner.info())

    def _wait(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("this SyncGrpcRunner is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise


def _adapt(dispatch: SyncDispatch | Tools) -> Dispatch:
    """The checked dispatch as an async one; plain functions run in a worker thread."""
    checked = cast("SyncDispatch", as_dispatch(dispatch, expected=_SYNC_DISPATCH))
    if inspect.iscoroutinefunction(checked):
        return checked

    async def threaded(call: ToolCall) -> DispatchResult:
        reply: DispatchResult = await call_off_loop(checked, call)
        return reply

    return threaded
