"""Stateful sessions: keep_state executions share a live interpreter per session and runtime.

Every test goes through a real server: real preludes, real processes, a real
cgroup (the live interpreter needs one), both runtimes where the behaviour is
theirs too.
"""

from __future__ import annotations

import asyncio
import platform

import grpc
import pytest

from oasis.sandbox.v1 import sandbox_pb2 as pb
from sandbox_server.server import SandboxServer

from ..conftest import StartServer
from ..helpers import RawExecution, eventually, execute_error, new_marker, pids_with, start_message
from ..sandbox_client import Outcome, SandboxClient

pytestmark = pytest.mark.timeout(120)

# The same steps in each runtime: define, then use in a later execution.
DEFINE = {
    "python": "import math\nx = 41\ndef inc(v):\n    return v + 1\nclass Box:\n    size = 3\n",
    "node": "const x = 41; function inc(v) { return v + 1; } class Box { static size = 3; }\n"
    "const path = require('path');",
}
USE = {
    "python": "set_result([inc(x), Box.size, round(math.pi, 2)])",
    "node": "setResult([inc(x), Box.size, path.basename('/a/b.txt') === 'b.txt' ? 3.14 : 0])",
}
NAME_ERROR = {"python": "NameError", "node": "ReferenceError"}


async def run(client: SandboxClient, code: str, session: str = "s", **options: object) -> Outcome:
    options.setdefault("keep_state", True)
    return await client.run(code, session_id=session, **options)  # type: ignore[arg-type]


def started(outcome: Outcome) -> pb.ExecutionStarted:
    assert outcome.responses[0].WhichOneof("kind") == "started"
    return outcome.responses[0].started


@pytest.mark.parametrize("runtime", ["python", "node"])
async def test_variables_functions_and_imports_persist(client: SandboxClient, runtime: str) -> None:
    first = await run(client, DEFINE[runtime], runtime=runtime)
    assert first.status == "OK", first.result.error
    assert started(first).fresh_state and not started(first).fresh_state_reason
    assert first.result.state_kept
    second = await run(client, USE[runtime], runtime=runtime)
    assert second.status == "OK", second.result.error
    assert second.output == [42, 3, 3.14]
    assert not started(second).fresh_state and second.result.state_kept


@pytest.mark.parametrize("runtime", ["python", "node"])
async def test_one_shot_runs_and_other_sessions_see_none_of_it(
    client: SandboxClient, runtime: str
) -> None:
    assert (await run(client, DEFINE[runtime], runtime=runtime)).status == "OK"
    one_shot = await run(client, USE[runtime], runtime=runtime, keep_state=False)
    assert one_shot.status == "ERROR" and NAME_ERROR[runtime] in one_shot.result.error
    assert not one_shot.result.state_kept
    other = await run(client, USE[runtime], session="other", runtime=runtime)
    assert other.status == "ERROR" and NAME_ERROR[runtime] in other.result.error
    assert started(other).fresh_state
    # An error keeps the state: the first session still has everything.
    assert (await run(client, USE[runtime], runtime=runtime)).output == [42, 3, 3.14]


@pytest.mark.parametrize("runtime", ["python", "node"])
async def test_the_logs_of_each_execution_are_its_own(client: SandboxClient, runtime: str) -> None:
    emit = {
        "python": "import sys\nfor i in range(2000):\n    print('line', i, 'x' * 60)\n"
        "print('tail', file=sys.stderr)",
        "node": "for (let i = 0; i < 2000; i++) console.log('line', i, 'x'.repeat(60));\n"
        "console.error('tail');",
    }
    first = await run(client, emit[runtime], runtime=runtime)
    assert first.status == "OK", first.result.error
    assert first.result.logs.count("line ") == 2000 and "line 1999" in first.result.logs
    assert "tail" in first.result.logs
    second = await run(client, "1" if runtime == "python" else "1;", runtime=runtime)
    assert second.status == "OK" and "line" not in second.result.logs and second.result.logs == ""


async def test_a_timeout_in_a_pure_loop_keeps_the_state(client: SandboxClient) -> None:
    await run(client, "counter = 0")
    spin = await run(client, "while True:\n    counter += 1", timeout=1.0)
    assert spin.status == "TIMEOUT" and spin.result.state_kept, spin.result.error
    assert "keeps its state" in spin.result.error
    after = await run(client, "set_result(counter > 0)")
    assert after.output is True and not started(after).fresh_state


