"""What every built-in tool shares: the names, and the narrow view of the run it gets."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from ..._types import DispatchResult
from .._messages import ToolDefinition
from .._results import AgentResult, AgentTask, Attachment, EventHandler, StepSource, StepType

EXECUTE_CODE = "execute_code"
EXECUTE_PLAN = "execute_plan"
AGENT_PREFIX = "agent_"
BUILTIN_NAMES = frozenset({EXECUTE_CODE, EXECUTE_PLAN})


class RunContext(Protocol):
    """The run a built-in was called from: what it may read, and the only writes it may make."""

    @property
    def task(self) -> AgentTask: ...

    @property
    def on_event(self) -> EventHandler | None: ...

    def use_workspace(self) -> str:
        """The session id code runs in (the run deletes a private one when it ends)."""
        ...

    def add_attachments(self, attachments: Iterable[Attachment]) -> None:
        """Files that reach the user with the run's result."""
        ...

    def add_sub_result(self, result: AgentResult) -> None:
        """A sub-agent's usage, steps and attachments, counted as the run's own."""
        ...

    async def dispatch(
        self, name: str, args: dict[str, Any], *, call_id: str, source: StepSource
    ) -> DispatchResult:
        """One tool call, recorded as a step; tool failures come back as error answers."""
        ...


class Builtin(Protocol):
    """A tool the agent provides itself: its definition and its body, in one object."""

    @property
    def name(self) -> str: ...

    @property
    def step_type(self) -> StepType: ...

    def definition(self) -> ToolDefinition: ...

    async def call(
        self, run: RunContext, args: dict[str, Any], *, call_id: str, source: StepSource
    ) -> DispatchResult:
        """Answer one call; raise ToolError for a call the LLM should correct."""
        ...
