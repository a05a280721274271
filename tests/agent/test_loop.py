"""The agent loop with a scripted LLM: turns, concurrency, limits, errors, plans."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import pytest

import oasis
from oasis.agent import (
    AgentTask,
    LLMAgent,
    Message,
    ModelResponded,
    ModelResponse,
    ScriptExhausted,
    StepFinished,
    StepStarted,
    ToolCallPart,
    ToolDefinition,
    ToolMessage,
    Usage,
    tool,
)
from oasis.agent.providers import ScriptedProvider, tool_calls


@tool
def get_price(item: str) -> dict[str, object]:
    """Price of an item in euros."""
    prices = {"apple": 0.5, "pear": 0.75}
    if item not in prices:
        raise KeyError(f"no such item: {item}")
    return {"item": item, "price": prices[item]}


@tool
async def multiply(a: float, b: float) -> float:
    """Multiply two numbers."""
    return a * b


def tool_answers(messages: Sequence[Message]) -> list[ToolMessage]:
    """The tool messages of the latest turn."""
    answers: list[ToolMessage] = []
    for message in reversed(messages):
        if not isinstance(message, ToolMessage):
            break
        answers.insert(0, message)
    return answers


async def test_multi_turn_tool_use_feeds_results_back() -> None:
    def total(messages: Sequence[Message], tools: Sequence[ToolDefinition]) -> str:
        (answer,) = tool_answers(messages)
        return f"The total is {json.loads(answer.content)} euros."

    def then_multiply(
        messages: Sequence[Message], tools: Sequence[ToolDefinition]
    ) -> ModelResponse:
        price = json.loads(tool_answers(messages)[0].content)["price"]
        return tool_calls(("multiply", {"a": price, "b": 4}))

    provider = ScriptedProvider(
        [
            ModelResponse(
                tool_calls=[ToolCallPart(name="get_price", args={"item": "pear"}, id="p1")],
                usage=Usage(requests=1, input_tokens=10, output_tokens=3),
            ),
            then_multiply,
            total,
        ]
    )
    agent = LLMAgent("shop", "Answers price questions.", provider, tools=[get_price, multiply])
    result = await agent.execute(
        AgentTask(input="What do 4 pears cost?", context={"currency": "EUR"})
    )

    assert result.output == "The total is 3.0 euros."
    assert result.completed and result.stop_reason == "final_answer" and result.iterations == 3
    assert result.usage == Usage(requests=3, input_tokens=10, output_tokens=3)
    assert [(s.name, s.type, s.source, s.output) for s in result.steps] == [
        ("get_price", "tool", "llm", '{"item": "pear", "price": 0.75}'),
        ("multiply", "tool", "llm", "3.0"),
    ]
    first = provider.requests[0]
    assert "shop" in first.messages[0].content  # type: ignore[union-attr]
    assert "What do 4 pears cost?" in first.messages[1].content  # type: ignore[union-attr]
    assert '"currency": "EUR"' in first.messages[1].content  # type: ignore[union-attr]
    assert [t.name for t in first.tools] == ["get_price", "multiply"]
    # The provider's call id is kept, so the tool answer matches the call.
    assert tool_answers(provider.requests[1].messages)[0].call_id == "p1"


async def test_all_tool_calls_of_one_response_run_concurrently() -> None:
    barrier = asyncio.Barrier(3)

    @tool
    async def meet(who: str) -> str:
        """Wait until all three callers arrived."""
        async with asyncio.timeout(10):  # sequential calls would never all arrive
            await barrier.wait()
        return f"{who} met"

    provider = ScriptedProvider(
        [tool_calls(("meet", {"who": "a"}), ("meet", {"who": "b"}), ("meet", {"who": "c"})), "ok"]
    )
    events: list[object] = []
    result = await LLMAgent("p", "parallel", provider, tools=[meet]).execute(
        "go", on_event=events.append
    )

    answers = tool_answers(provider.requests[1].messages)
    assert [(a.content, a.is_error) for a in answers] == [
        ("a met", False),
        ("b met", False),
        ("c met", False),
    ]
    assert [s.call_id for s in result.steps] == ["call_1", "call_2", "call_3"]
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "ModelResponded" and kinds[-1] == "ModelResponded"
    assert kinds.count("StepStarted") == 3 and kinds.count("StepFinished") == 3
    # All three started before any finished: they were waiting on each other.
    assert kinds[1:4] == ["StepStarted"] * 3
    finished = [e.step for e in events if isinstance(e, StepFinished)]
    assert all(s.done and not s.is_error for s in finished)
    assert isinstance(events[0], ModelResponded) and events[0].iteration == 1
    assert isinstance(events[1], StepStarted) and events[1].step.output == ""


async def test_max_iterations_stops_and_says_so() -> None:
    provider = ScriptedProvider([tool_calls(("get_price", {"item": "apple"}))] * 5)
    agent = LLMAgent("loop", "never answers", provider, tools=[get_price], max_iterations=3)
    result = await agent.execute("loop forever")

    assert result.stop_reason == "max_iterations" and not result.completed
    assert "max_iterations (3)" in result.output
    assert len(provider.requests) == 3 and len(result.steps) == 3
    assert provider.remaining == 2


async def test_tool_errors_reach_the_llm_and_never_end_the_run() -> None:
    @tool
    def fails_cleanly() -> str:
        """Raises a ToolError."""
        raise oasis.ToolError("the warehouse is closed")

    provider = ScriptedProvider(
        [
            tool_calls(
                ("get_price", {"item": "durian"}),
                ("fails_cleanly", {}),
                ("get_price", {"item": "apple", "size": "XL"}),
                ("no_such_tool", {}),
                ToolCallPart(name="get_price", args='{"item": '),
                ("get_price", {"item": "apple"}),
            ),
            "Apples cost 0.5.",
        ]
    )
    result = await LLMAgent("e", "errors", provider, tools=[get_price, fails_cleanly]).execute(
        "prices?"
    )

    answers = tool_answers(provider.requests[1].messages)
    assert [a.is_error for a in answers] == [True, True, True, True, True, False]
    assert answers[0].content == "KeyError: 'no such item: durian'"
    assert answers[1].content == "the warehouse is closed"
    assert "unexpected argument(s) 'size'" in answers[2].content
    assert answers[3].content.startswith(
        "unknown tool 'no_such_tool'; available: get_price, fails_cleanly"
    )
    assert "not a JSON object" in answers[4].content
    assert result.output == "Apples cost 0.5."
    assert [s.is_error for s in result.steps] == [True, True, True, True, False]


async def test_a_scripted_provider_that_runs_out_raises_clearly() -> None:
    provider = ScriptedProvider([tool_calls(("get_price", {"item": "apple"}))])
    with pytest.raises(ScriptExhausted, match=r"has 1 response.*asked for response 2"):
        await LLMAgent("x", "runs out", provider, tools=[get_price]).execute("go")


async def test_execute_plan_runs_steps_in_parallel_with_their_own_status() -> None:
    barrier = asyncio.Barrier(2)

    @tool
    async def rendezvous(n: int) -> int:
        """Meets another call."""
        async with asyncio.timeout(10):
            await barrier.wait()
        return n * 10

    plan = {
        "steps": [
            {"tool": "rendezvous", "args": {"n": 1}},
            {"tool": "get_price", "args": {"item": "durian"}},
            {"tool": "rendezvous", "args": {"n": 2}},
            {"tool": "nope"},
            {"tool": "get_price", "args": "apple"},
        ]
    }
    provider = ScriptedProvider([tool_calls(("execute_plan", plan)), "done"])
    agent = LLMAgent(
        "planner", "plans", provider, tools=[rendezvous, get_price], plan_execution=True
    )
    result = await agent.execute("plan it")

    (answer,) = tool_answers(provider.requests[1].messages)
    assert not answer.is_error
    report = json.loads(answer.content)
    assert report["succeeded"] == 2 and report["failed"] == 3
    steps = report["steps"]
    assert steps[0] == {"step": 1, "tool": "rendezvous", "status": "ok", "result": 10}
    assert steps[1]["status"] == "error" and "no such item" in steps[1]["error"]
    assert steps[2] == {"step": 3, "tool": "rendezvous", "status": "ok", "result": 20}
    assert steps[3]["status"] == "error" and "unknown tool 'nope'" in steps[3]["error"]
    assert steps[4] == {
        "step": 5,
        "tool": "get_price",
        "status": "error",
        "error": "step 5: 'args' must be a JSON object",
    }
    assert result.steps[0].type == "plan"
    assert {(s.name, s.source) for s in result.steps[1:]} == {
        ("rendezvous", "plan"),
        ("get_price", "plan"),
        ("nope", "plan"),
    }


async def test_execute_plan_limits_and_no_recursion() -> None:
    too_long = {"steps": [{"tool": "get_price", "args": {"item": "apple"}}] * 51}
    just_right = {"steps": [{"tool": "get_price", "args": {"item": "apple"}}] * 50}
    nested = {
        "steps": [
            {"tool": "get_price", "args": {"item": "apple"}},
            {"tool": "execute_plan", "args": just_right},
        ]
    }
    provider = ScriptedProvider(
        [
            tool_calls(
                ("execute_plan", too_long),
                ("execute_plan", nested),
                ("execute_plan", {"steps": []}),
            ),
            tool_calls(("execute_plan", just_right)),
            "done",
        ]
    )
    agent = LLMAgent("planner", "plans", provider, tools=[get_price], plan_execution=True)
    result = await agent.execute("plan it")

    long_answer, nested_answer, empty_answer = tool_answers(provider.requests[1].messages)
    assert long_answer.is_error and "at most 50 steps, this one has 51" in long_answer.content
    assert (
        nested_answer.is_error
        and "a plan cannot contain execute_plan (step 2)" in nested_answer.content
    )
    assert empty_answer.is_error
    (full,) = tool_answers(provider.requests[2].messages)
    assert json.loads(full.content)["succeeded"] == 50
    # Refused plans ran nothing: 4 plan steps plus the 50 calls of the accepted one.
    assert len([s for s in result.steps if s.name == "get_price"]) == 50


async def test_execute_plan_is_only_offered_when_enabled() -> None:
    provider = ScriptedProvider(
        [tool_calls(("execute_plan", {"steps": [{"tool": "get_price"}]})), "ok"]
    )
    await LLMAgent("x", "no plans", provider, tools=[get_price]).execute("go")
    (answer,) = tool_answers(provider.requests[1].messages)
    assert answer.is_error and answer.content.startswith("unknown tool 'execute_plan'")
    assert [t.name for t in provider.requests[0].tools] == ["get_price"]


async def test_one_agent_runs_tasks_concurrently_without_mixing_them() -> None:
    def echo(messages: Sequence[Message], tools: Sequence[ToolDefinition]) -> str:
        return messages[1].content  # type: ignore[union-attr]

    agent = LLMAgent("echo", "echoes", ScriptedProvider([echo, echo]))
    first, second = await asyncio.gather(agent.execute("one"), agent.execute("two"))
    assert {first.output, second.output} == {"one", "two"}


class Thermometer:
    """A hand-written tool: the Tool protocol without the decorator."""

    name = "read_thermometer"
    description = "Temperature in a room, in degrees Celsius."
    parameters = {
        "type": "object",
        "properties": {"room": {"type": "string"}},
        "required": ["room"],
    }

    async def call(self, args: dict[str, object]) -> object:
        return {"room": args["room"], "celsius": 21.5}


async def test_a_hand_written_tool_is_offered_and_called() -> None:
    provider = ScriptedProvider([tool_calls(("read_thermometer", {"room": "lab"})), "21.5 C"])
    result = await LLMAgent("t", "temps", provider, tools=[Thermometer()]).execute(
        "lab temperature?"
    )
    assert provider.requests[0].tools[0] == ToolDefinition(
        name="read_thermometer",
        description="Temperature in a room, in degrees Celsius.",
        parameters=Thermometer.parameters,
    )
    assert (
        tool_answers(provider.requests[1].messages)[0].content == '{"room": "lab", "celsius": 21.5}'
    )
    assert result.output == "21.5 C"


async def test_steps_keep_truncated_text_while_the_llm_gets_it_all() -> None:
    @tool
    def big_report(lines: int) -> str:
        """A long report."""
        return "x" * lines

    provider = ScriptedProvider([tool_calls(("big_report", {"lines": 5000})), "ok"])
    result = await LLMAgent("r", "reports", provider, tools=[big_report]).execute("report")

    assert len(tool_answers(provider.requests[1].messages)[0].content) == 5000
    (step,) = result.steps
    assert step.output == "x" * 2000 + "... [3000 more characters]"
    assert step.input == '{"lines": 5000}'
