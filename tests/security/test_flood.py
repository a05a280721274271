"""Floods from the code: logs, the sandbox channel, install requests. The server stays bounded and answers.

Memory is measured on a server in its own process (`python -m sandbox_server
serve`), as the peak resident size (VmHWM) reset just before the flood.
"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from ..conftest import StartServer
from ..helpers import remote_index
from ..sandbox_client import Outcome, SandboxClient
from .conftest import ServerProcess, StartProcess, client_for

MIB = 1024 * 1024
# Generous: the floods below are 1 GiB and 200 MiB; a server that kept them would grow by that much.
MEMORY_BOUND = 100 * MIB


def resident(server: ServerProcess) -> int:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc status")


async def flood(server: ServerProcess, code: str) -> tuple[Outcome, int]:
    """Run `code` after a warm-up; return the outcome and how far the server's peak RSS rose."""
    async with client_for(server) as client:
        assert (await client.run("set_result(1)")).status == "OK"
        baseline = resident(server)
        server.rss_peak_reset()
        outcome = await client.run(code, timeout=120)
        grew = server.rss_peak() - baseline
        after = await client.run("set_result('still answering')")
    assert after.output == "still answering"
    return outcome, grew


@pytest.mark.timeout(200)
async def test_log_flood_keeps_server_memory_bounded(server_process: StartProcess) -> None:
    """1 GiB printed to stdout and stderr: logs are cut at the cap and the server grows far less."""
    code = (
        "import os\n"
        "chunk = b'x' * (1 << 20)\n"
        "for _ in range(512):\n"
        "    os.write(1, chunk)\n"
        "    os.write(2, chunk)\n"
        "set_result('flooded')\n"
    )
    outcome, grew = await flood(server_process(), code)
    assert outcome.status == "OK", outcome.result.error
    assert outcome.result.logs_truncated
    assert len(outcome.result.logs.encode()) < 513 * 1024
    assert grew < MEMORY_BOUND, f"the server grew by {grew / MIB:.0f} MiB"


@pytest.mark.timeout(200)
async def test_endless_channel_line_keeps_server_memory_bounded(
    server_process: StartProcess,
) -> None:
    """200 MiB written to the sandbox channel without a newline ends the run with ERROR, not a full server."""
    code = (
        "import os\n"
        "fd = set_result.__globals__['_out']\n"
        "chunk = b'x' * (1 << 20)\n"
        "for _ in range(200):\n"
        "    os.write(fd, chunk)\n"
    )
    outcome, grew = await flood(server_process(), code)
    assert outcome.status == "ERROR"
    assert "invalid message on the sandbox channel" in outcome.result.error
    assert grew < MEMORY_BOUND, f"the server grew by {grew / MIB:.0f} MiB"


async def test_deeply_nested_channel_message_is_a_clear_error(client: SandboxClient) -> None:
    """A channel line nested 200 000 levels deep (json.loads recursion) ends in ERROR, not a silent OK."""
    code = (
        "import os, time\n"
        "os.write(set_result.__globals__['_out'], b'[' * 200000 + b'\\n')\n"
        "time.sleep(1)\n"
        "set_result('after')\n"
    )
    outcome = await client.run(code, timeout=60)
    assert outcome.status == "ERROR"
    assert "invalid message on the sandbox channel" in outcome.result.error


INSTALL_FLOOD = """
import threading
errors = []

def install(i):
    try:
        install_package(f"oasis-missing-{i}")
    except RuntimeError as exc:
        errors.append(str(exc))

threads = [threading.Thread(target=install, args=(i,)) for i in range(30)]
for t in threads:
    t.start()
for t in threads:
    t.join()
set_result({"failed": len(errors), "refused": sum("at once" in e for e in errors)})
"""


def my_installers() -> int:
    """Installers running now: oasis-init processes of this process's server that run pip install."""
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            argv = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == os.getpid() and b"pip\0install" in argv:
            count += 1
    return count


@pytest.mark.timeout(200)
async def test_install_flood_runs_one_installer_at_a_time(start_server: StartServer) -> None:
    """30 install_package calls at once: one installer runs at a time and the excess is refused at once."""
    async with remote_index() as index:
        server = await start_server(SANDBOX_PIP_INDEX_URL=f"{index.url}/simple")
        peak = 0

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, my_installers())
                await asyncio.sleep(0.01)

        sampler = asyncio.create_task(sample())
        try:
            async with client_for(server) as client:
                # 30 threads fit the memory limit: the runtime caps malloc arenas.
                outcome = await client.run(INSTALL_FLOOD, timeout=150)
        finally:
            sampler.cancel()
    assert outcome.status == "OK", outcome.result.error
    assert outcome.output["failed"] == 30
    assert outcome.output["refused"] >= 1
    assert 1 <= peak <= 1, f"{peak} installers ran at once"


@pytest.mark.timeout(120)
async def test_a_connection_flood_is_capped_and_the_server_keeps_serving(
    start_server: StartServer,
) -> None:
    """Idle connections past SANDBOX_MAX_CONNECTIONS are closed; open channels keep working."""
    server = await start_server(SANDBOX_MAX_CONNECTIONS="16")
    async with client_for(server) as client:
        before = await client.run("set_result(1)", timeout=30)
        flood = []
        try:
            for _ in range(64):  # bounded: four times the cap
                flood.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
            await asyncio.sleep(0.5)
            closed = 0
            for sock in flood:
                sock.setblocking(False)
                try:
                    closed += sock.recv(1) == b""
                except BlockingIOError:
                    pass  # still open
                except ConnectionError:
                    closed += 1
            during = await client.run("set_result(2)", timeout=30)
        finally:
            for sock in flood:
                sock.close()
    assert before.output == 1 and during.output == 2
    assert closed >= 64 - 16 - 1, f"only {closed} of 64 flood connections were closed"
