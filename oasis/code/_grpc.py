"""GrpcRunner: runs code on a sandbox server over its gRPC Execute stream."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any, TypedDict, TypeVar, cast

import grpc

from .._dispatch import Tools, as_dispatch, dispatch_safely
from .._types import CodeFile, CodeRequest, CodeResult, Dispatch, DispatchResult, LogChunk
from ..errors import SandboxError
from ..sandbox.v1 import sandbox_pb2 as pb
from ..sandbox.v1 import sandbox_pb2_grpc as pb_grpc
from . import _wire
from ._base import MAX_RETRY_DELAY, OnRetry, Retry, Retryable, RunnerBase
from ._errors import from_grpc, from_status
from ._info import SandboxInfo
from ._wire import KiB, MiB

T = TypeVar("T")
_Events = AsyncGenerator[LogChunk | CodeResult, None]

_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
_TRANSFER_SLACK = 60.0
"""Seconds the Execute RPC may outlive the code's timeout (file transfers, teardown)."""


class GrpcOptions(TypedDict, total=False):
    """GrpcRunner's keyword options, for wrappers that pass them through.

    `channel` is not one: a channel belongs to the loop it was made on.
    """

    timeout: float
    max_file_size: int
    max_output: int
    max_retries: int
    retry_delay: float
    on_retry: OnRetry | None
    token: str | None
    root_certificates: bytes | None
    private_key: bytes | None
    certificate_chain: bytes | None
    credentials: grpc.ChannelCredentials | None
    channel_options: Sequence[tuple[str, Any]]


