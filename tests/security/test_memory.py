"""Memory bombs end with a clear result that names the memory limit, in both runtimes.

The limit is lowered to 256 MiB (SANDBOX_MEMORY) so that each bomb ends in
about a second; the mechanism is the same at the 1 GiB default.
"""

from __future__ import annotations

import pytest

from ..conftest import StartServer
from .conftest import client_for

BOMBS = {
    "python-list": (
        "python",
        "grow = []\nwhile True:\n    grow.append(bytearray(16 << 20))",
    ),
    # mmap bypasses RLIMIT_DATA; RLIMIT_AS still holds. The pages are touched, not only mapped.
    "python-mmap": (
        "python",
        "import ctypes, mmap\n"
        "maps = []\n"
        "while True:\n"
        "    m = mmap.mmap(-1, 32 << 20)\n"
        "    ctypes.memset(ctypes.addressof(ctypes.c_char.from_buffer(m)), 1, len(m))\n"
        "    maps.append(m)",
    ),
    "node-array": (
        "node",
        "const grow = [];\nwhile (true) grow.push(new Array(1 << 20).fill(Math.random()));",
    ),
    # Buffers live outside the V8 heap: only RLIMIT_AS stops them.
    "node-buffer": (
        "node",
        "const grow = [];\nwhile (true) grow.push(Buffer.alloc(64 << 20, 1));",
    ),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("bomb", list(BOMBS))
async def test_memory_bomb_names_the_memory_limit(start_server: StartServer, bomb: str) -> None:
    """Growing memory without end is stopped (ERROR or KILLED) with "memory limit of 256 MiB exceeded"."""
    runtime, code = BOMBS[bomb]
    server = await start_server(SANDBOX_MEMORY="256MiB")
    async with client_for(server) as client:
        outcome = await client.run(code, runtime=runtime, timeout=60)
        assert outcome.status in ("ERROR", "KILLED")
        # Node's Buffers may grow 2 GiB past its heap limit: with cgroups, the
        # session's cap (SANDBOX_MEMORY + SANDBOX_WORKSPACE_SIZE) may stop them first.
        error = outcome.result.error
        assert (
            "memory limit of 256 MiB exceeded" in error
            or "session memory limit of 1.25 GiB exceeded" in error
        )
        # The server is unharmed: the next run works.
        after = await client.run("set_result('fine')")
    assert after.output == "fine"
