"""agent_<name>: a task handed to a sub-agent, whose usage, steps and files join the run's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..._types import DispatchResult
from ...errors import ToolError
from .._messages import ToolDefinition
from .._results import Agent, AgentTask, StepSource, StepType
from ._base import AGENT_PREFIX, RunContext


@dataclass(frozen=True, kw_only=True)
class Delegate:
    """The agent_<name> built-in for one sub-agent of a Network."""

    step_type: ClassVar[StepType] = "agent"

    agent: Agent

    @property
    def name(self) -> str:
        return AGENT_PREFIX + self.agent.name

    def definition(self) -> ToolDefinition:
        return ToolDefinition(
            name=self.name,
            description=(
                f"Delegate a task to the agent {self.agent.name!r}: {self.agent.description}"
            ),
            parameters={
                "type": "object",
                "properties": {
                    "input": {
                        "type": "string",
                        "description": "The task, self-contained: the agent does not see this conversation.",
                    }
                },
                "required": ["input"],
                "additionalProperties": False,
            },
        )

    async def call(
        self, run: RunContext, args: dict[str, Any], *, call_id: str, source: StepSource
    ) -> DispatchResult:
        """Run the sub-agent on the task's files, context and session; its failure is an error answer."""
        text = args.get("input")
        if not isinstance(text, str) or not text.strip():
            raise ToolError("give the agent its task as 'input', a non-empty string")
        unexpected = set(args) - {"input"}
        if unexpected:
            raise ToolError(f"agent tools take only 'input', not {', '.join(sorted(unexpected))}")
        task = AgentTask(
            input=text,
            attachments=run.task.attachments,
            context=run.task.context,
            session_id=run.task.session_id,
        )
        result = await self.agent.execute(task, on_event=run.on_event)
        run.add_sub_result(result)
        content = result.output
        if result.attachments:
            content += "\n\nFiles returned (they reach the user as attachments): " + ", ".join(
                a.name for a in result.attachments
            )
        return DispatchResult(content=content, is_error=not result.completed)
