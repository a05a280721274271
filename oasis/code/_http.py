"""HTTPRunner: runs code through the sandbox's JSON HTTP API.

It speaks the documented API (POST /execute, tool calls POSTed back to a
callback URL), so it works against our facade and against any service with
the same API. The runner answers tool callbacks either on a listener of its
own, started on first use at `callback_addr`, or, with `callback_external`,
through a handler the application mounts on its own server at
`/_oasis/dispatch` (`handler()` for ASGI apps such as Starlette or FastAPI,
`aiohttp_handler()` for aiohttp); see `_callbacks`.

Retries: POST /execute is sent again only when the code certainly did not
start: the connection could not be made (nothing was sent), or the sandbox
answered 503 (it refused before running anything). Any other failure after
the request was sent (a dropped connection, a lost response) may come after
the code ran, with its side effects on tools and on the session workspace, so
it is raised instead of repeated.
"""

from __future__ import annotations

import asyncio
import functools
import io
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import cast

import aiohttp
from aiohttp import web

from .._dispatch import Tools, as_dispatch
from .._types import CodeRequest, CodeResult, Dispatch
from ..errors import InvalidRequest, SandboxUnavailable
from . import _http_wire
from ._base import OnRetry, Retry, Retryable, RunnerBase
from ._callbacks import CALLBACK_PATH, AsgiHandler, CallbackRouter, Receive, Scope, Send, listen
from ._errors import from_http
from ._wire import MiB

_RESPONSE_MARGIN = 30.0
"""Seconds the sandbox may take beyond the code's timeout to prepare and send the result."""
_OFF_LOOP = 1 * MiB
"""JSON bodies larger than this are encoded or decoded in a thread."""


class HTTPRunner(RunnerBase):
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
        on_retry: OnRetry | None = None,
        callback_addr: str = "127.0.0.1:0",
        callback_external: str | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        """Options:

        - `timeout`: seconds the code may run when the request sets none.
        - `max_file_size`: returned files larger than this keep name, MIME and size only.
        - `max_retries`: extra POST attempts (0 = none), only where the code did not start;
          the same meaning as GrpcRunner's and the Go client's WithMaxRetries.
        - `retry_delay`: seconds before the first retry, doubling after each (as GrpcRunner).
        - `on_retry`: called with a RetryAttempt before each retry's pause.
        - `callback_addr`: `host:port` of the callback listener started on first use.
        - `callback_external`: public base URL of the application's own server, which
          mounts `handler()` or `aiohttp_handler()` at `/_oasis/dispatch`; no listener
          is started then.
        - `session`: an aiohttp session to send requests with instead of one of the
          runner's own. The caller owns it: aclose() leaves it open. The runner's own
          opens a connection per request; on a kept-alive connection the sandbox has
          dropped, a request fails as "may have run" and is not retried.
        """
        self._url = _http_wire.base_url(url)
        self._timeout = timeout
        self._max_file_size = max_file_size
        self._retry = Retry(
            target=self._url, max_retries=max_retries, retry_delay=retry_delay, on_retry=on_retry
        )
        self._callback_addr = callback_addr
        self._callback_external = callback_external
        self._router = CallbackRouter()
        self._asgi = AsgiHandler(self._router)
        self._lock = asyncio.Lock()
        self._given_session = session
        self._session: aiohttp.ClientSession | None = None
        self._listener: web.AppRunner | None = None
        self._callback_url = ""

    # -- lifecycle --------------------------------------------------------------

    async def _release(self) -> None:
        """Stop the callback listener and close the runner's own session (not a given one)."""
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
        return self._router.handle_aiohttp

    @property
    def callback_url(self) -> str:
        """Where the sandbox sends tool calls ("" before the first run starts the listener)."""
        return self._callback_url

    async def _ensure_started(self) -> aiohttp.ClientSession:
        async with self._lock:
            self._check_open()
            if self._given_session is not None:
                session = self._given_session
            elif self._session is None:
                # force_close: a new connection per request, so a keep-alive connection
                # the server already dropped can never fail a request ambiguously.
                session = self._session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(force_close=True)
                )
            else:
                session = self._session
            if not self._callback_url:
                if self._callback_external is not None:
                    self._callback_url = self._callback_external.rstrip("/") + CALLBACK_PATH
                else:
                    self._listener, self._callback_url = await listen(
                        self._callback_addr, self._router
                    )
            return session

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
        encode = functools.partial(
            _http_wire.execute_body,
            request,
            execution_id=execution_id,
            callback_url=self._callback_url,
            timeout=timeout,
        )
        large = sum(len(f.data) for f in request.files) > _OFF_LOOP
        body = await asyncio.to_thread(encode) if large else encode()

        async def attempt() -> bytes:
            status, raw, _ = await self._send(
                session, "POST", f"{self._url}/execute", body, timeout + _RESPONSE_MARGIN
            )
            if status == 200:
                return raw
            if status == 503:  # refused before anything ran
                raise Retryable(from_http(status, raw))
            raise from_http(status, raw)

        with self._router.registered(execution_id, checked):
            raw = await self._retry.call(attempt, operation="execute", execution_id=execution_id)
        decode = functools.partial(
            _http_wire.code_result,
            raw,
            execution_id=execution_id,
            max_file_size=self._max_file_size,
        )
        return await asyncio.to_thread(decode) if len(raw) > _OFF_LOOP else decode()

    async def delete_workspace(self, session_id: str) -> bool:
        """Remove a session's workspace (DELETE /workspace/{session_id}).

        False when there was none (the 204 answer's Oasis-Deleted header; a
        server too old to send it counts as removed). Raises FailedPrecondition
        while an execution runs in the session.
        """
        session = await self._ensure_started()
        url = f"{self._url}/workspace/{urllib.parse.quote(session_id, safe='')}"
        try:
            status, raw, headers = await self._send(session, "DELETE", url, None, 30.0)
        except Retryable as exc:
            raise exc.error from exc.__cause__
        if status >= 300:
            raise from_http(status, raw)
        return _http_wire.deleted(headers)

    async def reset_state(self, session_id: str) -> bool:
        """End the session's live interpreters, keeping its files (POST
        /workspace/{session_id}/reset); False when it had none.

        Raises FailedPrecondition while a keep_state execution runs in the session.
        """
        session = await self._ensure_started()
        url = f"{self._url}/workspace/{urllib.parse.quote(session_id, safe='')}/reset"
        try:
            status, raw, _ = await self._send(session, "POST", url, None, 30.0)
        except Retryable as exc:
            raise exc.error from exc.__cause__
        if status >= 300:
            raise from_http(status, raw)
        return _http_wire.had_state(raw)

    async def _send(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        body: bytes | None,
        read_timeout: float,
    ) -> tuple[int, bytes, Mapping[str, str]]:
        """One HTTP exchange (status, body, headers); Retryable when nothing was sent,
        SandboxError for other failures."""
        timeout = aiohttp.ClientTimeout(total=None, connect=10.0, sock_read=read_timeout)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        # A large body is sent from a file-like object, which aiohttp reads off the loop.
        data = io.BytesIO(body) if body is not None and len(body) > _OFF_LOOP else body
        try:
            async with session.request(
                method, url, data=data, headers=headers, timeout=timeout
            ) as response:
                return response.status, await response.read(), response.headers
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise Retryable(
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
