"""execute_code through a real sandbox server, in both runtimes.

The agent's own logic around code (and networks) is tested with a ScriptedRunner in test_builtins.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from oasis.agent import (
    AgentTask,
    Attachment,
    LLMAgent,
    ToolMessage,
    tool,
)
from oasis.agent.providers import ScriptedProvider, tool_calls
from oasis.code import GrpcRunner, HTTPRunner
from sandbox_server.server import SandboxServer

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

CUSTOMERS = {"c1": {"name": "Ada", "country": "FR"}, "c2": {"name": "Linus", "country": "FI"}}
ORDERS = {"c1": [120.0, 80.5], "c2": [10.0]}


@tool
def get_customer(customer_id: str) -> dict[str, str]:
    """A customer's name and country."""
    return CUSTOMERS[customer_id]


@tool
async def get_orders(customer_id: str) -> list[float]:
    """Amounts of a customer's orders."""
    return ORDERS[customer_id]


@pytest.fixture
async def runner(server: SandboxServer) -> AsyncIterator[GrpcRunner]:
    async with GrpcRunner(f"127.0.0.1:{server.port}", timeout=60) as r:
        yield r


def last_answer(provider: ScriptedProvider, request: int = 1) -> ToolMessage:
    message = provider.requests[request].messages[-1]
    assert isinstance(message, ToolMessage)
    return message


def code_call(code: str, runtime: str = "python") -> object:
    return tool_calls(("execute_code", {"runtime": runtime, "code": code}))


CHAIN = {
    "python": """
customer = call_tool('get_customer', {'customer_id': 'c1'})
orders = call_tool('get_orders', {'customer_id': 'c1'})
print('orders of', customer['name'], orders)
set_result({'name': customer['name'], 'total': sum(orders)})
""",
    "node": """
const customer = await callTool('get_customer', {customer_id: 'c1'});
const orders = await callTool('get_orders', {customer_id: 'c1'});
console.log('orders of', customer.name, JSON.stringify(orders));
setResult({name: customer.name, total: orders.reduce((a, b) => a + b, 0)});
""",
}


@pytest.mark.parametrize("runtime", ["python", "node"])
async def test_code_calls_the_agents_tools_through_the_same_dispatch(
    runner: GrpcRunner, runtime: str
) -> None:
    provider = ScriptedProvider([code_call(CHAIN[runtime], runtime), "Ada spent 200.5."])
    agent = LLMAgent(
        "clerk", "Knows customers.", provider, tools=[get_customer, get_orders], code_runner=runner
    )
    result = await agent.execute("How much did c1 spend?")

    answer = last_answer(provider)
    assert not answer.is_error, answer.content
    assert answer.content.startswith('Result: {"name": "Ada", "total": 200.5}')
    printed = {"python": "[120.0, 80.5]", "node": "[120,80.5]"}[runtime]
    assert f"Logs:\norders of Ada {printed}" in answer.content
    assert result.output == "Ada spent 200.5."
    assert [(s.name, s.type, s.source) for s in result.steps] == [
        ("execute_code", "code", "llm"),
        ("get_customer", "tool", "code"),
        ("get_orders", "tool", "code"),
    ]
    assert result.steps[1].call_id.startswith(result.steps[0].call_id + ".")
    assert [t.name for t in provider.requests[0].tools] == [
        "get_customer",
        "get_orders",
        "execute_code",
    ]


async def test_any_code_runner_works_here_the_http_runner(server: SandboxServer) -> None:
    provider = ScriptedProvider([code_call(CHAIN["python"]), "Ada spent 200.5."])
    async with HTTPRunner(f"http://127.0.0.1:{server.http_port}", timeout=60) as http_runner:
        agent = LLMAgent(
            "clerk",
            "Knows customers.",
            provider,
            tools=[get_customer, get_orders],
            code_runner=http_runner,
        )
        result = await agent.execute("How much did c1 spend?")
    assert last_answer(provider).content.startswith('Result: {"name": "Ada", "total": 200.5}')
    assert [s.name for s in result.steps] == ["execute_code", "get_customer", "get_orders"]


@pytest.mark.parametrize("runtime", ["python", "node"])
async def test_errors_missing_results_and_nested_execute_code(
    runner: GrpcRunner, runtime: str
) -> None:
    if runtime == "python":
        failing = "print('about to fail')\nraise ValueError('bad input 42')"
        silent = "print('I forgot set_result')"
        nested = (
            "try:\n    call_tool('execute_code', {'code': 'print(1)'})\n"
            "except RuntimeError as exc:\n    set_result(str(exc))"
        )
        tool_error = "try:\n    call_tool('get_customer', {'customer_id': 'zz'})\nexcept RuntimeError as exc:\n    set_result(str(exc))"
    else:
        failing = "console.log('about to fail');\nthrow new Error('bad input 42');"
        silent = "console.log('I forgot set_result');"
        nested = "try { await callTool('execute_code', {code: '1'}); } catch (e) { setResult(e.message); }"
        tool_error = "try { await callTool('get_customer', {customer_id: 'zz'}); } catch (e) { setResult(e.message); }"
    provider = ScriptedProvider(
        [
            code_call(failing, runtime),
            code_call(silent, runtime),
            code_call(nested, runtime),
            code_call(tool_error, runtime),
            "done",
        ]
    )
    agent = LLMAgent("coder", "Writes code.", provider, tools=[get_customer], code_runner=runner)
    result = await agent.execute("try things")

    failed = last_answer(provider, 1)
    assert failed.is_error
    assert failed.content.startswith("Execution failed (status error")
    assert "bad input 42" in failed.content and "about to fail" in failed.content
    no_result = last_answer(provider, 2)
    assert not no_result.is_error
    assert (
        "without calling set_result" in no_result.content
        and "I forgot set_result" in no_result.content
    )
    refused = last_answer(provider, 3)
    assert "execute_code cannot be called from code" in refused.content
    assert "KeyError: 'zz'" in last_answer(provider, 4).content
    nested_step = next(s for s in result.steps if s.source == "code" and s.name == "execute_code")
    assert nested_step.is_error


