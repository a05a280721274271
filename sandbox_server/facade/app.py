"""The facade's listener, middleware and endpoints: each request adapted onto the core."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
from aiohttp import web

from oasis._net import host_port
from oasis.code._http_wire import DELETED_HEADER

from ..config import Config
from ..core import Sandbox
from ..errors import Code, RequestError
from ..execution import Execution
from ..model import FileChunkEvent, Result, Started, ToolCallEvent
from . import callbacks
from .callbacks import ByteBudget, Callbacks
from .guards import ConnectionCap, Handler, HostCheck, bearer_token, no_sandboxed_peers, same_origin
from .request import MAX_BODY, OFF_LOOP, parse_execute
from .response import Spool, error, send_result, too_large


class Facade:
    """The HTTP listener; `start()` binds SANDBOX_ADDR, `stop()` closes it."""

    def __init__(self, sandbox: Sandbox, config: Config) -> None:
        self._sandbox = sandbox
        self._config = config
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self._client: aiohttp.ClientSession | None = None
        self.port = 0
        self.calls = ByteBudget(callbacks.CALL_BYTES_TOTAL)
        """Tool-call argument bytes in flight to callbacks, all executions together."""
        self.connections: ConnectionCap | None = None

    async def start(self) -> None:
        config = self._config
        host, port = host_port(config.http_addr)
        cap = ConnectionCap(config.max_connections)
        middlewares: list[Any] = [
            _json_errors,
            cap.middleware,
            same_origin(HostCheck(host, config.allowed_hosts)),
            no_sandboxed_peers,
        ]
        if config.auth_token:
            middlewares.append(bearer_token(config.auth_token))
        app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY)
        app.router.add_post("/execute", self._execute)
        app.router.add_get("/health", self._health)
        app.router.add_delete("/workspace/{session_id}", self._delete_workspace)
        app.router.add_post("/workspace/{session_id}/reset", self._reset_state)
        # handler_cancellation: a client that goes away cancels its handler,
        # which closes the Execution and so kills the code.
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=2.0)
        await runner.setup()
        assert runner.server is not None
        cap.factory = runner.server
        try:
            # Our own listener rather than a TCPSite: every accepted socket goes through the cap.
            listener = await asyncio.get_running_loop().create_server(cap.accept, host, port)
        except OSError as exc:
            await runner.cleanup()
            raise OSError(
                f"SANDBOX_ADDR: cannot listen on {config.http_addr}: {exc.strerror}"
            ) from exc
        self._runner, self._listener, self.connections = runner, listener, cap
        # An empty host binds IPv4 and IPv6; with port 0 each gets its own port: report IPv4's.
        ipv4 = [sock for sock in listener.sockets if sock.family == socket.AF_INET]
        self.port = (ipv4 or list(listener.sockets))[0].getsockname()[1]
        # One client for every tool callback; a callback's timeout is set per call.
        self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()  # no new connections; the runner closes the open ones
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._listener is not None:
            await self._listener.wait_closed()
            self._listener = None
        if self._client is not None:
            await self._client.close()
            self._client = None

    # -- endpoints ------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        if self._sandbox.draining:
            return web.json_response(
                {
                    "status": "shutting_down",
                    "error": "the sandbox server is shutting down",
                    "code": Code.UNAVAILABLE.name,
                },
                status=Code.UNAVAILABLE.http_status,
            )
        return web.json_response({"status": "ready"})

    async def _delete_workspace(self, request: web.Request) -> web.Response:
        try:
            deleted = await self._sandbox.delete_workspace(request.match_info["session_id"])
        except RequestError as exc:
            return error(exc.code, exc.message)
        # 204 as the API always answered; the header tells HTTPRunner whether there was one.
        return web.Response(status=204, headers={DELETED_HEADER: "true" if deleted else "false"})

    async def _reset_state(self, request: web.Request) -> web.Response:
        try:
            had_state = await self._sandbox.reset_state(request.match_info["session_id"])
        except RequestError as exc:
            return error(exc.code, exc.message)
        return web.json_response({"had_state": had_state})

    async def _execute(self, request: web.Request) -> web.StreamResponse:
        if request.content_length is not None and request.content_length > MAX_BODY:
            return too_large()
        try:
            # Before reading a body of up to 32 MiB that could not run anyway.
            self._sandbox.check_admission()
        except RequestError as exc:
            return error(exc.code, exc.message)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return too_large()
        # Checked once the size is known, so that an oversize body is a 413 whatever its type.
        if request.content_type != "application/json":
            # A web page may send text/plain cross-site without a CORS preflight, never JSON.
            return error(
                Code.INVALID_ARGUMENT,
                "POST /execute takes a JSON body: send `Content-Type: application/json` "
                f"(got {request.headers.get('Content-Type', 'none')[:100]!r})",
                status=415,
            )
        try:
            max_files = self._config.max_input_files
            parsed = (
                await asyncio.to_thread(parse_execute, body, max_files=max_files)
                if len(body) > OFF_LOOP
                else parse_execute(body, max_files=max_files)
            )
            execution = self._sandbox.open(parsed.spec)
        except RequestError as exc:
            return error(exc.code, exc.message)
        assert self._client is not None
        async with execution:
            calls = Callbacks(
                self._client, execution, parsed.execution_id, parsed.callback_url, self.calls
            )
            spool = Spool(self._config.workspace_root)
            try:
                try:
                    started, result = await self._run(execution, calls, spool)
                finally:
                    await calls.aclose()
                stateful = started if parsed.spec.keep_state else None
                return await send_result(request, result, spool, stateful=stateful)
            except RequestError as exc:
                return error(exc.code, exc.message)
            finally:
                await asyncio.to_thread(spool.close)

    async def _run(
        self, execution: Execution, calls: Callbacks, spool: Spool
    ) -> tuple[Started | None, Result]:
        """The execution's Started (None when it failed before it began) and Result."""
        started: Started | None = None
        result: Result | None = None
        async for event in execution.events():
            if isinstance(event, ToolCallEvent):
                await calls.start(event)
            elif isinstance(event, FileChunkEvent):
                await spool.write(event)
            elif isinstance(event, Started):
                started = event
            elif isinstance(event, Result):
                result = event
        assert result is not None, "an execution always ends with a Result"
        return started, result


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own 404/405/413 answers, as JSON like every other error."""
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        return error(
            Code.UNIMPLEMENTED,
            f"method {request.method} is not allowed on {request.path}; use {allowed}",
            headers={"Allow": allowed},
        )
    except web.HTTPRequestEntityTooLarge:
        return too_large()
    except web.HTTPNotFound:
        return error(Code.NOT_FOUND, f"no such endpoint: {request.method} {request.path}")
