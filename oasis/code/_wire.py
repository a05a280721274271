"""Conversions between the library's dataclasses and the protobuf messages.

Only this module and `_grpc` touch `*_pb2`; everything else works on the
dataclasses in `oasis._types`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from .._types import CodeFile, CodeRequest, CodeResult, Status, ToolCall
from ..errors import InvalidRequest
from ..sandbox.v1 import sandbox_pb2 as pb
from ._info import SandboxInfo, SandboxLimits, SandboxStateful

KiB = 1024
MiB = 1024 * KiB

MAX_MESSAGE = 4 * MiB
"""No message in either direction may exceed this (the wire contract)."""
FILE_CHUNK = 1 * MiB
"""Files larger than this travel as FileChunks, in pieces of this size."""
INLINE_BUDGET = 2 * MiB
"""File bytes carried inside `start`; further files are chunked even when small."""

_STATUS = {
    pb.ExecutionResult.OK: Status.OK,
    pb.ExecutionResult.ERROR: Status.ERROR,
    pb.ExecutionResult.TIMEOUT: Status.TIMEOUT,
    pb.ExecutionResult.CANCELLED: Status.CANCELLED,
    pb.ExecutionResult.KILLED: Status.KILLED,
}
_STREAM = {pb.LogChunk.STDOUT: "stdout", pb.LogChunk.STDERR: "stderr"}


def stream_name(value: pb.LogChunk.Stream.ValueType) -> str:
    return _STREAM.get(value, "stdout")


def start_message(
    request: CodeRequest, *, execution_id: str, timeout: float
) -> tuple[pb.StartExecution, list[CodeFile]]:
    """The `start` message for a request, and the files that must follow as chunks."""
    start = pb.StartExecution(
        execution_id=execution_id,
        code=request.code,
        runtime=request.runtime,
        session_id=request.session_id,
        env=request.env,
        keep_state=request.keep_state,
    )
    start.timeout.FromNanoseconds(round(timeout * 1e9))
    budget = INLINE_BUDGET
    chunked: list[CodeFile] = []
    for file in request.files:
        data = bytes(file.data)
        if len(data) <= min(FILE_CHUNK, budget):
            budget -= len(data)
            start.files.append(pb.File(name=file.name, mime=file.mime, url=file.url, data=data))
        else:
            start.files.append(
                pb.File(name=file.name, mime=file.mime, url=file.url, size=len(data))
            )
            chunked.append(file)
    if start.ByteSize() > MAX_MESSAGE - 64 * KiB:
        raise InvalidRequest(
            f"the request is {start.ByteSize()} bytes, too large for one message; "
            "send large data as input files",
            code="INVALID_ARGUMENT",
        )
    return start, chunked


def upload_messages(file: CodeFile) -> Iterator[pb.ExecuteRequest]:
    """The FileChunk messages carrying one input file, without copying it whole."""
    view = memoryview(file.data)
    for offset in range(0, len(view), FILE_CHUNK):
        piece = bytes(view[offset : offset + FILE_CHUNK])
        yield pb.ExecuteRequest(
            file_chunk=pb.FileChunk(
                name=file.name, data=piece, eof=offset + FILE_CHUNK >= len(view)
            )
        )


def tool_call(message: pb.ToolCall) -> ToolCall:
    """The dataclass for a tool call; ValueError when its arguments are not a JSON object."""
    args = json.loads(message.args_json) if message.args_json else {}
    if not isinstance(args, dict):
        raise ValueError(f"arguments must be a JSON object, got {type(args).__name__}")
    return ToolCall(id=message.call_id, name=message.name, args=args)


class Downloads:
    """Reassembles output files sent as chunks, keeping at most `limit` bytes of each.

    A file that grows past the limit is dropped at once (only its size is
    counted from then on), so a huge output file never sits in memory whole.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._parts: dict[str, list[bytes]] = {}
        self._sizes: dict[str, int] = {}

    def add(self, chunk: pb.FileChunk) -> None:
        size = self._sizes.get(chunk.name, 0) + len(chunk.data)
        self._sizes[chunk.name] = size
        parts = self._parts.setdefault(chunk.name, [])
        if size > self._limit:
            parts.clear()
        else:
            parts.append(chunk.data)

    def content(self, name: str) -> bytes:
        """The file's bytes; empty when it was over the limit or never arrived."""
        if self._sizes.get(name, 0) > self._limit:
            return b""
        return b"".join(self._parts.get(name, ()))


