"""SyncGrpcRunner: the blocking wrapper, driven from worker threads as a non-async app would."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from oasis import (
    CodeRequest,
    CodeResult,
    DispatchResult,
    LogChunk,
    Status,
    ToolCall,
    tool_dispatcher,
)
from oasis.code import SyncGrpcRunner
from sandbox_server.server import SandboxServer

from ..helpers import eventually
from .conftest import alive, execution_pids

# The server runs on this test's event loop, so the blocking calls go to threads.


async def test_run_with_a_plain_function_as_dispatch(server: SandboxServer) -> None:
    threads: set[int] = set()

    def dispatch(call: ToolCall) -> DispatchResult:
        threads.add(threading.get_ident())
        if call.name == "fail":
            raise RuntimeError("nope")
        return DispatchResult(content=str(call.args["x"] * 2))

    code = "r = call_tool('double', {'x': 21})\ntry:\n    call_tool('fail')\nexcept RuntimeError as e:\n    err = str(e)\nset_result([r, err])"

    def work() -> CodeResult:
        with SyncGrpcRunner(f"127.0.0.1:{server.port}") as runner:
            return runner.run(CodeRequest(code=code), dispatch)

    result = await asyncio.to_thread(work)
    assert result.status is Status.OK, result.error
    assert result.output == [42, "tool 'fail' failed: nope"]
    assert threads and threading.get_ident() not in threads


async def test_stream_info_delete_and_close(server: SandboxServer) -> None:
    runner = SyncGrpcRunner(f"127.0.0.1:{server.port}")
    code = "print('one', flush=True)\ncall_tool('noop')\nprint('two')\nopen('f.txt', 'w').write('x')\nset_result('ok')"

    def work() -> tuple[list[LogChunk | CodeResult], bool, str]:
        events = list(
            runner.stream(
                CodeRequest(code=code, session_id="sync"), tool_dispatcher({"noop": lambda: None})
            )
        )
        deleted = runner.delete_workspace("sync")
        return events, deleted, runner.info().version

    try:
        events, deleted, version = await asyncio.to_thread(work)
    finally:
        await asyncio.to_thread(runner.close)
    runner.close()  # idempotent

    *chunks, result = events
    assert isinstance(result, CodeResult) and result.output == "ok"
    assert b"".join(c.data for c in chunks if isinstance(c, LogChunk)) == b"one\ntwo\n"
    assert deleted is True and version
    with pytest.raises(RuntimeError, match="closed"):
        runner.info()


async def test_leaving_the_sync_stream_early_cancels_the_code(server: SandboxServer) -> None:
    marker = f"oasis-test-{uuid.uuid4().hex}"
    request = CodeRequest(
        code=(
            "import subprocess, sys, time\n"
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
            "print('ready', flush=True)\ntime.sleep(600)"
        ),
        timeout=120,
        env={"OASIS_TEST_MARKER": marker},
    )

    runner = SyncGrpcRunner(f"127.0.0.1:{server.port}")

    def work() -> int:
        events = runner.stream(request, tool_dispatcher({}))
        assert isinstance(next(events), LogChunk)
        running: set[int] = set()
        for _ in range(600):  # up to 30 s for the code and its child to show
            if len(running := execution_pids(marker)) >= 2:
                break
            time.sleep(0.05)
        events.close()  # the runner stays open: only closing the stream may stop the code
        return running

    try:
        running = await asyncio.to_thread(work)
        assert len(running) >= 2, "the code and its child"
        await eventually(lambda: not alive(running), timeout=10, what="the code's processes to end")
    finally:
        await asyncio.to_thread(runner.close)


async def test_one_sync_runner_serves_several_threads(server: SandboxServer) -> None:
    runner = SyncGrpcRunner(f"127.0.0.1:{server.port}")
    dispatch = tool_dispatcher({"square": lambda n: n * n})

    def work(n: int) -> object:
        return runner.run(
            CodeRequest(code=f"set_result(call_tool('square', {{'n': {n}}}))"), dispatch
        ).output

    def all_of_them() -> list[object]:
        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(work, range(8)))

    try:
        assert await asyncio.to_thread(all_of_them) == [n * n for n in range(8)]
    finally:
        await asyncio.to_thread(runner.close)
