"""Per-session cgroups on this host: memory and processes capped for a session as a whole.

RLIMIT_AS caps each process; the session's cgroup caps all its processes and
the tmpfs pages of its workspace together. These tests look at the host's
cgroup folders from outside the sandbox, and are skipped where the host gives
no usable cgroups (the server then falls back to rlimits, tested last).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from oasis.sandbox.v1 import sandbox_pb2 as pb
from sandbox_server import cgroups
from sandbox_server.server import SandboxServer

from ..conftest import StartServer
from ..helpers import eventually
from .conftest import client_for

MIB = 1 << 20
# This development host mounts the v1 memory hierarchy (its v2 mount has no controllers).
HOST_V1 = os.path.exists("/sys/fs/cgroup/memory/memory.limit_in_bytes")
# 300 MiB resident in a child process: far below SANDBOX_MEMORY (1 GiB) on its own.
CHILD = (
    "import subprocess, sys\n"
    # Printed in two words: a traceback quoting the code must not look like success.
    "code = \"data = b'x' * (300 << 20)\\nprint('child', 'allocated', flush=True)\"\n"
    "subprocess.run([sys.executable, '-c', code], check=True)\n"
)
# 200 MiB of workspace files: far below SANDBOX_WORKSPACE_SIZE (1 GiB) on their own.
FILE = "with open('big.bin', 'wb') as f:\n    for _ in range(200):\n        f.write(b'x' * (1 << 20))\n"


def _require_cgroups(server: SandboxServer) -> None:
    assert server.sandbox is not None
    if server.sandbox.cgroups.mechanism is cgroups.Mechanism.NONE:
        pytest.skip("this host gives the server no usable cgroups")


def _folder_with(server: SandboxServer, *controls: str) -> Path:
    """The server's group in the hierarchy that has one of `controls` (v1), or its v2 folder."""
    assert server.sandbox is not None
    for folder in server.sandbox.cgroups.folders:
        if any((folder / control).exists() for control in controls):
            return folder
    raise AssertionError(f"no cgroup folder of this server has {controls}")


def _memory(server: SandboxServer) -> Path:
    return _folder_with(server, "memory.limit_in_bytes", "memory.max")


def _groups(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir())


@pytest.mark.timeout(120)
async def test_session_memory_counts_processes_and_workspace_files(
    start_server: StartServer,
) -> None:
    """A 300 MiB child and 200 MiB of files each fit; together they break the session's 384 MiB."""
    server = await start_server(SANDBOX_SESSION_MEMORY="384MiB")
    _require_cgroups(server)
    async with client_for(server) as client:
        alone = await client.run(CHILD, timeout=60)
        assert alone.status == "OK", alone.result.error
        assert "child allocated" in alone.result.logs

        files = await client.run(FILE, session_id="full", timeout=60)
        assert files.status == "OK", files.result.error
        both = await client.run(CHILD, session_id="full", timeout=60)
        assert both.status in ("ERROR", "KILLED")
        assert "session memory limit of 384 MiB exceeded" in both.result.error
        assert "child allocated" not in both.result.logs

        # The cap is the session's, not the server's: another session is unharmed.
        other = await client.run(CHILD, session_id="other", timeout=60)
        assert other.status == "OK", other.result.error


@pytest.mark.timeout(120)
async def test_process_cap_holds_across_the_session(start_server: StartServer) -> None:
    """Two runs of one session share SANDBOX_MAX_PROCESSES: the second gets what the first left."""
    server = await start_server(SANDBOX_MAX_PROCESSES="24")
    _require_cgroups(server)
    holding = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> str:
        holding.set()
        await release.wait()
        return "ok"

    hold_code = (
        "import os, time\n"
        "for _ in range(10):\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "call_tool('hold')\n"
    )
    bomb = (
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    while n < 200:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(60)\n"
        "            os._exit(0)\n"
        "        n += 1\n"
        "finally:\n"
        "    print('forked', n, flush=True)\n"
    )
    async with client_for(server) as client:
        first = asyncio.create_task(
            client.run(hold_code, session_id="shared", tools={"hold": hold}, timeout=60)
        )
        try:
            await asyncio.wait_for(holding.wait(), 30)
            second = await client.run(bomb, session_id="shared", timeout=60)
            # (Besides the groups of processes started ahead for runs without a session.)
            pids = [
                group
                for group in _groups(_folder_with(server, "pids.max"))
                if group.name.endswith("sessions-shared")
            ]
            assert len(pids) == 1
            assert (pids[0] / "pids.max").read_text().strip() == "24"
            peak = pids[0] / "pids.peak"
            if peak.exists():
                # Supervisors count too, so the cgroup, not RLIMIT_NPROC, is what refused.
                assert int(peak.read_text()) == 24
        finally:
            release.set()
            held = await first
    assert held.status == "OK", held.result.error
    assert second.status == "ERROR"
    assert "process and thread limit of 24 per session reached" in second.result.error
    forked = int(second.result.logs.split("forked ")[1].split()[0])
    assert 0 < forked <= 24 - 10 - 2


