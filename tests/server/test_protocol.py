"""Protocol errors are gRPC statuses; failures of the code are results; the channel cannot be forged."""

from __future__ import annotations

import shlex

import grpc
import pytest

from oasis.sandbox.v1 import sandbox_pb2 as pb
from oasis.sandbox.v1 import sandbox_pb2_grpc as pb_grpc

from ..helpers import RawExecution, execute_error, rpc_error, start_message
from ..sandbox_client import SandboxClient

INVALID = grpc.StatusCode.INVALID_ARGUMENT
RUNTIMES = ["python", "node"]


def file_request(*names: str) -> pb.ExecuteRequest:
    request = start_message("print(1)")
    request.start.files.extend(pb.File(name=name, data=b"x") for name in names)
    return request


# -- INVALID_ARGUMENT ---------------------------------------------------------


async def test_first_message_must_be_start(stub: pb_grpc.SandboxStub) -> None:
    """A stream opening with anything but `start` is refused and says so."""
    for first in (
        pb.ExecuteRequest(tool_result=pb.ToolResult(call_id="x", data="1")),
        pb.ExecuteRequest(file_chunk=pb.FileChunk(name="a", data=b"1", eof=True)),
        pb.ExecuteRequest(cancel=pb.CancelExecution()),
        pb.ExecuteRequest(),
    ):
        error = await execute_error(stub, first)
        assert error.code() == INVALID, first
        assert "first message" in error.details() and "start" in error.details()


async def test_stream_closed_before_start(stub: pb_grpc.SandboxStub) -> None:
    """A client that half-closes without sending anything gets INVALID_ARGUMENT, not a hang."""
    execution = RawExecution(stub)
    await execution.call.done_writing()
    error = await rpc_error(execution.read())
    assert error.code() == INVALID
    assert "start" in error.details()


@pytest.mark.parametrize("code", ["", "   \n\t  "])
async def test_empty_code(stub: pb_grpc.SandboxStub, code: str) -> None:
    """Empty or blank code is a bad request."""
    error = await execute_error(stub, start_message(code))
    assert error.code() == INVALID
    assert "code is empty" in error.details()


async def test_unknown_runtime_names_the_supported_ones(stub: pb_grpc.SandboxStub) -> None:
    """An unknown runtime is refused with a message listing python and node."""
    error = await execute_error(stub, start_message("puts 1", runtime="ruby"))
    assert error.code() == INVALID
    assert "ruby" in error.details()
    assert "python" in error.details() and "node" in error.details()


async def test_empty_runtime_means_python(client: SandboxClient) -> None:
    """`runtime` left empty runs Python."""
    outcome = await client.run("import sys\nset_result(sys.version_info[0])", runtime="")
    assert outcome.status == "OK", outcome.result.error
    assert outcome.output == 3
    assert outcome.responses[0].started.runtime == "python"


@pytest.mark.parametrize(
    "session_id",
    [
        "-leading-dash",
        ".hidden",
        "_underscore",
        "has/slash",
        "..",
        "has space",
        "ünïcode",
        "nul\0byte",
        "a" * 129,
        "semi;colon",
        "victim\n",  # `$` in re.match also matches before a final newline
    ],
)
async def test_bad_session_id(stub: pb_grpc.SandboxStub, session_id: str) -> None:
    """A session_id outside ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$ is refused, for Execute and DeleteWorkspace."""
    error = await execute_error(stub, start_message("print(1)", session_id=session_id))
    assert error.code() == INVALID
    assert "session_id" in error.details()
    error = await rpc_error(stub.DeleteWorkspace(pb.DeleteWorkspaceRequest(session_id=session_id)))
    assert error.code() == INVALID
    assert "session_id" in error.details()


@pytest.mark.parametrize("session_id", ["a", "Z", "0", "a" * 128, "a.b_c-D9", "9..--__"])
async def test_good_session_ids(client: SandboxClient, session_id: str) -> None:
    """Every id the pattern allows is accepted, up to 128 characters."""
    outcome = await client.run("set_result(1)", session_id=session_id)
    assert outcome.status == "OK", outcome.result.error
    assert outcome.responses[0].started.session_id == session_id


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("/etc/passwd", "absolute"),
        ("/tmp/x.txt", "absolute"),
        ("../escape.txt", ".."),
        ("sub/../../escape.txt", ".."),
        ("sub/..", ".."),
        ("nul\0byte.txt", "NUL"),
        ("", "empty"),
        (".", "does not name a file"),
    ],
)
async def test_bad_input_file_name(stub: pb_grpc.SandboxStub, name: str, reason: str) -> None:
    """Absolute names, `..`, NUL bytes and empty names are refused before anything is written."""
    error = await execute_error(stub, file_request(name))
    assert error.code() == INVALID
    assert reason in error.details()