class GrpcRunner(RunnerBase):
    """Runs code on a sandbox server and routes its tool calls to `dispatch`.

    One runner holds one gRPC channel (its own, or the caller's `channel=`);
    use it as `async with GrpcRunner(...)` or call `aclose()`. A runner
    belongs to the event loop that first uses it; from non-async code use
    `SyncGrpcRunner`.

    Retries: a request is sent again (after `retry_delay`, doubling each time
    up to 10 s, plus up to a quarter at random; at most `max_retries` more
    times; `on_retry` sees each) only when the code certainly did not start:
    the server refused it for capacity (RESOURCE_EXHAUSTED) or could not be
    reached or was shutting down (UNAVAILABLE), in both cases before it
    answered `started`. Any failure after `started` is raised, never retried:
    by then the code may have run, and code calls tools with side effects
    (sending mail, charging a card), so running it twice is worse than
    reporting the failure. The same execution_id is used on every attempt,
    and the server admits each id once: if a connection broke after the
    server admitted the run but before `started` reached us, the retry is
    refused and raised as AlreadyExecuted instead of running the code again.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 30.0,
        max_file_size: int = 10 * MiB,
        max_output: int = 64 * KiB,
        max_retries: int = 2,
        retry_delay: float = 0.5,
        on_retry: OnRetry | None = None,
        token: str | None = None,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        """Configure a runner for the server at `target` ("host:port"); connects on first use.

        - timeout: seconds the code may run when the request sets none (the
          server clamps it to its maximum). The Execute RPC's deadline is the
          code's timeout plus a minute for file transfers; info() and
          delete_workspace() get `timeout` as their deadline.
        - max_file_size: returned files larger than this come back with name,
          MIME type and size only (empty data), and are never held whole.
        - max_output: bytes of logs kept in the result, and the largest
          set_result value kept (a larger one is dropped, see output_truncated).
        - max_retries, retry_delay: see the class docstring.
        - on_retry: called with a RetryAttempt before each retry's pause.
        - token: sent as `authorization: Bearer <token>` on every call.
        - TLS: `credentials`, or any of root_certificates / private_key /
          certificate_chain (PEM bytes), makes the channel use TLS.
        - channel: an open channel to use instead of one of the runner's own
          (TLS and options are then the channel's). The caller owns it:
          aclose() leaves it open.
        """
        self._retry = Retry(
            target=target, max_retries=max_retries, retry_delay=retry_delay, on_retry=on_retry
        )
        if channel is not None and (
            credentials or root_certificates or private_key or certificate_chain or channel_options
        ):
            raise ValueError("with channel=, TLS and channel options are the channel's own")
        self.target = target
        self.timeout = timeout
        self.max_file_size = max_file_size
        self.max_output = max_output
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        if credentials is None and (root_certificates or private_key or certificate_chain):
            credentials = grpc.ssl_channel_credentials(
                root_certificates=root_certificates,
                private_key=private_key,
                certificate_chain=certificate_chain,
            )
        self._credentials = credentials
        # Let the channel try to reconnect at least as often as we retry: with
        # gRPC's default backoff (1 s, growing) a retry would fail at once.
        backoff_ms = max(int(retry_delay * 1000), 100)
        most_ms = max(backoff_ms, int(MAX_RETRY_DELAY * 1000))
        self._channel_options = [
            ("grpc.initial_reconnect_backoff_ms", backoff_ms),
            ("grpc.min_reconnect_backoff_ms", backoff_ms),
            ("grpc.max_reconnect_backoff_ms", min(backoff_ms * 2 ** min(max_retries, 6), most_ms)),
            *channel_options,
        ]
        self._given_channel = channel
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.SandboxAsyncStub | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def max_retries(self) -> int:
        """Extra attempts made where the code certainly did not start."""
        return self._retry.max_retries

    @property
    def retry_delay(self) -> float:
        """Seconds before the first retry."""
        return self._retry.retry_delay

    async def _release(self) -> None:
        """Close the runner's own channel (not a given one); running executions are cancelled."""
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()

    def _connect(self) -> pb_grpc.SandboxAsyncStub:
        loop = asyncio.get_running_loop()
        self._check_open()
        if self._stub is None:
            if self._given_channel is not None:
                channel = self._given_channel
            elif self._credentials is not None:
                channel = self._channel = grpc.aio.secure_channel(
                    self.target, self._credentials, options=self._channel_options
                )
            else:
                channel = self._channel = grpc.aio.insecure_channel(
                    self.target, options=self._channel_options
                )
            self._stub = cast("pb_grpc.SandboxAsyncStub", pb_grpc.SandboxStub(channel))
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError(
                "a GrpcRunner is bound to the event loop that first used it; "
                "create one per loop, or use SyncGrpcRunner from non-async code"
            )
        assert self._stub is not None
        return self._stub

    async def run(self, request: CodeRequest, dispatch: Dispatch | Tools) -> CodeResult:
        """Run the code to its end and return the result.

        `dispatch` answers the code's tool calls: an async function taking a
        ToolCall, or a dict of tools (wrapped with `oasis.tool_dispatcher`);
        anything else is a TypeError before the request is sent.
        Failures of the code (exceptions, timeouts, kills) are results, not
        exceptions; SandboxError means the server refused or lost the request.
        Cancelling the awaiting task cancels the RPC, and the server kills the code.
        """
        async with contextlib.aclosing(self.stream(request, dispatch)) as events:
            async for event in events:
                if isinstance(event, CodeResult):
                    return event
        raise SandboxError("the execution ended without a result", code="INTERNAL")

    def stream(
        self, request: CodeRequest, dispatch: Dispatch | Tools
    ) -> AsyncGenerator[LogChunk | CodeResult, None]:
        """Yield what the code prints as it prints it, then the CodeResult.

        `dispatch` is as in run(), and checked when stream() is called. Live
        chunks are passed on as the server sends them; `max_output` caps only
        what the result keeps. If you stop iterating early, close the
        iterator (`async with contextlib.aclosing(runner.stream(...))`) so the
        RPC is cancelled at once rather than when the iterator is collected.
        """
        return self._stream(request, cast("Dispatch", as_dispatch(dispatch)))

    async def _stream(self, request: CodeRequest, dispatch: Dispatch) -> _Events:
        stub = self._connect()
        timeout = self.timeout if request.timeout is None else request.timeout
        # Random, never derived: the server admits each id once across all clients,
        # so a guessable id could be claimed by someone else first.
        start, uploads = _wire.start_message(
            request, execution_id=uuid.uuid4().hex, timeout=timeout
        )

        async def attempt() -> tuple[_Events, LogChunk | CodeResult]:
            # Nothing comes before `started`, so only the wait for the first
            # event can end in a failure that allows a retry.
            events = _Exchange(self, stub, start, uploads, dispatch, deadline=timeout).events()
            return events, await anext(events)

        events, first = await self._retry.call(
            attempt, operation="execute", execution_id=start.execution_id
        )
        async with contextlib.aclosing(events):
            yield first
            async for event in events:
                yield event

    async def delete_workspace(self, session_id: str) -> bool:
        """Remove a session's workspace; False when there was none.

        Raises FailedPrecondition while an execution runs in the session.
        """
        request = pb.DeleteWorkspaceRequest(session_id=session_id)
        response = await self._unary(
            lambda stub: stub.DeleteWorkspace(request, **self._options()),
            operation="delete_workspace",
        )
        return bool(response.deleted)

    async def reset_state(self, session_id: str) -> bool:
        """End the session's live interpreters (see CodeRequest.keep_state), keeping its files.

        False when it had none. Raises FailedPrecondition while a keep_state
        execution runs in the session.
        """
        request = pb.ResetStateRequest(session_id=session_id)
        response = await self._unary(
            lambda stub: stub.ResetState(request, **self._options()), operation="reset_state"
        )
        return bool(response.had_state)

    async def info(self) -> SandboxInfo:
        """The server's runtimes, limits, isolation level and version."""
        response = await self._unary(
            lambda stub: stub.GetInfo(pb.GetInfoRequest(), **self._options()), operation="info"
        )
        return _wire.sandbox_info(response)

    def _options(self) -> dict[str, Any]:
        return {"metadata": self._metadata, "timeout": self.timeout}

    async def _unary(
        self, call: Callable[[pb_grpc.SandboxAsyncStub], Awaitable[T]], *, operation: str
    ) -> T:
        """Make an idempotent unary call, retrying while the server is unreachable."""
        stub = self._connect()

        async def attempt() -> T:
            try:
                return await call(stub)
            except grpc.aio.AioRpcError as exc:
                if exc.code() is grpc.StatusCode.UNAVAILABLE:
                    raise Retryable(from_grpc(exc)) from exc
                raise from_grpc(exc) from exc

        return await self._retry.call(attempt, operation=operation)


class _Exchange:
    """One attempt of one execution: a single Execute stream from start to result."""

    def __init__(
        self,
        runner: GrpcRunner,
        stub: pb_grpc.SandboxAsyncStub,
        start: pb.StartExecution,
        uploads: list[CodeFile],
        dispatch: Dispatch,
        *,
        deadline: float,
    ) -> None:
        self._runner = runner
        self._stub = stub
        self._start = start
        self._uploads = uploads
        self._dispatch = dispatch
        self._deadline = deadline + _TRANSFER_SLACK
        self._outgoing: asyncio.Queue[pb.ExecuteRequest] = asyncio.Queue()
        self._pending: set[asyncio.Task[None]] = set()
        self._downloads = _wire.Downloads(runner.max_file_size)
        self.started = False
        self.execution_id = start.execution_id
        self._started = pb.ExecutionStarted()

    async def events(self) -> _Events:
        """The execution's events; Retryable for a refusal or failure before `started`."""
        call = self._stub.Execute(metadata=self._runner._metadata, timeout=self._deadline)
        writer = asyncio.create_task(self._write(call))
        try:
            while True:
                try:
                    response = await call.read()
                except grpc.aio.AioRpcError as exc:
                    if not self.started and exc.code() in _RETRYABLE:
                        raise Retryable(from_grpc(exc)) from exc
                    raise from_grpc(exc) from exc
                if response is grpc.aio.EOF:
                    # A stream cut off (the server died) also reads as EOF: its status says so.
                    status = await call.code()
                    if status != grpc.StatusCode.OK:
                        raise from_status(status, await call.details())
                    raise SandboxError(
                        "the server ended the stream without a result", code="INTERNAL"
                    )
                kind = response.WhichOneof("kind")
                if kind == "log":
                    yield LogChunk(
                        stream=_wire.stream_name(response.log.stream), data=response.log.data
                    )
                elif kind == "tool_call":
                    task = asyncio.create_task(self._answer(response.tool_call))
                    self._pending.add(task)
                    task.add_done_callback(self._pending.discard)
                elif kind == "file_chunk":
                    self._downloads.add(response.file_chunk)
                elif kind == "started":
                    self.started = True
                    self._started = response.started
                    self.execution_id = response.started.execution_id or self.execution_id
                elif kind == "result":
                    result = _wire.code_result(
                        response.result,
                        self._downloads,
                        execution_id=self.execution_id,
                        started=self._started,
                        max_file_size=self._runner.max_file_size,
                        max_output=self._runner.max_output,
                    )
                    # The result is the last message: the RPC's end (its trailers)
                    # adds nothing, so it is not waited for.
                    yield result
                    return
        finally:
            pending = [writer, *self._pending]
            for task in pending:
                task.cancel()
            call.cancel()
            # Awaited, so that no dispatch outlives run(); a sync one in a thread is
            # abandoned, not waited for.
            await asyncio.gather(*pending, return_exceptions=True)

    async def _write(self, call: Any) -> None:
        """Send `start`, the chunked input files, then tool results as they are ready."""
        try:
            await call.write(pb.ExecuteRequest(start=self._start))
            for file in self._uploads:
                for message in _wire.upload_messages(file):
                    await call.write(message)
            while True:
                await call.write(await self._outgoing.get())
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            return  # the RPC has ended; the reader reports how

    async def _answer(self, message: pb.ToolCall) -> None:
        """Run the dispatch for one tool call and queue its result."""
        try:
            call = _wire.tool_call(message)
        except ValueError as exc:
            reply = DispatchResult(content=f"tool {message.name!r}: {exc}", is_error=True)
        else:
            reply = await dispatch_safely(self._dispatch, call)
        try:
            result = (
                pb.ToolResult(call_id=message.call_id, error=reply.content or "the tool failed")
                if reply.is_error
                else pb.ToolResult(call_id=message.call_id, data=reply.content)
            )
        except (TypeError, ValueError) as exc:
            result = pb.ToolResult(
                call_id=message.call_id, error=f"the tool's reply could not be sent: {exc}"
            )
        self._outgoing.put_nowait(pb.ExecuteRequest(tool_result=result))
