"""The agent loop: ask the LLM, run its tool calls concurrently, feed the answers back."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from .._types import DispatchResult
from ..errors import SandboxError, ToolError
from ._builtins import EXECUTE_CODE, EXECUTE_PLAN
from ._messages import (
    AssistantMessage,
    Message,
    Provider,
    SystemMessage,
    ToolCallPart,
    ToolMessage,
    Usage,
    UserMessage,
)
from ._results import (
    AgentEvent,
    AgentResult,
    AgentTask,
    Attachment,
    EventHandler,
    ModelResponded,
    Step,
    StepFinished,
    StepSource,
    StepStarted,
    StepType,
    StopReason,
)
from ._tools import result_text, truncate
from ._toolset import Toolset

log = logging.getLogger("oasis.agent")

STEP_TEXT_LIMIT = 2000
"""Characters of a step's input and output kept in `AgentResult.steps`."""


@dataclass(frozen=True, kw_only=True)
class AgentSpec:
    """Everything an agent run needs; LLMAgent and Network both build one."""

    name: str
    description: str
    provider: Provider
    toolset: Toolset
    prompt: str | None
    max_iterations: int

    def system_prompt(self) -> str:
        text = self.prompt or f"You are {self.name}: {self.description}"
        notes: list[str] = []
        if self.toolset.agents:
            notes.append(
                "Delegate work to the agent_* tools when another agent is better suited; "
                "give each one a self-contained task."
            )
        if self.toolset.code is not None:
            notes.append(
                "When a task needs several tool calls, conditions, loops, calculations, charts or "
                "files, write one program with execute_code: it calls your tools with call_tool "
                "and returns its answer with set_result."
            )
        if self.toolset.plan is not None:
            notes.append("To make several independent tool calls at once, use execute_plan.")
        notes.append(
            "When you have the answer, reply with it as plain text, without calling a tool."
        )
        return text.rstrip() + "\n\n" + " ".join(notes)


