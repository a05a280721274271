"""The server's end of the channel to the prelude: JSON lines on two private pipes.

The prelude inside the process sends tool calls, installs, errors and its
result; the server sends the start message and the replies. Tool calls get a
client-facing id here, mapped back to the prelude's own reply id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from dataclasses import dataclass
from typing import Any

from oasis.code._wire import MiB

MAX_TOOL_ARGS = 3 * MiB
"""A tool call's name and arguments must fit one gRPC message."""
MAX_CHANNEL_LINE = 2 * MAX_TOOL_ARGS + 64 * 1024
"""The longest message the prelude may send: a tool call or a result at its size
limit, whose JSON text may double when escaped (results are capped at 3 MiB)."""
_REPLY_BUFFER = 8 * MiB
_INLINE_JSON = 64 * 1024
"""Lines up to this size are decoded on the event loop; longer ones in a thread."""


@dataclass(eq=False)
class Pipes:
    """Asyncio streams over the server's ends of the two pipes, which they own."""

    reader: asyncio.StreamReader
    read_transport: asyncio.ReadTransport
    writer: asyncio.StreamWriter

    def close(self) -> None:
        self.writer.close()
        self.read_transport.close()


async def open_pipes(read_fd: int, write_fd: int) -> Pipes:
    """Streams over a prelude's channel: opened when its process starts (a run
    started ahead then finds them ready), taking ownership of the fds."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_CHANNEL_LINE)
    read_pipe, write_pipe = _pipe_files(read_fd, write_fd)
    try:
        read_transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), read_pipe
        )
    except BaseException:
        read_pipe.close()
        write_pipe.close()
        raise
    try:
        write_transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, write_pipe
        )
    except BaseException:
        read_transport.close()
        write_pipe.close()
        raise
    writer = asyncio.StreamWriter(write_transport, protocol, None, loop)
    return Pipes(reader, read_transport, writer)


class PreludeChannel:
    """The two pipes to one run's prelude, and the tool calls waiting for a reply."""

    def __init__(self, *, call_prefix: str, max_result: int) -> None:
        self._call_prefix = call_prefix
        self._max_result = max_result
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pipes: Pipes | None = None
        self._calls: dict[str, str] = {}  # client call id -> prelude reply id
        self._next_call = 0

    def attach(self, pipes: Pipes) -> None:
        """Take over the run's pipes (closed with the channel)."""
        self._pipes, self._reader, self._writer = pipes, pipes.reader, pipes.writer

    def close(self) -> None:
        """Close both pipes; later replies are dropped, the call map stays for late tool results."""
        if self._pipes is not None:
            self._pipes.close()

    def detach(self) -> None:
        """Let go of the pipes without closing them (a live interpreter's next run
        takes them); later replies are dropped."""
        self._pipes = self._reader = self._writer = None

    # -- tool calls ---------------------------------------------------------

    @property
    def pending_calls(self) -> int:
        return len(self._calls)

    def add_call(self, reply_id: str) -> str:
        """A new client call id for the prelude's call `reply_id`."""
        self._next_call += 1
        call_id = f"{self._call_prefix}.{self._next_call}"
        self._calls[call_id] = reply_id
        return call_id

    def take_call(self, call_id: str) -> str | None:
        """The prelude's reply id for a client call id, once; None if unknown."""
        return self._calls.pop(call_id, None)

    # -- messages -----------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        """Queue a message without waiting (the start message: the pipe is empty)."""
        assert self._writer is not None
        self._writer.write(_line(message))

    async def reply(self, message: dict[str, Any]) -> None:
        writer = self._writer
        if writer is None or writer.is_closing():
            return
        writer.write(_line(message))
        # Wait for the code to read only when much is queued: waiting always
        # would stall the client's next message (a cancel) behind code that
        # does not read its channel. Outstanding calls are capped, so is this.
        if writer.transport.get_write_buffer_size() > _REPLY_BUFFER:
            with contextlib.suppress(ConnectionError):
                await writer.drain()

    async def read(self) -> dict[str, Any] | None:
        """The prelude's next message, None when it closed the channel.

        Raises ValueError (or RecursionError, from json) on a malformed message.
        """
        assert self._reader is not None
        try:
            line = await self._reader.readline()
        except ValueError:  # no newline within the limit
            raise ValueError(
                f"a message is larger than {MAX_CHANNEL_LINE} bytes; set_result values are limited "
                f"to {self._max_result} bytes: return large data as a file instead"
            ) from None
        if not line:
            return None
        # Big lines are decoded off the event loop: one session's megabytes
        # of JSON must not stall every other session and the health checks.
        message = (
            await asyncio.to_thread(json.loads, line)
            if len(line) > _INLINE_JSON
            else json.loads(line)
        )
        if not isinstance(message, dict):
            raise ValueError("a message is not a JSON object")
        return message


def _pipe_files(read_fd: int, write_fd: int) -> tuple[Any, Any]:
    """Unbuffered file objects owning the fds, as the event loop's pipe transports want them."""
    return os.fdopen(read_fd, "rb", buffering=0), os.fdopen(write_fd, "wb", buffering=0)


def _line(message: dict[str, Any]) -> bytes:
    return (json.dumps(message, separators=(",", ":")) + "\n").encode()