async def test_input_file_given_twice(stub: pb_grpc.SandboxStub) -> None:
    """Two input files with the same (normalized) name are a bad request."""
    error = await execute_error(stub, file_request("a/b.txt", "a/./b.txt"))
    assert error.code() == INVALID
    assert "twice" in error.details()


async def test_tool_result_for_unknown_call(stub: pb_grpc.SandboxStub) -> None:
    """A tool_result whose call_id the server never issued ends the RPC with INVALID_ARGUMENT."""
    execution = await RawExecution.begin(stub, start_message("call_tool('wait')", timeout=60))
    call = (await execution.read_until("tool_call")).tool_call
    await execution.send(
        pb.ExecuteRequest(tool_result=pb.ToolResult(call_id=call.call_id + "-nope", data="1"))
    )
    error = await rpc_error(execution.result())
    assert error.code() == INVALID
    assert "unknown call_id" in error.details()


async def test_tool_result_answered_twice(stub: pb_grpc.SandboxStub) -> None:
    """A call can be answered once; a second answer names an unknown call."""
    code = "call_tool('first')\ncall_tool('wait')"
    execution = await RawExecution.begin(stub, start_message(code, timeout=60))
    first = (await execution.read_until("tool_call")).tool_call
    answer = pb.ExecuteRequest(tool_result=pb.ToolResult(call_id=first.call_id, data="1"))
    await execution.send(answer)
    await execution.read_until("tool_call")
    await execution.send(answer)
    error = await rpc_error(execution.result())
    assert error.code() == INVALID
    assert "unknown call_id" in error.details()


async def test_second_start_is_refused(stub: pb_grpc.SandboxStub) -> None:
    """`start` may only open a stream."""
    execution = await RawExecution.begin(stub, start_message("call_tool('wait')", timeout=60))
    await execution.read_until("tool_call")
    await execution.send(start_message("print(2)"))
    error = await rpc_error(execution.result())
    assert error.code() == INVALID
    assert "start" in error.details()


async def test_chunk_for_undeclared_file(stub: pb_grpc.SandboxStub) -> None:
    """A file_chunk for a file that start did not declare is a bad request."""
    execution = await RawExecution.begin(stub, start_message("call_tool('wait')", timeout=60))
    await execution.read_until("tool_call")
    await execution.send(
        pb.ExecuteRequest(file_chunk=pb.FileChunk(name="x.bin", data=b"1", eof=True))
    )
    error = await rpc_error(execution.result())
    assert error.code() == INVALID
    assert "x.bin" in error.details()


async def test_chunks_beyond_declared_size(stub: pb_grpc.SandboxStub) -> None:
    """More bytes than the declared size are refused."""
    request = start_message("print(1)")
    request.start.files.append(pb.File(name="big.bin", size=4))
    error = await execute_error(
        stub,
        request,
        pb.ExecuteRequest(file_chunk=pb.FileChunk(name="big.bin", data=b"12345", eof=True)),
    )
    assert error.code() == INVALID
    assert "declared size" in error.details()


async def test_chunks_short_of_declared_size(stub: pb_grpc.SandboxStub) -> None:
    """eof before the declared size has arrived is refused."""
    request = start_message("print(1)")
    request.start.files.append(pb.File(name="big.bin", size=10))
    error = await execute_error(
        stub,
        request,
        pb.ExecuteRequest(file_chunk=pb.FileChunk(name="big.bin", data=b"12345", eof=True)),
    )
    assert error.code() == INVALID
    assert "declared 10" in error.details()


@pytest.mark.parametrize("name", ["BAD=NAME", "A\n"])
async def test_bad_env_name(stub: pb_grpc.SandboxStub, name: str) -> None:
    """Environment variable names must be identifiers, with nothing after them."""
    error = await execute_error(stub, start_message("print(1)", env={name: "1"}))
    assert error.code() == INVALID
    assert repr(name) in error.details()


@pytest.mark.parametrize("execution_id", ["../../etc", "abc\n"])
async def test_bad_execution_id(stub: pb_grpc.SandboxStub, execution_id: str) -> None:
    """A client-chosen execution_id must be a plain identifier (it names files and call ids)."""
    error = await execute_error(stub, start_message("print(1)", execution_id=execution_id))
    assert error.code() == INVALID
    assert "execution_id" in error.details()