def code_result(
    message: pb.ExecutionResult,
    downloads: Downloads,
    *,
    execution_id: str,
    started: pb.ExecutionStarted,
    max_file_size: int,
    max_output: int,
) -> CodeResult:
    """The CodeResult for a result message and the `started` before it, with the runner's
    caps applied."""
    files = []
    for f in message.files:
        data = f.data if f.data else downloads.content(f.name)
        size = f.size or len(data)
        if size > max_file_size:
            data = b""
        files.append(CodeFile(name=f.name, mime=f.mime, url=f.url, data=data, size=size))

    error = message.error
    output: Any = None
    output_truncated = False
    raw = message.output.encode()
    if len(raw) > max_output:
        output_truncated = True
        note = (
            f"the set_result value ({len(raw)} bytes) is over this runner's max_output "
            f"({max_output} bytes) and was dropped; return large data as a file"
        )
        error = f"{error}\n{note}" if error else note
    elif raw:
        try:
            output = json.loads(raw)
        except ValueError:
            output = message.output

    logs = message.logs
    logs_truncated = message.logs_truncated
    encoded = logs.encode()
    if len(encoded) > max_output:
        logs = encoded[:max_output].decode("utf-8", errors="ignore")
        logs_truncated = True

    return CodeResult(
        output=output,
        logs=logs,
        exit_code=message.exit_code,
        error=error,
        files=files,
        status=_STATUS.get(message.status, Status.ERROR),
        logs_truncated=logs_truncated,
        output_truncated=output_truncated,
        duration=message.duration.ToNanoseconds() / 1e9,
        cpu_time=message.cpu_time.ToNanoseconds() / 1e9,
        execution_id=execution_id,
        state_kept=message.state_kept,
        fresh_state=started.fresh_state,
        fresh_state_reason=started.fresh_state_reason,
    )


def sandbox_info(message: pb.GetInfoResponse) -> SandboxInfo:
    limits = message.limits
    return SandboxInfo(
        runtimes={r.name: r.version for r in message.runtimes},
        limits=SandboxLimits(
            max_concurrent=limits.max_concurrent,
            default_timeout=limits.default_timeout.ToNanoseconds() / 1e9,
            max_timeout=limits.max_timeout.ToNanoseconds() / 1e9,
            max_output=limits.max_output,
            max_result=limits.max_result,
            session_ttl=limits.session_ttl.ToNanoseconds() / 1e9,
            cpu_time=limits.cpu_time.ToNanoseconds() / 1e9,
            memory=limits.memory,
            max_processes=limits.max_processes,
            max_open_files=limits.max_open_files,
            max_file_size=limits.max_file_size,
            workspace_size=limits.workspace_size,
            workspace_files=limits.workspace_files,
            tmp_size=limits.tmp_size,
            max_output_files=limits.max_output_files,
            max_output_size=limits.max_output_size,
            max_code_size=limits.max_code_size,
            max_input_files=limits.max_input_files,
            session_memory=limits.session_memory,
        ),
        isolation=message.isolation,
        version=message.server_version,
        network=message.network,
        resource_control=message.resource_control,
        stateful=SandboxStateful(
            enabled=message.stateful.enabled,
            reason=message.stateful.reason,
            max_states=message.stateful.max_states,
            idle_timeout=message.stateful.idle_timeout.ToNanoseconds() / 1e9,
            live=message.stateful.live,
        )
        if message.HasField("stateful")
        else SandboxStateful(enabled=False, reason="the server predates stateful sessions"),
    )