async def test_files_in_and_out_become_attachments(runner: GrpcRunner) -> None:
    code = """
import csv
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
rows = list(csv.DictReader(open('sales.csv')))
months = [r['month'] for r in rows]
revenue = [float(r['revenue']) for r in rows]
plt.bar(months, revenue)
plt.savefig('chart.png')
with open('summary.txt', 'w') as f:
    f.write(f'total {sum(revenue)}')
set_result({'months': len(rows), 'total': sum(revenue)}, files=['chart.png', 'summary.txt'])
"""
    sales = Attachment(name="sales.csv", data=b"month,revenue\nJan,10\nFeb,32.5\n", mime="text/csv")
    provider = ScriptedProvider([code_call(code), "Chart attached."])
    agent = LLMAgent("analyst", "Charts data.", provider, code_runner=runner)
    result = await agent.execute(AgentTask(input="Chart sales.csv", attachments=[sales]))

    answer = last_answer(provider)
    assert answer.content.startswith('Result: {"months": 2, "total": 42.5}'), answer.content
    assert "chart.png (image/png" in answer.content
    assert "sales.csv (text/csv, 30 bytes)" in provider.requests[0].messages[1].content  # type: ignore[union-attr]
    files = {a.name: a for a in result.attachments}
    assert sorted(files) == ["chart.png", "summary.txt"]
    assert files["chart.png"].mime == "image/png" and files["chart.png"].data.startswith(
        PNG_SIGNATURE
    )
    assert files["summary.txt"].data == b"total 42.5"


async def test_session_id_keeps_the_workspace_across_tasks(runner: GrpcRunner) -> None:
    write = "open('state.json', 'w').write('{\"count\": 41}')\nset_result('saved')"
    read = "import json\nset_result(json.load(open('state.json'))['count'] + 1)"
    provider = ScriptedProvider([code_call(write), "saved", code_call(read), "read"])
    agent = LLMAgent("memo", "Remembers.", provider, code_runner=runner)
    await agent.execute(AgentTask(input="save", session_id="agent-test-session"))
    await agent.execute(AgentTask(input="read", session_id="agent-test-session"))
    assert last_answer(provider, 3).content.startswith("Result: 42")


async def test_a_tasks_executions_share_a_private_workspace_deleted_at_the_end(
    runner: GrpcRunner,
) -> None:
    write = "open('draft.txt', 'w').write('from the first execution')\nset_result('written')"
    read = "set_result(open('draft.txt').read())"
    provider = ScriptedProvider([code_call(write), code_call(read), "done"])
    agent = LLMAgent("memo", "Drafts.", provider, code_runner=runner)
    result = await agent.execute("draft something")

    assert last_answer(provider, 2).content.startswith('Result: "from the first execution"')
    assert result.session_id.startswith("oasis-run-")
    # The run deleted its workspace: there is nothing left to delete.
    assert await runner.delete_workspace(result.session_id) is False
    # A task without code uses no session at all.
    plain = await LLMAgent("p", "plain", ScriptedProvider(["hi"]), code_runner=runner).execute("hi")
    assert plain.session_id == ""


async def test_keep_state_loads_data_in_one_execution_and_uses_it_in_the_next(
    runner: GrpcRunner,
) -> None:
    load = "import pandas as pd\nsales = pd.read_csv('sales.csv')\nset_result({'rows': len(sales)})"
    use = "set_result(float(sales['revenue'].sum()))"
    sales = Attachment(name="sales.csv", data=b"month,revenue\nJan,10\nFeb,32.5\n", mime="text/csv")
    provider = ScriptedProvider([code_call(load), code_call(use), "The total is 42.5."])
    agent = LLMAgent("analyst", "Analyses data.", provider, code_runner=runner, keep_state=True)
    result = await agent.execute(AgentTask(input="Total revenue?", attachments=[sales]))

    loaded, used = last_answer(provider, 1), last_answer(provider, 2)
    assert loaded.content == 'Result: {"rows": 2}', loaded.content
    assert used.content == "Result: 42.5", used.content
    assert result.output == "The total is 42.5."
    # The run's private session is deleted at the end, and its interpreter with it.
    assert await runner.reset_state(result.session_id) is False
    assert await runner.delete_workspace(result.session_id) is False
