"""execute_code and agent_* as the agent sees them, with a ScriptedRunner in place of the sandbox.

The real sandbox path (prelude, runtimes, files, workspaces) is tested in test_code.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Sequence

import pytest

from oasis import CodeFile, CodeRequest, CodeResult, Dispatch, DispatchResult, Status, ToolCall
from oasis.agent import (
    AgentDefinitionError,
    AgentTask,
    Attachment,
    LLMAgent,
    Message,
    ModelResponse,
    Network,
    ToolDefinition,
    ToolMessage,
    tool,
)
from oasis.agent.providers import ScriptedProvider, ScriptedRunner, code_result, tool_calls

ORDERS = {"c1": [120.0, 80.5]}


@tool
async def get_orders(customer_id: str) -> list[float]:
    """Amounts of a customer's orders."""
    return ORDERS[customer_id]


@tool
def get_customer(customer_id: str) -> dict[str, str]:
    """A customer's name."""
    return {"c1": {"name": "Ada"}}[customer_id]


def code_call(code: str = "print(1)", runtime: str = "python") -> ModelResponse:
    return tool_calls(("execute_code", {"runtime": runtime, "code": code}))


def last_answer(provider: ScriptedProvider, request: int = 1) -> ToolMessage:
    message = provider.requests[request].messages[-1]
    assert isinstance(message, ToolMessage)
    return message


async def test_code_gets_the_task_and_calls_tools_through_the_runs_dispatch() -> None:
    async def program(request: CodeRequest, dispatch: Dispatch) -> CodeResult:
        orders = await dispatch(ToolCall(id="t1", name="get_orders", args={"customer_id": "c1"}))
        refused = await dispatch(ToolCall(id="t2", name="execute_code", args={"code": "1"}))
        assert refused.is_error and "cannot be called from code" in refused.content
        return code_result(
            {"total": sum(json.loads(orders.content))},
            logs="x" * 50,
            files=[CodeFile(name="chart.png", data=b"png", mime="image/png", size=3)],
        )

    runner = ScriptedRunner([program])
    provider = ScriptedProvider([code_call("the program", "node"), "done"])
    agent = LLMAgent(
        "clerk", "Knows orders.", provider, tools=[get_orders], code_runner=runner,
        code_timeout=7.5, max_code_logs=10,
    )  # fmt: skip
    sales = Attachment(name="sales.csv", data=b"a,b\n", mime="text/csv")
    result = await agent.execute(AgentTask(input="total?", attachments=[sales]))

    (request,) = runner.requests
    assert (request.code, request.runtime, request.timeout) == ("the program", "node", 7.5)
    assert [f.name for f in request.files] == ["sales.csv"]
    assert request.session_id == result.session_id and result.session_id.startswith("oasis-run-")
    assert last_answer(provider).content == (
        'Result: {"total": 200.5}\n\n'
        "Files returned (they reach the user as attachments): chart.png (image/png, 3 bytes)\n\n"
        "Logs:\n[40 earlier characters cut] ...xxxxxxxxxx"
    )
    assert [(s.name, s.type, s.source, s.call_id) for s in result.steps] == [
        ("execute_code", "code", "llm", "call_1"),
        ("get_orders", "tool", "code", "call_1.1"),
        ("execute_code", "code", "code", "call_1.2"),
    ]
    assert [a.name for a in result.attachments] == ["chart.png"]
    # The run's private workspace is deleted when it ends.
    assert runner.deleted == [result.session_id]


async def test_failures_and_missing_results_are_told_to_the_llm() -> None:
    runner = ScriptedRunner(
        [
            code_result(error="ValueError: bad input", logs="about to fail\n", status=Status.ERROR),
            code_result(logs="forgot set_result\n"),
            code_result(status=Status.TIMEOUT),
        ]
    )
    provider = ScriptedProvider([code_call(), code_call(), code_call(), code_call(), "done"])
    await LLMAgent("c", "codes", provider, code_runner=runner).execute("go")

    failed, silent, timed_out, exhausted = (last_answer(provider, n) for n in range(1, 5))
    assert failed.is_error and failed.content == (
        "Execution failed (status error, exit code 1):\nValueError: bad input"
        "\n\nLogs:\nabout to fail\n"
    )
    assert not silent.is_error and "without calling set_result" in silent.content
    assert timed_out.is_error and timed_out.content.startswith(
        "Execution failed (status timeout, exit code 1):\nno error message"
    )
    assert exhausted.is_error and "ScriptExhausted" in exhausted.content
    assert runner.remaining == -1


