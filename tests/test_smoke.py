"""The shortest path through the service, in both runtimes."""

from __future__ import annotations

import pytest

from .sandbox_client import SandboxClient


@pytest.mark.parametrize(
    ("runtime", "code"),
    [
        (
            "python",
            "r = call_tool('add', {'a': 2, 'b': 3})\nprint('sum', r)\nset_result({'sum': r})",
        ),
        (
            "node",
            "const r = await callTool('add', {a: 2, b: 3});\nconsole.log('sum', r);\nsetResult({sum: r});",
        ),
    ],
)
async def test_tool_call_round_trip(client: SandboxClient, runtime: str, code: str) -> None:
    outcome = await client.run(code, runtime=runtime, tools={"add": lambda a, b: a + b})

    assert outcome.status == "OK", outcome.result.error
    assert outcome.output == {"sum": 5}
    assert outcome.result.logs == "sum 5\n"
    assert outcome.kinds()[0] == "started"
    assert [c.name for c in outcome.tool_calls] == ["add"]
