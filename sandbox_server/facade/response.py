"""What the facade sends back: JSON errors with their code, and the streamed result."""

from __future__ import annotations

import asyncio
import base64
import json
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

from aiohttp import web

from oasis.code._wire import KiB, MiB

from ..errors import Code
from ..model import FileChunkEvent, Result, Started
from .request import MAX_BODY

_B64_BLOCK = 3 * 256 * KiB
"""Bytes base64-encoded at a time when streaming a spooled file (a multiple of 3)."""


def error(
    code: Code, message: str, *, status: int | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    """`{"error": message, "code": "<gRPC code name>"}`, with the code's HTTP status unless
    `status` names a more precise one (413, 415: both INVALID_ARGUMENT)."""
    return web.json_response(
        {"error": message, "code": code.name}, status=status or code.http_status, headers=headers
    )


def too_large() -> web.Response:
    return error(
        Code.INVALID_ARGUMENT,
        f"the request body is larger than the {MAX_BODY // MiB} MiB limit",
        status=413,
    )


class Spool:
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


async def send_result(
    request: web.Request, result: Result, spool: Spool, *, stateful: Started | None = None
) -> web.StreamResponse:
    """Stream the 200 response; spooled files are base64-encoded block by block from disk.

    The JSON is written around the file data, so that no file is ever held
    in memory whole, and its length is known before the first byte is sent.
    `stateful`, the Started event of a keep_state execution, adds the state
    fields; other answers keep the original API's shape exactly.
    """
    head: dict[str, Any] = {
        "output": result.output,
        "logs": result.logs,
        "exit_code": result.exit_code,
    }
    if result.error:
        head["error"] = result.error
    if stateful is not None:
        head["state_kept"] = result.state_kept
        head["fresh_state"] = stateful.fresh_state
        head["fresh_state_reason"] = stateful.fresh_state_reason
    # bytes are sent as they are; a str names a spooled file, streamed in its place.
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
