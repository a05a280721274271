"""HTTPRunner: runs code through the sandbox's JSON HTTP API.

It speaks the documented API (POST /execute, tool calls POSTed back to a
callback URL), so it works against our facade and against any service with
the same API. The runner answers tool callbacks either on a listener of its
own, started on first use at `callback_addr`, or, with `callback_external`,
through a handler the application mounts on its own server at
`/_oasis/dispatch` (`handler()` for ASGI apps such as Starlette or FastAPI,
`aiohttp_handler()` for aiohttp).

Retries: POST /execute is sent again only when the code certainly did not
start: the connection could not be made (nothing was sent), or the sandbox
answered 503 (it refused before running anything). Any other failure after
the request was sent (a dropped connection, a lost response) may come after
the code ran, with its side effects on tools and on the session workspace, so
it is raised instead of repeated.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import logging
import math
import socket
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp
from aiohttp import web

from .._dispatch import Tools, as_dispatch, dispatch_safely
from .._types import CodeFile, CodeRequest, CodeResult, Dispatch, DispatchResult, Status, ToolCall
from ..errors import (
    CapacityExhausted,
    FailedPrecondition,
    InvalidRequest,
    SandboxError,
    SandboxUnavailable,
    Unauthenticated,
)

log = logging.getLogger(__name__)

KiB = 1024
MiB = 1024 * KiB

CALLBACK_PATH = "/_oasis/dispatch"
"""Where the sandbox POSTs tool calls, under the callback base URL."""
MAX_CALLBACK_BODY = 16 * MiB
"""Largest tool-call body the callback handler reads."""
_RESPONSE_MARGIN = 30.0
"""Seconds the sandbox may take beyond the code's timeout to prepare and send the result."""
_OFF_LOOP = 1 * MiB
"""JSON bodies larger than this are encoded or decoded in a thread."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class HTTPRunner:
    """Runs code on a sandbox over HTTP; an async context manager.

    `url` is the sandbox's base URL (for example `http://127.0.0.1:9000`).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        max_file_size: int = 10 * MiB,
        max_retries: int = 2,
        retry_delay: float = 0.5,
        callback_addr: str = "127.0.0.1:0",
        callback_external: str | None = None,
    ) -> None:
        """Options:

        - `timeout`: seconds the code may run when the request sets none.
        - `max_file_size`: returned files larger than this keep name, MIME and size only.
        - `max_retries`: extra POST attempts (0 = none), only where the code did not start;
          the same meaning as GrpcRunner's and the Go client's WithMaxRetries.
        - `retry_delay`: seconds before the first retry, doubling after each.
        - `callback_addr`: `host:port` of the callback listener started on first use.
        - `callback_external`: public base URL of the application's own server, which
          mounts `handler()` or `aiohttp_handler()` at `/_oasis/dispatch`; no listener
          is started then.
        """
        self._url = _base_url(url)
        self._timeout = timeout
        self._max_file_size = max_file_size
        if max_retries < 0:
            raise ValueError("max_retries must not be negative")
        self._max_retries = max_retries
        self._retry_delay = retry_delay
        self._callback_addr = callback_addr
        self._callback_external = callback_external
        self._router = _CallbackRouter()
        self._asgi = _AsgiHandler(self._router)
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._listener: web.AppRunner | None = None
        self._callback_url = ""
        self._closed = False

    # -- lifecycle --------------------------------------------------------------

    async def __aenter__(self) -> HTTPRunner:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the callback listener and close connections; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        await self._router.close()
        if self._listener is not None:
            await self._listener.cleanup()
            self._listener = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def handler(self) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        """The callback endpoint as an ASGI app: `app.mount("/_oasis/dispatch", runner.handler())`."""
        return self._asgi

    def aiohttp_handler(self) -> Callable[[web.Request], Awaitable[web.Response]]:
        """The callback endpoint for aiohttp: `app.router.add_post("/_oasis/dispatch", ...)`."""
        return self._handle_aiohttp

    @property
    def callback_url(self) -> str:
        """Where the sandbox sends tool calls ("" before the first run starts the listener)."""
        return self._callback_url

    async def _ensure_started(self) -> aiohttp.ClientSession:
        async with self._lock:
            if self._closed:
                raise RuntimeError("this HTTPRunner is closed")
            if self._session is None:
                # force_close: a new connection per request, so a keep-alive connection
                # the server already dropped can never fail a request ambiguously.
                self._session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(force_close=True)
                )
            if not self._callback_url:
                if self._callback_external is not None:
                    self._callback_url = self._callback_external.rstrip("/") + CALLBACK_PATH
                else:
                    self._callback_url = await self._start_listener()
            return self._session

    async def _start_listener(self) -> str:
        host, _, port_text = self._callback_addr.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        app = web.Application(client_max_size=MAX_CALLBACK_BODY)
        app.router.add_post(CALLBACK_PATH, self._handle_aiohttp)
        listener = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await listener.setup()
        try:
            await web.TCPSite(listener, host or None, int(port_text)).start()
        except (OSError, ValueError):
            await listener.cleanup()
            raise
        self._listener = listener
        # An empty host binds IPv4 and IPv6; with port 0 each gets its own port: use IPv4's.
        ipv4 = [address for address in listener.addresses if len(address) == 2]
        port = (ipv4 or listener.addresses)[0][1]
        if host in ("", "0.0.0.0", "::"):
            # Listening everywhere: advertise this machine's name. Behind NAT or in
            # containers, give callback_external instead.
            host = socket.gethostname()
        return f"http://{f'[{host}]' if ':' in host else host}:{port}{CALLBACK_PATH}"

    # -- running code -----------------------------------------------------------

    async def run(self, request: CodeRequest, dispatch: Dispatch | Tools) -> CodeResult:
        """Run the code, answering its tool calls with `dispatch`; the result of the run.

        `dispatch` is an async function taking a ToolCall, or a dict of tools
        (wrapped with `oasis.tool_dispatcher`); anything else is a TypeError
        before the request is sent. Failures of the code are in the result;
        SandboxError when the sandbox refused the request or could not be reached.
        """
        checked = cast("Dispatch", as_dispatch(dispatch))
        if request.env:
            raise InvalidRequest(
                "the HTTP API cannot pass environment variables; use GrpcRunner for env",
                code="INVALID_ARGUMENT",
            )
        session = await self._ensure_started()
        execution_id = uuid.uuid4().hex
        timeout = self._timeout if request.timeout is None else request.timeout
        payload = {
            "execution_id": execution_id,
            "callback_url": self._callback_url,
            "code": request.code,
            "runtime": request.runtime,
            "session_id": request.session_id,
            "timeout": max(1, math.ceil(timeout)),
            "files": [_wire_file(f) for f in request.files],
        }
        large = sum(len(f.data) for f in request.files) > _OFF_LOOP
        body = await asyncio.to_thread(_dump, payload) if large else _dump(payload)
        with self._router.registered(execution_id, checked):
            raw = await self._post_execute(session, body, timeout + _RESPONSE_MARGIN)
        if len(raw) > _OFF_LOOP:
            return await asyncio.to_thread(self._result, raw, execution_id)
        return self._result(raw, execution_id)

    async def delete_workspace(self, session_id: str) -> None:
        """Delete a session's workspace on the sandbox (DELETE /workspace/{session_id})."""
        session = await self._ensure_started()
        url = f"{self._url}/workspace/{urllib.parse.quote(session_id, safe='')}"
        status, raw = await self._send(session, "DELETE", url, None, 30.0)
        if status >= 300:
            raise http_error(status, raw)

    async def _post_execute(
        self, session: aiohttp.ClientSession, body: bytes, read_timeout: float
    ) -> bytes:
        delay = self._retry_delay
        for attempt in range(1, self._max_retries + 2):
            try:
                status, raw = await self._send(
                    session, "POST", f"{self._url}/execute", body, read_timeout
                )
            except _NotSent as exc:
                error: SandboxError = exc.error
            else:
                if status == 200:
                    return raw
                error = http_error(status, raw)
                if status != 503:
                    raise error
            if attempt > self._max_retries:
                raise error
            log.info(
                "sandbox %s did not start the code (%s); retry %d of %d in %.2f s",
                self._url,
                error,
                attempt,
                self._max_retries,
                delay,
            )
            await asyncio.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    async def _send(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        body: bytes | None,
        read_timeout: float,
    ) -> tuple[int, bytes]:
        """One HTTP exchange; transport failures become SandboxErrors here."""
        timeout = aiohttp.ClientTimeout(total=None, connect=10.0, sock_read=read_timeout)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        # A large body is sent from a file-like object, which aiohttp reads off the loop.
        data = io.BytesIO(body) if body is not None and len(body) > _OFF_LOOP else body
        try:
            async with session.request(
                method, url, data=data, headers=headers, timeout=timeout
            ) as response:
                return response.status, await response.read()
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise _NotSent(
                SandboxUnavailable(
                    f"cannot connect to the sandbox at {self._url}: {exc}", code="UNAVAILABLE"
                )
            ) from exc
        except TimeoutError as exc:
            raise SandboxUnavailable(
                f"the sandbox at {self._url} sent no answer within {read_timeout:g} s; the code may have run",
                code="DEADLINE_EXCEEDED",
            ) from exc
        except aiohttp.ClientError as exc:
            raise SandboxUnavailable(
                f"the connection to the sandbox at {self._url} failed after the request was sent "
                f"({exc or type(exc).__name__}); the code may have run, so it is not sent again",
                code="UNAVAILABLE",
            ) from exc

    def _result(self, raw: bytes, execution_id: str) -> CodeResult:
        try:
            payload = json.loads(raw)
            if not isinstance(payload, dict):
                raise ValueError("not a JSON object")
            return _code_result(
                payload, execution_id=execution_id, max_file_size=self._max_file_size
            )
        except (ValueError, TypeError, binascii.Error) as exc:
            raise SandboxError(
                f"the sandbox sent an invalid /execute response: {exc}", code="200"
            ) from None

    # -- tool callbacks ---------------------------------------------------------

    async def _handle_aiohttp(self, request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return web.json_response(
                {"error": f"the tool call is larger than {MAX_CALLBACK_BODY} bytes"}, status=413
            )
        status, answer = await self._router.handle(body)
        return web.json_response(answer, status=status)


def _base_url(url: str) -> str:
    """`url` without a trailing slash; ValueError unless it is http(s) with a host."""
    try:
        parts = urllib.parse.urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        ok = False
    if not ok:
        example = f"http://{url}" if "://" not in url and url else "http://127.0.0.1:9000"
        raise ValueError(
            f"HTTPRunner needs the sandbox's base URL with http:// or https:// and a host, "
            f"such as {example!r}; got {url!r}"
        )
    return url.rstrip("/")


class _NotSent(Exception):
    """The request never reached the sandbox: safe to send again."""

    def __init__(self, error: SandboxError) -> None:
        super().__init__(str(error))
        self.error = error


def http_error(status: int, raw: bytes) -> SandboxError:
    """The library error for a non-2xx answer: the one place HTTP statuses are mapped."""
    message = ""
    try:
        answer = json.loads(raw)
        if isinstance(answer, dict) and isinstance(answer.get("error"), str):
            message = answer["error"]
    except ValueError:
        message = raw[:1000].decode(errors="replace").strip()
    message = message or f"the sandbox answered HTTP {status}"
    kind: type[SandboxError]
    if status in (400, 404, 405, 413, 422):
        kind = InvalidRequest
    elif status in (401, 403):
        kind = Unauthenticated
    elif status == 409:
        kind = FailedPrecondition
    elif status == 503:
        kind = CapacityExhausted if "capacity" in message.lower() else SandboxUnavailable
    elif status in (502, 504):
        kind = SandboxUnavailable
    else:
        kind = SandboxError
    return kind(message, code=str(status))


def _dump(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _wire_file(file: CodeFile) -> dict[str, str]:
    return {
        "name": file.name,
        "data": base64.b64encode(file.data).decode("ascii"),
        "mime": file.mime,
        "url": file.url,
    }


def _decoded_size(text: str) -> int:
    """Bytes a padded base64 string decodes to, without decoding it."""
    return len(text) // 4 * 3 - text[-2:].count("=") if text else 0


def _code_result(payload: dict[str, Any], *, execution_id: str, max_file_size: int) -> CodeResult:
    output_text = payload.get("output") or ""
    output: Any = None
    if output_text:
        try:
            output = json.loads(output_text)
        except ValueError:
            output = output_text
    exit_code = int(payload.get("exit_code") or 0)
    error = str(payload.get("error") or "")
    files = []
    for item in payload.get("files") or []:
        if not isinstance(item, dict):
            raise ValueError("files must be JSON objects")
        data_text = str(item.get("data") or "")
        size = _decoded_size(data_text)
        data = b"" if size > max_file_size else base64.b64decode(data_text, validate=True)
        files.append(
            CodeFile(
                name=str(item.get("name", "")),
                mime=str(item.get("mime") or ""),
                url=str(item.get("url") or ""),
                data=data,
                size=size,
            )
        )
    return CodeResult(
        output=output,
        logs=str(payload.get("logs") or ""),
        exit_code=exit_code,
        error=error,
        files=files,
        status=_status(exit_code, error),
        execution_id=execution_id,
    )


def _status(exit_code: int, error: str) -> Status:
    """The API carries no status field; it follows from the exit code and the error."""
    if exit_code == 0 and not error:
        return Status.OK
    if exit_code == -1 and "timed out after" in error:
        return Status.TIMEOUT
    return Status.ERROR


# -- the callback side ------------------------------------------------------------


@dataclass
class _Execution:
    dispatch: Dispatch
    calls: int = 0
    tasks: set[asyncio.Task[DispatchResult]] = field(default_factory=set)


class _CallbackRouter:
    """Routes each callback to the dispatch function of the run it belongs to."""

    def __init__(self) -> None:
        self._runs: dict[str, _Execution] = {}

    def registered(self, execution_id: str, dispatch: Dispatch) -> _Registration:
        return _Registration(self, execution_id, dispatch)

    def add(self, execution_id: str, dispatch: Dispatch) -> None:
        self._runs[execution_id] = _Execution(dispatch)

    def remove(self, execution_id: str) -> None:
        run = self._runs.pop(execution_id, None)
        if run is not None:
            # The code has ended (or was abandoned): nobody needs these answers.
            for task in run.tasks:
                task.cancel()

    async def close(self) -> None:
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


class _Registration:
    def __init__(self, router: _CallbackRouter, execution_id: str, dispatch: Dispatch) -> None:
        self._router = router
        self._execution_id = execution_id
        self._dispatch = dispatch

    def __enter__(self) -> None:
        self._router.add(self._execution_id, self._dispatch)

    def __exit__(self, *exc_info: object) -> None:
        self._router.remove(self._execution_id)


class _AsgiHandler:
    """The callback endpoint as a plain ASGI application (no framework needed)."""

    def __init__(self, router: _CallbackRouter) -> None:
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
                await _respond(
                    send, 413, {"error": f"the tool call is larger than {MAX_CALLBACK_BODY} bytes"}
                )
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
