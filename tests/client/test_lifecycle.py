"""Cancellation and retries: the code is killed when the caller gives up, and never runs twice."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from pathlib import Path

import pytest

from oasis import (
    CapacityExhausted,
    CodeRequest,
    Dispatch,
    DispatchResult,
    SandboxError,
    SandboxUnavailable,
    Status,
    ToolCall,
    tool_dispatcher,
)
from oasis.code import GrpcRunner, RetryAttempt

from ..conftest import StartServer
from ..helpers import eventually
from .conftest import StartServerProcess, alive, execution_pids, free_port

SLEEPER = {
    "python": """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print("ready", flush=True)
time.sleep(600)
""",
    "node": """
const { spawn } = require("child_process");
spawn(process.execPath, ["-e", "setTimeout(() => {}, 600000)"], { stdio: "ignore" });
console.log("ready");
await new Promise((resolve) => setTimeout(resolve, 600000));
""",
}


@pytest.mark.parametrize("runtime", ["python", "node"])
async def test_cancelling_run_kills_the_code(runner: GrpcRunner, runtime: str) -> None:
    marker = f"oasis-test-{uuid.uuid4().hex}"
    request = CodeRequest(
        code=SLEEPER[runtime], runtime=runtime, timeout=120, env={"OASIS_TEST_MARKER": marker}
    )
    task = asyncio.create_task(runner.run(request, tool_dispatcher({})))
    # The code and the child it started are both running.
    running = await eventually(
        lambda: len(found := execution_pids(marker)) >= 2 and found,
        timeout=30,
        what="the code to start",
    )

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    await eventually(lambda: not alive(running), timeout=10, what="the code's processes to end")


async def test_leaving_a_stream_early_kills_the_code(runner: GrpcRunner) -> None:
    marker = f"oasis-test-{uuid.uuid4().hex}"
    request = CodeRequest(code=SLEEPER["python"], timeout=120, env={"OASIS_TEST_MARKER": marker})
    async with contextlib.aclosing(runner.stream(request, tool_dispatcher({}))) as events:
        async for event in events:
            assert event.data.startswith(b"ready")  # type: ignore[union-attr]
            break
        # The code and its child are both running while the stream is open.
        running = await eventually(
            lambda: len(found := execution_pids(marker)) >= 2 and found,
            timeout=30,
            what="the code and its child",
        )

    await eventually(lambda: not alive(running), timeout=10, what="the code's processes to end")


class Ledger:
    """Counts runs of LEDGER_CODE: each run reports itself through a tool call.

    (The sandboxed code cannot write to the test's own folders.)
    """

    def __init__(self) -> None:
        self.runs = 0

    async def ran(self) -> str:
        self.runs += 1
        return "counted"

    def dispatch(self) -> Dispatch:
        return tool_dispatcher({"ran": self.ran})


LEDGER_CODE = "call_tool('ran')\nset_result('done')"


def retried(retries: list[RetryAttempt], code: str) -> int:
    return sum(1 for r in retries if r.error.code == code)


async def test_retries_until_the_server_is_up(start_server: StartServer, tmp_path: Path) -> None:
    port = free_port()
    ledger = Ledger()
    retries: list[RetryAttempt] = []
    async with GrpcRunner(
        f"127.0.0.1:{port}", max_retries=8, retry_delay=0.1, on_retry=retries.append
    ) as runner:
        task = asyncio.create_task(runner.run(CodeRequest(code=LEDGER_CODE), ledger.dispatch()))
        # Only once the runner has failed to connect and scheduled a retry does the server start.
        await eventually(lambda: retried(retries, "UNAVAILABLE"), timeout=10, what="a retry")
        await start_server(SANDBOX_GRPC_ADDR=f"127.0.0.1:{port}")
        result = await task

    assert (result.status, result.output) == (Status.OK, "done"), result.error
    assert ledger.runs == 1
    assert {(r.operation, r.execution_id) for r in retries} == {("execute", result.execution_id)}


async def test_gives_up_after_max_retries(tmp_path: Path) -> None:
    retries: list[RetryAttempt] = []
    async with GrpcRunner(
        f"127.0.0.1:{free_port()}", max_retries=2, retry_delay=0.05, on_retry=retries.append
    ) as runner:
        with pytest.raises(SandboxUnavailable) as info:
            await runner.run(CodeRequest(code="print(1)"), tool_dispatcher({}))

    assert info.value.code == "UNAVAILABLE"
    assert [(r.number, r.max_retries, r.error.code) for r in retries] == [
        (1, 2, "UNAVAILABLE"),
        (2, 2, "UNAVAILABLE"),
    ]


async def test_unary_calls_are_retried_while_unreachable(tmp_path: Path) -> None:
    retries: list[RetryAttempt] = []
    async with GrpcRunner(
        f"127.0.0.1:{free_port()}", max_retries=1, retry_delay=0.05, on_retry=retries.append
    ) as runner:
        with pytest.raises(SandboxUnavailable):
            await runner.info()
        with pytest.raises(SandboxUnavailable):
            await runner.delete_workspace("gone")

    assert [(r.operation, r.number) for r in retries] == [("info", 1), ("delete_workspace", 1)]


async def test_capacity_is_retried_and_the_code_runs_once(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server(SANDBOX_MAX_CONCURRENT="1")
    target = f"127.0.0.1:{server.port}"
    held, release = asyncio.Event(), asyncio.Event()

    async def hold() -> str:
        held.set()
        await release.wait()
        return "released"

    ledger = Ledger()
    async with GrpcRunner(target) as first, GrpcRunner(target, max_retries=0) as impatient:
        blocker = asyncio.create_task(
            first.run(
                CodeRequest(code="set_result(call_tool('hold'))"), tool_dispatcher({"hold": hold})
            )
        )
        await asyncio.wait_for(held.wait(), 30)

        with pytest.raises(CapacityExhausted) as info:
            await impatient.run(CodeRequest(code=LEDGER_CODE), ledger.dispatch())
        assert info.value.code == "RESOURCE_EXHAUSTED"
        assert "capacity reached" in info.value.message

        retries: list[RetryAttempt] = []
        async with GrpcRunner(
            target, max_retries=10, retry_delay=0.1, on_retry=retries.append
        ) as patient:
            task = asyncio.create_task(
                patient.run(CodeRequest(code=LEDGER_CODE), ledger.dispatch())
            )
            await eventually(
                lambda: retried(retries, "RESOURCE_EXHAUSTED"), timeout=10, what="a retry"
            )
            assert ledger.runs == 0
            release.set()
            result = await task
        assert (await blocker).output == "released"

    assert (result.status, result.output) == (Status.OK, "done"), result.error
    assert ledger.runs == 1


async def test_no_retry_once_the_code_has_started(
    start_server_process: StartServerProcess, start_server: StartServer, tmp_path: Path
) -> None:
    """The server dies mid-run and a new one takes its port: the runner must not re-send the code."""
    port = free_port()
    doomed = await start_server_process(port)
    ledger = Ledger()
    killed = asyncio.Event()

    async def dispatch(call: ToolCall) -> DispatchResult:
        if call.name == "ran":
            return DispatchResult(content=await ledger.ran())
        doomed.process.send_signal(signal.SIGKILL)
        killed.set()
        return DispatchResult(content="never delivered")

    code = LEDGER_CODE.replace("set_result('done')", "call_tool('crash')\nset_result('done')")
    retries: list[RetryAttempt] = []
    async with GrpcRunner(
        f"127.0.0.1:{port}", max_retries=8, retry_delay=0.1, on_retry=retries.append
    ) as runner:
        task = asyncio.create_task(runner.run(CodeRequest(code=code), dispatch))
        await asyncio.wait_for(killed.wait(), 30)
        await doomed.process.wait()
        # A replacement is up within the retry window: a wrong retry would succeed now.
        await start_server(SANDBOX_GRPC_ADDR=f"127.0.0.1:{port}")
        with pytest.raises(SandboxError) as info:
            await task
        # A killed server's connection ends as UNAVAILABLE, or (when the kernel resets it
        # mid-frame, as seen under load) as a stream that broke off: both are failures
        # the runner must not retry once the code has started.
        assert info.value.code in ("UNAVAILABLE", "INTERNAL"), info.value
        assert ledger.runs == 1
        assert retries == []

        # The same runner works against the new server (and that run counts itself too).
        again = await runner.run(CodeRequest(code=LEDGER_CODE), ledger.dispatch())
        assert again.output == "done"
        assert ledger.runs == 2


async def test_aclose_is_idempotent_and_final(runner: GrpcRunner) -> None:
    assert "python" in (await runner.info()).runtimes
    await runner.aclose()
    await runner.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await runner.info()


async def test_a_cancelled_run_waits_for_its_pending_tool_calls_to_end(runner: GrpcRunner) -> None:
    """No dispatch outlives run(): its cancellation is awaited, cleanup included."""
    started, cleaned_up = asyncio.Event(), asyncio.Event()

    async def hang(call: ToolCall) -> DispatchResult:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.2)  # slow cleanup: run() must wait for it
            cleaned_up.set()
        raise AssertionError("unreachable")

    task = asyncio.create_task(runner.run(CodeRequest(code="call_tool('hang')", timeout=60), hang))
    await asyncio.wait_for(started.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert cleaned_up.is_set()