async def test_get_info_reports_the_mechanism(start_server: StartServer) -> None:
    server = await start_server(SANDBOX_SESSION_MEMORY="1GiB")
    _require_cgroups(server)
    async with client_for(server) as client:
        info = await client.stub.GetInfo(pb.GetInfoRequest())
    assert server.sandbox is not None
    assert info.resource_control == server.sandbox.cgroups.mechanism.value
    if HOST_V1:
        assert info.resource_control == "cgroup v1"
    assert info.limits.session_memory == 1024 * MIB


async def test_cpu_time_is_measured_per_execution(start_server: StartServer) -> None:
    server = await start_server()
    _require_cgroups(server)
    async with client_for(server) as client:
        busy = await client.run(
            "import time\nend = time.monotonic() + 0.5\nwhile time.monotonic() < end:\n    pass\n"
        )
        idle = await client.run("import time\ntime.sleep(0.5)\n")
    busy_cpu = busy.result.cpu_time.ToNanoseconds() / 1e9
    idle_cpu = idle.result.cpu_time.ToNanoseconds() / 1e9
    assert busy_cpu >= 0.3
    assert 0 < idle_cpu < 0.25  # starting the interpreter, nothing more


async def test_groups_go_with_their_sessions(start_server: StartServer) -> None:
    """A session's group lives as long as the session; a run's and a scratch run's end with them.

    Without spares, whose groups wait for runs to come (test_prestart.py)."""
    server = await start_server(SANDBOX_SPARES="0", SANDBOX_SESSION_SPARES="0")
    _require_cgroups(server)
    assert server.sandbox is not None
    memory = _memory(server)
    seen: dict[str, list[str]] = {}

    def look() -> str:
        seen["groups"] = [p.name for p in _groups(memory)]
        return "ok"

    async with client_for(server) as client:
        kept = await client.run("call_tool('look')", session_id="keep", tools={"look": look})
        assert kept.status == "OK", kept.result.error
        assert len(seen["groups"]) == 1 and seen["groups"][0].endswith("sessions-keep")
        assert [p.name for p in _groups(memory)] == seen["groups"]
        # No run group outlives its run, in any hierarchy.
        for folder in server.sandbox.cgroups.folders:
            for session in _groups(folder):
                assert _groups(session) == []

        deleted = await client.stub.DeleteWorkspace(pb.DeleteWorkspaceRequest(session_id="keep"))
        assert deleted.deleted
        for folder in server.sandbox.cgroups.folders:
            assert _groups(folder) == []

        scratch = await client.run("call_tool('look')", tools={"look": look})
        assert scratch.status == "OK", scratch.result.error
        assert len(seen["groups"]) == 1 and "-scratch-" in seen["groups"][0]
        await eventually(
            lambda: all(_groups(f) == [] for f in server.sandbox.cgroups.folders),
            what="the scratch run's groups removed",
        )

    folders = server.sandbox.cgroups.folders
    await server.stop(grace=0)
    assert not any(map(os.path.exists, folders))


async def test_without_cgroups_the_server_falls_back_to_rlimits(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cgroups, "find_v2", lambda *args: None)
    monkeypatch.setattr(cgroups, "find_v1", lambda *args: {})
    server = await start_server()
    async with client_for(server) as client:
        info = await client.stub.GetInfo(pb.GetInfoRequest())
        outcome = await client.run("set_result('fine')", session_id="plain")
    assert info.resource_control == "rlimits"
    assert info.limits.session_memory == 0
    assert outcome.output == "fine"
    assert outcome.result.cpu_time.ToNanoseconds() == 0
