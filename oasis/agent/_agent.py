"""The public agents: LLMAgent, and Network, which routes between agents."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .._types import CodeRunner
from ._core import AgentSpec, Run
from ._errors import AgentDefinitionError
from ._messages import Provider, ToolDefinition
from ._results import Agent, AgentResult, AgentTask, EventHandler
from ._tools import Tool
from ._toolset import Toolset

DEFAULT_MAX_ITERATIONS = 10
DEFAULT_MAX_CODE_LOGS = 8000


class _SpecAgent:
    """What LLMAgent and Network share: a spec checked when built, run on demand."""

    def __init__(
        self,
        owner: str,
        name: str,
        description: str,
        provider: Provider,
        *,
        tools: Iterable[Tool | Callable[..., Any]],
        agents: tuple[Agent, ...],
        code_runner: CodeRunner | None,
        plan_execution: bool,
        prompt: str | None,
        max_iterations: int,
        code_timeout: float | None,
        max_code_logs: int,
        keep_state: bool,
    ) -> None:
        check_common(owner, name, description, provider, max_iterations)
        self._spec = AgentSpec(
            name=name,
            description=description,
            provider=provider,
            toolset=Toolset.build(
                owner,
                tools,
                agents=agents,
                code_runner=code_runner,
                code_timeout=code_timeout,
                max_code_logs=max_code_logs,
                plan_execution=plan_execution,
                keep_state=keep_state,
            ),
            prompt=prompt,
            max_iterations=max_iterations,
        )

    @property
    def name(self) -> str:
        return self._spec.name

    @property
    def description(self) -> str:
        return self._spec.description

    @property
    def tool_definitions(self) -> list[ToolDefinition]:
        """The tools exactly as the LLM sees them, built-ins included."""
        return self._spec.toolset.definitions()

    async def execute(
        self, task: AgentTask | str, *, on_event: EventHandler | None = None
    ) -> AgentResult:
        """Run the task to a final answer or `max_iterations`; `on_event` sees each step live.

        Tool failures never raise: the LLM sees them. A failing provider raises
        ProviderError. A network's result includes its sub-agents' usage,
        steps and attachments.
        """
        if isinstance(task, str):
            task = AgentTask(input=task)
        return await Run(self._spec, task, on_event).run()


class LLMAgent(_SpecAgent):
    """An LLM with tools, and optionally code execution (`code_runner`) and plan execution.

    Everything is checked here, so a misconfigured agent fails when it is built,
    never in the middle of a run. One agent may run several tasks concurrently.
    """

    def __init__(
        self,
        name: str,
        description: str,
        provider: Provider,
        *,
        tools: Iterable[Tool | Callable[..., Any]] = (),
        code_runner: CodeRunner | None = None,
        plan_execution: bool = False,
        prompt: str | None = None,
        max_iterations: int = DEFAULT_MAX_ITERATIONS,
        code_timeout: float | None = None,
        max_code_logs: int = DEFAULT_MAX_CODE_LOGS,
        keep_state: bool = False,
    ) -> None:
        """
        Args:
            tools: `Tool`s, or plain typed functions (wrapped as by `@tool`).
            code_runner: enables the execute_code tool (GrpcRunner, HTTPRunner, any CodeRunner).
            plan_execution: enables the execute_plan tool (parallel tool calls in one step).
            prompt: the agent's instructions; default: its name and description.
            max_iterations: LLM requests per task before the run stops without an answer.
            code_timeout: seconds per execution; None uses the runner's default.
            max_code_logs: characters of an execution's logs the LLM is shown (the tail).
            keep_state: a task's executions share a live interpreter (one per runtime) in
                the task's session, so variables, imports and functions persist between
                them; the LLM is told so. They then run one at a time.
        """
        super().__init__(
            f"agent {name!r}", name, description, provider,
            tools=tools, agents=(), code_runner=code_runner, plan_execution=plan_execution,
            prompt=prompt, max_iterations=max_iterations, code_timeout=code_timeout,
            max_code_logs=max_code_logs, keep_state=keep_state,
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"LLMAgent({self.name!r})"


class Network(_SpecAgent):
    """A router LLM that delegates to agents, each seen as a tool `agent_<name>`.

    Code run by the network (execute_code) can call the regular tools and the
    `agent_*` tools alike. A Network is itself an agent, so networks nest.
    """

    def __init__(
        self,
        name: str,
        description: str,
        router_provider: Provider,
        *,
        agents: Iterable[Agent] = (),
        tools: Iterable[Tool | Callable[..., Any]] = (),
        code_runner: CodeRunner | None = None,
        plan_execution: bool = False,
        prompt: str | None = None,
        max_iterations: int = DEFAULT_MAX_ITERATIONS,
        code_timeout: float | None = None,
        max_code_logs: int = DEFAULT_MAX_CODE_LOGS,
        keep_state: bool = False,
    ) -> None:
        self.agents = tuple(agents)
        super().__init__(
            f"network {name!r}", name, description, router_provider,
            tools=tools, agents=self.agents, code_runner=code_runner,
            plan_execution=plan_execution, prompt=prompt, max_iterations=max_iterations,
            code_timeout=code_timeout, max_code_logs=max_code_logs, keep_state=keep_state,
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"Network({self.name!r}, agents={[a.name for a in self.agents]})"


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
