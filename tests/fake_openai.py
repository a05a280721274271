"""A fake OpenAI-compatible chat server on loopback: the LLM is outside our control.

The real openai SDK talks to it over a real socket. The `fake` fixture in
tests/conftest.py starts one per test.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class FakeOpenAI:
    """Answers POST /v1/chat/completions from a queue of (status, body); records what it got."""

    url: str = ""
    replies: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(await request.json())
        self.headers.append(dict(request.headers))
        if not self.replies:
            return web.json_response(
                {"error": {"message": "the fake has no reply left"}}, status=500
            )
        status, body = self.replies.pop(0)
        return web.json_response(body, status=status)


def completion(
    *,
    content: str | None = None,
    calls: Sequence[tuple[str, str, str]] = (),
    usage: tuple[int, int] = (0, 0),
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [
            {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
            for cid, name, args in calls
        ]
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "fake-model",
        "choices": [
            {"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}
        ],
        "usage": {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": sum(usage),
        },
    }


@contextlib.asynccontextmanager
async def fake_openai_server() -> AsyncIterator[FakeOpenAI]:
    """A FakeOpenAI listening on a free loopback port (its `url` ends in /v1)."""
    state = FakeOpenAI()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", state.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}/v1"
    try:
        yield state
    finally:
        await runner.cleanup()
