"""The callback side of HTTPRunner: the sandbox POSTs each tool call here, and waits for the answer.

One CallbackRouter per runner routes a call to the dispatch of the run it
belongs to (by execution_id). It is served as an ASGI app, as an aiohttp
handler, or on a listener of the runner's own.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .._dispatch import dispatch_safely
from .._net import host_port
from .._types import Dispatch, DispatchResult, ToolCall
from ._wire import MiB

CALLBACK_PATH = "/_oasis/dispatch"
"""Where the sandbox POSTs tool calls, under the callback base URL."""
MAX_CALLBACK_BODY = 16 * MiB
"""Largest tool-call body the callback handler reads."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_TOO_LARGE = {"error": f"the tool call is larger than {MAX_CALLBACK_BODY} bytes"}


@dataclass
class _Run:
    dispatch: Dispatch
    calls: int = 0
    tasks: set[asyncio.Task[DispatchResult]] = field(default_factory=set)


class CallbackRouter:
    """Routes each callback to the dispatch function of the run it belongs to."""

    def __init__(self) -> None:
        self._runs: dict[str, _Run] = {}

    def registered(self, execution_id: str, dispatch: Dispatch) -> Registration:
        """`with router.registered(id, dispatch):` routes the run's calls while it lasts."""
        return Registration(self, execution_id, dispatch)

    def add(self, execution_id: str, dispatch: Dispatch) -> None:
        self._runs[execution_id] = _Run(dispatch)

    def remove(self, execution_id: str) -> None:
        run = self._runs.pop(execution_id, None)
        if run is not None:
            # The code has ended (or was abandoned): nobody needs these answers.
            for task in run.tasks:
                task.cancel()

    async def close(self) -> None:
        """Forget every run, cancel their dispatches and wait for them to end."""
        tasks = [task for run in self._runs.values() for task in run.tasks]
        for execution_id in list(self._runs):
            self.remove(execution_id)
        await asyncio.gather(*tasks, return_exceptions=True)

    async def handle(self, body: bytes) -> tuple[int, dict[str, str]]:
        """(HTTP status, JSON answer) for one callback body."""
        try:
            message = json.loads(body)
            if not isinstance(message, dict):
                raise ValueError("the body must be a JSON object")
            execution_id = message.get("execution_id")
            name = message.get("name")
            if not isinstance(execution_id, str) or not isinstance(name, str):
                raise ValueError("execution_id and name must be strings")
        except ValueError as exc:
            return 400, {"error": f"invalid request: {exc}"}
        run = self._runs.get(execution_id)
        if run is None:
            return 404, {"error": f"unknown execution_id: {execution_id}"}
        args = message.get("args")
        if args is None:
            args = {}
        if not isinstance(args, dict):
            return 200, {
                "error": f"tool {name!r}: arguments must be a JSON object, got {type(args).__name__}"
            }
        run.calls += 1
        call = ToolCall(id=f"{execution_id}.{run.calls}", name=name, args=args)
        task = asyncio.create_task(dispatch_safely(run.dispatch, call))
        run.tasks.add(task)
        task.add_done_callback(run.tasks.discard)
        try:
            result = await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            return 200, {"error": "the execution has ended"}
        if result.is_error:
            return 200, {"error": result.content}
        return 200, {"data": result.content}

    async def handle_aiohttp(self, request: web.Request) -> web.Response:
        """The callback endpoint as an aiohttp handler."""
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return web.json_response(_TOO_LARGE, status=413)
        status, answer = await self.handle(body)
        return web.json_response(answer, status=status)


class Registration:
    def __init__(self, router: CallbackRouter, execution_id: str, dispatch: Dispatch) -> None:
        self._router = router
        self._execution_id = execution_id
        self._dispatch = dispatch

    def __enter__(self) -> None:
        self._router.add(self._execution_id, self._dispatch)

    def __exit__(self, *exc_info: object) -> None:
        self._router.remove(self._execution_id)


async def listen(addr: str, router: CallbackRouter) -> tuple[web.AppRunner, str]:
    """Serve `router` at CALLBACK_PATH on `addr` ("host:port"): the listener and its URL."""
    host, port = host_port(addr)
    app = web.Application(client_max_size=MAX_CALLBACK_BODY)
    app.router.add_post(CALLBACK_PATH, router.handle_aiohttp)
    listener = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await listener.setup()
    try:
        await web.TCPSite(listener, host, port).start()
    except OSError:
        await listener.cleanup()
        raise
    # An empty host binds IPv4 and IPv6; with port 0 each gets its own port: use IPv4's.
    ipv4 = [address for address in listener.addresses if len(address) == 2]
    port = (ipv4 or listener.addresses)[0][1]
    if host in (None, "0.0.0.0", "::"):
        # Listening everywhere: advertise this machine's name. Behind NAT or in
        # containers, give callback_external instead.
        host = socket.gethostname()
    return listener, f"http://{f'[{host}]' if ':' in host else host}:{port}{CALLBACK_PATH}"


class AsgiHandler:
    """The callback endpoint as a plain ASGI application (no framework needed)."""

    def __init__(self, router: CallbackRouter) -> None:
        self._router = router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["method"] != "POST":
            await _respond(
                send,
                405,
                {"error": f"method {scope['method']} is not allowed; use POST"},
                allow=True,
            )
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > MAX_CALLBACK_BODY:
                await _respond(send, 413, _TOO_LARGE)
                return
            if not message.get("more_body", False):
                break
        status, answer = await self._router.handle(bytes(body))
        await _respond(send, status, answer)


async def _respond(send: Send, status: int, answer: dict[str, str], *, allow: bool = False) -> None:
    body = json.dumps(answer).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if allow:
        headers.append((b"allow", b"POST"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    """Served on its own (not mounted), the handler has nothing to start or stop."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
