"""`oasis-sandbox exec` as a real subprocess against a real server."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandbox_server.exec_command import save_file
from sandbox_server.safefs import UnsafePath
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


# -- --out writes only inside DIR: returned names come from untrusted code ----------------


@pytest.mark.parametrize(
    "name",
    ["../escape.txt", "sub/../../escape.txt", "/tmp/escape.txt", "", ".git/hooks/pre-commit"],
)
def test_save_file_refuses_names_that_leave_the_folder(tmp_path: Path, name: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for force in (False, True):
        with pytest.raises(UnsafePath):
            save_file(out, name, b"pwned", force=force)
    assert not (tmp_path / "escape.txt").exists()
    assert list(out.rglob("*")) == []


def test_save_file_never_follows_a_link(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (elsewhere / "hooks").mkdir(parents=True)
    out.mkdir()
    (out / "hooks").symlink_to(elsewhere / "hooks")
    (out / "notes.txt").symlink_to(elsewhere / "notes.txt")

    for force in (False, True):
        with pytest.raises(UnsafePath, match="not a plain folder"):
            save_file(out, "hooks/pre-commit", b"pwned", force=force)
    with pytest.raises(UnsafePath, match="already exists"):
        save_file(out, "notes.txt", b"pwned")
    save_file(out, "notes.txt", b"mine", force=True)  # replaces the link itself

    assert list(elsewhere.rglob("*")) == [elsewhere / "hooks"]
    assert not (out / "notes.txt").is_symlink()
    assert (out / "notes.txt").read_bytes() == b"mine"


def test_save_file_overwrites_only_with_force(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_bytes(b"old")

    with pytest.raises(UnsafePath, match="--force"):
        save_file(tmp_path, "sub/a.txt", b"new")
    assert (tmp_path / "sub" / "a.txt").read_bytes() == b"old"
    save_file(tmp_path, "sub/a.txt", b"new", force=True)
    assert (tmp_path / "sub" / "a.txt").read_bytes() == b"new"
    save_file(tmp_path, "deep/er/b.txt", b"b")
    assert (tmp_path / "deep" / "er" / "b.txt").read_bytes() == b"b"


RETURNS = """
import os
for name in {names!r}:
    os.makedirs(os.path.dirname(name) or ".", exist_ok=True)
    with open(name, "w") as f:
        f.write("from the sandbox")
set_result("done", files={names!r})
"""


async def returning(
    server: SandboxServer, tmp_path: Path, *names: str, out: Path, force: bool = False
) -> Finished:
    script = tmp_path / "returns.py"
    script.write_text(RETURNS.format(names=list(names)))
    flags = ["--force"] if force else []
    return await oasis_exec(
        str(script), "--out", str(out), *flags, "--target", f"127.0.0.1:{server.port}"
    )


async def test_exec_out_keeps_existing_files_without_force(
    server: SandboxServer, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "kept.txt").write_text("mine")

    refused = await returning(server, tmp_path, "kept.txt", "new.txt", out=out)
    assert refused.code == 3, refused.stderr
    assert "NOT SAVED 'kept.txt'" in refused.stderr and "--force" in refused.stderr
    assert (out / "kept.txt").read_text() == "mine"
    assert (out / "new.txt").read_text() == "from the sandbox"  # the others are still saved

    forced = await returning(server, tmp_path, "kept.txt", "new.txt", out=out, force=True)
    assert forced.code == 0, forced.stderr
    assert (out / "kept.txt").read_text() == "from the sandbox"


async def test_exec_out_never_writes_through_links_or_into_git(
    server: SandboxServer, tmp_path: Path
) -> None:
    """The attack: code returning `.git/hooks/pre-commit`, or a path through a planted link."""
    out, elsewhere = tmp_path / "repo", tmp_path / "elsewhere"
    (out / ".git" / "hooks").mkdir(parents=True)
    (out / ".git" / "hooks" / "pre-commit").write_text("#!/bin/sh\nexit 0\n")
    elsewhere.mkdir()
    (out / "hooks").symlink_to(elsewhere)

    for force in (False, True):
        run = await returning(
            server, tmp_path, ".git/hooks/pre-commit", "hooks/pre-commit", out=out, force=force
        )

        assert run.code == 3, run.stderr
        assert "NOT SAVED '.git/hooks/pre-commit'" in run.stderr
        assert "NOT SAVED 'hooks/pre-commit'" in run.stderr
        assert (out / ".git" / "hooks" / "pre-commit").read_text() == "#!/bin/sh\nexit 0\n"
        assert list(elsewhere.iterdir()) == []
