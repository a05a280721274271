"""The agent loop: ask the LLM, run its tool calls concurrently, feed the answers back."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

from .._types import CodeRequest, CodeRunner, DispatchResult, ToolCall
from ..errors import SandboxError, ToolError
from . import _builtins as builtins
from ._errors import AgentDefinitionError
from ._messages import (
    AssistantMessage,
    Message,
    Provider,
    SystemMessage,
    ToolCallPart,
    ToolDefinition,
    ToolMessage,
    Usage,
    UserMessage,
)
from ._results import (
    AgentEvent,
    AgentResult,
    AgentTask,
    Attachment,
    ModelResponded,
    Step,
    StepFinished,
    StepSource,
    StepStarted,
    StepType,
    StopReason,
)
from ._tools import FunctionTool, Tool, check_tool_name, definition, result_text

log = logging.getLogger("oasis.agent")

EventHandler = Callable[[AgentEvent], None]

STEP_TEXT_LIMIT = 2000
"""Characters of a step's input and output kept in `AgentResult.steps`."""


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


@dataclass(frozen=True, kw_only=True)
class Toolset:
    """An agent's tools, checked once when the agent is built."""

    tools: Mapping[str, Tool]
    agents: Mapping[str, Agent]
    """Sub-agents by tool name (agent_<name>)."""
    code_runner: CodeRunner | None
    plan_execution: bool

    @classmethod
    def build(
        cls,
        owner: str,
        tools: Iterable[Tool | Callable[..., Any]],
        *,
        agents: Iterable[Agent] = (),
        code_runner: CodeRunner | None,
        plan_execution: bool,
    ) -> Toolset:
        by_name: dict[str, Tool] = {}
        for item in tools:
            t = as_tool(item, owner)
            check_tool_name(t.name)
            if t.name in builtins.BUILTIN_NAMES or t.name.startswith(builtins.AGENT_PREFIX):
                raise AgentDefinitionError(
                    f"{owner}: tool name {t.name!r} is reserved for a built-in "
                    "(execute_code, execute_plan, agent_<name>); rename the tool"
                )
            if t.name in by_name:
                raise AgentDefinitionError(
                    f"{owner}: two tools are named {t.name!r}; tool names must be unique"
                )
            by_name[t.name] = t
        by_agent: dict[str, Agent] = {}
        for agent in agents:
            if not isinstance(agent, Agent):
                raise AgentDefinitionError(
                    f"{owner}: {agent!r} is not an agent (LLMAgent or Network)"
                )
            tool_name = builtins.AGENT_PREFIX + agent.name
            try:
                check_tool_name(tool_name)
            except AgentDefinitionError:
                raise AgentDefinitionError(
                    f"{owner}: agent name {agent.name!r} cannot become tool {tool_name!r}: "
                    "use letters, digits, '_' or '-' (at most 58 characters)"
                ) from None
            if tool_name in by_agent:
                raise AgentDefinitionError(
                    f"{owner}: two agents are named {agent.name!r}; agent names must be unique"
                )
            by_agent[tool_name] = agent
        if code_runner is not None and not callable(getattr(code_runner, "run", None)):
            raise AgentDefinitionError(
                f"{owner}: code_runner {code_runner!r} has no run(request, dispatch) method"
            )
        return cls(
            tools=by_name, agents=by_agent, code_runner=code_runner, plan_execution=plan_execution
        )

    def callable_names(self) -> list[str]:
        """Tools that code and plans may call: regular tools and sub-agents."""
        return [*self.tools, *self.agents]

    def definitions(self) -> list[ToolDefinition]:
        defs = [definition(t) for t in self.tools.values()]
        defs += [_agent_definition(name, agent) for name, agent in self.agents.items()]
        if self.code_runner is not None:
            defs.append(builtins.execute_code_definition(self.callable_names()))
        if self.plan_execution:
            defs.append(
                builtins.execute_plan_definition([*self.callable_names(), *self._code_name()])
            )
        return defs

    def _code_name(self) -> list[str]:
        return [builtins.EXECUTE_CODE] if self.code_runner is not None else []