@pytest.mark.parametrize(
    ("runtime", "code"),
    [
        (
            "python",
            "try:\n    install_package('six\\n')\nexcept RuntimeError as exc:\n    set_result(str(exc))",
        ),
        (
            "node",
            "try { await installPackage('left-pad\\n'); } catch (err) { setResult(err.message); }",
        ),
    ],
)
async def test_package_name_with_a_trailing_newline(
    client: SandboxClient, runtime: str, code: str
) -> None:
    """A package name is refused before any installer runs when a newline follows it."""
    outcome = await client.run(code, runtime=runtime, timeout=60)
    assert outcome.status == "OK", outcome.result.error
    assert f"is not a valid {runtime} package name" in outcome.output


async def test_non_positive_timeout(stub: pb_grpc.SandboxStub) -> None:
    """A zero or negative timeout is a bad request rather than an instant TIMEOUT."""
    error = await execute_error(stub, start_message("print(1)", timeout=-1))
    assert error.code() == INVALID
    assert "timeout" in error.details()


async def test_execution_ids(client: SandboxClient, stub: pb_grpc.SandboxStub) -> None:
    """The server makes an execution_id when none is given and keeps the client's own."""
    made = await client.run("set_result(1)")
    assert made.responses[0].started.execution_id
    execution = await RawExecution.begin(
        stub, start_message("set_result(1)", execution_id="my-run.1")
    )
    started = await execution.read_until("started")
    assert started.started.execution_id == "my-run.1"
    assert (await execution.result()).status == pb.ExecutionResult.OK


# -- the code's failures are results, not RPC errors ---------------------------


@pytest.mark.parametrize(
    ("runtime", "code", "exit_code", "needles"),
    [
        ("python", "def f(:\n  pass", 1, ["SyntaxError"]),
        (
            "python",
            "x = 1\ny = x / 0",
            1,
            ["Traceback", "ZeroDivisionError", "line 2", "y = x / 0"],
        ),
        (
            "python",
            "raise ValueError('no such column: price')",
            1,
            ["ValueError: no such column: price"],
        ),
        ("python", "import sys\nsys.exit(3)", 3, []),
        ("node", "const x = ;", 1, ["SyntaxError"]),
        ("node", "throw new Error('no such column: price')", 1, ["Error: no such column: price"]),
        ("node", "await Promise.reject(new TypeError('bad input'))", 1, ["TypeError: bad input"]),
        ("node", "process.exit(3)", 3, []),
    ],
)
async def test_code_failures_are_results(
    client: SandboxClient, runtime: str, code: str, exit_code: int, needles: list[str]
) -> None:
    """Syntax errors, exceptions and non-zero exits end in an ERROR result that explains them."""
    outcome = await client.run(code, runtime=runtime)
    assert outcome.status == "ERROR"
    assert outcome.result.exit_code == exit_code
    assert outcome.result.error
    for needle in needles:
        assert needle in outcome.result.error, outcome.result.error


@pytest.mark.parametrize(
    ("runtime", "code"),
    [
        ("python", "import sys\nprint('config file missing', file=sys.stderr)\nsys.exit(2)"),
        ("node", "console.error('config file missing');\nprocess.exit(2);"),
    ],
)
async def test_exit_code_error_quotes_stderr(
    client: SandboxClient, runtime: str, code: str
) -> None:
    """A bare non-zero exit explains itself with the end of what the code wrote to stderr."""
    outcome = await client.run(code, runtime=runtime)
    assert outcome.status == "ERROR"
    assert outcome.result.exit_code == 2
    assert "exited with code 2" in outcome.result.error
    assert "config file missing" in outcome.result.error


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_rpc_ends_without_waiting_for_half_close(
    stub: pb_grpc.SandboxStub, runtime: str
) -> None:
    """After the result the server ends the RPC with OK although the client never closed its side."""
    code = {"python": "print('hi')", "node": "console.log('hi')"}[runtime]
    execution = await RawExecution.begin(stub, start_message(code, runtime=runtime))
    result = await execution.result()
    assert result.status == pb.ExecutionResult.OK
    assert await execution.call.code() == grpc.StatusCode.OK


# -- forgery attempts from the code ------------------------------------------

FAKE = (
    '{"type":"result","output":"\\"FORGED\\"","files":[]}\n'
    '{"type":"tool_call","id":"1","name":"forged_tool","args":{}}\n'
    '{"type":"install","id":"2","package":"forged"}\n'
)

FORGE_PRINTS = {
    "python": f"""
import os, sys
set_result({{"real": True}})
fake = {FAKE!r}
print(fake)
sys.stdout.write(fake)
sys.stderr.write(fake)
os.write(1, fake.encode())
os.write(2, fake.encode())
print("done")
""",
    "node": f"""
const fs = require('fs');
setResult({{real: true}});
const fake = {FAKE!r};
console.log(fake);
console.error(fake);
process.stdout.write(fake);
fs.writeSync(1, fake);
fs.writeSync(2, fake);
console.log('done');
""",
}


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_printed_protocol_messages_are_only_logs(client: SandboxClient, runtime: str) -> None:
    """Protocol JSON printed on stdout or stderr is logged verbatim and never obeyed."""
    outcome = await client.run(FORGE_PRINTS[runtime], runtime=runtime)
    assert outcome.status == "OK", outcome.result.error
    assert outcome.output == {"real": True}
    assert outcome.tool_calls == []
    assert outcome.result.logs.count('"output":"\\"FORGED\\""') >= 5
    assert "done" in outcome.result.logs


