"""`oasis-sandbox exec` as a real subprocess against a real server."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

from sandbox_server.server import SandboxServer

from ..conftest import REPO
from .conftest import VENV_BIN, free_port


@dataclass
class Finished:
    code: int
    stdout: str
    stderr: str


async def oasis_exec(*args: str, stdin: bytes = b"") -> Finished:
    process = await asyncio.create_subprocess_exec(
        str(VENV_BIN / "oasis-sandbox"),
        "exec",
        *args,
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(60):
            out, err = await process.communicate(stdin)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return Finished(process.returncode, out.decode(), err.decode())


SCRIPT = """
import os
rows = open("input.csv").read().split()
print("rows:", len(rows))
os.makedirs("report", exist_ok=True)
with open("report/summary.txt", "w") as f:
    f.write("total=" + str(sum(int(r) for r in rows)))
set_result({"rows": len(rows)}, files=["report/summary.txt"])
"""


async def test_exec_python_file_with_input_and_output_files(
    server: SandboxServer, tmp_path: Path
) -> None:
    script, data, out = tmp_path / "job.py", tmp_path / "input.csv", tmp_path / "out"
    script.write_text(SCRIPT)
    data.write_text("3\n4\n5\n")

    run = await oasis_exec(
        str(script), "--file", str(data), "--out", str(out), "--target", f"127.0.0.1:{server.port}"
    )

    assert run.code == 0, run.stderr
    logs, _, printed = run.stdout.partition("rows: 3\n")
    assert logs == ""
    assert json.loads(printed) == {"rows": 3}
    assert (out / "report" / "summary.txt").read_text() == "total=12"
    assert "[oasis] ok · exit code 0" in run.stderr
    assert "saved" in run.stderr and "report/summary.txt" in run.stderr


async def test_exec_node_from_stdin_in_a_session(server: SandboxServer) -> None:
    target = f"127.0.0.1:{server.port}"
    first = await oasis_exec(
        "-", "--runtime", "node", "--session", "cli", "--target", target,
        stdin=b"require('fs').writeFileSync('kept.txt', 'from the first run');\nconsole.log('wrote');",
    )  # fmt: skip
    second = await oasis_exec(
        "-", "--runtime", "node", "--session", "cli", "--target", target,
        stdin=b"setResult(require('fs').readFileSync('kept.txt', 'utf8'));",
    )  # fmt: skip

    assert (first.code, first.stdout) == (0, "wrote\n"), first.stderr
    assert (second.code, json.loads(second.stdout)) == (0, "from the first run"), second.stderr


async def test_exec_streams_logs_while_the_code_runs(server: SandboxServer, tmp_path: Path) -> None:
    # The gate is opened in the session's workspace, the one place the test and the code share.
    gate = server.config.workspace_root / "sessions" / "live" / "gate"
    script = tmp_path / "live.py"
    script.write_text(
        "import os, time\n"
        "print('first', flush=True)\n"
        "for _ in range(600):\n    if os.path.exists('gate'): break\n    time.sleep(0.05)\n"
        "print('second')\n"
    )
    process = await asyncio.create_subprocess_exec(
        str(VENV_BIN / "oasis-sandbox"), "exec", str(script), "--session", "live",
        "--target", f"127.0.0.1:{server.port}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    try:
        async with asyncio.timeout(30):
            # 'first' arrives while the code is still waiting for the gate.
            assert await process.stdout.readline() == b"first\n"
            gate.touch()
            assert await process.stdout.readline() == b"second\n"
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0


async def test_exec_exit_status_when_the_code_fails(server: SandboxServer, tmp_path: Path) -> None:
    target = f"127.0.0.1:{server.port}"
    failing = tmp_path / "fail.py"
    failing.write_text("print('before')\nraise ValueError('bad input')\n")
    slow = tmp_path / "slow.js"
    slow.write_text("await new Promise((r) => setTimeout(r, 60000));")

    error = await oasis_exec(str(failing), "--target", target)
    timeout = await oasis_exec(str(slow), "--target", target, "--timeout", "1")

    assert error.code == 1
    assert error.stdout == "before\n"
    assert "ValueError: bad input" in error.stderr and "[oasis] error · exit code 1" in error.stderr
    assert timeout.code == 1  # a .js file runs on node without --runtime
    assert "[oasis] timeout" in timeout.stderr and "timed out after 1 s" in timeout.stderr


async def test_exec_reports_an_unreachable_sandbox(tmp_path: Path) -> None:
    script = tmp_path / "x.py"
    script.write_text("print(1)")

    run = await oasis_exec(str(script), "--target", f"127.0.0.1:{free_port()}")

    assert run.code == 2
    assert "UNAVAILABLE" in run.stderr
