"""An agent's task and result, with the steps and files it produced; the Agent protocol."""

from __future__ import annotations

import mimetypes
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from .._types import CodeFile
from ._messages import Message, ModelResponse, Usage


@dataclass(frozen=True, kw_only=True)
class Attachment:
    """A file going into a task, or returned by the agent's code."""

    name: str
    """File name; code finds input attachments under this name in its working directory."""
    data: bytes = b""
    """Content; empty when the runner kept only the name of a file over its size limit."""
    mime: str = ""
    size: int | None = None

    @classmethod
    def from_path(cls, path: str | Path, *, name: str | None = None) -> Attachment:
        """Read a local file (blocking: call it before starting the agent, or in a thread)."""
        path = Path(path)
        data = path.read_bytes()
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return cls(name=name or path.name, data=data, mime=mime, size=len(data))

    def save(self, directory: str | Path) -> Path:
        """Write the file under `directory` (blocking) and return its path."""
        target = Path(directory) / Path(self.name).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self.data)
        return target

    def to_code_file(self) -> CodeFile:
        return CodeFile(name=self.name, data=self.data, mime=self.mime, size=len(self.data))

    @classmethod
    def from_code_file(cls, file: CodeFile) -> Attachment:
        size = file.size if file.size is not None else len(file.data)
        return cls(name=file.name, data=file.data, mime=file.mime, size=size)


@dataclass(frozen=True, kw_only=True)
class AgentTask:
    """What to do: the input text, files for the agent's code, and extra context."""

    input: str
    attachments: Sequence[Attachment] = ()
    context: Mapping[str, Any] = field(default_factory=dict)
    """Facts the LLM should know, shown to it as JSON with the input."""
    session_id: str = ""
    """Sandbox session for execute_code: its workspace (files, installed packages) persists
    across tasks that share it. Empty: the task's executions share a private workspace,
    deleted when the task ends."""


StopReason = Literal["final_answer", "max_iterations"]
StepType = Literal["tool", "agent", "code", "plan"]
StepSource = Literal["llm", "code", "plan"]


@dataclass(frozen=True, kw_only=True)
class Step:
    """One tool call made during a run (by the LLM, by code, or by a plan)."""

    agent: str
    """The agent that made the call."""
    call_id: str
    name: str
    type: StepType
    """"code" for execute_code, "plan" for execute_plan, "agent" for a sub-agent, else "tool"."""
    source: StepSource
    """Who asked for the call: the LLM, code run by execute_code, or an execute_plan step."""
    input: str
    """The arguments as JSON, truncated."""
    output: str = ""
    """The answer, truncated; empty while running."""
    is_error: bool = False
    duration: float = 0.0
    done: bool = False


@dataclass(frozen=True, kw_only=True)
class AgentResult:
    """The final answer, the files the agent's code returned, and what it took."""

    output: str
    attachments: list[Attachment]
    usage: Usage
    steps: list[Step]
    stop_reason: StopReason = "final_answer"
    """"max_iterations" when the agent ran out of turns before a final answer."""
    iterations: int = 0
    messages: list[Message] = field(default_factory=list)
    """The whole conversation with the LLM, for inspection."""
    session_id: str = ""
    """The sandbox session the run's code used; empty when no code ran."""

    @property
    def completed(self) -> bool:
        return self.stop_reason == "final_answer"


@dataclass(frozen=True, kw_only=True)
class StepStarted:
    step: Step


@dataclass(frozen=True, kw_only=True)
class StepFinished:
    step: Step


@dataclass(frozen=True, kw_only=True)
class ModelResponded:
    """The LLM answered (before its tool calls run)."""

    agent: str
    iteration: int
    response: ModelResponse


AgentEvent = StepStarted | StepFinished | ModelResponded

EventHandler = Callable[[AgentEvent], None]


@runtime_checkable
class Agent(Protocol):
    """Anything a Network can delegate to: LLMAgent, or another Network."""

    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...

    async def execute(
        self, task: AgentTask, *, on_event: EventHandler | None = None
    ) -> AgentResult: ...
