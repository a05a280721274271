"""Tool calls from the code: chains, control flow over results, parallel calls, errors."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from oasis.sandbox.v1 import sandbox_pb2 as pb

from ..helpers import eventually
from ..sandbox_client import SandboxClient

RUNTIMES = ["python", "node"]


CHAIN = {
    "python": """
user = call_tool("find_user", {"email": "ada@example.com"})
orders = call_tool("list_orders", {"user_id": user["id"]})
total = call_tool("sum", {"values": [o["amount"] for o in orders]})
set_result({"user": user["name"], "total": total})
""",
    "node": """
const user = await callTool("find_user", {email: "ada@example.com"});
const orders = await callTool("list_orders", {user_id: user.id});
const total = await callTool("sum", {values: orders.map(o => o.amount)});
setResult({user: user.name, total});
""",
}


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_tool_chain(client: SandboxClient, runtime: str) -> None:
    """Each tool's result feeds the next call's arguments."""
    tools = {
        "find_user": lambda email: {"id": 7, "name": "Ada", "email": email},
        "list_orders": lambda user_id: [{"amount": 10 * user_id}, {"amount": 1}],
        "sum": lambda values: sum(values),
    }
    outcome = await client.run(CHAIN[runtime], runtime=runtime, tools=tools)
    assert outcome.status == "OK", outcome.result.error
    assert outcome.output == {"user": "Ada", "total": 71}
    calls = [(c.name, json.loads(c.args_json)) for c in outcome.tool_calls]
    assert calls == [
        ("find_user", {"email": "ada@example.com"}),
        ("list_orders", {"user_id": 7}),
        ("sum", {"values": [70, 1]}),
    ]


CONTROL_FLOW = {
    "python": """
pages = []
cursor = None
while True:
    page = call_tool("page", {"cursor": cursor})
    pages.append(page["items"])
    cursor = page.get("next")
    if cursor is None:
        break
flagged = []
for item in [i for p in pages for i in p]:
    if call_tool("is_suspicious", {"item": item}):
        flagged.append(item)
    else:
        call_tool("approve", {"item": item})
set_result({"flagged": flagged, "pages": len(pages)})
""",
    "node": """
const pages = [];
let cursor = null;
for (;;) {
  const page = await callTool("page", {cursor});
  pages.push(page.items);
  cursor = page.next ?? null;
  if (cursor === null) break;
}
const flagged = [];
for (const item of pages.flat()) {
  if (await callTool("is_suspicious", {item})) flagged.push(item);
  else await callTool("approve", {item});
}
setResult({flagged, pages: pages.length});
""",
}


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_loops_and_conditionals_over_tool_results(
    client: SandboxClient, runtime: str
) -> None:
    """The code pages through a tool until it says stop and branches on each result."""
    book = {None: ([1, 2], "b"), "b": ([3, 4], "c"), "c": ([5], None)}
    approved: list[int] = []

    def page(cursor: str | None) -> dict[str, Any]:
        items, following = book[cursor]
        return {"items": items} if following is None else {"items": items, "next": following}

    def approve(item: int) -> str:
        approved.append(item)
        return "ok"

    tools = {"page": page, "is_suspicious": lambda item: item % 2 == 0, "approve": approve}
    outcome = await client.run(CONTROL_FLOW[runtime], runtime=runtime, tools=tools)
    assert outcome.status == "OK", outcome.result.error
    assert outcome.output == {"flagged": [2, 4], "pages": 3}
    assert approved == [1, 3, 5]
    assert [c.name for c in outcome.tool_calls].count("page") == 3


PARALLEL = {
    "python": """
results = call_tools_parallel([("slow", {"n": i}) for i in range(5)])
set_result(results)
""",
    "node": """
setResult(await callToolsParallel([0, 1, 2, 3, 4].map(n => ["slow", {n}])));
""",
}


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_parallel_calls_answered_out_of_order(client: SandboxClient, runtime: str) -> None:
    """All parallel calls are outstanding at once; answers in reverse order land in call order."""
    arrived: list[int] = []
    released: list[int] = []
    gates: dict[int, asyncio.Event] = {n: asyncio.Event() for n in range(5)}

    async def slow(n: int) -> dict[str, int]:
        arrived.append(n)
        # Answer nothing until every call has arrived: sequential calls would hang here.
        await eventually(lambda: len(arrived) == 5, timeout=20, what="all 5 calls outstanding")
        if n == 4:
            gates[4].set()
        await gates[n].wait()
        released.append(n)
        if n > 0:
            await asyncio.sleep(0.02)  # let this answer reach the server first
            gates[n - 1].set()
        return {"n": n, "square": n * n}

    outcome = await client.run(PARALLEL[runtime], runtime=runtime, tools={"slow": slow})
    assert outcome.status == "OK", outcome.result.error
    assert outcome.output == [{"n": n, "square": n * n} for n in range(5)]
    assert released == [4, 3, 2, 1, 0]
    # The answers went out in reverse order; the server relays each one as it comes.
    assert len({c.call_id for c in outcome.tool_calls}) == 5


async def test_many_outstanding_calls_from_threads(client: SandboxClient) -> None:
    """Python threads calling tools at once each get their own answer."""
    code = """
from concurrent.futures import ThreadPoolExecutor
with ThreadPoolExecutor(8) as pool:
    results = list(pool.map(lambda i: call_tool("echo", {"i": i}), range(32)))
set_result(results)
"""

    async def echo(i: int) -> int:
        await asyncio.sleep(0.001 * (32 - i))
        return i

    outcome = await client.run(code, tools={"echo": echo})
    assert outcome.status == "OK", outcome.result.error
    assert outcome.output == list(range(32))


TOOL_ERROR = {
    "python": """