def as_tool(item: Tool | Callable[..., Any], owner: str) -> Tool:
    """A Tool as is; a plain function wrapped as if decorated with @tool."""
    if isinstance(item, Tool):
        return item
    if callable(item):
        return FunctionTool(item)
    raise AgentDefinitionError(f"{owner}: {item!r} is neither a Tool nor a function")


def _agent_definition(tool_name: str, agent: Agent) -> ToolDefinition:
    return ToolDefinition(
        name=tool_name,
        description=f"Delegate a task to the agent {agent.name!r}: {agent.description}",
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


@dataclass(frozen=True, kw_only=True)
class AgentSpec:
    """Everything an agent run needs; LLMAgent and Network both build one."""

    name: str
    description: str
    provider: Provider
    toolset: Toolset
    prompt: str | None
    max_iterations: int
    code_timeout: float | None
    max_code_logs: int

    def system_prompt(self) -> str:
        text = self.prompt or f"You are {self.name}: {self.description}"
        notes: list[str] = []
        if self.toolset.agents:
            notes.append(
                "Delegate work to the agent_* tools when another agent is better suited; "
                "give each one a self-contained task."
            )
        if self.toolset.code_runner is not None:
            notes.append(
                "When a task needs several tool calls, conditions, loops, calculations, charts or "
                "files, write one program with execute_code: it calls your tools with call_tool "
                "and returns its answer with set_result."
            )
        if self.toolset.plan_execution:
            notes.append("To make several independent tool calls at once, use execute_plan.")
        notes.append(
            "When you have the answer, reply with it as plain text, without calling a tool."
        )
        return text.rstrip() + "\n\n" + " ".join(notes)


class Run:
    """One execution of a task: the conversation, steps, files and usage so far."""

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
        delete = getattr(self.spec.toolset.code_runner, "delete_workspace", None)
        if delete is None:
            return  # the server's session TTL removes it
        try:
            await delete(self.session_id)
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
                if self.spec.toolset.code_runner is not None
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
                text = f"the arguments are not a JSON object ({args}): {builtins.truncate(call.args, 200)}"
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
            input=builtins.truncate(
                json.dumps(args, default=str, ensure_ascii=False), STEP_TEXT_LIMIT
            ),
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
            output=builtins.truncate(answer.content, STEP_TEXT_LIMIT),
            is_error=answer.is_error,
            duration=time.monotonic() - started,
            done=True,
        )
        self.steps[index] = step
        self._emit(StepFinished(step=step))
        return answer

    def _step_type(self, name: str) -> StepType:
        if name == builtins.EXECUTE_CODE:
            return "code"
        if name == builtins.EXECUTE_PLAN:
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
        if name in toolset.agents:
            return await self._delegate(toolset.agents[name], args)
        if name == builtins.EXECUTE_CODE and toolset.code_runner is not None:
            if source == "code":
                raise ToolError(
                    "execute_code cannot be called from code: code cannot start nested code "
                    "execution. Call the tools directly with call_tool."
                )
            return await self._execute_code(toolset.code_runner, args, call_id)
        if name == builtins.EXECUTE_PLAN and toolset.plan_execution:
            if source == "plan":
                raise ToolError("a plan cannot contain execute_plan")
            if source == "code":
                raise ToolError("execute_plan cannot be called from code; use call_tools_parallel")
            return await self._execute_plan(args, call_id)
        available = toolset.callable_names()
        if source == "llm":
            available += [d.name for d in toolset.definitions() if d.name not in available]
        raise ToolError(f"unknown tool {name!r}; available: {', '.join(available) or 'none'}")

    async def _execute_code(
        self, runner: CodeRunner, args: dict[str, Any], call_id: str
    ) -> DispatchResult:
        code = args.get("code")
        runtime = args.get("runtime") or "python"
        if not isinstance(code, str) or not code.strip():
            raise ToolError("execute_code needs 'code': the program to run, as a string")
        if runtime not in builtins.RUNTIMES:
            raise ToolError(
                f"unsupported runtime {runtime!r}; use one of: {', '.join(builtins.RUNTIMES)}"
            )
        unexpected = set(args) - {"code", "runtime"}
        if unexpected:
            raise ToolError(
                f"execute_code takes only 'runtime' and 'code', not {', '.join(sorted(unexpected))}"
            )
        calls = itertools.count(1)

        async def dispatch(call: ToolCall) -> DispatchResult:
            # The code's call_tool goes through the same dispatch as the LLM's tool calls.
            return await self.dispatch(
                call.name, call.args, call_id=f"{call_id}.{next(calls)}", source="code"
            )

        self._code_ran = True
        request = CodeRequest(
            code=code,
            runtime=runtime,
            timeout=self.spec.code_timeout,
            session_id=self.session_id,
            files=[a.to_code_file() for a in self.task.attachments],
        )
        result = await runner.run(request, dispatch)
        for file in result.files:
            self.attachments[file.name] = Attachment.from_code_file(file)
        return builtins.code_answer(result, max_logs=self.spec.max_code_logs)

    async def _execute_plan(self, args: dict[str, Any], call_id: str) -> DispatchResult:
        steps = args.get("steps")
        if not isinstance(steps, list) or not steps:
            raise ToolError('execute_plan needs \'steps\': a list of {"tool": name, "args": {...}}')
        if len(steps) > builtins.MAX_PLAN_STEPS:
            raise ToolError(
                f"a plan has at most {builtins.MAX_PLAN_STEPS} steps, this one has {len(steps)}; "
                "split it into several plans"
            )
        problems: list[str | None] = []
        for number, item in enumerate(steps, 1):
            if not isinstance(item, dict) or not isinstance(item.get("tool"), str):
                problems.append(f'step {number} is not {{"tool": name, "args": {{...}}}}')
            elif item["tool"] == builtins.EXECUTE_PLAN:
                raise ToolError(
                    f"a plan cannot contain execute_plan (step {number}); list the tool calls directly"
                )
            elif not isinstance(item.get("args", {}), dict):
                problems.append(f"step {number}: 'args' must be a JSON object")
            else:
                problems.append(None)

        async def run_step(number: int, item: Any, problem: str | None) -> dict[str, Any]:
            entry: dict[str, Any] = {
                "step": number,
                "tool": item.get("tool") if isinstance(item, dict) else None,
            }
            if problem is not None:
                return {**entry, "status": "error", "error": problem}
            answer = await self.dispatch(
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

    async def _delegate(self, agent: Agent, args: dict[str, Any]) -> DispatchResult:
        text = args.get("input")
        if not isinstance(text, str) or not text.strip():
            raise ToolError("give the agent its task as 'input', a non-empty string")
        unexpected = set(args) - {"input"}
        if unexpected:
            raise ToolError(f"agent tools take only 'input', not {', '.join(sorted(unexpected))}")
        task = AgentTask(
            input=text,
            attachments=self.task.attachments,
            context=self.task.context,
            session_id=self.task.session_id,
        )
        result = await agent.execute(task, on_event=self.on_event)
        self.usage += result.usage
        self.steps.extend(result.steps)
        for attachment in result.attachments:
            self.attachments[attachment.name] = attachment
        content = result.output
        if result.attachments:
            content += "\n\nFiles returned (they reach the user as attachments): " + ", ".join(
                a.name for a in result.attachments
            )
        return DispatchResult(content=content, is_error=not result.completed)

    def _emit(self, event: AgentEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)


def _maybe_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def check_common(
    owner: str, name: str, description: str, provider: object, max_iterations: int
) -> None:
    """Construction-time checks shared by LLMAgent and Network."""
    if not isinstance(name, str) or not name.strip():
        raise AgentDefinitionError("an agent needs a non-empty name")
    if not isinstance(description, str):
        raise AgentDefinitionError(f"{owner}: description must be a string")
    if not callable(getattr(provider, "request", None)):
        raise AgentDefinitionError(
            f"{owner}: provider {provider!r} has no request(messages, tools) method"
        )
    if not isinstance(max_iterations, int) or max_iterations < 1:
        raise AgentDefinitionError(
            f"{owner}: max_iterations must be a positive whole number, got {max_iterations!r}"
        )
