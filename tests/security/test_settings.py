"""Isolation settings, what GetInfo reports, and request limits with clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from aiohttp import ClientSession

from oasis.sandbox.v1 import sandbox_pb2 as pb
from oasis.sandbox.v1 import sandbox_pb2_grpc as pb_grpc
from sandbox_server import config as config_module
from sandbox_server.server import SandboxServer

from ..conftest import StartServer, make_config
from ..helpers import execute_error, start_message
from ..server.conftest import wait_exit
from .conftest import StartProcess

MIB = 1024 * 1024


def test_isolation_none_needs_allow_insecure(tmp_path: Path) -> None:
    """SANDBOX_ISOLATION=none is refused, naming both variables, unless SANDBOX_ALLOW_INSECURE=1."""
    with pytest.raises(config_module.ConfigError) as refused:
        make_config(tmp_path / "ws", SANDBOX_ISOLATION="none")
    assert "SANDBOX_ISOLATION" in str(refused.value)
    assert "SANDBOX_ALLOW_INSECURE=1" in str(refused.value)
    with pytest.raises(config_module.ConfigError):
        make_config(tmp_path / "ws", SANDBOX_ISOLATION="none", SANDBOX_ALLOW_INSECURE="0")
    allowed = make_config(tmp_path / "ws", SANDBOX_ISOLATION="none", SANDBOX_ALLOW_INSECURE="1")
    assert allowed.isolation.label == "none"


@pytest.mark.timeout(60)
async def test_server_refuses_to_start_insecure(server_process: StartProcess) -> None:
    """`serve` with SANDBOX_ISOLATION=none and no SANDBOX_ALLOW_INSECURE exits non-zero, saying why."""
    server = server_process(wait=False, SANDBOX_ISOLATION="none")
    assert await wait_exit(server.proc, within=30) != 0
    assert "SANDBOX_ALLOW_INSECURE" in server.log_text()


async def test_allowing_insecure_still_gets_the_strongest_level(start_server: StartServer) -> None:
    """SANDBOX_ISOLATION is a minimum: with `none` allowed, this host still runs code in namespaces."""
    server = await start_server(SANDBOX_ISOLATION="none", SANDBOX_ALLOW_INSECURE="1")
    assert server.sandbox is not None and server.sandbox.isolation == "namespaces"


LIMITS = {
    "SANDBOX_CPU_TIME": "7s",
    "SANDBOX_MEMORY": "300MiB",
    "SANDBOX_MAX_PROCESSES": "33",
    "SANDBOX_MAX_OPEN_FILES": "99",
    "SANDBOX_MAX_FILE_SIZE": "5MiB",
    "SANDBOX_WORKSPACE_SIZE": "20MiB",
    "SANDBOX_WORKSPACE_FILES": "777",
    "SANDBOX_TMP_SIZE": "3MiB",
    "SANDBOX_MAX_OUTPUT_FILES": "4",
    "SANDBOX_MAX_OUTPUT_SIZE": "6MiB",
    "SANDBOX_MAX_CODE_SIZE": "2KiB",
    "SANDBOX_MAX_INPUT_FILES": "3",
    "SANDBOX_NETWORK": "none",
}


async def test_get_info_reports_namespaces_and_every_configured_limit(
    start_server: StartServer,
) -> None:
    """GetInfo says `namespaces` and echoes each configured limit and the network mode."""
    server = await start_server(**LIMITS)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        info = await pb_grpc.SandboxStub(channel).GetInfo(pb.GetInfoRequest())
    limits = info.limits
    assert info.isolation == "namespaces"
    assert info.network == "none"
    assert limits.cpu_time.ToSeconds() == 7
    assert (limits.memory, limits.max_processes, limits.max_open_files) == (300 * MIB, 33, 99)
    assert (limits.max_file_size, limits.workspace_size) == (5 * MIB, 20 * MIB)
    assert (limits.workspace_files, limits.tmp_size) == (777, 3 * MIB)
    assert (limits.max_output_files, limits.max_output_size) == (4, 6 * MIB)
    assert (limits.max_code_size, limits.max_input_files) == (2048, 3)


LIMITS_PROBE = """
import os, resource
set_result({
    'cpu': resource.getrlimit(resource.RLIMIT_CPU)[0],
    'as': resource.getrlimit(resource.RLIMIT_AS)[0],
    'nproc': resource.getrlimit(resource.RLIMIT_NPROC)[0],
    'nofile': resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    'fsize': resource.getrlimit(resource.RLIMIT_FSIZE)[0],
    'workspace': os.statvfs('.').f_blocks * os.statvfs('.').f_frsize,
    'workspace_files': os.statvfs('.').f_files,
    'tmp': os.statvfs('/tmp').f_blocks * os.statvfs('/tmp').f_frsize,
})
"""


async def test_the_reported_limits_are_the_enforced_ones(start_server: StartServer) -> None:
    """The limits GetInfo reports are the rlimits and filesystem sizes the code actually runs under."""
    server = await start_server(**LIMITS)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.SandboxStub(channel)
        execution = stub.Execute()
        await execution.write(start_message(LIMITS_PROBE, session_id="limits"))
        result = None
        async for response in execution:
            if response.WhichOneof("kind") == "result":
                result = response.result
    assert result is not None and result.status == pb.ExecutionResult.OK, result
    seen = json.loads(result.output)
    assert seen == {
        "cpu": 7,
        "as": 300 * MIB,
        "nproc": 33,
        "nofile": 99,
        "fsize": 5 * MIB,
        "workspace": 20 * MIB,
        "workspace_files": 777,
        "tmp": 3 * MIB,
    }


async def test_code_size_limit(start_server: StartServer) -> None:
    """Code over SANDBOX_MAX_CODE_SIZE is INVALID_ARGUMENT naming the variable; code at the limit runs."""
    server = await start_server(SANDBOX_MAX_CODE_SIZE="1KiB")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.SandboxStub(channel)
        fits = "set_result(1)#".ljust(1024, "x")
        error = await execute_error(stub, start_message(fits + "x"))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "SANDBOX_MAX_CODE_SIZE" in error.details()
        execution = stub.Execute()
        await execution.write(start_message(fits))
        statuses = [r.result.status async for r in execution if r.WhichOneof("kind") == "result"]
    assert statuses == [pb.ExecutionResult.OK]


async def test_input_file_count_limit(start_server: StartServer) -> None:
    """More input files than SANDBOX_MAX_INPUT_FILES is INVALID_ARGUMENT naming the variable."""
    server = await start_server(SANDBOX_MAX_INPUT_FILES="3")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        request = start_message("set_result(1)")
        request.start.files.extend(pb.File(name=f"f{i}.txt", data=b"x") for i in range(4))
        error = await execute_error(pb_grpc.SandboxStub(channel), request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "SANDBOX_MAX_INPUT_FILES" in error.details()


@pytest.mark.parametrize("depth", [65, 100_000])
async def test_http_json_depth_limit(server: SandboxServer, depth: int) -> None:
    """A body nested deeper than 64 is a 400 with a JSON error, however deep (no recursion in the server)."""
    body = '{"code": "set_result(1)", "x": ' + "[" * depth + "]" * depth + "}"
    async with (
        ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{server.http_port}/execute",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as response,
    ):
        assert response.status == 400
        assert "nested" in (await response.json())["error"]


async def test_http_body_limit(server: SandboxServer) -> None:
    """A POST /execute body over 32 MiB is a 413 with a JSON error."""
    body = b'{"code": "' + b"#" * (33 * MIB) + b'"}'
    async with (
        ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{server.http_port}/execute",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as response,
    ):
        assert response.status == 413
        assert "32 MiB" in (await response.json())["error"]


async def test_grpc_message_over_4_mib(server: SandboxServer, stub: pb_grpc.SandboxStub) -> None:
    """A request message over 4 MiB (start or file chunk) is RESOURCE_EXHAUSTED; the server answers on."""
    big_start = start_message("#" * (5 * MIB))
    error = await execute_error(stub, big_start)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    request = start_message("call_tool('wait')", timeout=30)
    request.start.files.append(pb.File(name="big.bin", size=5 * MIB))
    chunk = pb.ExecuteRequest(
        file_chunk=pb.FileChunk(name="big.bin", data=bytes(5 * MIB), eof=True)
    )
    error = await execute_error(stub, request, chunk)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    info = await stub.GetInfo(pb.GetInfoRequest())
    assert info.isolation == "namespaces"
