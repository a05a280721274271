"""A run answers as soon as its code is done, before its processes are reaped.

The prelude reports its exit code and lets go of its pipes; the server then
sends SIGKILL to every process of the run and answers while they exit. These
tests hold what that must not change: nothing of a run acts after its
result, exit codes and the code's own exit handlers are kept, and what the
teardown still holds never refuses the client's next request.
"""

from __future__ import annotations

import time

import grpc
import pytest

from oasis.sandbox.v1 import sandbox_pb2 as pb
from sandbox_server.cgroups import RunGroup

from ..conftest import StartServer
from ..sandbox_client import SandboxClient

RUNTIMES = ["python", "node"]

# A detached child with no pipe of the run, appending CLOCK_MONOTONIC stamps
# to a file every millisecond.
LEFTOVER = {
    "python": """
import subprocess, sys
subprocess.Popen(
    [sys.executable, "-c",
     "import time\\nwhile True:\\n    open('beats', 'a').write(f'{time.monotonic()}\\\\n')\\n    time.sleep(0.001)"],
    start_new_session=True, stdin=subprocess.DEVNULL,
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
import os, time
while not os.path.exists('beats') or not open('beats').read():
    time.sleep(0.005)
set_result('started')
""",
    "node": """
const { spawn } = require('child_process');
const fs = require('fs');
spawn(process.execPath, ['-e', `setInterval(() => require('fs').appendFileSync('beats',
  String(Number(process.hrtime.bigint()) / 1e9) + '\\\\n'), 1)`],
  { detached: true, stdio: 'ignore' }).unref();
while (!fs.existsSync('beats') || !fs.readFileSync('beats', 'utf8')) {
  await new Promise((r) => setTimeout(r, 5));
}
setResult('started');
""",
}
LAST_BEAT = {
    "python": "set_result(open('beats').read().split()[-1])",
    "node": "setResult(require('fs').readFileSync('beats', 'utf8').trim().split('\\n').pop())",
}


async def connect(start_server: StartServer, **settings: str) -> SandboxClient:
    server = await start_server(SANDBOX_LAUNCHER="warm", **settings)
    return SandboxClient(grpc.aio.insecure_channel(f"127.0.0.1:{server.port}"))


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_nothing_of_a_run_acts_after_its_result(
    start_server: StartServer, runtime: str
) -> None:
    """A leftover child of the code writes nothing once the client has the result.

    The stamps are CLOCK_MONOTONIC, which the code and this test share."""
    client = await connect(start_server)
    first = await client.run(LEFTOVER[runtime], runtime=runtime, session_id="beats")
    answered = time.monotonic()
    assert first.output == "started", first.result.error
    last = await client.run(LAST_BEAT[runtime], runtime=runtime, session_id="beats")
    assert last.status == "OK", last.result.error
    assert float(last.output) < answered, "the first run's child wrote after its result"


async def test_a_session_deleted_right_after_its_result(start_server: StartServer) -> None:
    """The teardown after a result delays a deletion, never refuses it."""
    client = await connect(start_server)
    for index in range(10):
        session_id = f"brief-{index}"
        outcome = await client.run("set_result(1)", session_id=session_id)
        assert outcome.output == 1, outcome.result.error
        reply = await client.stub.DeleteWorkspace(pb.DeleteWorkspaceRequest(session_id=session_id))
        assert reply.deleted


async def test_back_to_back_runs_at_full_capacity(start_server: StartServer) -> None:
    """An answered run no longer counts against SANDBOX_MAX_CONCURRENT."""
    client = await connect(start_server, SANDBOX_MAX_CONCURRENT="1")
    for index in range(15):
        outcome = await client.run(f"set_result({index})", session_id="busy" if index % 2 else "")
        assert outcome.output == index, outcome.result.error


EXIT_HANDLER = {
    "python": "import atexit\natexit.register(lambda: print('goodbye'))\nraise SystemExit(3)",
    "node": "process.on('exit', () => console.log('goodbye'));\nprocess.exitCode = 3;",
}


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("session_id", ["", "exits"])
async def test_exit_code_and_exit_handlers_are_kept(
    start_server: StartServer, runtime: str, session_id: str
) -> None:
    client = await connect(start_server)
    outcome = await client.run(EXIT_HANDLER[runtime], runtime=runtime, session_id=session_id)
    assert outcome.result.exit_code == 3
    assert outcome.status == "ERROR"
    assert "goodbye" in outcome.result.logs


async def test_an_exit_code_set_by_an_exit_listener_is_the_one_reported(
    start_server: StartServer,
) -> None:
    client = await connect(start_server)
    code = "process.on('exit', () => { process.exitCode = 3; });\nsetResult(1);"
    outcome = await client.run(code, runtime="node")
    assert outcome.result.exit_code == 3


async def test_code_emitting_exit_itself_does_not_end_its_run(start_server: StartServer) -> None:
    client = await connect(start_server)
    code = (
        "process.emit('exit', 0);\n"
        "await new Promise((r) => setTimeout(r, 200));\n"
        "console.log('still here');\n"
        "setResult('done');"
    )
    outcome = await client.run(code, runtime="node")
    assert outcome.status == "OK", outcome.result.error
    assert outcome.output == "done"
    assert "still here" in outcome.result.logs


async def test_an_exit_report_out_of_range_is_a_protocol_error(start_server: StartServer) -> None:
    """The code can write on its channel: what it sends there must not break the stream."""
    client = await connect(start_server)
    code = "set_result.__globals__['_send']({'type': 'exit', 'code': 2**40})\nimport time\ntime.sleep(60)"
    outcome = await client.run(code, timeout=30)
    assert outcome.status == "ERROR"
    assert "exit code must be an integer from 0 to 255" in outcome.result.error


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_a_run_whose_processes_cannot_be_killed_early_ends_at_its_exit(
    start_server: StartServer, runtime: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the cgroup refuses the early kill, the run waits for its process as before
    (and is not reported as killed by the stop that follows)."""
    monkeypatch.setattr(RunGroup, "kill_now", lambda self: None)
    client = await connect(start_server)
    # 400 MB touched: the exit takes long enough for a stop to hit it.
    code = {
        "python": "keep = bytearray(400 << 20)\nprint('hi')\nset_result(1)",
        "node": "globalThis.keep = Buffer.alloc(400 << 20);\nconsole.log('hi');\nsetResult(1);",
    }
    outcome = await client.run(code[runtime], runtime=runtime)
    assert outcome.status == "OK", outcome.result.error
    assert outcome.result.exit_code == 0
    assert outcome.output == 1
    assert "hi" in outcome.result.logs
