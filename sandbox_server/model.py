"""The core's own types: what an execution is asked to do and what it reports.

Protobuf stops at the service adapter; everything between works on these.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Status(enum.IntEnum):
    """Mirrors ExecutionResult.Status on the wire."""

    OK = 1
    ERROR = 2
    TIMEOUT = 3
    CANCELLED = 4
    KILLED = 5


class Stream(enum.IntEnum):
    STDOUT = 1
    STDERR = 2


@dataclass(frozen=True, kw_only=True)
class InputFile:
    name: str
    data: bytes = b""
    size: int = 0
    """Declared size of a file that follows as chunks (data empty)."""

    @property
    def chunked(self) -> bool:
        return not self.data and self.size > 0


@dataclass(frozen=True, kw_only=True)
class ExecutionSpec:
    code: str
    runtime: str = "python"
    execution_id: str = ""
    session_id: str = ""
    timeout: float | None = None
    files: tuple[InputFile, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    keep_state: bool = False
    """Run in the session's live interpreter (states.py)."""


# Events an execution emits, in order: Started, then any mix of LogEvent,
# ToolCallEvent and FileChunkEvent, then exactly one Result.


@dataclass(frozen=True)
class Started:
    execution_id: str
    session_id: str
    runtime: str
    fresh_state: bool = False
    fresh_state_reason: str = ""


@dataclass(frozen=True)
class LogEvent:
    stream: Stream
    data: bytes


@dataclass(frozen=True)
class ToolCallEvent:
    call_id: str
    name: str
    args_json: str


@dataclass(frozen=True)
class FileChunkEvent:
    name: str
    data: bytes
    eof: bool


@dataclass(frozen=True, kw_only=True)
class OutputFile:
    name: str
    mime: str
    size: int
    data: bytes | None = None
    """Inline content, or None when it was sent as FileChunkEvents."""


@dataclass(frozen=True, kw_only=True)
class Result:
    status: Status
    exit_code: int
    output: str = ""
    logs: str = ""
    logs_truncated: bool = False
    error: str = ""
    files: tuple[OutputFile, ...] = ()
    duration: float = 0.0
    cpu_time: float = 0.0
    """Seconds of CPU time of all the run's processes; 0 without cgroups."""
    state_kept: bool = False
    """keep_state: the session's interpreter survived the execution."""


Event = Started | LogEvent | ToolCallEvent | FileChunkEvent | Result
