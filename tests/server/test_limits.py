"""The 4 MiB message rule and the caps on logs, results and errors.

The `client` fixture's channel keeps gRPC's default 4 MiB receive limit, so
any larger message from the server fails these tests with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import hashlib

import grpc
import pytest

from oasis.sandbox.v1 import sandbox_pb2 as pb

from ..conftest import StartServer
from ..sandbox_client import SandboxClient

MIB = 1024 * 1024
RUNTIMES = ["python", "node"]


def largest_message(responses: list[pb.ExecuteResponse]) -> int:
    """Bytes of the largest message the server sent."""
    return max(r.ByteSize() for r in responses)


MANY_FILES = {
    "python": """
names = []
for i in range(6):
    data = bytes([i]) * 1_000_000
    with open(f"part{i}.bin", "wb") as f:
        f.write(data)
    names.append(f"part{i}.bin")
set_result({"n": len(names)}, files=names)
""",
    "node": """
const fs = require('fs');
const names = [];
for (let i = 0; i < 6; i++) {
  fs.writeFileSync(`part${i}.bin`, Buffer.alloc(1000000, i));
  names.push(`part${i}.bin`);
}
setResult({n: names.length}, names);
""",
}


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_many_files_just_under_a_mib_stay_below_4_mib_per_message(
    client: SandboxClient, runtime: str
) -> None:
    """Six ~1 MB files do not make one 6 MB result: what does not fit inline goes as chunks."""
    outcome = await client.run(MANY_FILES[runtime], runtime=runtime)
    assert outcome.status == "OK", outcome.result.error
    assert largest_message(outcome.responses) <= 4 * MIB
    assert [f.name for f in outcome.result.files] == [f"part{i}.bin" for i in range(6)]
    for i, entry in enumerate(outcome.result.files):
        assert entry.size == 1_000_000
        assert outcome.file(entry.name) == bytes([i]) * 1_000_000
    assert any(not f.data for f in outcome.result.files), "some files must have been chunked"


@pytest.mark.parametrize(
    ("runtime", "code"),
    [
        ("python", "raise ValueError('e' * (6 << 20) + ' the real reason')"),
        ("node", "throw new Error('e'.repeat(6 << 20) + ' the real reason')"),
    ],
)
async def test_huge_error_is_clipped(client: SandboxClient, runtime: str, code: str) -> None:
    """A 6 MiB exception message is cut to a size one message holds, keeping its end."""
    outcome = await client.run(code, runtime=runtime)
    assert outcome.status == "ERROR"
    assert len(outcome.result.error.encode()) <= 128 * 1024
    assert "the real reason" in outcome.result.error
    assert "bytes cut" in outcome.result.error
    assert largest_message(outcome.responses) <= 4 * MIB


@pytest.mark.parametrize(
    ("runtime", "code"),
    [
        ("python", "raise ValueError('bad \\ud800 surrogate')"),
        ("node", "throw new Error('bad \\ud800 surrogate')"),
        ("python", "set_result({'k': '\\udfff'})"),
        ("python", "call_tool('tool\\ud800')"),
    ],
)
async def test_lone_surrogates_do_not_break_the_rpc(
    client: SandboxClient, runtime: str, code: str
) -> None:
    """Text that is not valid UTF-8 (lone surrogates) still ends in a result, not a broken stream."""
    outcome = await client.run(code, runtime=runtime, tools={})
    assert outcome.status in ("OK", "ERROR")
    assert outcome.result.error or outcome.result.output


async def test_result_value_limit(client: SandboxClient) -> None:
    """A set_result value over the limit is refused with advice to return a file instead."""
    outcome = await client.run("set_result('x' * (3 << 20))")
    assert outcome.status == "ERROR"
    assert outcome.result.output == ""
    assert "limit" in outcome.result.error and "file" in outcome.result.error


async def test_enormous_result_value(client: SandboxClient) -> None:
    """Even a value far beyond the channel's line limit ends with a clear error."""
    outcome = await client.run("set_result('x' * (40 << 20))", timeout=60)
    assert outcome.status == "ERROR"
    assert "file" in outcome.result.error
    assert largest_message(outcome.responses) <= 4 * MIB


@pytest.mark.parametrize(
    ("runtime", "code"),
    [
        (
            "python",
            "import sys\nfor i in range(2000):\n    print('line', i, 'x' * 1000)\nsys.stderr.write('err tail')",
        ),
        ("node", "for (let i = 0; i < 2000; i++) console.log('line', i, 'x'.repeat(1000));"),
    ],
)
async def test_logs_are_capped_at_512_kib_by_default(
    client: SandboxClient, runtime: str, code: str
) -> None:
    """About 2 MB printed keeps (and streams) only the first 512 KiB, flagged as truncated."""
    outcome = await client.run(code, runtime=runtime)
    assert outcome.status == "OK", outcome.result.error
    assert outcome.result.logs_truncated
    assert outcome.result.logs.startswith("line 0 ")
    kept = outcome.result.logs.split("\n[logs truncated")[0]
    assert len(kept.encode()) == 512 * 1024
    streamed = b"".join(r.log.data for r in outcome.responses if r.WhichOneof("kind") == "log")
    assert len(streamed) == 512 * 1024
    assert largest_message(outcome.responses) <= 4 * MIB


async def test_log_cap_is_configurable(start_server: StartServer) -> None:
    """SANDBOX_MAX_OUTPUT sets the cap."""
    server = await start_server(SANDBOX_MAX_OUTPUT="1KiB")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        client = SandboxClient(channel)
        small = await client.run("print('a' * 100)")
        big = await client.run("print('b' * 5000)")
    assert not small.result.logs_truncated and small.result.logs == "a" * 100 + "\n"
    assert big.result.logs_truncated
    assert big.result.logs.startswith("b" * 1024 + "\n[logs truncated")


async def test_binary_logs_stay_within_the_cap(client: SandboxClient) -> None:
    """Undecodable bytes in the logs do not blow the text past the cap (each becomes U+FFFD)."""
    code = "import os\nos.write(1, b'\\xff' * (512 * 1024))\nset_result(1)"
    outcome = await client.run(code)
    assert outcome.status == "OK", outcome.result.error
    assert len(outcome.result.logs.encode()) <= 512 * 1024 + 200
    assert largest_message(outcome.responses) <= 4 * MIB


async def test_everything_at_once_fits(client: SandboxClient) -> None:
    """Max-size value, full logs of binary bytes and a ~1 MB file together still fit 4 MiB messages."""
    code = """
import os
os.write(1, b'\\xfe' * (600 * 1024))
with open('f.bin', 'wb') as f:
    f.write(b'z' * 1_000_000)
set_result('v' * (2 * 1024 * 1024 - 2), files=['f.bin'])
"""
    outcome = await client.run(code)
    assert outcome.status == "OK", outcome.result.error
    assert largest_message(outcome.responses) <= 4 * MIB
    assert (
        hashlib.sha256(outcome.file("f.bin")).hexdigest()
        == hashlib.sha256(b"z" * 1_000_000).hexdigest()
    )


async def test_too_many_output_files_are_reported(client: SandboxClient) -> None:
    """Listing more files than are returned says so instead of dropping them silently."""
    code = """
names = []
for i in range(150):
    open(f"f{i}.txt", "w").write(str(i))
    names.append(f"f{i}.txt")
set_result(1, files=names)
"""
    outcome = await client.run(code)
    assert outcome.status == "ERROR"
    assert "150 output files" in outcome.result.error
    assert "SANDBOX_MAX_OUTPUT_FILES" in outcome.result.error
    assert len(outcome.result.files) == 32  # the default limit