async def test_keep_state_runs_a_tasks_code_in_one_stateful_session_one_at_a_time() -> None:
    running: dict[str, int] = {"python": 0, "node": 0}
    overlaps: list[str] = []

    async def program(request: CodeRequest, dispatch: Dispatch) -> CodeResult:
        running[request.runtime] += 1
        if running[request.runtime] > 1:
            overlaps.append(request.code)
        await asyncio.sleep(0.05)
        running[request.runtime] -= 1
        if request.code == "lost":
            return dataclasses.replace(
                code_result(), fresh_state=True, fresh_state_reason="evicted: least recently used"
            )
        return dataclasses.replace(code_result(request.code), state_kept=True)

    runner = ScriptedRunner([program] * 4)
    provider = ScriptedProvider(
        [
            tool_calls(
                ("execute_code", {"code": "a"}),
                ("execute_code", {"code": "b"}),
                ("execute_code", {"runtime": "node", "code": "c"}),
            ),
            code_call("lost"),
            "done",
        ]
    )
    agent = LLMAgent("c", "codes", provider, code_runner=runner, keep_state=True)
    result = await agent.execute("go")

    assert overlaps == []  # the server would refuse a second execution in a busy interpreter
    assert [r.code for r in runner.requests if r.runtime == "python"] == ["a", "b", "lost"]
    assert {(r.session_id, r.keep_state) for r in runner.requests} == {(result.session_id, True)}
    [definition] = [t for t in provider.requests[0].tools if t.name == "execute_code"]
    assert "variables, imports and functions" in definition.description
    kept = [m for m in provider.requests[1].messages if isinstance(m, ToolMessage)]
    assert [m.content for m in kept] == ['Result: "a"', 'Result: "b"', 'Result: "c"']
    lost = last_answer(provider, 2).content
    assert "started in a new, empty interpreter (evicted: least recently used)" in lost
    assert "did not survive this execution" in lost
    # The private session goes at the end of the task, and its interpreter with it.
    assert runner.deleted == [result.session_id]


async def test_without_keep_state_nothing_is_promised_and_keep_state_needs_a_runner() -> None:
    runner = ScriptedRunner([code_result(1)])
    provider = ScriptedProvider([code_call(), "done"])
    await LLMAgent("c", "codes", provider, code_runner=runner).execute("go")

    assert runner.requests[0].keep_state is False
    [definition] = [t for t in provider.requests[0].tools if t.name == "execute_code"]
    assert "persist" not in definition.description
    assert last_answer(provider).content == "Result: 1"
    with pytest.raises(AgentDefinitionError, match="keep_state=True needs a code_runner"):
        LLMAgent("c", "codes", ScriptedProvider([]), keep_state=True)


async def test_bad_execute_code_arguments_run_nothing() -> None:
    runner = ScriptedRunner()
    provider = ScriptedProvider(
        [
            tool_calls(
                ("execute_code", {"runtime": "python"}),
                ("execute_code", {"code": "1", "runtime": "ruby"}),
                ("execute_code", {"code": "1", "timeout": 5}),
            ),
            "done",
        ]
    )
    result = await LLMAgent("c", "codes", provider, code_runner=runner).execute("go")

    answers = [m for m in provider.requests[1].messages if isinstance(m, ToolMessage)]
    assert [a.content for a in answers] == [
        "execute_code needs 'code': the program to run, as a string",
        "unsupported runtime 'ruby'; use one of: python, node",
        "execute_code takes only 'runtime' and 'code', not timeout",
    ]
    assert runner.requests == [] and runner.deleted == []
    assert result.session_id == ""  # no code ran, so no session was used


async def test_a_tasks_session_is_kept_and_a_failed_delete_only_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runner = ScriptedRunner([code_result("one"), code_result("two")])
    provider = ScriptedProvider([code_call(), "kept", code_call(), "private"])
    agent = LLMAgent("m", "memo", provider, code_runner=runner)

    kept = await agent.execute(AgentTask(input="go", session_id="user-42"))
    assert kept.session_id == "user-42" and runner.deleted == []

    async def broken_delete(session_id: str) -> bool:
        raise ConnectionError("sandbox gone")

    runner.delete_workspace = broken_delete  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="oasis.agent"):
        private = await agent.execute("go")
    assert private.output == "private"
    assert f"could not delete workspace {private.session_id}: sandbox gone" in caplog.text


