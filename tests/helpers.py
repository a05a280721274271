"""Helpers shared by the server tests: polling with a deadline, process scans, raw streams."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc

from oasis.sandbox.v1 import sandbox_pb2 as pb
from oasis.sandbox.v1 import sandbox_pb2_grpc as pb_grpc
from sandbox_server import mounts

from .nethost import TestHost, netns_host


async def eventually(
    check: Callable[[], object],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "condition",
) -> Any:
    """Poll `check` (sync or async) until it returns a truthy value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s (last value: {value!r})")
        await asyncio.sleep(interval)


def new_marker() -> str:
    """A string unique to one test, put in the command line of the processes it starts."""
    return f"oasis-marker-{uuid.uuid4().hex}"


def pids_with(marker: str) -> list[int]:
    """Live processes (not zombies) whose command line contains `marker`."""
    found = []
    needle = marker.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            if needle not in cmdline:
                continue
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if state not in ("Z", "X"):
            found.append(int(entry))
    return found


def start_message(
    code: str, *, runtime: str = "python", timeout: float | None = None, **fields: Any
) -> pb.ExecuteRequest:
    """The `start` request for `code`; other StartExecution fields go in as keywords."""
    start = pb.StartExecution(code=code, runtime=runtime, **fields)
    if timeout is not None:
        start.timeout.FromNanoseconds(int(timeout * 1e9))
    return pb.ExecuteRequest(start=start)


class RawExecution:
    """One Execute RPC driven by hand: write requests, read responses, cancel or hang up."""

    def __init__(self, stub: pb_grpc.SandboxStub) -> None:
        self.call = stub.Execute()
        self.responses: list[pb.ExecuteResponse] = []
        self.logs = bytearray()

    @classmethod
    async def begin(cls, stub: pb_grpc.SandboxStub, request: pb.ExecuteRequest) -> RawExecution:
        execution = cls(stub)
        await execution.call.write(request)
        return execution

    async def send(self, request: pb.ExecuteRequest) -> None:
        await self.call.write(request)

    async def read(self, within: float = 30.0) -> pb.ExecuteResponse | None:
        """The next response, or None when the stream has ended."""
        async with asyncio.timeout(within):
            response = await self.call.read()
        if response is grpc.aio.EOF:
            return None
        assert isinstance(response, pb.ExecuteResponse)
        self.responses.append(response)
        if response.WhichOneof("kind") == "log":
            self.logs += response.log.data
        return response

    async def read_until(self, kind: str, within: float = 30.0) -> pb.ExecuteResponse:
        """Read until a response of this kind arrives (`log:TEXT` waits for TEXT in the logs)."""
        text = kind.partition(":")[2].encode()
        async with asyncio.timeout(within):
            while True:
                response = await self.read(within)
                if response is None:
                    raise AssertionError(f"the stream ended before {kind!r}")
                if text and response.WhichOneof("kind") == "log" and text in self.logs:
                    return response
                if not text and response.WhichOneof("kind") == kind:
                    return response

    async def result(self, within: float = 60.0) -> pb.ExecutionResult:
        """Read to the end of the stream; the last message must be the result."""
        response = await self.read_until("result", within)
        assert await self.read(within) is None, "a message followed the result"
        return response.result


async def rpc_error(call: Awaitable[object], within: float = 30.0) -> grpc.aio.AioRpcError:
    """Await an RPC that must fail, and return its error."""
    try:
        async with asyncio.timeout(within):
            await call
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError("the RPC succeeded but should have failed")


async def execute_error(
    stub: pb_grpc.SandboxStub, *requests: pb.ExecuteRequest
) -> grpc.aio.AioRpcError:
    """Send these requests on one Execute stream and return the RPC error it ends with."""
    execution = RawExecution(stub)
    for request in requests:
        try:
            await execution.send(request)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            break  # the server ended the RPC already; read its status below

    async def drain() -> None:
        while await execution.read() is not None:
            pass

    return await rpc_error(drain())


def unmount_leftovers(folder: Path) -> None:
    """Detach workspace tmpfs mounts a killed server process left under `folder`."""
    for mount_point in mounts.mounts_under(folder):
        mounts.unmount(mount_point)


class LocalIndex:
    """A package index: serves `files` (path -> bytes), 404 for the rest, records every request.

    It listens on 127.0.0.1, or on a test host when given one: installers in an
    isolated network reach package indexes only at addresses the host routes.
    """

    def __init__(self, files: dict[str, bytes] | None = None, *, host: TestHost | None = None):
        self.files = files or {}
        self.requests: list[str] = []
        self.port = 0
        self._host = host
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        return self._host.address if self._host else "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    async def __aenter__(self) -> LocalIndex:
        if self._host is None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        else:
            self._server = await asyncio.start_server(self._handle, sock=self._host.listen())
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readline()
            while (await reader.readline()).strip():
                pass
            path = request.split()[1].decode()
            self.requests.append(path)
            body = self.files.get(path.split("?")[0])
            status = b"200 OK" if body is not None else b"404 Not Found"
            body = body if body is not None else b"not found"
            kind = b"text/html" if path.endswith("/") else b"application/octet-stream"
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: " + kind
                + b"\r\nContent-Length: " + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n" + body
            )  # fmt: skip
            await writer.drain()
        except (ConnectionError, IndexError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def remote_index(files: dict[str, bytes] | None = None) -> AsyncIterator[LocalIndex]:
    """A LocalIndex on a test host of its own: where isolated installers can reach it."""
    async with netns_host() as host, LocalIndex(files, host=host) as index:
        yield index
