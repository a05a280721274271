"""The README's Python quick starts run as written, against a real sandbox."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import textwrap
from pathlib import Path

from sandbox_server.server import SandboxServer

from .agent.test_openai import FakeOpenAI, completion, fake  # noqa: F401 - the fixture
from .conftest import REPO

README = (REPO / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)
DEFAULT_TARGET = "127.0.0.1:50051"


async def run_script(source: str, tmp_path: Path, **env: str) -> str:
    script = tmp_path / "snippet.py"
    script.write_text(source)
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), cwd=tmp_path, env={"PATH": "/usr/bin:/bin", **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    return out.decode()


def block(containing: str) -> str:
    [found] = [b for b in BLOCKS if containing in b]
    return found


async def test_grpc_quick_start(server: SandboxServer, tmp_path: Path) -> None:
    source = block("def weather(").replace(DEFAULT_TARGET, f"127.0.0.1:{server.port}")
    out = await run_script(source, tmp_path)
    assert out.startswith("Status.OK {'city': 'Rome', 'temp': 23}")
    assert "warmest: Rome" in out


async def test_http_quick_start(server: SandboxServer, tmp_path: Path) -> None:
    """The HTTPRunner fragment, run with the definitions of the gRPC quick start."""
    definitions = block("def weather(").split("async def main")[0]
    fragment = block("HTTPRunner(").replace(
        "http://127.0.0.1:9000", f"http://127.0.0.1:{server.http_port}"
    )
    source = (
        definitions
        + "async def main():\n"
        + textwrap.indent(fragment, "    ")
        + "    print(result.status, result.output)\n\nasyncio.run(main())\n"
    )
    out = await run_script(source, tmp_path)
    assert out.strip() == "Status.OK {'city': 'Rome', 'temp': 23}"


async def test_agent_quick_start(server: SandboxServer, fake: FakeOpenAI, tmp_path: Path) -> None:  # noqa: F811
    """The agent example with a real OpenAI SDK talking to a fake model that writes code."""
    code = (
        "temps = call_tools_parallel([('get_weather', {'city': c}) for c in ['Rome', 'Oslo']])\n"
        "set_result({t['city']: t['temp'] for t in temps})"
    )
    arguments = json.dumps({"runtime": "python", "code": code})
    fake.replies = [
        (200, completion(calls=[("call_1", "execute_code", arguments)], usage=(50, 20))),
        (200, completion(content="Yes: Rome is 23 C, Oslo 9 C.", usage=(80, 10))),
    ]
    source = block("LLMAgent(").replace(DEFAULT_TARGET, f"127.0.0.1:{server.port}")
    out = await run_script(source, tmp_path, OPENAI_BASE_URL=fake.url, OPENAI_API_KEY="test-key")

    assert out.startswith("Yes: Rome is 23 C, Oslo 9 C.")
    # The model got back what the code computed with the agent's own tool.
    tool_answer = fake.received[1]["messages"][-1]
    assert tool_answer["role"] == "tool"
    assert '"Rome":23' in tool_answer["content"].replace(" ", "")
