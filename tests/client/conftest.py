"""Fixtures for the client library: a GrpcRunner on a real server, and server processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from oasis.code import GrpcRunner
from sandbox_server.server import SandboxServer

from ..conftest import REPO, runtime_python
from ..helpers import unmount_leftovers

VENV_BIN = Path(sys.executable).parent


@pytest.fixture
async def runner(server: SandboxServer) -> AsyncIterator[GrpcRunner]:
    async with GrpcRunner(f"127.0.0.1:{server.port}") as runner:
        yield runner


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """`oasis-sandbox serve` in its own process, so a test can SIGKILL it."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
        await self.process.wait()


StartServerProcess = Callable[[int], Awaitable[ServerProcess]]


@pytest.fixture
async def start_server_process(tmp_path: Path) -> AsyncIterator[StartServerProcess]:
    """Start `oasis-sandbox serve` on a given port and wait for its ready line."""
    processes: list[ServerProcess] = []

    async def start(port: int) -> ServerProcess:
        env = {
            **os.environ,
            "SANDBOX_GRPC_ADDR": f"127.0.0.1:{port}",
            "SANDBOX_ADDR": "127.0.0.1:0",
            "SANDBOX_WORKSPACE": str(tmp_path / f"proc-ws{len(processes)}"),
            "SANDBOX_PYTHON_BIN": runtime_python(),
            "SANDBOX_SHUTDOWN_GRACE": "1s",
        }
        process = await asyncio.create_subprocess_exec(
            str(VENV_BIN / "oasis-sandbox"),
            "serve",
            env=env,
            cwd=REPO,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        server = ServerProcess(process, port)
        processes.append(server)
        assert process.stderr is not None
        async with asyncio.timeout(30):
            while b"listening on" not in (line := await process.stderr.readline()):
                assert line, "the server process exited before it was ready"
        # Keep draining its log so it never blocks on a full pipe.
        drain = asyncio.create_task(_drain(process.stderr))
        drains.append(drain)
        return server

    drains: list[asyncio.Task[None]] = []
    yield start
    for server in processes:
        if server.process.returncode is None:
            server.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await server.process.wait()
        await server.kill()
    unmount_leftovers(tmp_path)
    for drain in drains:
        drain.cancel()


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass


def pids_with_env(marker: str) -> list[int]:
    """Live processes whose environment contains `marker` (all processes of one execution)."""
    found = []
    needle = marker.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if needle not in Path(f"/proc/{entry}/environ").read_bytes():
                continue
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
            continue
        if state not in ("Z", "X"):
            found.append(int(entry))
    return found


def execution_pids(marker: str) -> set[int]:
    """Processes of one execution: those whose environment holds `marker`, and
    their parents: the code itself among them (a process started ahead of its
    request gets the request's env later, which its /proc environ never shows),
    and, for a process started with it, the code's supervisor."""
    children = pids_with_env(marker)
    return set(children) | {parent for pid in children if (parent := _parent(pid))}


def alive(pids: set[int]) -> set[int]:
    """Those of `pids` still running (not zombies)."""
    running = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if state not in ("Z", "X"):
            running.add(pid)
    return running


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0