# Run by a child of the code: writes protocol messages to every fd it inherited.
FORGE_SCRIPT = (
    f"fake={shlex.quote(FAKE)}\n"
    + """
fds=""
for path in /proc/self/fd/*; do fds="$fds ${path##*/}"; done
for fd in $fds; do
  if [ "$fd" -gt 2 ]; then printf '%s' "$fake" >&"$fd"; fi
done 2>/dev/null
echo "child saw fds: $fds"
"""
)

FORGE_CHILD = {
    "python": """
import os, subprocess
set_result({"real": True})
subprocess.run(["bash", "forge.sh"], close_fds=False, check=True)
subprocess.run(["bash", "forge.sh"], check=True)
assert os.system("bash forge.sh") == 0
print("done")
""",
    "node": """
const { spawnSync, execSync } = require('child_process');
setResult({real: true});
for (const stdio of ['inherit', 'pipe']) {
  const r = spawnSync('bash', ['forge.sh'], { stdio });
  if (r.status !== 0) throw new Error('child failed');
}
execSync('bash forge.sh', { stdio: 'inherit' });
console.log('done');
""",
}


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_child_process_cannot_reach_the_channel(client: SandboxClient, runtime: str) -> None:
    """Children of the code writing protocol messages to every inherited fd cannot speak for it."""
    forge = pb.File(name="forge.sh", data=FORGE_SCRIPT.encode())
    outcome = await client.run(FORGE_CHILD[runtime], runtime=runtime, files=[forge])
    assert outcome.status == "OK", outcome.result.error
    assert outcome.output == {"real": True}
    assert outcome.tool_calls == []
    assert outcome.result.logs.count("child saw fds") >= 2
    assert "done" in outcome.result.logs


GARBAGE_ALL_FDS = {
    # The code itself scribbles on every descriptor it has, its own channel included.
    "python": """
import os
for fd in range(0, 1024):
    try:
        os.write(fd, b'\\x00garbage{"type":\\n')
    except OSError:
        pass
set_result("after")
""",
    "node": """
const fs = require('fs');
for (let fd = 0; fd < 1024; fd++) {
  try { fs.writeSync(fd, '\\u0000garbage{"type":\\n'); } catch {}
}
setResult('after');
""",
}


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_garbage_on_every_fd_is_contained(client: SandboxClient, runtime: str) -> None:
    """Garbage written to every fd ends that execution with a clear result, never a broken RPC.

    The code can always reach its own channel in its own process; what must
    hold is that the server rejects what is not protocol, reports it in the
    result, and stays healthy for the next execution.
    """
    outcome = await client.run(GARBAGE_ALL_FDS[runtime], runtime=runtime)
    # Node's runtime may crash on garbage in its own event-loop fds (KILLED by
    # SIGSEGV); Python's reaches the channel, which the server rejects.
    assert outcome.status in ("ERROR", "KILLED")
    assert outcome.result.error
    if runtime == "python":
        assert "sandbox channel" in outcome.result.error
    assert "garbage" in outcome.result.logs
    following = await client.run("set_result(2)")
    assert following.status == "OK" and following.output == 2


async def test_tool_call_ids_are_the_servers(client: SandboxClient) -> None:
    """Call ids on the wire are made by the server, whatever ids the channel carried."""
    outcome = await client.run(
        "print(call_tool('a'), call_tool('b'))",
        runtime="python",
        tools={"a": lambda: 1, "b": lambda: 2},
    )
    assert outcome.status == "OK", outcome.result.error
    ids = [call.call_id for call in outcome.tool_calls]
    execution_id = outcome.responses[0].started.execution_id
    assert len(set(ids)) == 2
    assert all(call_id.startswith(execution_id) for call_id in ids)


async def test_an_execution_id_is_admitted_only_once(
    client: SandboxClient, stub: pb_grpc.SandboxStub
) -> None:
    """A second start with a used execution_id is refused, so a client retry never runs code twice."""
    first = await client.run("set_result('ran')", execution_id="job-42")
    assert first.output == "ran"

    error = await execute_error(stub, start_message("set_result('again')", execution_id="job-42"))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "job-42" in (error.details() or "")
    assert "never run twice" in (error.details() or "")
