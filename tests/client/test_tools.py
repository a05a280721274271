"""Tool calls through GrpcRunner: errors reaching the code, volume, and tool_dispatcher."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from oasis import CodeRequest, DispatchResult, Status, ToolCall, ToolError, tool_dispatcher
from oasis.code import GrpcRunner

CATCH = {
    "python": """
out = {}
for name, args in [("divide", {"a": 1, "b": 0}), ("refuse", {}), ("lookup", {"key": "k"}), ("nope", {})]:
    try:
        out[name] = call_tool(name, args)
    except RuntimeError as exc:
        out[name] = "error: " + str(exc)
set_result(out)
""",
    "node": """
const out = {};
for (const [name, args] of [["divide", {a: 1, b: 0}], ["refuse", {}], ["lookup", {key: "k"}], ["nope", {}]]) {
  try {
    out[name] = await callTool(name, args);
  } catch (err) {
    out[name] = "error: " + err.message;
  }
}
setResult(out);
""",
}


@pytest.mark.parametrize("runtime", ["python", "node"])
async def test_dispatch_errors_reach_the_code(runner: GrpcRunner, runtime: str) -> None:
    async def refuse() -> str:
        raise ToolError("quota exceeded for today")

    dispatch = tool_dispatcher(
        {"divide": lambda a, b: a / b, "refuse": refuse, "lookup": lambda key: {"key": key}}
    )
    result = await runner.run(CodeRequest(code=CATCH[runtime], runtime=runtime), dispatch)

    assert result.status is Status.OK, result.error
    assert result.output == {
        "divide": "error: tool 'divide' failed: division by zero",
        "refuse": "error: tool 'refuse' failed: quota exceeded for today",
        "lookup": {"key": "k"},
        "nope": "error: tool 'nope' failed: unknown tool 'nope'; known tools: divide, lookup, refuse",
    }


async def test_a_raising_dispatch_function_becomes_a_tool_error(runner: GrpcRunner) -> None:
    async def dispatch(call: ToolCall) -> DispatchResult:
        if call.name == "bad":
            raise ValueError(f"cannot handle {call.args['x']}")
        if call.name == "wrong_type":
            return "not a DispatchResult"  # type: ignore[return-value]
        return DispatchResult(content="plain text, not JSON")

    code = """
out = [call_tool("fine")]
for name in ["bad", "wrong_type"]:
    try:
        call_tool(name, {"x": 42})
    except RuntimeError as exc:
        out.append(str(exc))
set_result(out)
"""
    result = await runner.run(CodeRequest(code=code), dispatch)

    assert result.output == [
        "plain text, not JSON",
        "tool 'bad' failed: cannot handle 42",
        "tool 'wrong_type' failed: dispatch returned str, not DispatchResult",
    ]


async def test_arguments_that_are_not_an_object_are_a_tool_error(runner: GrpcRunner) -> None:
    code = (
        "try:\n    call_tool('echo', [1, 2])\nexcept RuntimeError as exc:\n    set_result(str(exc))"
    )
    result = await runner.run(CodeRequest(code=code), tool_dispatcher({"echo": lambda **kw: kw}))

    assert (
        result.output
        == "tool 'echo' failed: tool 'echo': arguments must be a JSON object, got list"
    )


THOUSAND = {
    "python": """
total = 0
for i in range(1000):
    total = call_tool("add", {"a": total, "b": i})
set_result(total)
""",
    "node": """
let total = 0;
for (let i = 0; i < 1000; i++) total = await callTool("add", {a: total, b: i});
setResult(total);
""",
}


@pytest.mark.parametrize("runtime", ["python", "node"])
async def test_a_thousand_sequential_tool_calls(runner: GrpcRunner, runtime: str) -> None:
    seen: list[int] = []

    async def add(a: int, b: int) -> int:
        seen.append(b)
        return a + b

    result = await runner.run(
        CodeRequest(code=THOUSAND[runtime], runtime=runtime, timeout=90),
        tool_dispatcher({"add": add}),
    )

    assert result.status is Status.OK, result.error
    assert result.output == sum(range(1000))
    assert seen == list(range(1000))


# -- tool_dispatcher on its own ---------------------------------------------


async def test_tool_dispatcher_encodes_return_values() -> None:
    dispatch = tool_dispatcher(
        {
            "text": lambda: "as is",
            "data": lambda: {"n": 1, "s": "ü"},
            "none": lambda: None,
            "explicit": lambda: DispatchResult(content="custom", is_error=True),
            "opaque": lambda: object(),
        }
    )

    async def call(name: str) -> DispatchResult:
        return await dispatch(ToolCall(id="1", name=name, args={}))

    assert await call("text") == DispatchResult(content="as is")
    assert await call("data") == DispatchResult(content='{"n": 1, "s": "ü"}')
    assert await call("none") == DispatchResult(content="null")
    assert await call("explicit") == DispatchResult(content="custom", is_error=True)
    opaque = await call("opaque")
    assert opaque.is_error and "returned a value that is not JSON" in opaque.content


async def test_tool_dispatcher_runs_sync_tools_off_the_event_loop() -> None:
    loop_thread = threading.get_ident()
    threads: list[int] = []
    release = threading.Event()

    def slow(x: int) -> int:
        threads.append(threading.get_ident())
        assert release.wait(20), "the event loop was blocked"
        return x

    async def releaser() -> int:
        release.set()  # only runs if the loop is free while `slow` waits
        return 0

    dispatch = tool_dispatcher({"slow": slow, "releaser": releaser})
    first = asyncio.create_task(dispatch(ToolCall(id="1", name="slow", args={"x": 5})))
    second = await dispatch(ToolCall(id="2", name="releaser", args={}))

    assert await first == DispatchResult(content="5")
    assert second == DispatchResult(content="0")
    assert threads and threads[0] != loop_thread


async def test_tool_dispatcher_reports_bad_arguments() -> None:
    dispatch = tool_dispatcher({"add": lambda a, b: a + b})
    reply = await dispatch(ToolCall(id="1", name="add", args={"a": 1, "c": 2}))

    assert reply.is_error
    assert "unexpected keyword argument 'c'" in reply.content


def test_tool_dispatcher_refuses_a_non_callable() -> None:
    tools: dict[str, Any] = {"x": 42}
    with pytest.raises(TypeError, match="tool 'x' is not callable"):
        tool_dispatcher(tools)
