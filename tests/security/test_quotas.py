"""Disk quotas: a workspace, /tmp and /dev/shm cannot be filled past their caps, and others do not notice.

Caps are lowered (SANDBOX_WORKSPACE_SIZE, SANDBOX_WORKSPACE_FILES,
SANDBOX_TMP_SIZE, SANDBOX_MAX_FILE_SIZE) so each fill ends in about a second.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from ..conftest import StartServer
from ..sandbox_client import Outcome, SandboxClient
from .conftest import client_for, session_path

MIB = 1024 * 1024
QUOTA = "workspace quota exceeded"

FILL_BYTES = """
import os
chunk = b'x' * (1 << 20)
with open(os.path.join(FOLDER, 'fill.bin'), 'wb') as f:
    while True:
        f.write(chunk)
        f.flush()
"""
FILL_INODES = """
import os
os.makedirs('many', exist_ok=True)
n = 0
try:
    while True:
        open(f'many/{n}', 'w').close()
        n += 1
finally:
    print('created', n, flush=True)
"""
WRITE_SOME = """
import os
with open('mine.bin', 'wb') as f:
    f.write(b'y' * (2 << 20))
for i in range(50):
    open(f'small{i}', 'w').close()
set_result(os.path.getsize('mine.bin'))
"""


async def test_disk_fill_stops_at_the_workspace_quota(start_server: StartServer) -> None:
    """Writing without end fails with ENOSPC at SANDBOX_WORKSPACE_SIZE; another session still writes."""
    server = await start_server(SANDBOX_WORKSPACE_SIZE="16MiB")
    async with client_for(server) as client:
        filler = await client.run(
            FILL_BYTES.replace("FOLDER", "'.'"), session_id="filler", timeout=60
        )
        other = await client.run(WRITE_SOME, session_id="neighbour")
        again = await client.run(
            "set_result(open('fill.bin', 'rb').read(1).decode())", session_id="filler"
        )
    assert filler.status == "ERROR"
    assert QUOTA in filler.result.error
    assert "at most 16 MiB" in filler.result.error
    assert other.status == "OK", other.result.error
    assert other.output == 2 * MIB
    assert again.output == "x"  # the full session is still usable for reading
    # On the host, the workspace is a 16 MiB filesystem of its own.
    stats = os.statvfs(session_path(server, "filler"))
    assert stats.f_blocks * stats.f_frsize == 16 * MIB
    assert (session_path(server, "filler") / "fill.bin").stat().st_size <= 16 * MIB


async def test_inode_fill_stops_at_the_file_count_quota(start_server: StartServer) -> None:
    """Creating empty files without end stops near SANDBOX_WORKSPACE_FILES; another session is unaffected."""
    server = await start_server(SANDBOX_WORKSPACE_FILES="500")
    async with client_for(server) as client:
        filler, other = await asyncio.gather(
            client.run(FILL_INODES, session_id="inode-filler", timeout=60),
            client.run(WRITE_SOME, session_id="inode-neighbour", timeout=60),
        )
    assert filler.status == "ERROR"
    assert QUOTA in filler.result.error
    assert "500 files" in filler.result.error
    created = int(filler.result.logs.split("created ")[1].split()[0])
    assert 400 < created < 500
    assert other.status == "OK", other.result.error


@pytest.mark.parametrize("folder", ["/tmp", "/dev/shm"])
async def test_tmp_fill_stops_at_the_tmp_size(start_server: StartServer, folder: str) -> None:
    """/tmp and /dev/shm are private tmpfs mounts capped at SANDBOX_TMP_SIZE."""
    server = await start_server(SANDBOX_TMP_SIZE="8MiB")
    async with client_for(server) as client:
        outcome = await client.run(FILL_BYTES.replace("FOLDER", repr(folder)), timeout=60)
    assert outcome.status == "ERROR"
    assert QUOTA in outcome.result.error
    assert "8 MiB in /tmp" in outcome.result.error


async def test_tmp_and_shm_are_private_to_each_execution(client: SandboxClient) -> None:
    """Files left in /tmp or /dev/shm by a running execution are invisible to any other one."""
    plant = (
        "import os\n"
        "open('/tmp/planted', 'w').write('secret')\n"
        "open('/dev/shm/planted', 'w').write('secret')\n"
        "call_tool('planted')\n"
        "set_result([os.path.exists(f'{d}/planted') for d in ('/tmp', '/dev/shm')])\n"
    )
    look = "import os\nset_result([os.path.exists(f'{d}/planted') for d in ('/tmp', '/dev/shm')])"
    looked = asyncio.Event()
    planted = asyncio.Event()

    async def wait_for_look() -> str:
        planted.set()
        await looked.wait()
        return "ok"

    async def look_later() -> list[Outcome]:
        await planted.wait()
        try:
            return [
                await client.run(look, session_id="shared-session"),
                await client.run(look, session_id="other-session"),
            ]
        finally:
            looked.set()

    holder, views = await asyncio.gather(
        client.run(plant, session_id="shared-session", tools={"planted": wait_for_look}),
        look_later(),
    )
    assert holder.output == [True, True], holder.result.error
    assert [view.output for view in views] == [[False, False], [False, False]]


async def test_file_size_limit_is_named(start_server: StartServer) -> None:
    """A single file larger than SANDBOX_MAX_FILE_SIZE fails with the file size limit named."""
    server = await start_server(SANDBOX_MAX_FILE_SIZE="1MiB")
    async with client_for(server) as client:
        outcome = await client.run("open('big.bin', 'wb').write(b'z' * (2 << 20))")
    assert outcome.status == "ERROR"
    assert "file size limit of 1 MiB exceeded" in outcome.result.error
