"""Fixtures for the HTTP facade and HTTPRunner: a raw HTTP client and a tool callback server."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sandbox_server.server import SandboxServer

Answer = Callable[[dict[str, Any]], Awaitable[web.Response]]


def base_url(server: SandboxServer) -> str:
    return f"http://127.0.0.1:{server.http_port}"


def free_port() -> int:
    """A loopback port that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp client: the facade tests build every request by hand."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90)) as session:
        yield session


@dataclass
class CallbackServer:
    """A loopback HTTP server playing the application's tool endpoint."""

    url: str
    calls: list[dict[str, Any]] = field(default_factory=list)
    answer: Answer | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append(body)
        self.arrived.set()
        if self.answer is not None:
            return await self.answer(body)
        return web.json_response({"data": json.dumps(body["args"])})

    def hold(self) -> asyncio.Event:
        """Hold every tool call (and so the code) until the returned event is set."""
        release = asyncio.Event()

        async def answer(body: dict[str, Any]) -> web.Response:
            await release.wait()
            return web.json_response({"data": "released"})

        self.answer = answer
        return release

    async def wait_for_calls(self, count: int, within: float = 30.0) -> None:
        async with asyncio.timeout(within):
            while len(self.calls) < count:
                self.arrived.clear()
                await self.arrived.wait()


@pytest.fixture
async def callback() -> AsyncIterator[CallbackServer]:
    server = CallbackServer(url="")
    app = web.Application()
    app.router.add_post("/tools", server.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}/tools"
    yield server
    await runner.cleanup()
