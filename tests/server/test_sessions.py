"""Session workspaces: persistence, scratch workspaces, deletion, TTL eviction."""

from __future__ import annotations

import asyncio
import os

import grpc
import pytest

from oasis.sandbox.v1 import sandbox_pb2 as pb
from oasis.sandbox.v1 import sandbox_pb2_grpc as pb_grpc

from ..conftest import StartServer
from ..helpers import RawExecution, eventually, rpc_error, start_message
from ..sandbox_client import SandboxClient

RUNTIMES = ["python", "node"]

WRITE = {
    "python": "import os\nopen('notes.txt', 'w').write('kept')\nset_result(os.getcwd())",
    "node": "require('fs').writeFileSync('notes.txt', 'kept');\nsetResult(process.cwd());",
}
READ = {
    "python": "import os\nset_result(open('notes.txt').read() if os.path.exists('notes.txt') else None)",
    "node": "const fs = require('fs');\nsetResult(fs.existsSync('notes.txt') ? fs.readFileSync('notes.txt', 'utf8') : null);",
}


def exists(path: str) -> bool:
    return os.path.exists(path)


async def delete(stub: pb_grpc.SandboxStub, session_id: str) -> bool:
    response = await stub.DeleteWorkspace(pb.DeleteWorkspaceRequest(session_id=session_id))
    return bool(response.deleted)


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_workspace_persists_across_executions(client: SandboxClient, runtime: str) -> None:
    """A file written in one execution is there in the next one of the same session."""
    first = await client.run(WRITE[runtime], runtime=runtime, session_id=f"persist-{runtime}")
    assert first.status == "OK", first.result.error
    assert first.responses[0].started.session_id == f"persist-{runtime}"
    second = await client.run(READ[runtime], runtime=runtime, session_id=f"persist-{runtime}")
    assert second.output == "kept"
    assert (
        first.output
        == (
            await client.run("import os\nset_result(os.getcwd())", session_id=f"persist-{runtime}")
        ).output
    )


async def test_sessions_are_separate(client: SandboxClient) -> None:
    """One session's files never appear in another's workspace, across runtimes too."""
    await client.run(WRITE["python"], session_id="alice")
    assert (await client.run(READ["python"], session_id="bob")).output is None
    assert (await client.run(READ["node"], runtime="node", session_id="bob")).output is None
    assert (await client.run(READ["node"], runtime="node", session_id="alice")).output == "kept"


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_no_session_means_a_scratch_workspace_deleted_afterwards(
    client: SandboxClient, runtime: str
) -> None:
    """Without a session_id the workspace is fresh and is removed when the execution ends
    (right after its result: the removal waits for its killed processes to be reaped)."""
    first = await client.run(WRITE[runtime], runtime=runtime)
    assert first.status == "OK", first.result.error
    assert first.responses[0].started.session_id == ""
    await eventually(
        lambda: not exists(first.output), timeout=10, what="the scratch workspace to go"
    )
    second = await client.run(READ[runtime], runtime=runtime)
    assert second.output is None


async def test_delete_workspace(client: SandboxClient, stub: pb_grpc.SandboxStub) -> None:
    """DeleteWorkspace removes the folder; the next execution of that session starts empty."""
    first = await client.run(WRITE["python"], session_id="to-delete")
    workspace = first.output
    assert exists(os.path.join(workspace, "notes.txt"))
    assert await delete(stub, "to-delete") is True
    assert not exists(workspace)
    assert (await client.run(READ["python"], session_id="to-delete")).output is None


async def test_delete_unknown_workspace(stub: pb_grpc.SandboxStub) -> None:
    """Deleting a session that does not exist is not an error; it reports deleted=false."""
    assert await delete(stub, "never-used") is False