async def test_a_cancel_during_sleep_keeps_the_state(stub, client: SandboxClient) -> None:
    await run(client, "data = {'rows': 3}")
    execution = await RawExecution.begin(
        stub,
        start_message(
            "import time\ndata['late'] = 1\nprint('sleeping', flush=True)\ntime.sleep(60)",
            session_id="s",
            keep_state=True,
        ),
    )
    await execution.read_until("log:sleeping")
    await execution.send(pb.ExecuteRequest(cancel=pb.CancelExecution()))
    result = await execution.result()
    assert pb.ExecutionResult.Status.Name(result.status) == "CANCELLED" and result.state_kept
    after = await run(client, "set_result(data)")
    assert after.output == {"rows": 3, "late": 1}


async def test_node_interrupts_an_await_and_keeps_the_state(client: SandboxClient) -> None:
    await run(client, "let rows = 3;", runtime="node")
    wait = await run(
        client,
        "rows = 4; await new Promise((resolve) => setTimeout(resolve, 60000));",
        runtime="node",
        timeout=1.0,
    )
    assert wait.status == "TIMEOUT" and wait.result.state_kept, wait.result.error
    assert (await run(client, "setResult(rows);", runtime="node")).output == 4


async def test_a_synchronous_node_loop_cannot_be_interrupted_and_is_killed(
    client: SandboxClient,
) -> None:
    await run(client, "let rows = 3;", runtime="node")
    spin = await run(client, "rows = 4; while (true) {}", runtime="node", timeout=1.0)
    assert spin.status == "TIMEOUT" and not spin.result.state_kept
    after = await run(client, "setResult(typeof rows);", runtime="node")
    assert after.output == "undefined" and started(after).fresh_state
    assert "did not stop" in started(after).fresh_state_reason


async def test_code_that_swallows_the_interrupt_is_killed_and_the_next_run_is_told(
    client: SandboxClient,
) -> None:
    await run(client, "kept = 1")
    stubborn = await run(
        client,
        "import time\nwhile True:\n    try:\n        time.sleep(0.05)\n"
        "    except KeyboardInterrupt:\n        pass",
        timeout=1.0,
    )
    assert stubborn.status == "TIMEOUT" and not stubborn.result.state_kept
    assert "state is lost" in stubborn.result.error
    after = await run(client, "print(kept)")
    assert started(after).fresh_state
    reason = started(after).fresh_state_reason
    assert "did not stop" in reason and "interrupt" in reason
    assert reason in after.result.logs  # the log line at the start
    # The code then failed for want of the state: the error says why it is gone.
    assert after.status == "ERROR" and "NameError" in after.result.error
    assert reason in after.result.error


async def test_a_background_thread_does_not_run_between_executions(
    client: SandboxClient,
) -> None:
    await run(
        client,
        "import threading, time\ncount = [0]\n"
        "def spin():\n    while True:\n        count[0] += 1\n        time.sleep(0.001)\n"
        "threading.Thread(target=spin, daemon=True).start()\ntime.sleep(0.1)",
    )
    first = (await run(client, "set_result(count[0])")).output
    await asyncio.sleep(1.0)
    second = (await run(client, "set_result(count[0])")).output
    # A few ticks at most while each short execution itself runs, never a second's worth.
    assert first > 0 and second - first < 100, (first, second)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="raw clone(2) by its x86-64 number")
async def test_a_sigcont_the_code_arranges_does_not_wake_the_interpreter(
    client: SandboxClient,
) -> None:
    # A child whose exit signal is SIGCONT, killed as its execution ends, would
    # wake an interpreter that was only stopped: the freezer is not a signal.
    await run(
        client,
        "import ctypes, os, signal, threading, time\ncount = [0]\n"
        "def spin():\n    while True:\n        count[0] += 1\n        time.sleep(0.001)\n"
        "threading.Thread(target=spin, daemon=True).start()\n"
        "pid = ctypes.PyDLL(None).syscall(56, signal.SIGCONT, 0, 0, 0, 0)  # clone\n"
        "if pid == 0:\n    time.sleep(600)\n    os._exit(0)\n"
        "time.sleep(0.1)",
    )
    first = (await run(client, "set_result(count[0])")).output
    await asyncio.sleep(1.0)
    second = (await run(client, "set_result(count[0])")).output
    assert second - first < 100, (first, second)


