"""Returned files (chunked and inline), max_file_size and max_output."""

from __future__ import annotations

import hashlib

from oasis import CodeRequest, CodeResult, LogChunk, Status, tool_dispatcher
from oasis.code import GrpcRunner, KiB, MiB
from sandbox_server.server import SandboxServer

MAKE_FILES = """
import hashlib, os
big = os.urandom(3 * 1024 * 1024 + 777)   # over 1 MiB: sent back as chunks
small = b"small file\\n" * 100             # inline in the result
open("big.bin", "wb").write(big)
open("small.txt", "wb").write(small)
set_result({"big": hashlib.sha256(big).hexdigest(), "small": hashlib.sha256(small).hexdigest()},
           files=["big.bin", "small.txt"])
"""


async def test_output_chunks_are_reassembled(runner: GrpcRunner) -> None:
    result = await runner.run(CodeRequest(code=MAKE_FILES), tool_dispatcher({}))

    assert result.status is Status.OK, result.error
    big, small = result.files
    assert (big.name, big.size, len(big.data)) == ("big.bin", 3 * MiB + 777, 3 * MiB + 777)
    assert hashlib.sha256(big.data).hexdigest() == result.output["big"]
    assert (small.name, small.mime, small.size) == ("small.txt", "text/plain", 1100)
    assert hashlib.sha256(small.data).hexdigest() == result.output["small"]


async def test_files_over_max_file_size_come_back_without_data(server: SandboxServer) -> None:
    async with GrpcRunner(f"127.0.0.1:{server.port}", max_file_size=1000) as runner:
        result = await runner.run(CodeRequest(code=MAKE_FILES), tool_dispatcher({}))

    assert result.status is Status.OK, result.error
    big, small = result.files
    # Both are over 1000 bytes: one was chunked, one inline; neither keeps data.
    assert (big.name, big.mime, big.size, big.data) == (
        "big.bin",
        "application/octet-stream",
        3 * MiB + 777,
        b"",
    )
    assert (small.name, small.mime, small.size, small.data) == (
        "small.txt",
        "text/plain",
        1100,
        b"",
    )


async def test_max_file_size_keeps_files_up_to_the_limit(server: SandboxServer) -> None:
    code = "open('a.bin','wb').write(b'a' * 1500000)\nopen('b.bin','wb').write(b'b' * 1500001)\nset_result(1, files=['a.bin', 'b.bin'])"
    async with GrpcRunner(f"127.0.0.1:{server.port}", max_file_size=1500000) as runner:
        result = await runner.run(CodeRequest(code=code), tool_dispatcher({}))

    a, b = result.files
    assert (a.size, a.data) == (1500000, b"a" * 1500000)
    assert (b.size, b.data) == (1500001, b"")


async def test_max_output_caps_logs_and_output(server: SandboxServer) -> None:
    code = "print('x' * 5000)\nset_result('y' * 3000)"
    async with GrpcRunner(f"127.0.0.1:{server.port}", max_output=2 * KiB) as runner:
        capped = await runner.run(CodeRequest(code=code), tool_dispatcher({}))
    async with GrpcRunner(f"127.0.0.1:{server.port}") as runner:
        full = await runner.run(CodeRequest(code=code), tool_dispatcher({}))

    assert capped.status is Status.OK
    assert capped.logs == "x" * 2048 and capped.logs_truncated
    assert capped.output is None and capped.output_truncated
    assert "over this runner's max_output (2048 bytes)" in capped.error
    assert full.logs == "x" * 5000 + "\n" and not full.logs_truncated
    assert full.output == "y" * 3000 and not full.output_truncated and full.error == ""


async def test_stream_yields_the_logs_then_the_result(runner: GrpcRunner) -> None:
    code = "import sys\nfor i in range(5):\n    print('line', i, flush=True)\n    call_tool('tick', {'i': i})\nprint('oops', file=sys.stderr)\nset_result('done')"
    events = [
        e
        async for e in runner.stream(CodeRequest(code=code), tool_dispatcher({"tick": lambda i: i}))
    ]

    *chunks, result = events
    assert isinstance(result, CodeResult) and result.output == "done"
    assert all(isinstance(c, LogChunk) for c in chunks)
    stdout = b"".join(c.data for c in chunks if isinstance(c, LogChunk) and c.stream == "stdout")
    stderr = b"".join(c.data for c in chunks if isinstance(c, LogChunk) and c.stream == "stderr")
    assert stdout == b"".join(f"line {i}\n".encode() for i in range(5))
    assert stderr == b"oops\n"


async def test_many_output_files_near_one_mib(runner: GrpcRunner) -> None:
    """Together they are over one 4 MiB message: some must come back as chunks."""
    code = "names = []\nfor i in range(5):\n    open(f'f{i}', 'wb').write(bytes([i]) * (1024 * 1024 - 10))\n    names.append(f'f{i}')\nset_result(len(names), files=names)"
    result = await runner.run(CodeRequest(code=code), tool_dispatcher({}))

    assert result.status is Status.OK, result.error
    assert [f.data for f in result.files] == [bytes([i]) * (1024 * 1024 - 10) for i in range(5)]
