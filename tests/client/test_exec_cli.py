"""`oasis-sandbox exec` as a real subprocess against a real server."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from oasis._safefs import UnsafePath
from oasis.cli.exec import parse_target, save_file
from sandbox_server.server import SandboxServer

from ..conftest import REPO, StartServer
from ..pki import Pki
from .conftest import VENV_BIN, free_port


@dataclass
class Finished:
    code: int
    stdout: str
    stderr: str


async def oasis_exec(*args: str, stdin: bytes = b"", **env: str) -> Finished:
    process = await asyncio.create_subprocess_exec(
        str(VENV_BIN / "oasis-sandbox"),
        "exec",
        *args,
        cwd=REPO,
        env={**os.environ, **env},
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


# -- reaching the server: target, token, TLS ---------------------------------------------


@pytest.mark.parametrize(
    ("target", "parsed"),
    [
        ("localhost", "localhost:50051"),
        ("sandbox.internal:9000", "sandbox.internal:9000"),
        ("[::1]:50051", "[::1]:50051"),
        ("[::1]", "[::1]:50051"),
    ],
)
def test_parse_target_defaults_the_port(target: str, parsed: str) -> None:
    assert parse_target(target) == parsed


@pytest.mark.parametrize(
    "target",
    ["http://127.0.0.1:50051", "grpc://localhost:50051", "dns:///localhost:50051", "::1",
     "[::1]x", "host:", "host:0", "host:70000", "host:http", ":50051", ""],
)  # fmt: skip
def test_parse_target_refuses_what_is_not_host_port(target: str) -> None:
    with pytest.raises(ValueError, match="is not host:port"):
        parse_target(target)


async def test_exec_refuses_bad_arguments_in_one_line(tmp_path: Path) -> None:
    script, latin1 = tmp_path / "x.py", tmp_path / "latin1.py"
    script.write_text("print(1)")
    latin1.write_bytes("print('café')\n".encode("latin-1"))

    url, not_utf8, half_tls, no_session = await asyncio.gather(
        oasis_exec(str(script), "--target", "http://127.0.0.1:50051"),
        oasis_exec(str(latin1), "--target", f"127.0.0.1:{free_port()}"),
        oasis_exec(str(script), "--tls-cert", str(script)),
        oasis_exec(str(script), "--keep-state", "--target", f"127.0.0.1:{free_port()}"),
    )

    for run in (url, not_utf8, half_tls, no_session):
        assert run.code == 2 and run.stderr.count("\n") == 1, run.stderr
    assert "is not host:port, such as 127.0.0.1:50051" in url.stderr
    assert f"{latin1} is not UTF-8 text (invalid byte at offset 10)" in not_utf8.stderr
    assert "--tls-cert and --tls-key go together" in half_tls.stderr
    assert "--keep-state needs --session ID" in no_session.stderr


async def test_exec_keep_state_keeps_variables_between_runs(server: SandboxServer) -> None:
    target = f"127.0.0.1:{server.port}"
    first = await oasis_exec(
        "-", "--session", "cli-state", "--keep-state", "--target", target,
        stdin=b"words = ['kept', 'in', 'memory']\nprint(len(words))",
    )  # fmt: skip
    second = await oasis_exec(
        "-", "--session", "cli-state", "--keep-state", "--target", target,
        stdin=b"set_result(' '.join(words))",
    )  # fmt: skip
    plain = await oasis_exec(
        "-", "--session", "cli-state", "--target", target, stdin=b"print(words)"
    )  # fmt: skip

    assert (first.code, first.stdout) == (0, "3\n"), first.stderr
    assert "· state kept" in first.stderr
    assert (second.code, json.loads(second.stdout)) == (0, "kept in memory"), second.stderr
    assert plain.code == 1 and "NameError" in plain.stderr


async def test_exec_with_target_and_token_from_the_environment(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server(SANDBOX_AUTH_TOKEN="cli-token")
    script = tmp_path / "x.py"
    script.write_text("set_result('in')")
    env = {"OASIS_SANDBOX_TARGET": f"127.0.0.1:{server.port}"}

    ok, missing, wrong = await asyncio.gather(
        oasis_exec(str(script), **env, OASIS_SANDBOX_TOKEN="cli-token"),
        oasis_exec(str(script), **env, OASIS_SANDBOX_TOKEN=""),
        oasis_exec(str(script), "--token", "wrong", **env, OASIS_SANDBOX_TOKEN="cli-token"),
    )

    assert (ok.code, json.loads(ok.stdout)) == (0, "in"), ok.stderr
    for refused in (missing, wrong):
        assert refused.code == 2 and "UNAUTHENTICATED" in refused.stderr, refused.stderr


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
async def test_exec_over_mutual_tls(
    start_server: StartServer,
    pki: Pki,
    tmp_path: Path,
) -> None:
    server = await start_server(
        SANDBOX_TLS_CERT=str(pki.path("server.pem")),
        SANDBOX_TLS_KEY=str(pki.path("server.key")),
        SANDBOX_TLS_CLIENT_CA=str(pki.path("ca.pem")),
        SANDBOX_AUTH_TOKEN="tls-token",
    )
    script = tmp_path / "x.py"
    script.write_text("set_result('over mutual tls')")
    target = f"localhost:{server.port}"  # the certificate names localhost and 127.0.0.1
    tls = ["--tls-ca", str(pki.path("ca.pem"))]
    client = ["--tls-cert", str(pki.path("client.pem")), "--tls-key", str(pki.path("client.key"))]

    ok, no_client_cert, plaintext = await asyncio.gather(
        oasis_exec(str(script), "--target", target, "--token", "tls-token", *tls, *client),
        oasis_exec(str(script), "--target", target, "--token", "tls-token", *tls),
        oasis_exec(str(script), "--target", target, "--token", "tls-token"),
    )

    assert (ok.code, json.loads(ok.stdout)) == (0, "over mutual tls"), ok.stderr
    for refused in (no_client_cert, plaintext):
        assert refused.code == 2 and "UNAVAILABLE" in refused.stderr, refused.stderr


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
