"""Stateful sessions from the client: CodeRequest.keep_state, the result's state fields,
reset_state and info().stateful, through GrpcRunner and SyncGrpcRunner on a real server."""

from __future__ import annotations

import asyncio
import json

import pytest

from oasis import (
    CodeRequest,
    DispatchResult,
    FailedPrecondition,
    InvalidRequest,
    ToolCall,
    tool_dispatcher,
)
from oasis.code import GrpcRunner, SyncGrpcRunner, _http_wire, _wire
from oasis.sandbox.v1 import sandbox_pb2 as pb
from sandbox_server.server import SandboxServer

from ..conftest import StartServer

NO_TOOLS = tool_dispatcher({})

STEPS = {
    "python": (
        "import statistics\nrows = [3, 4, 5]\ndef total():\n    return sum(rows)\n"
        "set_result(len(rows))",
        "set_result([total(), statistics.mean(rows)])",
        "set_result('rows' in globals())",
    ),
    "node": (
        "const rows = [3, 4, 5];\nfunction total() { return rows.reduce((a, b) => a + b, 0); }\n"
        "setResult(rows.length);",
        "setResult([total(), rows.length + 1]);",
        "setResult(typeof rows !== 'undefined');",
    ),
}


def test_keep_state_travels_on_both_wires_only_when_set() -> None:
    stateful = CodeRequest(code="x = 1", session_id="s", keep_state=True)
    plain = CodeRequest(code="x = 1", session_id="s")

    assert _wire.start_message(stateful, execution_id="e", timeout=1)[0].keep_state is True
    assert _wire.start_message(plain, execution_id="e", timeout=1)[0].keep_state is False
    body = json.loads(
        _http_wire.execute_body(stateful, execution_id="e", callback_url="", timeout=1)
    )
    assert body["keep_state"] is True
    # Old clients never send it: the field is left out rather than sent as false.
    body = json.loads(_http_wire.execute_body(plain, execution_id="e", callback_url="", timeout=1))
    assert "keep_state" not in body


def test_results_carry_the_state_fields_from_both_wires() -> None:
    started = pb.ExecutionStarted(fresh_state=True, fresh_state_reason="reset by the client")
    result = _wire.code_result(
        pb.ExecutionResult(state_kept=True),
        _wire.Downloads(10),
        execution_id="e",
        started=started,
        max_file_size=10,
        max_output=10,
    )
    http = _http_wire.code_result(
        b'{"output": "", "logs": "", "exit_code": 0, "state_kept": true, "fresh_state": true, '
        b'"fresh_state_reason": "reset by the client", "files": []}',
        execution_id="e",
        max_file_size=10,
    )
    plain = _http_wire.code_result(
        b'{"output": "", "logs": "", "exit_code": 0, "files": []}',
        execution_id="e",
        max_file_size=10,
    )

    for got in (result, http):
        assert (got.state_kept, got.fresh_state, got.fresh_state_reason) == (
            True,
            True,
            "reset by the client",
        )
    assert (plain.state_kept, plain.fresh_state, plain.fresh_state_reason) == (False, False, "")


@pytest.mark.parametrize("runtime", ["python", "node"])
async def test_variables_functions_and_imports_persist_until_reset(
    runner: GrpcRunner, runtime: str
) -> None:
    load, use, probe = STEPS[runtime]
    session = f"state-{runtime}"

    def step(code: str) -> CodeRequest:
        return CodeRequest(code=code, runtime=runtime, session_id=session, keep_state=True)

    first = await runner.run(step(load), NO_TOOLS)
    second = await runner.run(step(use), NO_TOOLS)
    assert await runner.reset_state(session) is True
    assert await runner.reset_state(session) is False
    after = await runner.run(step(probe), NO_TOOLS)

    assert first.ok and first.output == 3, first.error
    assert (first.fresh_state, first.fresh_state_reason, first.state_kept) == (True, "", True)
    assert second.ok and second.output == [12, 4], second.error
    assert (second.fresh_state, second.state_kept) == (False, True)
    assert after.output is False
    assert after.fresh_state and after.fresh_state_reason  # lost, and the client is told why


async def test_a_run_without_keep_state_in_the_session_sees_no_variables(
    runner: GrpcRunner,
) -> None:
    await runner.run(CodeRequest(code="x = 1", session_id="mixed", keep_state=True), NO_TOOLS)
    plain = await runner.run(
        CodeRequest(code="set_result('x' in globals())", session_id="mixed"), NO_TOOLS
    )

    assert plain.output is False
    assert (plain.state_kept, plain.fresh_state) == (False, False)


async def test_keep_state_needs_a_session(runner: GrpcRunner) -> None:
    with pytest.raises(InvalidRequest) as refused:
        await runner.run(CodeRequest(code="x = 1", keep_state=True), NO_TOOLS)

    assert refused.value.code == "INVALID_ARGUMENT"
    assert "session_id" in refused.value.message


async def test_reset_state_of_a_session_without_state_is_false(runner: GrpcRunner) -> None:
    assert await runner.reset_state("never-created") is False
    await runner.run(CodeRequest(code="open('f', 'w').write('x')", session_id="files"), NO_TOOLS)
    assert await runner.reset_state("files") is False
    with pytest.raises(InvalidRequest):
        await runner.reset_state("-bad")


async def test_reset_state_while_a_stateful_run_is_busy_is_refused(runner: GrpcRunner) -> None:
    holding, release = asyncio.Event(), asyncio.Event()

    async def hold(call: ToolCall) -> DispatchResult:
        holding.set()
        await release.wait()
        return DispatchResult(content="ok")

    busy = asyncio.create_task(
        runner.run(CodeRequest(code="call_tool('hold')", session_id="busy", keep_state=True), hold)
    )
    try:
        async with asyncio.timeout(30):
            await holding.wait()
        with pytest.raises(FailedPrecondition):
            await runner.reset_state("busy")
    finally:
        release.set()
        await busy


async def test_info_reports_stateful_sessions(
    runner: GrpcRunner, start_server: StartServer
) -> None:
    stateful = (await runner.info()).stateful

    assert stateful.enabled and stateful.reason == ""
    assert stateful.max_states == 32 and stateful.idle_timeout == 900.0
    assert stateful.live >= 0

    off = await start_server(SANDBOX_STATEFUL="0")
    async with GrpcRunner(f"127.0.0.1:{off.port}") as other:
        disabled = (await other.info()).stateful
        with pytest.raises(FailedPrecondition):
            await other.run(CodeRequest(code="x = 1", session_id="s", keep_state=True), NO_TOOLS)
    assert not disabled.enabled and disabled.reason


async def test_sync_runner_keeps_state_and_resets_it(server: SandboxServer) -> None:
    runner = SyncGrpcRunner(f"127.0.0.1:{server.port}")

    def work() -> tuple[object, bool, object]:
        step = CodeRequest(code="n = 41", session_id="sync-state", keep_state=True)
        runner.run(step, NO_TOOLS)
        step.code = "set_result(n + 1)"
        answer = runner.run(step, NO_TOOLS).output
        reset = runner.reset_state("sync-state")
        step.code = "set_result('n' in globals())"
        return answer, reset, runner.run(step, NO_TOOLS).output

    try:
        assert await asyncio.to_thread(work) == (42, True, False)
    finally:
        await asyncio.to_thread(runner.close)
