"""The demo, as `oasis-sandbox demo` runs it, in scripted mode."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from sandbox_server.server import SandboxServer

from ..conftest import REPO, runtime_python

TITLES = [
    "Sequential tool chain (Python)",
    "Conditional logic",
    "Parallel fan-out",
    "Visualization: SQLite to a matplotlib chart",
    "Input and output files",
    "Session persistence across two executions",
    "The same chain in Node.js",
]


async def run_demo(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run `oasis-sandbox demo ARGS` with no LLM configured unless `env` sets OPENAI_*."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    environ.update(env or {}, SANDBOX_PYTHON_BIN=runtime_python())
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sandbox_server",
        "demo",
        *args,
        cwd=REPO,
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(240):
            output, _ = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, output.decode()


def check_png(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG whose signature and IHDR chunk (with its CRC) are valid."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert (length, kind) == (13, b"IHDR")
    header = data[16 : 16 + length]
    (crc,) = struct.unpack(">I", data[16 + length : 20 + length])
    assert crc == zlib.crc32(kind + header)
    width, height = struct.unpack(">II", header[:8])
    assert data.endswith(b"IEND\xaeB`\x82")
    return width, height


@pytest.mark.timeout(300)
async def test_demo_starts_a_sandbox_and_shows_every_pattern(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port where nothing listens
        sock.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{sock.getsockname()[1]}"
    out = tmp_path / "out"
    code, output = await run_demo("--scripted", "--target", closed, "--out", str(out))

    assert code == 0, output
    assert f"no sandbox answered at {closed}: started one in this process" in output
    assert "LLM: scripted" in output
    for number, title in enumerate(TITLES, 1):
        assert f"{number}/7  {title}" in output
    assert output.count("pattern ok") == 7 and "7/7 patterns worked." in output
    # Each pattern really ran: values only the tools and the code could produce.
    assert "Grace Hopper placed 3 orders worth 555.24 EUR, that is 599.66 USD." in output
    assert (
        "code -> place_reorder" in output
        and "Reordered A-100 (40 units), C-300 (100 units)" in output
    )
    assert output.count("code -> get_exchange_rate") >= 6 + 2
    assert "Best month: 2024-12" in output
    assert "Gold tier, from the saved file: Ada Lovelace, Linus Torvalds." in output
    assert "workspace files: ['customers.json']" in output
    assert "Ada Lovelace placed 2 orders worth 209.50 EUR, that is 178.08 GBP." in output
    chart = out / "revenue_2024.png"
    assert f"file: {chart} (image/png" in output
    width, height = check_png(chart.read_bytes())
    assert width > 100 and height > 100
    assert (out / "region_summary.csv").read_text().splitlines()[0] == "region,orders,revenue"


@pytest.mark.timeout(300)
async def test_demo_uses_a_running_sandbox(server: SandboxServer, tmp_path: Path) -> None:
    target = f"127.0.0.1:{server.port}"
    code, output = await run_demo(
        "--scripted", "--target", target, "--out", str(tmp_path), "--only", "node", "chart"
    )

    assert code == 0, output
    assert f"using the sandbox at {target}" in output
    assert "1/2  Visualization" in output and "2/2  The same chain in Node.js" in output
    assert "2/2 patterns worked." in output
    check_png((tmp_path / "revenue_2024.png").read_bytes())


@pytest.mark.timeout(300)
async def test_demo_uses_a_configured_llm(server: SandboxServer, tmp_path: Path) -> None:
    """With OPENAI_* set the demo asks that model; here a fake one that calls one tool, then answers."""
    seen: list[dict[str, Any]] = []

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        if len(body["messages"]) == 2:
            call = {
                "id": "c1",
                "type": "function",
                "function": {"name": "get_customer", "arguments": '{"customer_id": "C-1002"}'},
            }
            message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [call]}
        else:
            message = {
                "role": "assistant",
                "content": "Customer: " + body["messages"][-1]["content"],
            }
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        usage = {"prompt_tokens": 30, "completion_tokens": 5, "total_tokens": 35}
        return web.json_response(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [choice],
                "usage": usage,
            }
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        code, output = await run_demo(
            "--target",
            f"127.0.0.1:{server.port}",
            "--out",
            str(tmp_path),
            "--only",
            "chain",
            env={
                "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1",
                "OPENAI_API_KEY": "k",
                "OPENAI_MODEL": "fake-model",
            },
        )
    finally:
        await runner.cleanup()

    assert code == 0, output
    assert f"LLM: fake-model at http://127.0.0.1:{port}/v1" in output
    assert 'answer: Customer: {"id": "C-1002", "name": "Grace Hopper"' in output
    assert "(2 LLM requests, 70 tokens, 1 tool calls" in output
    assert [t["function"]["name"] for t in seen[0]["tools"]][-2:] == [
        "execute_code",
        "execute_plan",
    ]