async def test_scripted_runner_deletes_only_workspaces_it_ran_in() -> None:
    runner = ScriptedRunner([code_result()])
    await runner.run(CodeRequest(code="1", session_id="s1"), _no_dispatch)
    assert await runner.delete_workspace("s1") is True
    assert await runner.delete_workspace("s1") is False
    assert await runner.delete_workspace("never") is False
    assert runner.deleted == ["s1", "s1", "never"]


async def _no_dispatch(call: ToolCall) -> DispatchResult:
    raise AssertionError("no tool calls expected")


async def test_network_delegates_to_two_agents() -> None:
    def quote_tool(messages: Sequence[Message], tools: Sequence[ToolDefinition]) -> str:
        answer = messages[-1]
        assert isinstance(answer, ToolMessage)
        return f"sub-answer: {answer.content}"

    @tool
    def convert(amount: float, rate: float) -> float:
        """Convert an amount at an exchange rate."""
        return round(amount * rate, 2)

    sales_provider = ScriptedProvider(
        [tool_calls(("get_orders", {"customer_id": "c1"})), quote_tool]
    )
    finance_provider = ScriptedProvider(
        [tool_calls(("convert", {"amount": 200.5, "rate": 2})), quote_tool]
    )
    sales = LLMAgent("sales", "Knows orders.", sales_provider, tools=[get_orders])
    finance = LLMAgent("finance", "Converts money.", finance_provider, tools=[convert])

    def summarize(messages: Sequence[Message], tools: Sequence[ToolDefinition]) -> str:
        answers = [m.content for m in messages if isinstance(m, ToolMessage)]
        return " | ".join(answers)

    router = ScriptedProvider(
        [
            tool_calls(
                ("agent_sales", {"input": "orders of c1"}),
                ("agent_finance", {"input": "convert 200.5 at 2"}),
                ("agent_sales", {"input": ""}),
            ),
            summarize,
        ]
    )
    network = Network("company", "Routes questions.", router, agents=[sales, finance])
    result = await network.execute("What did c1 order, and what is 200.5 at rate 2?")

    assert result.output == (
        "sub-answer: [120.0, 80.5] | sub-answer: 401.0 | "
        "give the agent its task as 'input', a non-empty string"
    )
    assert [t.name for t in router.requests[0].tools] == ["agent_sales", "agent_finance"]
    assert "orders of c1" in sales_provider.requests[0].messages[1].content
    assert result.usage.requests == 2 + 2 + 2
    assert {(s.agent, s.name, s.type) for s in result.steps} == {
        ("company", "agent_sales", "agent"),
        ("company", "agent_finance", "agent"),
        ("sales", "get_orders", "tool"),
        ("finance", "convert", "tool"),
    }


async def test_code_run_by_a_network_calls_agent_and_regular_tools() -> None:
    def quote(messages: Sequence[Message], tools: Sequence[ToolDefinition]) -> str:
        answer = messages[-1]
        assert isinstance(answer, ToolMessage)
        return answer.content

    sales = LLMAgent(
        "sales",
        "Knows orders.",
        ScriptedProvider([tool_calls(("get_orders", {"customer_id": "c1"})), quote]),
        tools=[get_orders],
    )

    async def program(request: CodeRequest, dispatch: Dispatch) -> CodeResult:
        orders = await dispatch(
            ToolCall(id="1", name="agent_sales", args={"input": "orders of c1 as a JSON list"})
        )
        customer = await dispatch(ToolCall(id="2", name="get_customer", args={"customer_id": "c1"}))
        return code_result([json.loads(orders.content), json.loads(customer.content)])

    router = ScriptedProvider([code_call(), "done"])
    network = Network(
        "company", "Routes.", router, agents=[sales], tools=[get_customer],
        code_runner=ScriptedRunner([program]),
    )  # fmt: skip
    result = await network.execute("Summarize c1")

    answer = last_answer(router)
    assert answer.content == 'Result: [[120.0, 80.5], {"name": "Ada"}]'
    assert [t.name for t in router.requests[0].tools] == [
        "get_customer",
        "agent_sales",
        "execute_code",
    ]
    assert [(s.agent, s.name, s.source) for s in result.steps] == [
        ("company", "execute_code", "llm"),
        ("company", "agent_sales", "code"),
        ("sales", "get_orders", "llm"),
        ("company", "get_customer", "code"),
    ]
