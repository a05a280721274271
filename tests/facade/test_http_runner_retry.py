"""HTTPRunner retries only where the code certainly did not start, and never runs it twice."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from oasis import (
    CapacityExhausted,
    CodeRequest,
    Dispatch,
    DispatchResult,
    InvalidRequest,
    SandboxError,
    SandboxUnavailable,
    Status,
    ToolCall,
    tool_dispatcher,
)
from oasis.code import HTTPRunner, RetryAttempt

from ..conftest import StartServer
from ..helpers import eventually
from .conftest import base_url, free_port

# Appends one line per run to a session file and reports it through a tool:
# both the tool count and the file prove how often the code really ran.
COUNTING_CODE = (
    "with open('runs.log', 'a') as f:\n    f.write('ran\\n')\n"
    "call_tool('ran')\n"
    "set_result(len(open('runs.log').read().splitlines()))"
)


def counting_dispatch() -> tuple[list[str], Dispatch]:
    calls: list[str] = []
    return calls, tool_dispatcher({"ran": lambda: calls.append("ran") or "ok"})


async def test_retries_until_a_server_that_was_not_up_yet_starts(
    start_server: StartServer,
) -> None:
    port = free_port()
    calls, dispatch = counting_dispatch()
    retries: list[RetryAttempt] = []
    request = CodeRequest(code=COUNTING_CODE, session_id=f"retry-{uuid.uuid4().hex[:8]}")
    async with HTTPRunner(
        f"http://127.0.0.1:{port}", max_retries=8, retry_delay=0.2, on_retry=retries.append
    ) as runner:
        run = asyncio.create_task(runner.run(request, dispatch))
        # Only start the sandbox once the runner has been refused at least once.
        await eventually(lambda: retries or run.done(), what="a refused attempt")
        assert not run.done(), "run() ended before the sandbox was up"
        await start_server(SANDBOX_ADDR=f"127.0.0.1:{port}")
        result = await run

    assert result.status is Status.OK, result.error
    assert result.output == 1, "the code ran more than once"
    assert calls == ["ran"]
    first = retries[0]
    assert (first.operation, first.number, first.max_retries) == ("execute", 1, 8)
    assert first.error.code == "UNAVAILABLE"
    assert first.execution_id and {r.execution_id for r in retries} == {first.execution_id}


async def test_retries_after_503_and_runs_the_code_once(start_server: StartServer) -> None:
    server = await start_server(SANDBOX_MAX_CONCURRENT="1")
    release = asyncio.Event()
    holding = asyncio.Event()

    async def hold(call: ToolCall) -> DispatchResult:
        holding.set()
        await release.wait()
        return DispatchResult(content="released")

    calls, dispatch = counting_dispatch()
    retries: list[RetryAttempt] = []
    session = f"retry-{uuid.uuid4().hex[:8]}"
    async with HTTPRunner(
        base_url(server), max_retries=8, retry_delay=0.2, on_retry=retries.append
    ) as runner:
        blocker = asyncio.create_task(runner.run(CodeRequest(code="call_tool('hold')"), hold))
        async with asyncio.timeout(30):
            await holding.wait()
        run = asyncio.create_task(
            runner.run(CodeRequest(code=COUNTING_CODE, session_id=session), dispatch)
        )
        await eventually(lambda: retries or run.done(), what="a 503 and a retry")
        assert not run.done()
        assert isinstance(retries[0].error, CapacityExhausted)
        assert retries[0].error.http_status == 503
        release.set()
        result = await run
        await blocker

    assert result.status is Status.OK, result.error
    assert result.output == 1
    assert calls == ["ran"]


async def test_connection_refused_without_retries_raises_unavailable() -> None:
    async with HTTPRunner(f"http://127.0.0.1:{free_port()}", max_retries=0) as runner:
        with pytest.raises(SandboxUnavailable) as caught:
            await runner.run(CodeRequest(code="pass"), tool_dispatcher({}))

    assert caught.value.code == "UNAVAILABLE"
    assert "cannot connect" in caught.value.message


# -- a stand-in sandbox that answers with a fixed failure -------------------------------


@asynccontextmanager
async def fake_sandbox(
    status: int, error: str, code: str | None = None
) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A server with the /execute API that always fails; yields its URL and the bodies received."""
    received: list[bytes] = []
    answer = {"error": error} if code is None else {"error": error, "code": code}

    async def execute(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.json_response(answer, status=status)

    app = web.Application()
    app.router.add_post("/execute", execute)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", received
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("status", "error", "kind", "code"),
    [
        (400, "code is empty", InvalidRequest, "INVALID_ARGUMENT"),
        (500, "internal failure", SandboxError, "INTERNAL"),
        (502, "bad gateway", SandboxUnavailable, "UNAVAILABLE"),
    ],
)
async def test_failures_after_the_request_arrived_are_not_retried(
    status: int, error: str, kind: type[SandboxError], code: str
) -> None:
    retries: list[RetryAttempt] = []
    async with (
        fake_sandbox(status, error) as (url, received),
        HTTPRunner(url, max_retries=5, retry_delay=0.01, on_retry=retries.append) as runner,
    ):
        with pytest.raises(kind) as caught:
            await runner.run(CodeRequest(code="pass"), tool_dispatcher({}))

    assert len(received) == 1
    assert retries == []
    assert (caught.value.code, caught.value.http_status, caught.value.message) == (
        code,
        status,
        error,
    )


@pytest.mark.parametrize(
    ("error", "code", "kind"),
    [
        ("capacity reached: 4 executions are running", "RESOURCE_EXHAUSTED", CapacityExhausted),
        ("the sandbox server is shutting down", "UNAVAILABLE", SandboxUnavailable),
    ],
)
async def test_503_is_retried_max_retries_times(
    error: str, code: str, kind: type[SandboxError]
) -> None:
    retries: list[RetryAttempt] = []
    async with (
        fake_sandbox(503, error, code) as (url, received),
        HTTPRunner(url, max_retries=3, retry_delay=0.01, on_retry=retries.append) as runner,
    ):
        with pytest.raises(kind) as caught:
            await runner.run(CodeRequest(code="pass"), tool_dispatcher({}))

    assert len(received) == 4  # the first attempt and three retries
    assert [r.number for r in retries] == [1, 2, 3]
    assert all(isinstance(r.error, kind) for r in retries)
    assert (caught.value.code, caught.value.message) == (code, error)


async def test_a_connection_dropped_after_sending_is_not_retried() -> None:
    """The sandbox may have run the code: the runner must not send it again."""
    connections = 0

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.close()  # no answer at all

    retries: list[RetryAttempt] = []
    listener = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        async with HTTPRunner(
            f"http://127.0.0.1:{port}", max_retries=5, retry_delay=0.01, on_retry=retries.append
        ) as runner:
            with pytest.raises(SandboxUnavailable, match="may have run") as caught:
                await runner.run(CodeRequest(code="pass"), tool_dispatcher({}))
    finally:
        listener.close()
        await listener.wait_closed()

    assert connections == 1
    assert retries == []
    assert caught.value.code == "UNAVAILABLE"
