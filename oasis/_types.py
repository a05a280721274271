"""The library's plain data types, shared by every runner and the agent layer."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class Status(enum.Enum):
    """How an execution ended; mirrors ExecutionResult.Status on the wire."""

    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    KILLED = "killed"


@dataclass(kw_only=True)
class CodeFile:
    """A file going into the workspace or coming back from set_result(files=...)."""

    name: str
    """Path relative to the workspace; subfolders allowed."""
    data: bytes = b""
    """Content; empty for a returned file over the runner's max_file_size."""
    mime: str = ""
    url: str = ""
    size: int | None = None
    """Size in bytes when known (always set on returned files)."""


@dataclass(kw_only=True)
class CodeRequest:
    code: str
    runtime: str = "python"
    """"python" or "node"."""
    timeout: float | None = None
    """Seconds; None uses the runner's default."""
    session_id: str = ""
    """Empty: a one-off workspace. Otherwise files and packages persist across runs."""
    files: list[CodeFile] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    keep_state: bool = False
    """Run in the session's live interpreter (needs session_id): variables, imports and
    functions of its earlier keep_state runs are there, and this run's stay for the next."""


@dataclass(kw_only=True)
class CodeResult:
    output: Any
    """The value given to set_result, decoded from JSON; None when none was set."""
    logs: str
    exit_code: int
    error: str
    files: list[CodeFile]
    status: Status
    logs_truncated: bool = False
    output_truncated: bool = False
    """The set_result value was over the runner's max_output and was dropped."""
    duration: float = 0.0
    cpu_time: float = 0.0
    """Seconds of CPU time the code's processes used; 0 when the server cannot measure it."""
    execution_id: str = ""
    state_kept: bool = False
    """keep_state: the session's interpreter survived, so the next keep_state run finds
    this one's variables (False after a kill, or for a run without keep_state)."""
    fresh_state: bool = False
    """keep_state: the run started with an empty interpreter."""
    fresh_state_reason: str = ""
    """Why an earlier state was gone (reset, idle, evicted, killed...); "" when there
    never was one."""

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


@dataclass(kw_only=True)
class ToolCall:
    """A call_tool() made by the running code."""

    id: str
    name: str
    args: dict[str, Any]


@dataclass(kw_only=True)
class DispatchResult:
    """What a dispatch function returns: the tool's content, or an error message."""

    content: str
    is_error: bool = False


Dispatch = Callable[[ToolCall], Awaitable[DispatchResult]]
"""`async def dispatch(call: ToolCall) -> DispatchResult`."""


@dataclass(frozen=True, kw_only=True)
class LogChunk:
    """Output printed by the code, as it printed it (from `runner.stream()`)."""

    stream: str
    """"stdout" or "stderr"."""
    data: bytes


@runtime_checkable
class CodeRunner(Protocol):
    """Anything that runs code and routes its tool calls to `dispatch`.

    GrpcRunner and HTTPRunner satisfy it; so does the scripted double in
    `oasis.agent.providers`. The agent layer depends on this and nothing else.
    """

    async def run(self, request: CodeRequest, dispatch: Dispatch) -> CodeResult:
        """Run the code to its end; tool calls go to `dispatch` meanwhile."""
        ...

    async def delete_workspace(self, session_id: str) -> bool:
        """Remove a session's workspace; False when there was none."""
        ...