class Run:
    """One execution of a task: the conversation, steps, files and usage so far.

    The built-ins see it as their `RunContext`.
    """

    def __init__(self, spec: AgentSpec, task: AgentTask, on_event: EventHandler | None) -> None:
        self.spec = spec
        self.task = task
        self.on_event = on_event
        self.steps: list[Step] = []
        self.attachments: dict[str, Attachment] = {}
        self.usage = Usage()
        self._ids = itertools.count(1)
        # Without a session from the task, the run's executions share a private
        # workspace (so one execution can use files of the previous one),
        # deleted when the run ends.
        self.session_id = task.session_id or f"oasis-run-{uuid.uuid4().hex}"
        self._code_ran = False

    async def run(self) -> AgentResult:
        try:
            return await self._loop()
        finally:
            if self._code_ran and not self.task.session_id:
                await self._delete_private_session()

    async def _delete_private_session(self) -> None:
        code = self.spec.toolset.code
        if code is None:
            return
        try:
            await code.runner.delete_workspace(self.session_id)
        except Exception as exc:  # cleanup only: the run's outcome stands
            log.warning("could not delete workspace %s: %s", self.session_id, exc)

    async def _loop(self) -> AgentResult:
        spec = self.spec
        tools = spec.toolset.definitions()
        messages: list[Message] = [
            SystemMessage(content=spec.system_prompt()),
            UserMessage(content=self._user_text()),
        ]
        for iteration in range(1, spec.max_iterations + 1):
            response = await spec.provider.request(messages, tools)
            self.usage += response.usage
            calls = [
                c if c.id else replace(c, id=f"call_{next(self._ids)}") for c in response.tool_calls
            ]
            if not calls:
                messages.append(AssistantMessage(content=response.text))
                self._emit(ModelResponded(agent=spec.name, iteration=iteration, response=response))
                return self._result(response.text, "final_answer", iteration, messages)
            messages.append(AssistantMessage(content=response.text, tool_calls=tuple(calls)))
            self._emit(
                ModelResponded(
                    agent=spec.name,
                    iteration=iteration,
                    response=replace(response, tool_calls=calls),
                )
            )
            async with asyncio.TaskGroup() as group:
                answers = [group.create_task(self._answer_llm(call)) for call in calls]
            messages.extend(a.result() for a in answers)
        output = (
            f"Stopped: the agent reached max_iterations ({spec.max_iterations}) "
            "before giving a final answer."
        )
        return self._result(output, "max_iterations", spec.max_iterations, messages)

    def _result(
        self, output: str, reason: StopReason, iterations: int, messages: list[Message]
    ) -> AgentResult:
        return AgentResult(
            output=output,
            attachments=list(self.attachments.values()),
            usage=self.usage,
            steps=list(self.steps),
            stop_reason=reason,
            iterations=iterations,
            messages=messages,
            session_id=self.session_id if self._code_ran else "",
        )

    def _user_text(self) -> str:
        text = self.task.input
        if self.task.context:
            text += "\n\nContext:\n" + json.dumps(
                dict(self.task.context), default=str, ensure_ascii=False, indent=1
            )
        if self.task.attachments:
            where = (
                "execute_code finds them in its working directory"
                if self.spec.toolset.code is not None
                else "their content is not shown to you"
            )
            listed = "\n".join(
                f"- {a.name} ({a.mime or 'unknown type'}, {len(a.data)} bytes)"
                for a in self.task.attachments
            )
            text += f"\n\nAttached files ({where}):\n{listed}"
        return text

    async def _answer_llm(self, call: ToolCallPart) -> ToolMessage:
        if isinstance(call.args, str):
            try:
                args = json.loads(call.args) if call.args.strip() else {}
            except ValueError as exc:
                args = exc
            if not isinstance(args, dict):
                text = f"the arguments are not a JSON object ({args}): {truncate(call.args, 200)}"
                return ToolMessage(call_id=call.id, name=call.name, content=text, is_error=True)
        else:
            args = call.args
        answer = await self.dispatch(call.name, args, call_id=call.id, source="llm")
        return ToolMessage(
            call_id=call.id, name=call.name, content=answer.content, is_error=answer.is_error
        )

    async def dispatch(
        self, name: str, args: dict[str, Any], *, call_id: str, source: StepSource
    ) -> DispatchResult:
        """Run one tool call from any source, record it as a step; never raises for tool failures."""
        step = Step(
            agent=self.spec.name,
            call_id=call_id,
            name=name,
            type=self._step_type(name),
            source=source,
            input=truncate(json.dumps(args, default=str, ensure_ascii=False), STEP_TEXT_LIMIT),
        )
        index = len(self.steps)
        self.steps.append(step)
        self._emit(StepStarted(step=step))
        started = time.monotonic()
        try:
            answer = await self._call(name, args, call_id=call_id, source=source)
        except ToolError as exc:
            answer = DispatchResult(content=str(exc) or type(exc).__name__, is_error=True)
        except SandboxError as exc:
            answer = DispatchResult(
                content=f"the sandbox failed ({exc.code}): {exc.message}", is_error=True
            )
        except Exception as exc:  # a tool's own failure: the LLM sees it and may correct itself
            answer = DispatchResult(content=f"{type(exc).__name__}: {exc}", is_error=True)
        step = replace(
            step,
            output=truncate(answer.content, STEP_TEXT_LIMIT),
            is_error=answer.is_error,
            duration=time.monotonic() - started,
            done=True,
        )
        self.steps[index] = step
        self._emit(StepFinished(step=step))
        return answer

    def _step_type(self, name: str) -> StepType:
        if name == EXECUTE_CODE:
            return "code"
        if name == EXECUTE_PLAN:
            return "plan"
        return "agent" if name in self.spec.toolset.agents else "tool"

    async def _call(
        self, name: str, args: dict[str, Any], *, call_id: str, source: StepSource
    ) -> DispatchResult:
        toolset = self.spec.toolset
        if not isinstance(args, dict):
            raise ToolError(f"the arguments of {name!r} must be a JSON object, not {args!r:.100}")
        if name in toolset.tools:
            value = await toolset.tools[name].call(args)
            return DispatchResult(content=result_text(value))
        builtin = toolset.builtin(name)
        if builtin is not None:
            return await builtin.call(self, args, call_id=call_id, source=source)
        available = toolset.callable_names()
        if source == "llm":
            available += [d.name for d in toolset.definitions() if d.name not in available]
        raise ToolError(f"unknown tool {name!r}; available: {', '.join(available) or 'none'}")

    # What the built-ins may change of the run (their RunContext).

    def use_workspace(self) -> str:
        self._code_ran = True
        return self.session_id

    def add_attachments(self, attachments: Iterable[Attachment]) -> None:
        for attachment in attachments:
            self.attachments[attachment.name] = attachment

    def add_sub_result(self, result: AgentResult) -> None:
        self.usage += result.usage
        self.steps.extend(result.steps)
        self.add_attachments(result.attachments)

    def _emit(self, event: AgentEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)
