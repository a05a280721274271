"""Every code block of the README runs as written, against a real sandbox.

Blocks are taken from README.md by their fence. Python blocks run as scripts,
shell blocks through bash from a folder that looks like the repository root
(.venv and examples linked in); either way the README's address of a local
server, 127.0.0.1:50051 (or :9000 for HTTP), is rewritten to the test
server's port before the block runs, the only change made to its text.
`make` and `docker compose` blocks start long-running services or this very
suite, so they are checked (the targets exist), not run; `text` blocks are
diagrams.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path

from sandbox_server.server import SandboxServer

from .conftest import REPO
from .fake_openai import FakeOpenAI, completion

README = (REPO / "README.md").read_text()
FENCED = re.findall(r"^```(\w*)\n(.*?)^```$", README, flags=re.S | re.M)
BLOCKS = [text for language, text in FENCED if language == "python"]
SHELL = [text for language, text in FENCED if language == "sh"]
DEFAULT_TARGET = "127.0.0.1:50051"
TESTED = {
    "python": (
        "tool_dispatcher({",
        "HTTPRunner(",
        "LLMAgent(",
        "SyncGrpcRunner(",
        "keep_state=True",
    ),
    "sh": ("oasis-sandbox exec", "make "),
}
"""What the tests below look for in each block: a block matching none is untested."""


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


async def run_shell(source: str, cwd: Path, target: str) -> tuple[str, str]:
    """Run a shell block with bash -e (pipefail) from `cwd`, with .venv/bin on PATH."""
    script = cwd / "snippet.sh"
    script.write_text(source)
    env = {
        "PATH": f"{REPO / '.venv' / 'bin'}:/usr/bin:/bin",
        "HOME": str(cwd),
        "OASIS_SANDBOX_TARGET": target,
    }
    process = await asyncio.create_subprocess_exec(
        "bash", "-e", "-o", "pipefail", str(script), cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 180)
    assert process.returncode == 0, f"exit {process.returncode}\n{out.decode()}\n{err.decode()}"
    return out.decode(), err.decode()


def block(containing: str, blocks: list[str] = BLOCKS) -> str:
    [found] = [b for b in blocks if containing in b]
    return found


def test_every_block_is_tested() -> None:
    """A new README block fails here until a test below runs (or checks) it."""
    for language, text in FENCED:
        if language == "text":
            continue
        assert language in TESTED, f"a ```{language} block has no test:\n{text}"
        assert any(marker in text for marker in TESTED[language]), f"untested block:\n{text}"


async def test_grpc_quick_start(server: SandboxServer, tmp_path: Path) -> None:
    source = block("tool_dispatcher({").replace(DEFAULT_TARGET, f"127.0.0.1:{server.port}")
    out = await run_script(source, tmp_path)
    assert out.startswith("Status.OK {'city': 'Rome', 'temp': 23}")
    assert "warmest: Rome" in out


async def test_http_quick_start(server: SandboxServer, tmp_path: Path) -> None:
    source = block("HTTPRunner(").replace(
        "http://127.0.0.1:9000", f"http://127.0.0.1:{server.http_port}"
    )
    out = await run_script(source, tmp_path)
    assert out.strip() == "Status.OK {'city': 'Rome', 'temp': 23}"


async def test_stateful_session_example(server: SandboxServer, tmp_path: Path) -> None:
    source = block("keep_state=True").replace(DEFAULT_TARGET, f"127.0.0.1:{server.port}")
    out = await run_script(source, tmp_path)
    assert out.split("\n")[:2] == ["{'north': 17, 'south': 5} True", "True"]


async def test_sync_dispatch_example(server: SandboxServer, tmp_path: Path) -> None:
    source = block("SyncGrpcRunner(").replace(DEFAULT_TARGET, f"127.0.0.1:{server.port}")
    out = await run_script(source, tmp_path)
    assert out.strip() == ("Status.OK {'id': 7, 'name': 'Ada'} [('report.txt', b'Ada: likes tea')]")


async def test_agent_quick_start(server: SandboxServer, fake: FakeOpenAI, tmp_path: Path) -> None:
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


async def test_exec_commands(server: SandboxServer, tmp_path: Path) -> None:
    """The `oasis-sandbox exec` block, run as written from the repository root's layout."""
    for name in (".venv", "examples"):
        (tmp_path / name).symlink_to(REPO / name)
    target = f"127.0.0.1:{server.port}"
    source = block("oasis-sandbox exec", SHELL).replace(DEFAULT_TARGET, target)
    out, err = await run_shell(source, tmp_path, target)

    assert "hi\n" in out and '"ok": true' in out
    assert '"warmest": "Cairo"' in out  # examples/chart.py read examples/data.csv
    chart = tmp_path / "out" / "chart.png"
    assert chart.read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), err
    assert "first ten primes: 2, 3, 5" in out and '"sum": 129' in out  # examples/job.js
    assert err.count("[oasis] ok") == 3, err


def test_make_and_compose_blocks() -> None:
    """Blocks that start services (or this suite) name targets and files that exist."""
    targets = set(re.findall(r"^([a-z-]+):", (REPO / "Makefile").read_text(), flags=re.M))
    for text in SHELL:
        if "oasis-sandbox exec" in text:
            continue
        for line in text.splitlines():
            command = line.split("#")[0].split()
            if command[:1] == ["make"]:
                assert set(command[1:]) <= targets, line
            elif command[:2] == ["docker", "compose"]:
                assert (REPO / "compose.yaml").exists() and (
                    REPO / "deploy" / "Dockerfile"
                ).exists()
            else:
                assert not command, f"a shell command no test runs or checks: {line}"
