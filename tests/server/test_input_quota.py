"""Input files that cannot be written end the request at once, with an error that says why."""

from __future__ import annotations

import grpc

from oasis.sandbox.v1 import sandbox_pb2 as pb
from oasis.sandbox.v1 import sandbox_pb2_grpc as pb_grpc

from ..conftest import StartServer
from ..helpers import RawExecution, execute_error, rpc_error, start_message

MIB = 1024 * 1024


async def small_workspace_stub(
    start_server: StartServer,
) -> tuple[grpc.aio.Channel, pb_grpc.SandboxStub]:
    server = await start_server(SANDBOX_WORKSPACE_SIZE="2MiB")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    return channel, pb_grpc.SandboxStub(channel)


async def test_inline_files_over_the_quota(start_server: StartServer) -> None:
    channel, stub = await small_workspace_stub(start_server)
    async with channel:
        files = [pb.File(name=f"part{i}.bin", data=b"x" * (MIB + MIB // 2)) for i in range(2)]
        error = await execute_error(stub, start_message("print(1)", files=files))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not fit the workspace quota of 2 MiB" in (error.details() or "")


async def test_chunked_file_over_the_quota(start_server: StartServer) -> None:
    """The upload fails at the chunk that overflows, not after a wait for the rest."""
    channel, stub = await small_workspace_stub(start_server)
    async with channel:
        declared = pb.File(name="big.bin", size=5 * MIB)
        chunks = [
            pb.ExecuteRequest(file_chunk=pb.FileChunk(name="big.bin", data=b"y" * MIB, eof=i == 4))
            for i in range(5)
        ]
        error = await execute_error(stub, start_message("print(1)", files=[declared]), *chunks)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'big.bin' does not fit the workspace quota" in (error.details() or "")


async def test_stream_ending_before_the_files_are_complete(stub: pb_grpc.SandboxStub) -> None:
    """A client that half-closes with chunks missing gets an answer, not a wait of the full timeout."""
    execution = await RawExecution.begin(
        stub, start_message("print(1)", timeout=300, files=[pb.File(name="late.bin", size=10)])
    )
    await execution.send(pb.ExecuteRequest(file_chunk=pb.FileChunk(name="late.bin", data=b"12345")))
    await execution.call.done_writing()

    async def drain() -> None:
        while await execution.read() is not None:
            pass

    error = await rpc_error(drain(), within=30)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ended before these input files were complete: late.bin" in (error.details() or "")
