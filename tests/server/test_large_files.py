"""100 MiB files both ways as FileChunks, without the server holding them whole in memory.

The server runs in its own process so that its peak resident memory can be
read from /proc; the test streams and hashes chunk by chunk, never keeping a
whole file either.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from oasis.sandbox.v1 import sandbox_pb2 as pb
from oasis.sandbox.v1 import sandbox_pb2_grpc as pb_grpc

from ..helpers import RawExecution, start_message
from .conftest import ServerProcess, StartProcess

MIB = 1024 * 1024
SIZE = 100 * MIB
# A server holding a 100 MiB file whole would grow by at least that much; a
# streaming one grows by its buffers (measured: 10-30 MiB).
MEMORY_BOUND = 80 * MIB


def blocks(count: int) -> Iterator[bytes]:
    """The test file, 1 MiB at a time: block i repeats sha256(str(i)), so order matters."""
    for i in range(count):
        yield hashlib.sha256(str(i).encode()).digest() * (MIB // 32)


def expected_digest(count: int) -> str:
    digest = hashlib.sha256()
    for block in blocks(count):
        digest.update(block)
    return digest.hexdigest()


def rss(server: ServerProcess) -> int:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


HASH_INPUT = {
    "python": """
import hashlib
digest = hashlib.sha256()
with open("in/big.bin", "rb") as f:
    while block := f.read(1 << 20):
        digest.update(block)
set_result(digest.hexdigest())
""",
    "node": """
const crypto = require('crypto');
const fs = require('fs');
const digest = crypto.createHash('sha256');
for await (const block of fs.createReadStream('in/big.bin')) digest.update(block);
setResult(digest.digest('hex'));
""",
}

WRITE_OUTPUT = {
    "python": """
import hashlib
with open("big.bin", "wb") as f:
    for i in range(100):
        f.write(hashlib.sha256(str(i).encode()).digest() * (1 << 15))
set_result("written", files=["big.bin"])
""",
    "node": """
const crypto = require('crypto');
const fs = require('fs');
const fd = fs.openSync('big.bin', 'w');
for (let i = 0; i < 100; i++) {
  fs.writeSync(fd, Buffer.alloc(1 << 20, crypto.createHash('sha256').update(String(i)).digest()));
}
fs.closeSync(fd);
setResult('written', ['big.bin']);
""",
}


@pytest.fixture
async def big_server(server_process: StartProcess) -> ServerProcess:
    return server_process()


async def warm_up(stub: pb_grpc.SandboxStub, runtime: str) -> None:
    code = {"python": "set_result(1)", "node": "setResult(1)"}[runtime]
    execution = await RawExecution.begin(stub, start_message(code, runtime=runtime))
    assert (await execution.result()).status == pb.ExecutionResult.OK


@pytest.mark.timeout(300)
@pytest.mark.parametrize("runtime", ["python", "node"])
async def test_100_mib_input_file(big_server: ServerProcess, runtime: str) -> None:
    """A 100 MiB input file arrives intact through 1 MiB chunks; server memory stays far below its size."""
    async with grpc.aio.insecure_channel(big_server.address) as channel:
        stub = pb_grpc.SandboxStub(channel)
        await warm_up(stub, runtime)
        baseline = rss(big_server)
        big_server.rss_peak_reset()

        request = start_message(HASH_INPUT[runtime], runtime=runtime, timeout=240)
        request.start.files.append(pb.File(name="in/big.bin", size=SIZE))
        execution = await RawExecution.begin(stub, request)
        sent = hashlib.sha256()
        for i, block in enumerate(blocks(SIZE // MIB)):
            sent.update(block)
            chunk = pb.FileChunk(name="in/big.bin", data=block, eof=i == SIZE // MIB - 1)
            await execution.send(pb.ExecuteRequest(file_chunk=chunk))
        result = await execution.result(within=240)
        peak = big_server.rss_peak()

    assert result.status == pb.ExecutionResult.OK, result.error
    assert result.output == f'"{sent.hexdigest()}"'
    assert peak - baseline < MEMORY_BOUND, f"server grew by {(peak - baseline) / MIB:.0f} MiB"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("runtime", ["python", "node"])
async def test_100_mib_output_file(big_server: ServerProcess, runtime: str) -> None:
    """A 100 MiB output file comes back as chunks (each under 4 MiB), then a File entry without data."""
    async with grpc.aio.insecure_channel(big_server.address) as channel:
        stub = pb_grpc.SandboxStub(channel)
        await warm_up(stub, runtime)
        baseline = rss(big_server)
        big_server.rss_peak_reset()

        execution = await RawExecution.begin(
            stub, start_message(WRITE_OUTPUT[runtime], runtime=runtime, timeout=240)
        )
        received = hashlib.sha256()
        total = 0
        eofs = 0
        largest = 0
        while (response := await execution.read(within=240)) is not None:
            if response.WhichOneof("kind") == "file_chunk":
                assert response.file_chunk.name == "big.bin"
                assert eofs == 0, "a chunk followed eof"
                received.update(response.file_chunk.data)
                total += len(response.file_chunk.data)
                eofs += response.file_chunk.eof
            largest = max(largest, response.ByteSize())
            execution.responses.clear()  # keep nothing: the test must not hold the file either
            if response.WhichOneof("kind") == "result":
                result = response.result
        peak = big_server.rss_peak()

    assert result.status == pb.ExecutionResult.OK, result.error
    assert total == SIZE and eofs == 1
    assert received.hexdigest() == expected_digest(SIZE // MIB)
    [entry] = result.files
    assert (entry.name, entry.size, entry.data) == ("big.bin", SIZE, b"")
    assert entry.mime == "application/octet-stream"
    assert largest <= 4 * MIB
    assert peak - baseline < MEMORY_BOUND, f"server grew by {(peak - baseline) / MIB:.0f} MiB"