async def test_delete_while_running_is_refused(
    stub: pb_grpc.SandboxStub, client: SandboxClient
) -> None:
    """A session with a running execution cannot be deleted (FAILED_PRECONDITION) and keeps its files."""
    await client.run(WRITE["python"], session_id="busy")
    execution = await RawExecution.begin(
        stub,
        start_message(
            "call_tool('wait')\nset_result(open('notes.txt').read())", session_id="busy", timeout=60
        ),
    )
    call = (await execution.read_until("tool_call")).tool_call
    error = await rpc_error(stub.DeleteWorkspace(pb.DeleteWorkspaceRequest(session_id="busy")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "running" in error.details()
    await execution.send(
        pb.ExecuteRequest(tool_result=pb.ToolResult(call_id=call.call_id, data="1"))
    )
    result = await execution.result()
    assert result.status == pb.ExecutionResult.OK, result.error
    assert result.output == '"kept"'
    assert await delete(stub, "busy") is True


@pytest.mark.timeout(60)
async def test_idle_session_is_evicted_after_the_ttl(start_server: StartServer) -> None:
    """With SANDBOX_SESSION_TTL=1s an idle workspace disappears, and the session then starts empty."""
    server = await start_server(SANDBOX_SESSION_TTL="1s")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        client = SandboxClient(channel)
        first = await client.run(WRITE["python"], session_id="short-lived")
        workspace = first.output
        assert exists(workspace)
        await eventually(
            lambda: not exists(workspace), timeout=20, what="eviction of the idle workspace"
        )
        assert (await client.run(READ["python"], session_id="short-lived")).output is None


@pytest.mark.timeout(60)
async def test_running_session_is_never_evicted(start_server: StartServer) -> None:
    """An execution that outlives the TTL keeps its workspace the whole time."""
    server = await start_server(SANDBOX_SESSION_TTL="200ms")
    code = """
import os, time
open('mine.txt', 'w').write('still here')
here = os.getcwd()
call_tool('pause')
time.sleep(1.5)
set_result([os.path.exists(os.path.join(here, 'mine.txt')), open(os.path.join(here, 'mine.txt')).read()])
"""
    on_host = server.config.workspace_root / "sessions" / "long-runner" / "mine.txt"
    seen_on_host: list[bool] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        client = SandboxClient(channel)

        async def pause() -> str:
            # Idle long past the TTL while the execution waits on this tool,
            # then look from the host: the code's own view could outlive an
            # eviction (its mount namespace keeps a detached workspace alive).
            await asyncio.sleep(1.5)
            seen_on_host.append(on_host.exists())
            return "ok"

        outcome = await client.run(
            code, session_id="long-runner", tools={"pause": pause}, timeout=30
        )
        assert outcome.status == "OK", outcome.result.error
        assert outcome.output == [True, "still here"]
    assert seen_on_host == [True]


@pytest.mark.timeout(60)
async def test_used_session_gets_a_fresh_ttl(start_server: StartServer) -> None:
    """Each execution restarts the idle clock: a session used more often than the TTL is kept."""
    server = await start_server(SANDBOX_SESSION_TTL="4s")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        client = SandboxClient(channel)
        await client.run(WRITE["python"], session_id="busy-bee")
        # 3 x 1.5 s outlasts the TTL; each gap between uses stays well below it.
        for _ in range(3):
            await asyncio.sleep(1.5)
            assert (await client.run(READ["python"], session_id="busy-bee")).output == "kept"


async def test_sessions_are_capped(start_server: StartServer) -> None:
    """Past SANDBOX_MAX_SESSIONS a new session is refused; an existing one, or a freed slot, still works."""
    server = await start_server(SANDBOX_MAX_SESSIONS="2")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        client, stub = SandboxClient(channel), pb_grpc.SandboxStub(channel)
        for session in ("one", "two"):
            assert (await client.run("set_result(1)", session_id=session)).output == 1

        async def third() -> None:
            async for _ in stub.Execute(iter([start_message("set_result(1)", session_id="three")])):
                pass

        error = await rpc_error(third())
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "SANDBOX_MAX_SESSIONS=2" in error.details()
        assert (await client.run("set_result(2)", session_id="one")).output == 2
        assert await delete(stub, "two")
        assert (await client.run("set_result(3)", session_id="three")).output == 3


async def test_a_new_session_used_at_once_by_many_is_made_once(start_server: StartServer) -> None:
    """Executions starting together on a new session share one workspace (its mount is made
    off the event loop, once), and the session cap counts it once."""
    server = await start_server(SANDBOX_MAX_SESSIONS="1")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        client = SandboxClient(channel)
        runs = await asyncio.gather(
            *(
                client.run("import os\nset_result(os.getcwd())", session_id="shared")
                for _ in range(4)
            )
        )
        assert len({run.output for run in runs}) == 1
        assert all(run.status == "OK" for run in runs), [run.result.error for run in runs]
