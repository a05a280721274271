"""HTTPRunner retries only where the code certainly did not start, and never runs it twice."""

from __future__ import annotations

import asyncio
import logging
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
from oasis.code import HTTPRunner

from ..conftest import StartServer
from ..helpers import eventually
from .conftest import base_url, free_port

RETRY_LOGGER = "oasis.code._http"

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


def retried(caplog: pytest.LogCaptureFixture) -> int:
    return sum(
        "retry" in record.getMessage() for record in caplog.records if record.name == RETRY_LOGGER
    )


async def test_retries_until_a_server_that_was_not_up_yet_starts(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=RETRY_LOGGER)
    port = free_port()
    calls, dispatch = counting_dispatch()
    request = CodeRequest(code=COUNTING_CODE, session_id=f"retry-{uuid.uuid4().hex[:8]}")
    async with HTTPRunner(f"http://127.0.0.1:{port}", max_retries=8, retry_delay=0.2) as runner:
        run = asyncio.create_task(runner.run(request, dispatch))
        # Only start the sandbox once the runner has been refused at least once.
        await eventually(lambda: retried(caplog) >= 1 or run.done(), what="a refused attempt")
        assert not run.done(), "run() ended before the sandbox was up"
        await start_server(SANDBOX_ADDR=f"127.0.0.1:{port}")
        result = await run

    assert result.status is Status.OK, result.error
    assert result.output == 1, "the code ran more than once"
    assert calls == ["ran"]


async def test_retries_after_503_and_runs_the_code_once(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=RETRY_LOGGER)
    server = await start_server(SANDBOX_MAX_CONCURRENT="1")
    release = asyncio.Event()
    holding = asyncio.Event()

    async def hold(call: ToolCall) -> DispatchResult:
        holding.set()
        await release.wait()
        return DispatchResult(content="released")

    calls, dispatch = counting_dispatch()
    session = f"retry-{uuid.uuid4().hex[:8]}"
    async with HTTPRunner(base_url(server), max_retries=8, retry_delay=0.2) as runner:
        blocker = asyncio.create_task(runner.run(CodeRequest(code="call_tool('hold')"), hold))
        async with asyncio.timeout(30):
            await holding.wait()
        run = asyncio.create_task(
            runner.run(CodeRequest(code=COUNTING_CODE, session_id=session), dispatch)
        )
        await eventually(lambda: retried(caplog) >= 1 or run.done(), what="a 503 and a retry")
        assert not run.done()
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
async def fake_sandbox(status: int, error: str) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A server with the /execute API that always fails; yields its URL and the bodies received."""
    received: list[bytes] = []

    async def execute(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.json_response({"error": error}, status=status)

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
    ("status", "error", "kind"),
    [
        (400, "code is empty", InvalidRequest),
        (500, "internal failure", SandboxError),
        (502, "bad gateway", SandboxUnavailable),
    ],
)
async def test_failures_after_the_request_arrived_are_not_retried(
    status: int, error: str, kind: type[SandboxError]
) -> None:
    async with (
        fake_sandbox(status, error) as (url, received),
        HTTPRunner(url, max_retries=5, retry_delay=0.01) as runner,
    ):
        with pytest.raises(kind) as caught:
            await runner.run(CodeRequest(code="pass"), tool_dispatcher({}))

    assert len(received) == 1
    assert (caught.value.code, caught.value.message) == (str(status), error)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ("capacity reached: 4 executions are running", CapacityExhausted),
        ("the sandbox server is shutting down", SandboxUnavailable),
    ],
)
async def test_503_is_retried_max_retries_times(error: str, kind: type[SandboxError]) -> None:
    async with (
        fake_sandbox(503, error) as (url, received),
        HTTPRunner(url, max_retries=3, retry_delay=0.01) as runner,
    ):
        with pytest.raises(kind) as caught:
            await runner.run(CodeRequest(code="pass"), tool_dispatcher({}))

    assert len(received) == 4  # the first attempt and three retries
    assert caught.value.message == error


async def test_a_connection_dropped_after_sending_is_not_retried() -> None:
    """The sandbox may have run the code: the runner must not send it again."""
    connections = 0

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.close()  # no answer at all

    listener = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        async with HTTPRunner(
            f"http://127.0.0.1:{port}", max_retries=5, retry_delay=0.01
        ) as runner:
            with pytest.raises(SandboxUnavailable, match="may have run") as caught:
                await runner.run(CodeRequest(code="pass"), tool_dispatcher({}))
    finally:
        listener.close()
        await listener.wait_closed()

    assert connections == 1
    assert caught.value.code == "UNAVAILABLE"
