"""HTTPRunner's errors speak the gRPC vocabulary: the body's `code` when known, else the status's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from oasis import (
    AlreadyExecuted,
    CapacityExhausted,
    CodeRequest,
    InvalidRequest,
    SandboxError,
    SandboxUnavailable,
    Unauthenticated,
    tool_dispatcher,
)
from oasis.code import HTTPRunner

from .conftest import free_port


@asynccontextmanager
async def stand_in(status: int, body: bytes, content_type: str) -> AsyncIterator[str]:
    """A server on 127.0.0.1 answering every request with one fixed answer; yields its URL.

    It plays what is outside our control: a proxy in front of the sandbox, or another server.
    """

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=status, body=body, content_type=content_type)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def failure(status: int, body: bytes, content_type: str = "text/html") -> SandboxError:
    async with (
        stand_in(status, body, content_type) as url,
        HTTPRunner(url, max_retries=0) as runner,
    ):
        with pytest.raises(SandboxError) as caught:
            await runner.run(CodeRequest(code="pass"), tool_dispatcher({}))
    return caught.value


@pytest.mark.parametrize(
    ("status", "kind", "code"),
    [
        (502, SandboxUnavailable, "UNAVAILABLE"),
        (504, SandboxUnavailable, "UNAVAILABLE"),
        (503, CapacityExhausted, "RESOURCE_EXHAUSTED"),
        (401, Unauthenticated, "UNAUTHENTICATED"),
        (403, Unauthenticated, "PERMISSION_DENIED"),
        (404, InvalidRequest, "NOT_FOUND"),
        (413, InvalidRequest, "INVALID_ARGUMENT"),
        (500, SandboxError, "INTERNAL"),
        (418, SandboxError, "UNKNOWN"),
    ],
)
async def test_a_body_without_a_code_is_named_by_its_status(
    status: int, kind: type[SandboxError], code: str
) -> None:
    error = await failure(status, b"<html><body>upstream trouble</body></html>")

    assert type(error) is kind
    assert (error.code, error.http_status) == (code, status)
    assert error.message == "<html><body>upstream trouble</body></html>"


async def test_an_empty_body_gets_a_message_naming_the_status() -> None:
    error = await failure(502, b"")

    assert error.message == "the sandbox answered HTTP 502"


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (503, "UNAVAILABLE", SandboxUnavailable),
        (409, "ALREADY_EXISTS", AlreadyExecuted),
        (400, "PERMISSION_DENIED", Unauthenticated),
    ],
)
async def test_a_known_code_in_the_body_wins_over_the_status(
    status: int, code: str, kind: type[SandboxError]
) -> None:
    body = f'{{"error": "refused", "code": "{code}"}}'.encode()
    error = await failure(status, body, "application/json")

    assert type(error) is kind
    assert (error.code, error.http_status, error.message) == (code, status, "refused")


@pytest.mark.parametrize("code", ["CAPACITY", "OK", "42"])
async def test_an_unknown_code_falls_back_to_the_status(code: str) -> None:
    body = f'{{"error": "refused", "code": "{code}"}}'.encode()
    error = await failure(400, body, "application/json")

    assert type(error) is InvalidRequest
    assert (error.code, error.http_status) == ("INVALID_ARGUMENT", 400)


async def test_an_invalid_execute_answer_is_internal() -> None:
    error = await failure(200, b"[1, 2]", "application/json")

    assert (type(error), error.code, error.http_status) == (SandboxError, "INTERNAL", 200)
    assert "invalid /execute response" in error.message


# -- DELETE /workspace -------------------------------------------------------------------


async def test_a_server_without_the_deleted_header_counts_as_removed() -> None:
    """An older sandbox answers DELETE with a bare 204: the workspace is gone either way."""
    async with stand_in(204, b"", "application/json") as url, HTTPRunner(url) as runner:
        assert await runner.delete_workspace("s1") is True


async def test_delete_workspace_on_an_unreachable_sandbox_raises_unavailable() -> None:
    async with HTTPRunner(f"http://127.0.0.1:{free_port()}") as runner:
        with pytest.raises(SandboxUnavailable, match="cannot connect") as caught:
            await runner.delete_workspace("s1")

    assert (caught.value.code, caught.value.http_status) == ("UNAVAILABLE", None)
