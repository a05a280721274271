"""Processes started ahead of their executions (the warm launcher's spares).

A spare serves a run as a fresh start would: the request's env and the
session's files reach the code, it runs once, and nothing outlives the
session it waits for or the server.
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from oasis.sandbox.v1 import sandbox_pb2 as pb
from sandbox_server.config import ConfigError, load
from sandbox_server.server import SandboxServer

from ..conftest import StartServer
from ..helpers import eventually
from ..sandbox_client import SandboxClient


def boxes() -> set[int]:
    """oasis-init processes this test process's servers started (a box or a cold start)."""
    found = set()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            name = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[0]
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rpartition(")")[2].split()[1])
        if name == b"oasis-init" and parent == os.getpid():
            found.add(int(entry))
    return found


async def spares(client: SandboxClient, runtime: str) -> pb.GetInfoResponse.Spares:
    info = await client.stub.GetInfo(pb.GetInfoRequest())
    (state,) = (state for state in info.spares if state.runtime == runtime)
    return state


async def waiting(client: SandboxClient, runtime: str, count: int) -> pb.GetInfoResponse.Spares:
    async def reached() -> pb.GetInfoResponse.Spares | None:
        state = await spares(client, runtime)
        return state if state.waiting == count else None

    # Python spares wait for the zygote's imports: seconds on a busy machine.
    found: pb.GetInfoResponse.Spares = await eventually(
        reached, timeout=90, what=f"{count} {runtime} spares waiting"
    )
    return found


async def connect(
    start_server: StartServer, **settings: str
) -> tuple[SandboxServer, SandboxClient]:
    server = await start_server(SANDBOX_LAUNCHER="warm", **settings)
    return server, SandboxClient(grpc.aio.insecure_channel(f"127.0.0.1:{server.port}"))


def session_groups(server: SandboxServer, session_id: str) -> list[Path]:
    """The session's cgroup folders (none without cgroups)."""
    assert server.sandbox is not None
    return [
        group
        for folder in server.sandbox.cgroups.folders
        for group in folder.iterdir()
        if group.name.endswith(f"sessions-{session_id}")
    ]


@pytest.mark.parametrize("runtime", ["python", "node"])
async def test_a_session_run_finds_its_process_started_and_deleting_stops_it(
    start_server: StartServer, runtime: str
) -> None:
    before = boxes()
    server, client = await connect(start_server, SANDBOX_SPARES="0")
    write, read = {
        "python": (
            "open('note.txt', 'w').write('kept')\nset_result(1)",
            "import os\nset_result([open('note.txt').read(), os.environ['GREETING'], os.getpid()])",
        ),
        "node": (
            "require('fs').writeFileSync('note.txt', 'kept'); setResult(1)",
            "setResult([require('fs').readFileSync('note.txt', 'utf8'), process.env.GREETING, process.pid])",
        ),
    }[runtime]
    first = await client.run(write, runtime=runtime, session_id="ahead")
    assert first.status == "OK", first.result.error
    state = await waiting(client, runtime, 1)
    second = await client.run(read, runtime=runtime, session_id="ahead", env={"GREETING": "hi"})
    assert second.status == "OK", second.result.error
    # The session's files and the request's env reach a process started before both.
    assert second.output[:2] == ["kept", "hi"]
    assert second.output[2] in (1, 2)
    assert (await spares(client, runtime)).served == state.served + 1
    await waiting(client, runtime, 1)  # the one for the run after

    deleted = await client.stub.DeleteWorkspace(pb.DeleteWorkspaceRequest(session_id="ahead"))
    assert deleted.deleted
    assert (await spares(client, runtime)).waiting == 0
    await eventually(lambda: not (boxes() - before), what="the session's spare to stop")
    assert session_groups(server, "ahead") == []


async def test_scratch_spares_serve_one_run_each_and_are_replaced(
    start_server: StartServer,
) -> None:
    _, client = await connect(start_server, SANDBOX_SPARES="1", SANDBOX_SESSION_SPARES="0")
    state = await waiting(client, "node", 1)
    code = (
        "const fs = require('fs');"
        "const left = fs.existsSync('/tmp/left') || fs.existsSync('left');"
        "fs.writeFileSync('/tmp/left', 'x'); fs.writeFileSync('left', 'x');"
        "setResult([left, process.env.GREETING ?? null]);"
    )
    outputs = []
    for _ in range(3):
        await waiting(client, "node", 1)
        outcome = await client.run(code, runtime="node", env={"GREETING": "hello"})
        assert outcome.status == "OK", outcome.result.error
        outputs.append(outcome.output)
    # A new workspace and /tmp each time, with the request's env.
    assert outputs == [[False, "hello"]] * 3
    assert (await spares(client, "node")).served == state.served + 3


async def test_a_request_setting_a_start_up_variable_gets_its_own_start(
    start_server: StartServer,
) -> None:
    """NODE_OPTIONS (like LD_PRELOAD or LC_ALL) is read as the interpreter starts: a
    process started ahead without it cannot run that request."""
    _, client = await connect(start_server, SANDBOX_SPARES="1", SANDBOX_SESSION_SPARES="0")
    state = await waiting(client, "node", 1)
    outcome = await client.run(
        "setResult(process.title)", runtime="node", env={"NODE_OPTIONS": "--title=oasis-own"}
    )
    assert outcome.status == "OK", outcome.result.error
    assert outcome.output == "oasis-own"
    after = await spares(client, "node")
    assert (after.served, after.waiting) == (state.served, 1)


async def test_shutdown_stops_every_spare(start_server: StartServer) -> None:
    before = boxes()
    server = await start_server(SANDBOX_LAUNCHER="warm", SANDBOX_SPARES="2")
    client = SandboxClient(grpc.aio.insecure_channel(f"127.0.0.1:{server.port}"))
    await waiting(client, "node", 2)
    await waiting(client, "python", 2)
    assert len(boxes() - before) >= 4
    await server.stop(grace=0)
    await eventually(lambda: not (boxes() - before), what="every spare to stop")


async def test_the_cold_launcher_starts_nothing_ahead(start_server: StartServer) -> None:
    server = await start_server(SANDBOX_LAUNCHER="cold")
    client = SandboxClient(grpc.aio.insecure_channel(f"127.0.0.1:{server.port}"))
    info = await client.stub.GetInfo(pb.GetInfoRequest())
    assert list(info.spares) == []


def test_spare_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="SANDBOX_SPARES: 'many' is not a whole number"):
        load({"SANDBOX_SPARES": "many"})
    with pytest.raises(ConfigError, match="SANDBOX_SESSION_SPARES: '-1' is not a whole number"):
        load({"SANDBOX_SESSION_SPARES": "-1"})
    config = load({"SANDBOX_SPARES": "0", "SANDBOX_SESSION_SPARES": "3"})
    assert (config.spares, config.session_spares) == (0, 3)
    assert (load({}).spares, load({}).session_spares) == (2, 8)
