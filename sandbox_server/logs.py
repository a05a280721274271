"""Keeps what the code prints, up to a cap, so the server's memory stays bounded."""

from __future__ import annotations

from .model import Stream


class LogCollector:
    """Collects stdout and stderr in arrival order, up to `limit` bytes in all."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self.truncated = False
        self.stderr_tail = b""

    def add(self, stream: Stream, data: bytes) -> bytes:
        """Record a chunk; returns the part of it that fits, to be streamed live."""
        if stream is Stream.STDERR:
            self.stderr_tail = (self.stderr_tail + data)[-2048:]
        room = self._limit - self._size
        if len(data) > room:
            self.truncated = True
            data = data[: max(room, 0)]
        if data:
            self._parts.append(data)
            self._size += len(data)
        return data

    def text(self) -> str:
        text = b"".join(self._parts).decode("utf-8", errors="replace")
        if len(text) * 3 > self._limit and len(encoded := text.encode()) > self._limit:
            # Each undecodable byte became a 3-byte U+FFFD: keep the text within the limit too.
            text = encoded[: self._limit].decode("utf-8", errors="ignore")
            self.truncated = True
        if self.truncated:
            text += f"\n[logs truncated: only the first {self._limit} bytes were kept]\n"
        return text