async def test_the_request_env_does_not_run_code_before_the_interpreter_is_ready(
    client: SandboxClient,
) -> None:
    marker = new_marker()
    early = f"require('child_process').spawn('sleep', ['300', '{marker}'], {{detached: true, stdio: 'ignore'}}).unref();"
    outcome = await run(
        client,
        "setResult(process.env.NODE_OPTIONS);",
        runtime="node",
        env={"NODE_OPTIONS": "--require ./early.js"},
        files=[pb.File(name="early.js", data=early.encode())],
    )
    # The code sees its env; the interpreter did not start with it.
    assert outcome.output == "--require ./early.js", outcome.result.error
    assert not pids_with(marker)


async def test_a_cancel_right_after_the_start_still_interrupts(stub, client: SandboxClient) -> None:
    await run(client, "kept = 1")
    execution = await RawExecution.begin(
        stub, start_message("import time\ntime.sleep(30)", session_id="s", keep_state=True)
    )
    await execution.send(pb.ExecuteRequest(cancel=pb.CancelExecution()))
    result = await execution.result()
    assert pb.ExecutionResult.Status.Name(result.status) == "CANCELLED"
    assert result.state_kept, result.error
    assert (await run(client, "set_result(kept)")).output == 1


@pytest.mark.parametrize("runtime", ["python", "node"])
async def test_a_child_process_does_not_outlive_its_execution(
    client: SandboxClient, runtime: str
) -> None:
    marker = new_marker()
    spawn = {
        "python": f"import subprocess\nchild = subprocess.Popen(['sleep', '300', '{marker}'])",
        "node": f"const child = require('child_process').spawn('sleep', ['300', '{marker}']);",
    }
    outcome = await run(client, spawn[runtime], runtime=runtime)
    assert outcome.status == "OK", outcome.result.error
    await eventually(lambda: not pids_with(marker), what="the child process to be gone")
    # The interpreter itself lives on.
    assert (
        await run(client, "1" if runtime == "python" else "1;", runtime=runtime)
    ).result.state_kept


async def test_reset_state_ends_the_interpreter_and_keeps_the_files(
    stub, client: SandboxClient
) -> None:
    await run(client, "x = 1\nopen('kept.txt', 'w').write('files stay')")
    assert (await stub.ResetState(pb.ResetStateRequest(session_id="s"))).had_state
    assert not (await stub.ResetState(pb.ResetStateRequest(session_id="s"))).had_state
    after = await run(client, "set_result([open('kept.txt').read(), 'x' in globals()])")
    assert after.output == ["files stay", False]
    assert started(after).fresh_state and "ResetState" in started(after).fresh_state_reason


async def test_deleting_the_workspace_ends_the_interpreter(stub, client: SandboxClient) -> None:
    await run(client, "x = 1")
    assert (await stub.DeleteWorkspace(pb.DeleteWorkspaceRequest(session_id="s"))).deleted
    after = await run(client, "set_result('x' in globals())")
    assert after.output is False and started(after).fresh_state


async def test_idle_interpreters_end_and_the_next_run_is_told(start_server: StartServer) -> None:
    server = await start_server(SANDBOX_STATE_IDLE="1s")
    async with _client(server) as client:
        await run(client, "x = 1")
        await asyncio.sleep(2.0)
        after = await run(client, "set_result('x' in globals())")
        assert after.output is False and started(after).fresh_state
        assert "idle" in started(after).fresh_state_reason


async def test_the_least_recently_used_interpreter_is_evicted(start_server: StartServer) -> None:
    server = await start_server(SANDBOX_MAX_STATES="2")
    async with _client(server) as client:
        for session in ("a", "b"):
            await run(client, "x = 1", session=session)
        await run(client, "x", session="a")  # "b" is now the least recently used
        await run(client, "x = 1", session="c")
        kept = await run(client, "set_result('x' in globals())", session="a")
        assert kept.output is True
        evicted = await run(client, "set_result('x' in globals())", session="b")
        assert evicted.output is False
        assert "SANDBOX_MAX_STATES" in started(evicted).fresh_state_reason


async def test_a_second_execution_in_a_busy_session_is_refused(stub, client: SandboxClient) -> None:
    slow = await RawExecution.begin(
        stub,
        start_message(
            "import time\nprint('in', flush=True)\ntime.sleep(30)", session_id="s", keep_state=True
        ),
    )
    await slow.read_until("log:in")
    error = await execute_error(stub, start_message("1", session_id="s", keep_state=True))
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION and "busy" in (error.details() or "")
    # A one-shot execution in the same session still runs, beside it.
    assert (await run(client, "set_result(2)", keep_state=False)).output == 2
    await slow.send(pb.ExecuteRequest(cancel=pb.CancelExecution()))
    await slow.result()
    assert (await run(client, "set_result(3)")).output == 3


