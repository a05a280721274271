"""The HTTP facade: the documented JSON API of the original service, on the same core.

    POST   /execute                  run code; tool calls go to the request's callback_url
    GET    /health                   200 {"status": "ready"}, 503 while shutting down
    DELETE /workspace/{session_id}   204

Field names are those of the original HTTP service, so its clients work
unchanged, and a field it does not know is refused rather than ignored, so a
typo (`session` for `session_id`) does not pass unnoticed. Errors are
`{"error": "..."}` with 400, 401, 403, 404, 405, 409, 413, 415 or 503.

Only programs may call it, not web pages: a request from a browser page
(an `Origin` of another site) or through a rebound DNS name (a `Host` that is
not this server's) is refused with 403, and POST /execute takes only
`application/json` (415), which a page cannot send cross-site without a CORS
preflight, and this server grants none.

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
import difflib
import json
import logging
import math
import re
import socket
import tempfile
from collections.abc import Awaitable, Callable, Coroutine
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
from .http_guards import (
    ByteBudget,
    ConnectionCap,
    Handler,
    HostCheck,
    same_origin,
)
from .http_guards import json_error as _error
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
_JSON_VALUES_BASE = 1024
_JSON_VALUES_PER_FILE = 16
"""A request body may hold this many JSON values plus this many per allowed input file:
a request is a few fields and its files, so more is an attack on the parser's memory."""
CALL_BYTES_PER_EXECUTION = 32 * MIB
"""Tool-call arguments one execution may have in flight to its callback; more wait."""
CALL_BYTES_TOTAL = 256 * MIB
"""Tool-call arguments all executions together may have in flight; more wait."""


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
        self._listener: asyncio.Server | None = None
        self._client: aiohttp.ClientSession | None = None
        self.port = 0
        self.calls = ByteBudget(CALL_BYTES_TOTAL)
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
            _no_sandboxed_peers,
        ]
        if config.auth_token:
            middlewares.append(_bearer_token(config.auth_token))
        app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY)
        app.router.add_post("/execute", self._execute)
        app.router.add_get("/health", self._health)
        app.router.add_delete("/workspace/{session_id}", self._delete_workspace)
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
        # Checked once the size is known, so that an oversize body is a 413 whatever its type.
        if request.content_type != "application/json":
            # A web page may send text/plain cross-site without a CORS preflight, never JSON.
            return _error(
                415,
                "POST /execute takes a JSON body: send `Content-Type: application/json` "
                f"(got {request.headers.get('Content-Type', 'none')[:100]!r})",
            )
        try:
            # A large body (base64 files) is decoded off the event loop.
            max_files = self._config.max_input_files
            parsed = (
                await asyncio.to_thread(parse_execute, body, max_files=max_files)
                if len(body) > MIB
                else parse_execute(body, max_files=max_files)
            )
            execution = self._sandbox.open(parsed.spec)
        except RequestError as exc:
            return _error(HTTP_STATUS[exc.code], exc.message)
        assert self._client is not None
        async with execution:
            callbacks = _Callbacks(
                self._client, execution, parsed.execution_id, parsed.callback_url, self.calls
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
                await callbacks.start(event)
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
        not peer or not own or peers.is_sandboxed(_scoped(peer), peer[1], [own[1]], own[0])
    ):
        return _error(403, peers.MESSAGE)
    return await handler(request)


def _scoped(address: tuple[Any, ...]) -> str:
    """An IPv6 socket address's host with its scope (`fe80::1%4`): link-local needs it."""
    host = str(address[0])
    return f"{host}%{address[3]}" if len(address) == 4 and address[3] else host


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


@dataclass(frozen=True)
class ExecuteRequest:
    spec: ExecutionSpec
    execution_id: str
    callback_url: str


