"""The HTTP facade: the documented JSON API of the original service, on the same core.

    POST   /execute                  run code; tool calls go to the request's callback_url
    GET    /health                   200 {"status": "ready"}, 503 while shutting down
    DELETE /workspace/{session_id}   204

Field names are those of the original HTTP service, so its clients work
unchanged. Errors are `{"error": "..."}` with 400, 405, 409, 413 or 503.

Each request is adapted onto `Sandbox.open()` and its `Execution`, exactly as
the gRPC servicer does, rather than looping back through a gRPC client. Both
adapters live in one process and one event loop, so the core is the honest
seam: the same validation, admission and capacity count, without a second
serialization, a loopback connection to manage, or error codes translated
twice. Nothing about an execution is decided here.

The client's `execution_id` is only echoed in tool callbacks; the core names
the execution itself, so a client reusing an id cannot collide with another
run's scratch workspace.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import math
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp
from aiohttp import web

from . import peers
from .auth import token_matches
from .config import MIB, Config
from .core import Sandbox
from .errors import Code, RequestError, invalid
from .execution import Execution
from .model import ExecutionSpec, FileChunkEvent, InputFile, Result, ToolCallEvent

log = logging.getLogger(__name__)

MAX_BODY = 32 * MIB
"""Largest accepted POST /execute body (the original service's limit)."""
MAX_TOOL_ANSWER = 16 * MIB
"""Largest callback answer read; the code's channel takes lines up to this size."""
_B64_BLOCK = 3 * 256 * 1024
"""Bytes base64-encoded at a time when streaming a spooled file (a multiple of 3)."""

HTTP_STATUS = {
    Code.INVALID_ARGUMENT: 400,
    Code.FAILED_PRECONDITION: 409,
    Code.RESOURCE_EXHAUSTED: 503,
    Code.UNAVAILABLE: 503,
    Code.ALREADY_EXISTS: 409,
}

MAX_JSON_DEPTH = 64
"""Deeper JSON is refused: nobody needs it, and decoding it costs a recursion per level."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def host_port(address: str) -> tuple[str | None, int]:
    """Split `host:port`; an empty host means all interfaces (None for aiohttp)."""
    host, _, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    return host or None, int(port)


class Facade:
    """The HTTP listener; `start()` binds SANDBOX_ADDR, `stop()` closes it."""

    def __init__(self, sandbox: Sandbox, config: Config) -> None:
        self._sandbox = sandbox
        self._config = config
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self.port = 0

    async def start(self) -> None:
        middlewares: list[Any] = [_json_errors, _no_sandboxed_peers]
        if self._config.auth_token:
            middlewares.append(_bearer_token(self._config.auth_token))
        app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY)
        app.router.add_post("/execute", self._execute)
        app.router.add_get("/health", self._health)
        app.router.add_delete("/workspace/{session_id}", self._delete_workspace)
        # handler_cancellation: a client that goes away cancels its handler,
        # which closes the Execution and so kills the code.
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=2.0)
        await runner.setup()
        host, port = host_port(self._config.http_addr)
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(
                f"SANDBOX_ADDR: cannot listen on {self._config.http_addr}: {exc.strerror}"
            ) from exc
        self._runner = runner
        # An empty host binds IPv4 and IPv6; with port 0 each gets its own port: report IPv4's.
        ipv4 = [address for address in runner.addresses if len(address) == 2]
        self.port = (ipv4 or runner.addresses)[0][1]
        # One client for every tool callback; a callback's timeout is set per call.
        self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._client is not None:
            await self._client.close()
            self._client = None

    # -- endpoints ------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        if self._sandbox.draining:
            return web.json_response(
                {"status": "shutting_down", "error": "the sandbox server is shutting down"},
                status=503,
            )
        return web.json_response({"status": "ready"})

    async def _delete_workspace(self, request: web.Request) -> web.Response:
        try:
            await self._sandbox.delete_workspace(request.match_info["session_id"])
        except RequestError as exc:
            return _error(HTTP_STATUS[exc.code], exc.message)
        return web.Response(status=204)

    async def _execute(self, request: web.Request) -> web.StreamResponse:
        if request.content_length is not None and request.content_length > MAX_BODY:
            return _too_large()
        try:
            # Before reading a body of up to 32 MiB that could not run anyway.
            self._sandbox.check_admission()
        except RequestError as exc:
            return _error(HTTP_STATUS[exc.code], exc.message)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _too_large()
        try:
            # A large body (base64 files) is decoded off the event loop.
            parsed = (
                await asyncio.to_thread(parse_execute, body)
                if len(body) > MIB
                else parse_execute(body)
            )
            execution = self._sandbox.open(parsed.spec)
        except RequestError as exc:
            return _error(HTTP_STATUS[exc.code], exc.message)
        assert self._client is not None
        async with execution:
            callbacks = _Callbacks(
                self._client, execution, parsed.execution_id, parsed.callback_url
            )
            spool = _Spool(self._config.workspace_root)
            try:
                try:
                    result = await self._run(execution, callbacks, spool)
                finally:
                    await callbacks.aclose()
                return await _send_result(request, result, spool)
            except RequestError as exc:
                return _error(HTTP_STATUS[exc.code], exc.message)
            finally:
                await asyncio.to_thread(spool.close)

    async def _run(self, execution: Execution, callbacks: _Callbacks, spool: _Spool) -> Result:
        result: Result | None = None
        async for event in execution.events():
            if isinstance(event, ToolCallEvent):
                callbacks.start(event)
            elif isinstance(event, FileChunkEvent):
                await spool.write(event)
            elif isinstance(event, Result):
                result = event
        assert result is not None, "an execution always ends with a Result"
        return result


def _too_large() -> web.Response:
    return _error(413, "the request body is larger than the 32 MiB limit")


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own 404/405/413 answers, as JSON like every other error."""
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        return _error(
            405,
            f"method {request.method} is not allowed on {request.path}; use {allowed}",
            Allow=allowed,
        )
    except web.HTTPRequestEntityTooLarge:
        return _too_large()
    except web.HTTPNotFound:
        return _error(404, f"no such endpoint: {request.method} {request.path}")


@web.middleware
async def _no_sandboxed_peers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Sandboxed code may reach this port (SANDBOX_NETWORK=host) but gets only /health."""
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport else None
    own = transport.get_extra_info("sockname") if transport else None
    if request.path != "/health" and (
        not peer or not own or peers.is_sandboxed(peer[0], peer[1], [own[1]], own[0])
    ):
        return _error(403, peers.MESSAGE)
    return await handler(request)


def _bearer_token(token: str) -> Any:
    """Everything but GET /health needs `Authorization: Bearer <token>` (SANDBOX_AUTH_TOKEN)."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/health" or token_matches(request.headers.get("Authorization"), token):
            return await handler(request)
        return _error(
            401,
            "missing or wrong bearer token: send `Authorization: Bearer <SANDBOX_AUTH_TOKEN>`",
            **{"WWW-Authenticate": "Bearer"},
        )

    return check


# -- request parsing ------------------------------------------------------------


@dataclass(frozen=True)
class ExecuteRequest:
    spec: ExecutionSpec
    execution_id: str
    callback_url: str


def parse_execute(body: bytes) -> ExecuteRequest:
    """The POST /execute body as an ExecutionSpec; RequestError (400) when malformed.

    Only the JSON shape and base64 are checked here: code, runtime, session id
    and file names are validated by the core, like for gRPC.
    """
    try:
        value = load_json(body)
    except ValueError as exc:
        raise invalid(f"invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise invalid("invalid JSON: the body must be a JSON object")
    code = _field(value, "code", str, "")
    if not code.strip():
        raise invalid("code is empty")
    callback_url = _field(value, "callback_url", str, "")
    if callback_url and not callback_url.startswith(("http://", "https://")):
        raise invalid(f"callback_url {callback_url[:200]!r} is not an http:// or https:// URL")
    return ExecuteRequest(
        spec=ExecutionSpec(
            code=code,
            runtime=_field(value, "runtime", str, "") or "python",
            session_id=_field(value, "session_id", str, ""),
            timeout=_timeout(value.get("timeout")),
            files=tuple(_input_file(i, f) for i, f in enumerate(_field(value, "files", list, []))),
        ),
        execution_id=_field(value, "execution_id", str, ""),
        callback_url=callback_url,
    )


def _field(obj: dict[str, Any], name: str, kind: type, default: Any, *, where: str = "") -> Any:
    value = obj.get(name)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise invalid(f"{where}{name} must be a JSON {_JSON_TYPE[kind]}")
    return value


_JSON_TYPE: dict[type, str] = {str: "string", list: "array", dict: "object"}


def _timeout(value: Any) -> float | None:
    """Whole seconds; absent or 0 means the server's default."""
    if value is None:
        return None
    try:
        whole = (
            not isinstance(value, bool)
            and isinstance(value, int | float)
            and math.isfinite(value)
            and value == int(value)
        )
    except OverflowError:  # an integer too large for a float
        whole = False
    if not whole:
        raise invalid(f"timeout must be a whole number of seconds, got {str(value)[:40]}")
    if value < 0:
        raise invalid(f"timeout must not be negative, got {value}")
    return float(value) if value else None


def _input_file(index: int, value: Any) -> InputFile:
    where = f"files[{index}]."
    if not isinstance(value, dict):
        raise invalid(f"files[{index}] must be a JSON object with name and data")
    name: str = _field(value, "name", str, "", where=where)
    data: str = _field(value, "data", str, "", where=where)
    if _field(value, "url", str, "", where=where) and not data:
        raise invalid(
            f"files[{index}] ({name!r}): fetching input files from a url is not supported; "
            "send the content base64-encoded in data"
        )
    try:
        content = base64.b64decode(data.replace("\n", "").replace("\r", ""), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise invalid(f"files[{index}] ({name!r}): data is not valid base64: {exc}") from None
    return InputFile(name=name, data=content)


# -- tool callbacks -------------------------------------------------------------


class _Callbacks:
    """Forwards the code's tool calls to callback_url, concurrently, one task per call."""

    def __init__(
        self, client: aiohttp.ClientSession, execution: Execution, execution_id: str, url: str
    ) -> None:
        self._client = client
        self._execution = execution
        self._execution_id = execution_id
        self._url = url
        self._deadline = asyncio.get_running_loop().time() + execution.timeout
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, call: ToolCallEvent) -> None:
        task = asyncio.create_task(self._forward(call), name=f"callback-{call.call_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Abandon calls still in flight: the code that made them has ended."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _forward(self, call: ToolCallEvent) -> None:
        data, error = await self._call(call)
        # The execution may have ended meanwhile; then nobody waits for this answer.
        with contextlib.suppress(RequestError):
            await self._execution.send_tool_result(call.call_id, data, error)

    async def _call(self, call: ToolCallEvent) -> tuple[str, str]:
        """The (data, error) pair for one call; every failure is a tool error for the code."""
        if not self._url:
            return "", f"tool {call.name!r} is unavailable: the request gave no callback_url"
        payload = {
            "execution_id": self._execution_id,
            "name": call.name,
            "args": json.loads(call.args_json),
        }
        # Bounded by the execution's own deadline: after it nobody needs the answer.
        budget = max(self._deadline - asyncio.get_running_loop().time(), 0.001)
        try:
            async with asyncio.timeout(budget):
                async with self._client.post(self._url, json=payload) as response:
                    body = await _read_capped(response.content, MAX_TOOL_ANSWER)
                    status = response.status
        except TimeoutError:
            return "", f"tool {call.name!r}: the callback did not answer within {budget:.0f} s"
        except aiohttp.ClientError as exc:
            return (
                "",
                f"tool {call.name!r}: the callback could not be reached ({exc or type(exc).__name__})",
            )
        except _TooLarge:
            return (
                "",
                f"tool {call.name!r}: the callback answer is larger than {MAX_TOOL_ANSWER} bytes",
            )
        answer = _json_object(body)
        if not 200 <= status < 300:
            detail = answer.get("error") if answer else body[:500].decode(errors="replace").strip()
            return "", f"tool {call.name!r}: the callback answered HTTP {status}" + (
                f": {detail}" if detail else ""
            )
        if answer is None:
            return "", f"tool {call.name!r}: the callback answer is not a JSON object"
        data, error = answer.get("data"), answer.get("error")
        if error:
            return "", error if isinstance(error, str) else json.dumps(error)
        if data is None:
            return "", ""
        return (data if isinstance(data, str) else json.dumps(data)), ""


class _TooLarge(Exception):
    pass


async def _read_capped(stream: aiohttp.StreamReader, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while chunk := await stream.read(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        parts.append(chunk)
    return b"".join(parts)


def load_json(body: bytes) -> Any:
    """json.loads, refusing nesting deeper than MAX_JSON_DEPTH; ValueError says what was wrong."""
    try:
        value = json.loads(body)
    except RecursionError:
        # The decoder recurses once per level and gives up cleanly.
        raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels deep") from None
    depth = json_depth(value)
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"nested {depth} levels deep; at most {MAX_JSON_DEPTH} are accepted")
    return value


def json_depth(value: Any) -> int:
    """How deeply arrays and objects nest in a parsed value, walked without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = load_json(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# -- the response ---------------------------------------------------------------


class _Spool:
    """Output files that arrive in chunks, kept in anonymous temp files (on disk) until sent."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._files: dict[str, IO[bytes]] = {}
        self._sizes: dict[str, int] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._sizes

    def size(self, name: str) -> int:
        return self._sizes[name]

    async def write(self, chunk: FileChunkEvent) -> None:
        file = self._files.get(chunk.name)
        if file is None:
            file = self._files[chunk.name] = await asyncio.to_thread(
                tempfile.TemporaryFile, dir=self._folder
            )
            self._sizes[chunk.name] = 0
        await asyncio.to_thread(file.write, chunk.data)
        self._sizes[chunk.name] += len(chunk.data)

    async def stream_base64(self, name: str, write: Callable[[bytes], Awaitable[None]]) -> None:
        file, size = self._files[name], self._sizes[name]
        await asyncio.to_thread(file.seek, 0)
        done = 0
        while done < size:
            block = await asyncio.to_thread(file.read, min(_B64_BLOCK, size - done))
            if not block:
                raise OSError(f"the spooled copy of {name!r} is shorter than received")
            done += len(block)
            await write(base64.b64encode(block))

    def close(self) -> None:
        for file in self._files.values():
            file.close()
        self._files.clear()


def _b64_len(size: int) -> int:
    return 4 * ((size + 2) // 3)


async def _send_result(request: web.Request, result: Result, spool: _Spool) -> web.StreamResponse:
    """Stream the 200 response; spooled files are base64-encoded block by block from disk."""
    head: dict[str, Any] = {
        "output": result.output,
        "logs": result.logs,
        "exit_code": result.exit_code,
    }
    if result.error:
        head["error"] = result.error
    parts: list[bytes | str] = [json.dumps(head)[:-1].encode() + b',"files":[']
    for index, file in enumerate(result.files):
        prefix = json.dumps({"name": file.name, "mime": file.mime})[:-1] + ',"data":"'
        parts.append(("," if index else "").encode() + prefix.encode())
        if file.data is not None:
            parts.append(base64.b64encode(file.data))
        elif file.name in spool:
            parts.append(file.name)
        parts.append(b'"}')
    parts.append(b"]}")

    response = web.StreamResponse(
        status=200, headers={"Content-Type": "application/json; charset=utf-8"}
    )
    response.content_length = sum(
        len(part) if isinstance(part, bytes) else _b64_len(spool.size(part)) for part in parts
    )
    await response.prepare(request)
    for part in parts:
        if isinstance(part, bytes):
            await response.write(part)
        else:
            await spool.stream_base64(part, response.write)
    await response.write_eof()
    return response


__all__ = ["MAX_BODY", "ExecuteRequest", "Facade", "host_port", "parse_execute"]