async def test_keep_state_needs_a_session(stub) -> None:
    error = await execute_error(stub, start_message("1", keep_state=True))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "keep_state needs a session_id" in (error.details() or "")


async def test_keep_state_is_refused_when_turned_off(start_server: StartServer) -> None:
    server = await start_server(SANDBOX_STATEFUL="0")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = _stub(channel)
        error = await execute_error(stub, start_message("1", session_id="s", keep_state=True))
        assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "SANDBOX_STATEFUL=0" in (error.details() or "")
        info = await stub.GetInfo(pb.GetInfoRequest())
        assert not info.stateful.enabled and "SANDBOX_STATEFUL=0" in info.stateful.reason


async def test_get_info_reports_the_live_interpreters(start_server: StartServer) -> None:
    server = await start_server(SANDBOX_MAX_STATES="5", SANDBOX_STATE_IDLE="3s")
    async with _client(server) as client:
        stub = client.stub
        info = await stub.GetInfo(pb.GetInfoRequest())
        assert info.stateful.enabled and info.stateful.max_states == 5
        assert info.stateful.idle_timeout.seconds == 3 and info.stateful.live == 0
        await run(client, "x = 1")
        assert (await stub.GetInfo(pb.GetInfoRequest())).stateful.live == 1


async def test_the_cpu_limit_holds_per_execution_not_per_interpreter(
    start_server: StartServer,
) -> None:
    server = await start_server(SANDBOX_CPU_TIME="1s")
    async with _client(server) as client:
        burn = "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end:\n    pass"
        for _ in range(3):  # 1.8 s in all, 0.6 s each
            outcome = await run(client, burn)
            assert outcome.status == "OK" and outcome.result.state_kept, outcome.result.error
        hog = await run(client, "while True:\n    pass", timeout=30)
        assert hog.status == "KILLED" and "CPU time limit" in hog.result.error
        assert not hog.result.state_kept


async def test_tool_calls_work_in_every_execution(client: SandboxClient) -> None:
    tools = {"add": lambda a, b: a + b}
    # The first reads its start message on the main thread, the later ones through
    # the reader thread the first tool call starts.
    assert (await run(client, "base = 1")).status == "OK"
    first = await run(client, "total = call_tool('add', {'a': base, 'b': 2})", tools=tools)
    assert first.status == "OK", first.result.error
    node = await run(
        client,
        "const t = await callTool('add', {a: 2, b: 3}); setResult(t);",
        runtime="node",
        tools=tools,
    )
    assert node.output == 5
    second = await run(client, "set_result(call_tool('add', {'a': total, 'b': 10}))", tools=tools)
    assert second.output == 13


async def test_node_redeclares_let_and_const_and_awaits_at_top_level(
    client: SandboxClient,
) -> None:
    first = await run(client, "let a = 1; const b = 2;", runtime="node")
    assert first.status == "OK", first.result.error
    second = await run(
        client,
        "let a = 10; const b = await Promise.resolve(20); setResult(a + b);",
        runtime="node",
    )
    assert second.status == "OK", second.result.error
    assert second.output == 30
    third = await run(client, "setResult([a, b]);", runtime="node")
    assert third.output == [10, 20]


async def test_an_interpreter_that_exits_reports_why(client: SandboxClient) -> None:
    await run(client, "x = 1")
    gone = await run(client, "import os\nos._exit(3)")
    assert not gone.result.state_kept and gone.result.exit_code == 3
    after = await run(client, "set_result('x' in globals())")
    assert after.output is False and "exited with code 3" in started(after).fresh_state_reason


# -- helpers --------------------------------------------------------------------


def _stub(channel: grpc.aio.Channel):
    from oasis.sandbox.v1 import sandbox_pb2_grpc as pb_grpc

    return pb_grpc.SandboxStub(channel)


class _client:
    """A SandboxClient on its own channel to `server`."""

    def __init__(self, server: SandboxServer) -> None:
        self._channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")

    async def __aenter__(self) -> SandboxClient:
        return SandboxClient(self._channel)

    async def __aexit__(self, *exc_info: object) -> None:
        await self._channel.close()