def parse_execute(body: bytes, *, max_files: int = Config.max_input_files) -> ExecuteRequest:
    """The POST /execute body as an ExecutionSpec; RequestError (400) when malformed.

    Only the JSON shape and base64 are checked here: code, runtime, session id
    and file names are validated by the core, like for gRPC. Sizes are checked
    before anything is built from them: a 32 MiB body of empty objects would
    otherwise cost gigabytes before the core could refuse it.
    """
    max_values = _JSON_VALUES_BASE + _JSON_VALUES_PER_FILE * max_files
    try:
        value = load_json(body, max_values=max_values)
    except TooManyValues:
        raise invalid(
            f"the body holds more than {max_values} JSON values; a request is a few fields "
            f"and at most {max_files} input files (SANDBOX_MAX_INPUT_FILES)"
        ) from None
    except ValueError as exc:
        raise invalid(f"invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise invalid("invalid JSON: the body must be a JSON object")
    _known_fields(value, _FIELDS)
    code = _field(value, "code", str, "")
    if not code.strip():
        raise invalid("code is empty")
    callback_url = _field(value, "callback_url", str, "")
    if callback_url and not callback_url.startswith(("http://", "https://")):
        raise invalid(f"callback_url {callback_url[:200]!r} is not an http:// or https:// URL")
    files: list[Any] = _field(value, "files", list, [])
    if len(files) > max_files:
        raise invalid(
            f"{len(files)} input files; at most {max_files} are accepted (SANDBOX_MAX_INPUT_FILES)"
        )
    return ExecuteRequest(
        spec=ExecutionSpec(
            code=code,
            runtime=_field(value, "runtime", str, "") or "python",
            session_id=_field(value, "session_id", str, ""),
            timeout=_timeout(value.get("timeout")),
            files=tuple(_input_file(i, f) for i, f in enumerate(files)),
        ),
        execution_id=_field(value, "execution_id", str, ""),
        callback_url=callback_url,
    )


def _field(obj: dict[str, Any], name: str, kind: type, default: Any, *, where: str = "") -> Any:
    value = obj.get(name)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise invalid(f"{where}{name} must be a JSON {_JSON_TYPE[kind]}, got {_shown(value)}")
    return value


_JSON_TYPE: dict[type, str] = {str: "string", list: "array", dict: "object"}
_FIELDS = ("execution_id", "callback_url", "code", "runtime", "session_id", "timeout", "files")
_FILE_FIELDS = ("name", "data", "mime", "url")


def _known_fields(obj: dict[str, Any], known: tuple[str, ...], *, where: str = "") -> None:
    """Refuse the first field not in `known`, suggesting the closest known name."""
    for name in obj:
        if name not in known:
            # difflib is quadratic-ish: a megabyte-long name gets no suggestion
            close = difflib.get_close_matches(name, known, n=1) if len(name) <= 64 else []
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise invalid(
                f"{where}unknown field {_shown(name)}{hint}; the fields are {', '.join(known)}"
            )


def _shown(value: Any) -> str:
    """A received value as its repr, so `'30'` and `30` differ; cut short if long."""
    text = repr(value[:61] if isinstance(value, str) else value)
    return text if len(text) <= 60 else text[:57] + "..."


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
        raise invalid(f"timeout must be a whole number of seconds, got {_shown(value)}")
    if value < 0:
        raise invalid(f"timeout must not be negative, got {_shown(value)}")
    return float(value) if value else None


def _input_file(index: int, value: Any) -> InputFile:
    where = f"files[{index}]."
    if not isinstance(value, dict):
        raise invalid(f"files[{index}] must be a JSON object with name and data")
    _known_fields(value, _FILE_FIELDS, where=f"files[{index}]: ")
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
    """Forwards the code's tool calls to callback_url, concurrently, one task per call.

    The argument bytes in flight are bounded per execution and, through
    `shared`, across the facade: a call over budget waits for earlier calls
    to finish. While it waits the execution's next events wait too, and so
    does the code (its call_tool blocks longer), so waiting calls do not pile
    up in memory either.
    """

    def __init__(
        self,
        client: aiohttp.ClientSession,
        execution: Execution,
        execution_id: str,
        url: str,
        shared: ByteBudget,
    ) -> None:
        self._client = client
        self._execution = execution
        self._execution_id = execution_id
        self._url = url
        self._deadline = asyncio.get_running_loop().time() + execution.timeout
        self._tasks: set[asyncio.Task[None]] = set()
        self.budget = ByteBudget(CALL_BYTES_PER_EXECUTION)
        self._shared = shared

    async def start(self, call: ToolCallEvent) -> None:
        """Forward `call` as soon as its arguments fit both budgets."""
        if not self._url:
            error = f"tool {call.name!r} is unavailable: the request gave no callback_url"
            self._spawn(self._answer(call.call_id, "", error))
            return
        body = self._body(call)
        size = len(body)
        limit = min(self.budget.limit, self._shared.limit)
        if size > limit:
            error = f"tool {call.name!r}: the call is {size} bytes, more than the {limit} bytes a callback may take"
            self._spawn(self._answer(call.call_id, "", error))
            return
        await self.budget.acquire(size)
        try:
            await self._shared.acquire(size)
        except BaseException:
            self.budget.release(size)
            raise
        task = self._spawn(self._forward(call.call_id, call.name, body))
        # A done callback, not a finally: a task cancelled before it ran never enters its body.
        task.add_done_callback(lambda _: self._release(size))

    async def aclose(self) -> None:
        """Abandon calls still in flight: the code that made them has ended."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _release(self, size: int) -> None:
        self.budget.release(size)
        self._shared.release(size)

    def _body(self, call: ToolCallEvent) -> bytes:
        """The callback's JSON body. args_json is JSON the server wrote itself: it is
        spliced in as is, not parsed and dumped again (a copy per step, for megabytes)."""
        head = json.dumps({"execution_id": self._execution_id, "name": call.name})
        return f'{head[:-1]},"args":{call.args_json}}}'.encode()

    async def _forward(self, call_id: str, name: str, body: bytes) -> None:
        data, error = await self._call(name, body)
        await self._answer(call_id, data, error)

    async def _answer(self, call_id: str, data: str, error: str) -> None:
        # The execution may have ended meanwhile; then nobody waits for this answer.
        with contextlib.suppress(RequestError):
            await self._execution.send_tool_result(call_id, data, error)

    async def _call(self, name: str, body: bytes) -> tuple[str, str]:
        """The (data, error) pair for one call; every failure is a tool error for the code."""
        # Bounded by the execution's own deadline: after it nobody needs the answer.
        budget = max(self._deadline - asyncio.get_running_loop().time(), 0.001)
        try:
            async with asyncio.timeout(budget):
                async with self._client.post(
                    self._url, data=body, headers={"Content-Type": "application/json"}
                ) as response:
                    answer = await _read_capped(response.content, MAX_TOOL_ANSWER)
                    status = response.status
        except TimeoutError:
            return "", f"tool {name!r}: the callback did not answer within {budget:.0f} s"
        except aiohttp.ClientError as exc:
            return (
                "",
                f"tool {name!r}: the callback could not be reached ({exc or type(exc).__name__})",
            )
        except _TooLarge:
            return "", f"tool {name!r}: the callback answer is larger than {MAX_TOOL_ANSWER} bytes"
        if len(answer) > MIB:
            # Decoding (and re-encoding) megabytes of JSON is work for a thread, not the loop.
            return await asyncio.to_thread(_tool_answer, name, status, answer)
        return _tool_answer(name, status, answer)


def _tool_answer(name: str, status: int, body: bytes) -> tuple[str, str]:
    """The (data, error) pair from the callback's HTTP answer."""
    answer = _json_object(body)
    if not 200 <= status < 300:
        detail = answer.get("error") if answer else body[:500].decode(errors="replace").strip()
        return "", f"tool {name!r}: the callback answered HTTP {status}" + (
            f": {detail}" if detail else ""
        )
    if answer is None:
        return "", f"tool {name!r}: the callback answer is not a JSON object"
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


class TooManyValues(ValueError):
    """A JSON text holds more values than the caller accepts."""


def load_json(body: bytes, *, max_values: int | None = None) -> Any:
    """json.loads, refusing nesting deeper than MAX_JSON_DEPTH or more than `max_values`
    values before building anything; ValueError says what was wrong."""
    text = body.decode(json.detect_encoding(body), "surrogatepass")
    check_json_shape(text, max_values=max_values)
    return json.loads(text)


def _structure(tokens: str) -> re.Pattern[str]:
    """Matches up to and including the next of `tokens` outside a JSON string.

    Possessive quantifiers: a failed match never backtracks, so a scan is linear.
    """
    chars = re.escape(tokens)
    string = r'"[^"\\]*+(?:\\.[^"\\]*+)*+"'
    return re.compile(rf'(?:[^"{chars}]++|{string})*+([{chars}])', re.DOTALL)


_BRACKETS = _structure("[]{}")
_BRACKETS_AND_COMMAS = _structure("[]{},")


def check_json_shape(text: str, *, max_values: int | None = None) -> None:
    """Scan raw JSON for its depth and (with `max_values`) its number of values.

    The regex skips strings and runs of scalars in C, so Python sees one step
    per bracket (and comma): cheap for a real request, and a hostile one is
    stopped at the limit instead of after json.loads built millions of objects.
    Malformed JSON stops the scan early; json.loads then refuses it.
    """
    pattern = _BRACKETS if max_values is None else _BRACKETS_AND_COMMAS
    depth = values = pos = 0
    while match := pattern.match(text, pos):
        pos = match.end()
        token = match[1]
        if token == ",":
            values += 1
        elif token in "[{":
            depth += 1
            values += 1
            if depth > MAX_JSON_DEPTH:
                raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels deep")
        else:
            depth -= 1
        if max_values is not None and values > max_values:
            raise TooManyValues(f"more than {max_values} values")


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
