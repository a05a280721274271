"""HTTPRunner's callback endpoint mounted on the application's own server (ASGI and aiohttp)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
import uvicorn
from aiohttp import web
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from oasis import CodeRequest, Status, tool_dispatcher
from oasis.code import HTTPRunner
from sandbox_server.server import SandboxServer

from ..helpers import eventually
from .conftest import base_url, free_port

TOOL_CODE = "set_result(call_tool('greet', {'name': 'Ada'}))"


@asynccontextmanager
async def serve_asgi(app: Any, *, port: int = 0, lifespan: str = "off") -> AsyncIterator[str]:
    """Serve an ASGI app with uvicorn on loopback (port 0: a free one); yields its base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan=lifespan
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: server.started or task.done(), what="uvicorn started")
        if task.done():
            task.result()
            raise AssertionError("uvicorn stopped at start")
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def homepage(request: Request) -> PlainTextResponse:
    return PlainTextResponse("the application's own page")


def starlette_with_route(runner: HTTPRunner) -> Starlette:
    return Starlette(
        routes=[
            Route("/", homepage),
            Route("/_oasis/dispatch", runner.handler(), methods=["POST"]),
        ]
    )


def starlette_with_mount(runner: HTTPRunner) -> Starlette:
    # `app.mount(...)` in FastAPI builds the same Mount.
    return Starlette(routes=[Route("/", homepage), Mount("/_oasis/dispatch", app=runner.handler())])


@pytest.mark.parametrize("build", [starlette_with_route, starlette_with_mount])
async def test_callback_mounted_on_an_asgi_app(
    server: SandboxServer, build: Callable[[HTTPRunner], Any]
) -> None:
    # The runner needs the app's URL and the app needs the runner: serve a
    # trampoline first, then plug in the app built around the runner.
    built: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await built[0](scope, receive, send)

    async with (
        serve_asgi(app) as app_url,
        HTTPRunner(base_url(server), callback_external=app_url) as runner,
    ):
        built.append(build(runner))
        result = await runner.run(
            CodeRequest(code=TOOL_CODE), tool_dispatcher({"greet": lambda name: f"hello {name}"})
        )
        assert runner.callback_url == f"{app_url}/_oasis/dispatch"

        async with aiohttp.ClientSession() as http:
            async with http.post(
                runner.callback_url, json={"execution_id": "gone", "name": "greet", "args": {}}
            ) as response:
                unknown = (response.status, await response.json())
            async with http.get(runner.callback_url) as response:
                wrong_method = response.status

    assert result.status is Status.OK, result.error
    assert result.output == "hello Ada"
    assert unknown == (404, {"error": "unknown execution_id: gone"})
    assert wrong_method == 405


async def test_the_handler_alone_is_a_complete_asgi_app(server: SandboxServer) -> None:
    port = free_port()
    runner = HTTPRunner(base_url(server), callback_external=f"http://127.0.0.1:{port}")
    # lifespan="on": uvicorn refuses to start unless the app answers the lifespan protocol.
    async with runner, serve_asgi(runner.handler(), port=port, lifespan="on"):
        result = await runner.run(
            CodeRequest(code=TOOL_CODE), tool_dispatcher({"greet": lambda name: f"hey {name}"})
        )

    assert result.output == "hey Ada", result.error


async def test_the_asgi_app_keeps_serving_its_own_routes(server: SandboxServer) -> None:
    runner = HTTPRunner(base_url(server), callback_external="http://unused.invalid")
    async with (
        runner,
        serve_asgi(starlette_with_route(runner)) as app_url,
        aiohttp.ClientSession() as http,
        http.get(app_url + "/") as response,
    ):
        assert await response.text() == "the application's own page"


async def test_callback_mounted_on_an_aiohttp_app(server: SandboxServer) -> None:
    app = web.Application()
    handler_box: list[Any] = []

    async def dispatch_endpoint(request: web.Request) -> web.StreamResponse:
        return await handler_box[0](request)  # type: ignore[no-any-return]

    app.router.add_post("/_oasis/dispatch", dispatch_endpoint)
    app_runner = web.AppRunner(app, access_log=None)
    await app_runner.setup()
    await web.TCPSite(app_runner, "127.0.0.1", 0).start()
    app_url = f"http://127.0.0.1:{app_runner.addresses[0][1]}"
    try:
        async with HTTPRunner(base_url(server), callback_external=app_url) as runner:
            handler_box.append(runner.aiohttp_handler())
            result = await runner.run(
                CodeRequest(code=TOOL_CODE), tool_dispatcher({"greet": lambda name: f"hi {name}"})
            )
    finally:
        await app_runner.cleanup()

    assert result.output == "hi Ada", result.error


async def test_external_callback_starts_no_listener_of_its_own(server: SandboxServer) -> None:
    # With callback_external pointing nowhere, tool calls fail: nothing else answers them.
    async with HTTPRunner(base_url(server), callback_external="http://127.0.0.1:9") as runner:
        code = "try:\n    call_tool('greet')\nexcept RuntimeError as exc:\n    set_result(str(exc))"
        result = await runner.run(CodeRequest(code=code), tool_dispatcher({"greet": lambda: "x"}))

    assert runner.callback_url == "http://127.0.0.1:9/_oasis/dispatch"
    assert "could not be reached" in result.output
