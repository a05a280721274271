"""The gRPC servicer: protobuf in and out, the core in between, nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
from google.protobuf import duration_pb2

from oasis.sandbox.v1 import sandbox_pb2 as pb
from oasis.sandbox.v1 import sandbox_pb2_grpc as pb_grpc

from .core import _MAX_ENV_VARS, Sandbox
from .errors import Code, RequestError, invalid
from .execution import Execution
from .model import (
    Event,
    ExecutionSpec,
    FileChunkEvent,
    InputFile,
    LogEvent,
    Result,
    Started,
    ToolCallEvent,
)

log = logging.getLogger(__name__)


def grpc_status(code: Code) -> grpc.StatusCode:
    """The gRPC status of a refused request: `Code` is named after them."""
    return grpc.StatusCode[code.name]


def _duration(seconds: float) -> duration_pb2.Duration:
    message = duration_pb2.Duration()
    message.FromNanoseconds(int(seconds * 1e9))
    return message


def check_list_sizes(start: pb.StartExecution, *, max_files: int) -> None:
    """Refuse oversize `files` and `env` before spec_from_proto converts them one by one:
    a 4 MiB message holds two million empty files, seconds of work on the event loop."""
    if len(start.files) > max_files:
        raise invalid(
            f"{len(start.files)} input files; at most {max_files} are accepted "
            "(SANDBOX_MAX_INPUT_FILES)"
        )
    if len(start.env) > _MAX_ENV_VARS:
        raise invalid(f"env: {len(start.env)} variables; at most {_MAX_ENV_VARS} are accepted")


def spec_from_proto(start: pb.StartExecution) -> ExecutionSpec:
    return ExecutionSpec(
        code=start.code,
        runtime=start.runtime or "python",
        execution_id=start.execution_id,
        session_id=start.session_id,
        timeout=start.timeout.ToNanoseconds() / 1e9 if start.HasField("timeout") else None,
        files=tuple(InputFile(name=f.name, data=f.data, size=f.size) for f in start.files),
        env=dict(start.env),
        keep_state=start.keep_state,
    )


def event_to_proto(event: Event) -> pb.ExecuteResponse:
    if isinstance(event, LogEvent):
        return pb.ExecuteResponse(
            log=pb.LogChunk(stream=pb.LogChunk.Stream.Value(event.stream.name), data=event.data)
        )
    if isinstance(event, ToolCallEvent):
        return pb.ExecuteResponse(
            tool_call=pb.ToolCall(call_id=event.call_id, name=event.name, args_json=event.args_json)
        )
    if isinstance(event, FileChunkEvent):
        return pb.ExecuteResponse(
            file_chunk=pb.FileChunk(name=event.name, data=event.data, eof=event.eof)
        )
    if isinstance(event, Started):
        return pb.ExecuteResponse(
            started=pb.ExecutionStarted(
                execution_id=event.execution_id,
                session_id=event.session_id,
                runtime=event.runtime,
                fresh_state=event.fresh_state,
                fresh_state_reason=event.fresh_state_reason,
            )
        )
    return pb.ExecuteResponse(result=result_to_proto(event))


def result_to_proto(result: Result) -> pb.ExecutionResult:
    return pb.ExecutionResult(
        output=result.output,
        logs=result.logs,
        exit_code=result.exit_code,
        error=result.error,
        files=[
            pb.File(name=f.name, mime=f.mime, size=f.size, data=f.data or b"") for f in result.files
        ],
        status=pb.ExecutionResult.Status.Value(result.status.name),
        duration=_duration(result.duration),
        logs_truncated=result.logs_truncated,
        cpu_time=_duration(result.cpu_time),
        state_kept=result.state_kept,
    )


class SandboxService(pb_grpc.SandboxServicer):
    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    async def Execute(
        self, request_iterator: AsyncIterator[pb.ExecuteRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ExecuteResponse]:
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        if first is None or first.WhichOneof("kind") != "start":
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first message must be `start`"
            )
            return
        try:
            check_list_sizes(first.start, max_files=self._sandbox.config.max_input_files)
            execution = self._sandbox.open(spec_from_proto(first.start))
        except RequestError as exc:
            await context.abort(grpc_status(exc.code), exc.message)
            return
        async with execution:
            feeder = asyncio.create_task(self._feed(requests, execution), name="grpc-feed")
            try:
                async for event in execution.events():
                    yield event_to_proto(event)
            except RequestError as exc:
                await context.abort(grpc_status(exc.code), exc.message)
            finally:
                feeder.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await feeder

    async def _feed(self, requests: AsyncIterator[pb.ExecuteRequest], execution: Execution) -> None:
        """Route the client's messages after `start` into the execution."""
        try:
            async for request in requests:
                kind = request.WhichOneof("kind")
                if kind == "tool_result":
                    r = request.tool_result
                    await execution.send_tool_result(r.call_id, r.data, r.error)
                elif kind == "file_chunk":
                    c = request.file_chunk
                    await execution.add_file_chunk(c.name, c.data, c.eof)
                elif kind == "cancel":
                    execution.cancel()
                elif kind == "start":
                    raise invalid("`start` may only be the first message of a stream")
                else:
                    raise invalid("empty request message")
            execution.requests_ended()
        except RequestError as exc:
            execution.fail(exc)
        except grpc.aio.AioRpcError:
            execution.cancel()

    async def DeleteWorkspace(
        self, request: pb.DeleteWorkspaceRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteWorkspaceResponse:
        try:
            deleted = await self._sandbox.delete_workspace(request.session_id)
        except RequestError as exc:
            await context.abort(grpc_status(exc.code), exc.message)
        return pb.DeleteWorkspaceResponse(deleted=deleted)

    async def ResetState(
        self, request: pb.ResetStateRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResetStateResponse:
        try:
            had_state = await self._sandbox.reset_state(request.session_id)
        except RequestError as exc:
            await context.abort(grpc_status(exc.code), exc.message)
        return pb.ResetStateResponse(had_state=had_state)

    async def GetInfo(
        self, request: pb.GetInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetInfoResponse:
        info = self._sandbox.info()
        config = info.config
        limits = config.limits
        return pb.GetInfoResponse(
            runtimes=[
                pb.GetInfoResponse.Runtime(name=n, version=v) for n, v in info.runtimes.items()
            ],
            limits=pb.GetInfoResponse.Limits(
                max_concurrent=config.max_concurrent,
                default_timeout=_duration(config.default_timeout),
                max_timeout=_duration(config.max_timeout),
                max_output=config.max_output,
                max_result=config.max_result,
                session_ttl=_duration(config.session_ttl),
                cpu_time=_duration(limits.cpu_time),
                memory=limits.memory,
                max_processes=limits.processes,
                max_open_files=limits.open_files,
                max_file_size=limits.file_size,
                workspace_size=limits.workspace_size,
                workspace_files=limits.workspace_files,
                tmp_size=limits.tmp_size,
                max_output_files=limits.output_files,
                max_output_size=limits.output_size,
                max_code_size=config.max_code_size,
                max_input_files=config.max_input_files,
                # Only where something enforces it.
                session_memory=limits.session_memory if info.resource_control != "rlimits" else 0,
            ),
            isolation=info.isolation,
            server_version=info.version,
            network=self._sandbox.network.value,
            resource_control=info.resource_control,
            launcher=config.launcher,
            pools=[
                pb.GetInfoResponse.Pool(
                    runtime=pool.runtime,
                    ready=pool.ready,
                    warm_starts=pool.warm_starts,
                    cold_starts=pool.cold_starts,
                    restarts=pool.restarts,
                    preloaded=pool.preloaded,
                )
                for pool in info.pools
            ],
            spares=[
                pb.GetInfoResponse.Spares(runtime=s.runtime, waiting=s.waiting, served=s.served)
                for s in info.spares
            ],
            stateful=pb.GetInfoResponse.Stateful(
                enabled=info.stateful.enabled,
                reason=info.stateful.reason,
                max_states=info.stateful.max_states,
                idle_timeout=_duration(info.stateful.idle),
                live=info.stateful.live,
            ),
        )
