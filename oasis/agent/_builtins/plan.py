"""execute_plan: independent tool calls run in parallel, each answered with its own status."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ..._types import DispatchResult
from ...errors import ToolError
from .._messages import ToolDefinition
from .._results import StepSource, StepType
from ._base import EXECUTE_PLAN, RunContext

MAX_PLAN_STEPS = 50

DESCRIPTION = f"""\
Run several tool calls at once, in parallel, when they do not depend on each other's \
results. Give up to {MAX_PLAN_STEPS} steps, each {{"tool": name, "args": {{...}}}}; every \
step comes back with its own status and its result or error, in the order given. \
A plan cannot contain execute_plan."""


@dataclass(frozen=True, kw_only=True)
class ExecutePlan:
    """The execute_plan built-in of one agent."""

    name: ClassVar[str] = EXECUTE_PLAN
    step_type: ClassVar[StepType] = "plan"

    tool_names: Sequence[str]
    """The tools a step may call (the definition's enum)."""

    def definition(self) -> ToolDefinition:
        step: dict[str, Any] = {
            "type": "object",
            "properties": {
                "tool": {"type": "string", "description": "Name of the tool to call."},
                "args": {"type": "object", "description": "Arguments of the call."},
            },
            "required": ["tool"],
            "additionalProperties": False,
        }
        if self.tool_names:
            step["properties"]["tool"]["enum"] = list(self.tool_names)
        return ToolDefinition(
            name=EXECUTE_PLAN,
            description=DESCRIPTION,
            parameters={
                "type": "object",
                "properties": {
                    "steps": {
                        "type": "array",
                        "items": step,
                        "minItems": 1,
                        "maxItems": MAX_PLAN_STEPS,
                    }
                },
                "required": ["steps"],
                "additionalProperties": False,
            },
        )

    async def call(
        self, run: RunContext, args: dict[str, Any], *, call_id: str, source: StepSource
    ) -> DispatchResult:
        """Refuse the whole plan only when it cannot run; a bad step fails alone."""
        if source == "plan":
            raise ToolError("a plan cannot contain execute_plan")
        if source == "code":
            raise ToolError("execute_plan cannot be called from code; use call_tools_parallel")
        steps = args.get("steps")
        if not isinstance(steps, list) or not steps:
            raise ToolError('execute_plan needs \'steps\': a list of {"tool": name, "args": {...}}')
        if len(steps) > MAX_PLAN_STEPS:
            raise ToolError(
                f"a plan has at most {MAX_PLAN_STEPS} steps, this one has {len(steps)}; "
                "split it into several plans"
            )
        problems = [_problem(number, item) for number, item in enumerate(steps, 1)]

        async def run_step(number: int, item: Any, problem: str | None) -> dict[str, Any]:
            entry: dict[str, Any] = {
                "step": number,
                "tool": item.get("tool") if isinstance(item, dict) else None,
            }
            if problem is not None:
                return {**entry, "status": "error", "error": problem}
            answer = await run.dispatch(
                item["tool"], item.get("args") or {}, call_id=f"{call_id}.{number}", source="plan"
            )
            if answer.is_error:
                return {**entry, "status": "error", "error": answer.content}
            return {**entry, "status": "ok", "result": _maybe_json(answer.content)}

        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(run_step(n, item, p))
                for n, (item, p) in enumerate(zip(steps, problems, strict=True), 1)
            ]
        results = [t.result() for t in tasks]
        failed = sum(r["status"] == "error" for r in results)
        summary = {"succeeded": len(results) - failed, "failed": failed, "steps": results}
        return DispatchResult(content=json.dumps(summary, ensure_ascii=False, default=str))


def _problem(number: int, item: Any) -> str | None:
    """Why step `number` cannot run, or None; a nested plan refuses the whole plan."""
    if not isinstance(item, dict) or not isinstance(item.get("tool"), str):
        return f'step {number} is not {{"tool": name, "args": {{...}}}}'
    if item["tool"] == EXECUTE_PLAN:
        raise ToolError(
            f"a plan cannot contain execute_plan (step {number}); list the tool calls directly"
        )
    if not isinstance(item.get("args", {}), dict):
        return f"step {number}: 'args' must be a JSON object"
    return None


def _maybe_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
