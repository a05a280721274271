"""The output files of a result: inline in the result message when they fit, else chunked.

Everything in a Result travels in one gRPC message, so inline file data gets
the room the output, logs and error leave; larger files go ahead of the
result as FileChunkEvents.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from oasis import _safefs as safefs
from oasis.code._wire import FILE_CHUNK, MAX_MESSAGE, KiB

from .isolation import Limits, describe_size
from .mime import guess_mime
from .model import Event, FileChunkEvent, OutputFile

MAX_ERROR = 64 * KiB
"""Bytes of a result's `error` kept (start and end): plenty for any useful traceback."""
_MESSAGE_MARGIN = 64 * KiB
_FILE_ENTRY = 256
"""Room a File entry takes in the result besides its name and data."""


def inline_room(output: str, logs: str) -> int:
    """Bytes of inline file data a result with this output and logs can still carry."""
    return MAX_MESSAGE - _MESSAGE_MARGIN - MAX_ERROR - len(output.encode()) - len(logs.encode())


async def collect_files(
    wanted: list[str],
    *,
    workspace: Path,
    limits: Limits,
    room: int,
    emit: Callable[[Event], Awaitable[None]],
) -> tuple[list[OutputFile], list[str]]:
    """Open and send the files given to set_result; `room` is the inline byte budget.

    Returns the result's File entries and the problems to report in its error.
    """
    files: list[OutputFile] = []
    problems: list[str] = []
    # Normalized before removing duplicates: "a.png", "./a.png" and its
    # absolute path are one file, sent once.
    unique: dict[str, None] = {}
    for name in wanted:
        try:
            unique["/".join(safefs.split_name(safefs.to_workspace_name(workspace, name)))] = None
        except safefs.UnsafePath as exc:
            problems.append(f"output file not returned: {exc}")
    requested = list(unique)
    if len(requested) > limits.output_files:
        problems.append(
            f"{len(requested)} output files were listed; only the first {limits.output_files} "
            "are returned (SANDBOX_MAX_OUTPUT_FILES)"
        )
        del requested[limits.output_files :]
    total_left = limits.output_size
    for name in requested:
        try:
            fd, size = await asyncio.to_thread(safefs.open_regular_file, workspace, name)
        except safefs.UnsafePath as exc:
            problems.append(f"output file not returned: {exc}")
            continue
        if size > total_left:
            os.close(fd)
            problems.append(
                f"output file not returned: {name!r} is {size} bytes and the returned files may "
                f"total at most {describe_size(limits.output_size)} (SANDBOX_MAX_OUTPUT_SIZE)"
            )
            continue
        total_left -= size
        room -= len(name.encode()) + _FILE_ENTRY
        # Wraps an fd that is already open: nothing here blocks.
        with open(fd, "rb", closefd=True) as handle:  # noqa: ASYNC230
            file = await _send_file(name, handle, size, inline=min(FILE_CHUNK, room), emit=emit)
        files.append(file)
        room -= len(file.data or b"")
    return files, problems


async def _send_file(
    name: str, handle: Any, size: int, *, inline: int, emit: Callable[[Event], Awaitable[None]]
) -> OutputFile:
    """Inline when the file fits `inline` bytes, else as FileChunkEvents before the result."""
    first = await asyncio.to_thread(handle.read, min(size, FILE_CHUNK))
    mime = guess_mime(name, first[:512])
    if size <= inline:
        return OutputFile(name=name, mime=mime, size=len(first), data=first)
    sent = len(first)
    chunk = first
    while True:
        # Never more than `size` bytes: the file may still be growing.
        following = await asyncio.to_thread(handle.read, min(FILE_CHUNK, size - sent))
        await emit(FileChunkEvent(name, chunk, eof=not following))
        if not following:
            break
        chunk = following
        sent += len(following)
    return OutputFile(name=name, mime=mime, size=sent)
