"""gRPC failures become oasis errors that keep the status code and message; token and TLS."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import grpc
import pytest

from oasis import (
    AlreadyExecuted,
    CodeRequest,
    FailedPrecondition,
    InvalidRequest,
    OasisError,
    SandboxUnavailable,
    Status,
    Unauthenticated,
    tool_dispatcher,
)
from oasis.code import GrpcRunner
from oasis.code._errors import from_grpc
from oasis.sandbox.v1 import sandbox_pb2 as pb
from oasis.sandbox.v1 import sandbox_pb2_grpc as pb_grpc
from sandbox_server.server import SandboxServer

from ..conftest import StartServer


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (CodeRequest(code="print(1)", session_id="../etc"), "invalid session_id '../etc'"),
        (
            CodeRequest(code="print(1)", runtime="ruby"),
            "unsupported runtime: ruby; supported: python, node",
        ),
        (CodeRequest(code="   "), "code is empty"),
    ],
    ids=["session_id", "runtime", "empty_code"],
)
async def test_invalid_requests(runner: GrpcRunner, request_: CodeRequest, message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        await runner.run(request_, tool_dispatcher({}))

    assert info.value.code == "INVALID_ARGUMENT"
    assert message in info.value.message and message in str(info.value)
    assert isinstance(info.value, OasisError)
    assert isinstance(info.value.__cause__, grpc.aio.AioRpcError)


async def test_delete_workspace_errors(runner: GrpcRunner) -> None:
    with pytest.raises(InvalidRequest, match="invalid session_id") as info:
        await runner.delete_workspace("bad/id")
    assert info.value.code == "INVALID_ARGUMENT"

    started, release = asyncio.Event(), asyncio.Event()

    async def wait() -> str:
        started.set()
        await release.wait()
        return "ok"

    busy = asyncio.create_task(
        runner.run(
            CodeRequest(code="call_tool('wait')", session_id="busy"),
            tool_dispatcher({"wait": wait}),
        )
    )
    await asyncio.wait_for(started.wait(), 30)
    with pytest.raises(FailedPrecondition, match="has a running execution") as busy_info:
        await runner.delete_workspace("busy")
    assert busy_info.value.code == "FAILED_PRECONDITION"
    release.set()
    assert (await busy).status is Status.OK
    assert await runner.delete_workspace("busy") is True


async def test_unreachable_server_for_unary_calls() -> None:
    async with GrpcRunner("127.0.0.1:1", max_retries=1, retry_delay=0.01) as runner:
        with pytest.raises(SandboxUnavailable) as info:
            await runner.info()
    assert info.value.code == "UNAVAILABLE"


async def test_info(runner: GrpcRunner) -> None:
    info = await runner.info()

    assert set(info.runtimes) == {"python", "node"}
    assert info.limits.max_concurrent == 4
    assert (info.limits.default_timeout, info.limits.max_timeout) == (30.0, 300.0)
    assert info.limits.max_output == 512 * 1024
    assert info.isolation == "namespaces" and info.network == "egress" and info.version
    assert (info.limits.memory, info.limits.max_processes) == (1024**3, 64)
    assert info.limits.max_output_files == 32


async def test_a_reused_execution_id_becomes_already_executed(
    runner: GrpcRunner, server: SandboxServer
) -> None:
    """The server's ALREADY_EXISTS (an id admitted before) is translated to AlreadyExecuted."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.SandboxStub(channel)
        start = pb.ExecuteRequest(start=pb.StartExecution(code="x = 1", execution_id="once"))
        async for _ in stub.Execute(iter([start])):
            pass
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.Execute(iter([start])):
                pass
    error = from_grpc(info.value)
    assert isinstance(error, AlreadyExecuted)
    assert error.code == "ALREADY_EXISTS" and "once" in error.message


async def test_the_runner_sends_a_fresh_random_execution_id(
    runner: GrpcRunner, server: SandboxServer
) -> None:
    """Ids share one namespace across clients, so the runner's must be unguessable, never reused."""
    first = await runner.run(CodeRequest(code="x = 1"), tool_dispatcher({}))
    second = await runner.run(CodeRequest(code="x = 1"), tool_dispatcher({}))

    ids = [first.execution_id, second.execution_id]
    assert ids[0] != ids[1]
    assert all(re.fullmatch("[0-9a-f]{32}", id_) for id_ in ids), ids  # uuid4 hex: 122 random bits
    # The server admitted these very ids from the client: sending one again is refused.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        start = pb.ExecuteRequest(start=pb.StartExecution(code="x = 1", execution_id=ids[0]))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in pb_grpc.SandboxStub(channel).Execute(iter([start])):
                pass
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS


# -- the real server with SANDBOX_AUTH_TOKEN and TLS ------------------------

TOKEN = "s3cret-token"


@pytest.fixture
async def tls_server(tmp_path: Path, start_server: StartServer) -> tuple[int, bytes]:
    """(port, CA certificate) of a sandbox server with TLS and a bearer token."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    openssl = await asyncio.create_subprocess_exec(
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert await openssl.wait() == 0, "openssl could not make a test certificate"
    server = await start_server(
        SANDBOX_AUTH_TOKEN=TOKEN, SANDBOX_TLS_CERT=str(cert), SANDBOX_TLS_KEY=str(key)
    )
    return server.port, cert.read_bytes()


async def test_token_and_tls(tls_server: tuple[int, bytes]) -> None:
    port, ca = tls_server
    target = f"localhost:{port}"
    async with GrpcRunner(target, token=TOKEN, root_certificates=ca) as runner:
        result = await runner.run(CodeRequest(code="set_result(6 * 7)"), tool_dispatcher({}))
        assert result.output == 42
        assert "python" in (await runner.info()).runtimes

    async with GrpcRunner(target, token="wrong", root_certificates=ca) as runner:
        with pytest.raises(Unauthenticated, match="missing or wrong bearer token") as info:
            await runner.run(CodeRequest(code="set_result(1)"), tool_dispatcher({}))
        assert info.value.code == "UNAUTHENTICATED"
        with pytest.raises(Unauthenticated):
            await runner.info()

    # Without the CA the server's certificate is not trusted: the channel never connects.
    async with GrpcRunner(
        target, token=TOKEN, credentials=grpc.ssl_channel_credentials(), max_retries=0
    ) as runner:
        with pytest.raises(SandboxUnavailable):
            await runner.info()
