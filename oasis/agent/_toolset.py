"""An agent's tools, its built-ins included, checked once when the agent is built."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .._types import CodeRunner
from ._builtins import (
    AGENT_PREFIX,
    BUILTIN_NAMES,
    EXECUTE_CODE,
    Builtin,
    Delegate,
    ExecuteCode,
    ExecutePlan,
)
from ._errors import AgentDefinitionError
from ._messages import ToolDefinition
from ._results import Agent
from ._tools import FunctionTool, Tool, check_tool_name, definition


@dataclass(frozen=True, kw_only=True)
class Toolset:
    """The tools the LLM is offered, and what answers a call to each."""

    tools: Mapping[str, Tool]
    agents: Mapping[str, Delegate]
    """Sub-agents by tool name (agent_<name>)."""
    code: ExecuteCode | None
    """execute_code, when the agent has a code runner."""
    plan: ExecutePlan | None
    """execute_plan, when plan execution is on."""

    @classmethod
    def build(
        cls,
        owner: str,
        tools: Iterable[Tool | Callable[..., Any]],
        *,
        agents: Iterable[Agent] = (),
        code_runner: CodeRunner | None,
        code_timeout: float | None,
        max_code_logs: int,
        plan_execution: bool,
        keep_state: bool = False,
    ) -> Toolset:
        by_name: dict[str, Tool] = {}
        for item in tools:
            t = as_tool(item, owner)
            check_tool_name(t.name)
            if t.name in BUILTIN_NAMES or t.name.startswith(AGENT_PREFIX):
                raise AgentDefinitionError(
                    f"{owner}: tool name {t.name!r} is reserved for a built-in "
                    "(execute_code, execute_plan, agent_<name>); rename the tool"
                )
            if t.name in by_name:
                raise AgentDefinitionError(
                    f"{owner}: two tools are named {t.name!r}; tool names must be unique"
                )
            by_name[t.name] = t
        by_agent: dict[str, Delegate] = {}
        for agent in agents:
            if not isinstance(agent, Agent):
                raise AgentDefinitionError(
                    f"{owner}: {agent!r} is not an agent (LLMAgent or Network)"
                )
            delegate = Delegate(agent=agent)
            try:
                check_tool_name(delegate.name)
            except AgentDefinitionError:
                raise AgentDefinitionError(
                    f"{owner}: agent name {agent.name!r} cannot become tool {delegate.name!r}: "
                    "use letters, digits, '_' or '-' (at most 58 characters)"
                ) from None
            if delegate.name in by_agent:
                raise AgentDefinitionError(
                    f"{owner}: two agents are named {agent.name!r}; agent names must be unique"
                )
            by_agent[delegate.name] = delegate
        callable_names = [*by_name, *by_agent]
        code = None
        if keep_state and code_runner is None:
            raise AgentDefinitionError(
                f"{owner}: keep_state=True needs a code_runner: it keeps execute_code's "
                "variables between executions"
            )
        if code_runner is not None:
            if not isinstance(code_runner, CodeRunner):
                raise AgentDefinitionError(
                    f"{owner}: code_runner {code_runner!r} is not a CodeRunner: it needs the "
                    "methods run(request, dispatch) and delete_workspace(session_id)"
                )
            code = ExecuteCode(
                runner=code_runner,
                timeout=code_timeout,
                max_logs=max_code_logs,
                tool_names=callable_names,
                keep_state=keep_state,
            )
        plan = None
        if plan_execution:
            plan = ExecutePlan(tool_names=[*callable_names, *([EXECUTE_CODE] if code else [])])
        return cls(tools=by_name, agents=by_agent, code=code, plan=plan)

    def callable_names(self) -> list[str]:
        """Tools that code and plans may call: regular tools and sub-agents."""
        return [*self.tools, *self.agents]

    def builtins(self) -> list[Builtin]:
        """The agent_* tools, then execute_code and execute_plan when enabled."""
        found: list[Builtin] = [*self.agents.values()]
        if self.code is not None:
            found.append(self.code)
        if self.plan is not None:
            found.append(self.plan)
        return found

    def builtin(self, name: str) -> Builtin | None:
        return next((b for b in self.builtins() if b.name == name), None)

    def definitions(self) -> list[ToolDefinition]:
        """The tools exactly as the LLM sees them: regular tools first, then the built-ins."""
        return [definition(t) for t in self.tools.values()] + [
            b.definition() for b in self.builtins()
        ]


def as_tool(item: Tool | Callable[..., Any], owner: str) -> Tool:
    """A Tool as is; a plain function wrapped as if decorated with @tool."""
    if isinstance(item, Tool):
        return item
    if callable(item):
        return FunctionTool(item)
    raise AgentDefinitionError(f"{owner}: {item!r} is neither a Tool nor a function")