try:
    call_tool("charge", {"amount": 5})
except RuntimeError as exc:
    caught = str(exc)
set_result({"caught": caught, "after": call_tool("ok")})
""",
    "node": """
let caught;
try {
  await callTool("charge", {amount: 5});
} catch (err) {
  if (!(err instanceof Error)) throw new Error("not an Error");
  caught = err.message;
}
setResult({caught, after: await callTool("ok")});
""",
}


def failing_charge(amount: int) -> None:
    raise ValueError(f"card declined for {amount} EUR")


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_tool_error_is_an_exception_in_the_code(client: SandboxClient, runtime: str) -> None:
    """A ToolResult with an error raises RuntimeError (Python) or rejects with Error (Node), with the message."""
    outcome = await client.run(
        TOOL_ERROR[runtime], runtime=runtime, tools={"charge": failing_charge, "ok": lambda: 1}
    )
    assert outcome.status == "OK", outcome.result.error
    assert "card declined for 5 EUR" in outcome.output["caught"]
    assert outcome.output["after"] == 1


UNCAUGHT = {
    "python": "call_tool('charge', {'amount': 9})\nset_result('unreachable')",
    "node": "await callTool('charge', {amount: 9});\nsetResult('unreachable');",
}


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_uncaught_tool_error_fails_the_execution(client: SandboxClient, runtime: str) -> None:
    """An unhandled tool error ends the run as ERROR whose error carries the tool's message."""
    outcome = await client.run(UNCAUGHT[runtime], runtime=runtime, tools={"charge": failing_charge})
    assert outcome.status == "ERROR"
    assert "card declined for 9 EUR" in outcome.result.error
    assert outcome.output is None
    assert outcome.result.output == ""
    # The traceback shows the code's own lines, not the prelude's frames and host paths.
    assert "prelude" not in outcome.result.error, outcome.result.error
    assert ("<code>" if runtime == "python" else "file://") in outcome.result.error


PARALLEL_ERROR = {
    "python": """
try:
    call_tools_parallel([("ok", {}), ("charge", {"amount": 3}), ("ok", {})])
except RuntimeError as exc:
    set_result(str(exc))
""",
    "node": """
try {
  await callToolsParallel([["ok", {}], ["charge", {amount: 3}], ["ok", {}]]);
} catch (err) {
  setResult(err.message);
}
""",
}


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_parallel_call_error(client: SandboxClient, runtime: str) -> None:
    """One failing call among parallel ones raises with its message."""
    outcome = await client.run(
        PARALLEL_ERROR[runtime],
        runtime=runtime,
        tools={"charge": failing_charge, "ok": lambda: "fine"},
    )
    assert outcome.status == "OK", outcome.result.error
    assert "card declined for 3 EUR" in outcome.output


DECODING = {
    "python": """
set_result([call_tool("t", {"kind": k}) for k in ["object", "number", "text", "quoted", "empty", "bool"]])
""",
    "node": """
const out = [];
for (const kind of ["object", "number", "text", "quoted", "empty", "bool"]) out.push(await callTool("t", {kind}));
setResult(out);
""",
}


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_tool_results_are_parsed_when_json(client: SandboxClient, runtime: str) -> None:
    """JSON data comes back parsed; anything else as the string itself."""
    answers = {
        "object": '{"a": [1, 2]}',
        "number": "42",
        "text": "plain words, not JSON",
        "quoted": '"a JSON string"',
        "empty": "",
        "bool": "true",
    }
    outcome = await client.run(
        DECODING[runtime], runtime=runtime, tools={"t": lambda kind: answers[kind]}
    )
    assert outcome.status == "OK", outcome.result.error
    assert outcome.output == [{"a": [1, 2]}, 42, "plain words, not JSON", "a JSON string", "", True]


ARGS = {
    "python": "call_tool('noargs')\ncall_tool('args', {'s': 'é✓', 'n': None, 'l': [1.5, True]})",
    "node": "await callTool('noargs');\nawait callTool('args', {s: 'é✓', n: null, l: [1.5, true]});",
}


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_tool_call_message(client: SandboxClient, runtime: str) -> None:
    """ToolCall carries the name and the arguments as JSON ({} when none are given)."""
    seen: list[pb.ToolCall] = []
    outcome = await client.run(
        ARGS[runtime],
        runtime=runtime,
        tools={"noargs": lambda: None, "args": lambda **kw: None},
        on_response=lambda r, _q: (
            seen.append(r.tool_call) if r.WhichOneof("kind") == "tool_call" else None
        ),
    )
    assert outcome.status == "OK", outcome.result.error
    assert [c.name for c in seen] == ["noargs", "args"]
    assert json.loads(seen[0].args_json) == {}
    assert json.loads(seen[1].args_json) == {"s": "é✓", "n": None, "l": [1.5, True]}
    assert all(c.call_id for c in seen)


async def test_oversized_tool_name_is_refused_in_the_code(client: SandboxClient) -> None:
    """A tool call that would not fit one 4 MiB message fails in the code, not on the wire."""
    code = """
for name, args in [("x" * (5 << 20), {}), ("big", {"blob": "y" * (5 << 20)})]:
    try:
        call_tool(name, args)
    except RuntimeError as exc:
        print("refused:", str(exc)[:60])
set_result(call_tool("small"))
"""
    outcome = await client.run(code, tools={"small": lambda: 1})
    assert outcome.status == "OK", outcome.result.error
    assert outcome.output == 1
    assert outcome.result.logs.count("refused:") == 2
    assert [c.name for c in outcome.tool_calls] == ["small"]
