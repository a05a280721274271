"""Shared pieces of the adversarial suite: clients for real servers and host-side probes.

The process probe looks at the host, from outside the sandbox, for what a
run left behind. Session uids start at the same number in every server, and
other test runs may share this machine, so a process counts as the run's only
when it has the session's uid AND is in the run's pid namespace or carries
the test's marker.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc

from sandbox_server.isolation import UID_BASE
from sandbox_server.server import SandboxServer

from ..helpers import LocalIndex
from ..sandbox_client import SandboxClient
from ..server.conftest import ServerProcess, StartProcess, server_process

__all__ = [
    "WHO_AM_I",
    "LocalIndex",
    "ServerProcess",
    "StartProcess",
    "client_for",
    "execution_processes",
    "server_process",
    "session_path",
]

# Reported by code that wants the host to find its processes: its uid and pid namespace.
WHO_AM_I = {
    "python": "import os\nWHO = {'uid': os.getuid(), 'ns': os.readlink('/proc/self/ns/pid')}\n",
    "node": (
        "const WHO = { uid: process.getuid(), "
        "ns: require('fs').readlinkSync('/proc/self/ns/pid') };\n"
    ),
}


@asynccontextmanager
async def client_for(server: SandboxServer | ServerProcess) -> AsyncIterator[SandboxClient]:
    """A plain test client on an insecure channel to `server`."""
    port = server.port
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield SandboxClient(channel)


def session_path(server: SandboxServer, session_id: str) -> Path:
    """Where a session's workspace lives on the host (the one place code and test share)."""
    return server.config.workspace_root / "sessions" / session_id


def _status_uid(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


_SIGKILL_BIT = 1 << (9 - 1)
_PF_EXITING = 0x4


def _is_live(pid: str) -> bool:
    """Whether the process may still run code: not exited, not exiting, no SIGKILL pending.

    A run answers once its processes are sent SIGKILL; their exits follow."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        )
    except (OSError, IndexError, ValueError):
        return False
    if fields[0] in ("Z", "X") or int(fields[6]) & _PF_EXITING:
        return False
    pending = int(status["SigPnd"], 16) | int(status["ShdPnd"], 16)
    return not pending & _SIGKILL_BIT


def execution_processes(uid: int, pid_ns: str = "", marker: str = "") -> list[int]:
    """Live host processes of `uid` in pid namespace `pid_ns` (e.g. "pid:[4026532]") or carrying `marker`."""
    assert uid >= UID_BASE, f"{uid} is not a session uid"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or _status_uid(entry) != uid or not _is_live(entry):
            continue
        try:
            in_ns = bool(pid_ns) and os.readlink(f"/proc/{entry}/ns/pid") == pid_ns
            marked = bool(marker) and any(
                marker.encode() in Path(f"/proc/{entry}/{name}").read_bytes()
                for name in ("cmdline", "environ")
            )
        except OSError:
            continue
        if in_ns or marked:
            found.append(int(entry))
    return found
