"""What the code sees: logs, results, the environment, installed packages, the data stack."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator

import grpc
import pytest

from oasis.sandbox.v1 import sandbox_pb2 as pb

from ..conftest import REPO, StartServer
from ..helpers import LocalIndex, eventually, remote_index
from ..sandbox_client import SandboxClient

RUNTIMES = ["python", "node"]
STDOUT, STDERR = pb.LogChunk.STDOUT, pb.LogChunk.STDERR

# Small packages that the runtimes do not already have (the tests check that first).
PIP_PACKAGE, PIP_MODULE = "inflection", "inflection"
NPM_PACKAGE = "is-number"


# -- logs ---------------------------------------------------------------------------

LIVE = {
    "python": """
import sys
print("before the tool")
call_tool("checkpoint", {"printed": "before the tool"})
print("to stderr", file=sys.stderr)
call_tool("checkpoint", {"printed": "to stderr"})
for i in range(3):
    print("step", i)
    call_tool("checkpoint", {"printed": f"step {i}"})
""",
    "node": """
console.log("before the tool");
await callTool("checkpoint", {printed: "before the tool"});
console.error("to stderr");
await callTool("checkpoint", {printed: "to stderr"});
for (let i = 0; i < 3; i++) {
  console.log("step", i);
  await callTool("checkpoint", {printed: `step ${i}`});
}
""",
}


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_logs_stream_live_in_order(client: SandboxClient, runtime: str) -> None:
    """Each line arrives as a LogChunk while the code is still running, in the order it was printed."""
    received: list[tuple[int, bytes]] = []
    checked: list[str] = []

    def on_response(response: pb.ExecuteResponse, _queue: object) -> None:
        if response.WhichOneof("kind") == "log":
            received.append((response.log.stream, response.log.data))

    async def checkpoint(printed: str) -> str:
        # The code is blocked in this call, so what it printed just before can
        # only arrive if logs are streamed live.
        await eventually(
            lambda: b"".join(data for _, data in received).endswith(printed.encode() + b"\n"),
            timeout=20,
            what=f"live log line {printed!r}",
        )
        checked.append(printed)
        return "ok"

    outcome = await client.run(
        LIVE[runtime], runtime=runtime, tools={"checkpoint": checkpoint}, on_response=on_response
    )
    assert outcome.status == "OK", outcome.result.error
    assert checked == ["before the tool", "to stderr", "step 0", "step 1", "step 2"]
    assert outcome.result.logs == "before the tool\nto stderr\nstep 0\nstep 1\nstep 2\n"
    by_stream = {
        stream: b"".join(data for kind, data in received if kind == stream)
        for stream in (STDOUT, STDERR)
    }
    assert by_stream == {
        STDOUT: b"before the tool\nstep 0\nstep 1\nstep 2\n",
        STDERR: b"to stderr\n",
    }


@pytest.mark.parametrize(
    ("runtime", "code"),
    [
        ("python", "print('no result set')"),
        ("node", "console.log('no result set');"),
    ],
)
async def test_no_result_means_empty_output(client: SandboxClient, runtime: str, code: str) -> None:
    """Without set_result the output is the empty string and the run is OK."""
    outcome = await client.run(code, runtime=runtime)
    assert outcome.status == "OK"
    assert outcome.result.output == ""
    assert outcome.result.exit_code == 0
    assert outcome.result.logs == "no result set\n"


@pytest.mark.parametrize(
    ("runtime", "code", "expected"),
    [
        (
            "python",
            "set_result({'a': [1, 2.5, None, True], 'b': 'é'})",
            {"a": [1, 2.5, None, True], "b": "é"},
        ),
        ("python", "set_result(None)", None),
        ("python", "set_result('first')\nset_result('second')", "second"),
        (
            "node",
            "setResult({a: [1, 2.5, null, true], b: 'é'});",
            {"a": [1, 2.5, None, True], "b": "é"},
        ),
        ("node", "setResult('first');\nsetResult('second');", "second"),
        ("node", "setResult(42);\nprocess.exit(0);", 42),
    ],
)
async def test_set_result_is_json(
    client: SandboxClient, runtime: str, code: str, expected: object
) -> None:
    """`output` is the JSON text of the last value given to set_result."""
    outcome = await client.run(code, runtime=runtime)
    assert outcome.status == "OK", outcome.result.error
    assert json.loads(outcome.result.output) == expected


async def test_python_result_of_numpy_and_pandas_values(client: SandboxClient) -> None:
    """numpy and pandas values in a result become plain JSON."""
    code = """
import numpy as np, pandas as pd
df = pd.DataFrame({"x": [1, 2, 3]})
set_result({"mean": df.x.mean(), "arr": np.arange(3), "when": pd.Timestamp("2024-01-02")})
"""
    outcome = await client.run(code, timeout=120)
    assert outcome.status == "OK", outcome.result.error
    assert outcome.output == {"mean": 2.0, "arr": [0, 1, 2], "when": "2024-01-02T00:00:00"}


async def test_node_top_level_await(client: SandboxClient) -> None:
    """Node code is a module: top-level await works."""
    code = "const v = await new Promise((r) => setTimeout(() => r(7), 10));\nsetResult(v * 6);"
    outcome = await client.run(code, runtime="node")
    assert outcome.status == "OK", outcome.result.error
    assert outcome.output == 42


async def test_python_data_stack(client: SandboxClient) -> None:
    """numpy, pandas and matplotlib import in the default set-up."""
    code = """
import numpy, pandas, matplotlib
import matplotlib.pyplot as plt
set_result({"numpy": numpy.__version__, "pandas": pandas.__version__, "backend": matplotlib.get_backend()})
"""
    outcome = await client.run(code, timeout=120)
    assert outcome.status == "OK", outcome.result.error
    assert outcome.output["backend"].lower() == "agg"


async def test_matplotlib_is_quiet_and_uses_the_prebuilt_font_cache(
    start_server: StartServer,
) -> None:
    """No "not a writable directory" warning in the logs, and no font cache rebuilt."""
    if not (REPO / ".runtime" / "mplconfig").is_dir():
        pytest.skip("no prebuilt font cache (make install makes it)")
    server = await start_server()
    code = "import os\nimport matplotlib.pyplot\nset_result(sorted(os.listdir(os.environ['MPLCONFIGDIR'])))"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        outcome = await SandboxClient(channel).run(code, session_id="plots", timeout=120)
    assert outcome.status == "OK", outcome.result.error
    logs = outcome.result.logs
    assert "not a writable directory" not in logs and "building the font cache" not in logs, logs
    assert any(name.startswith("fontlist") for name in outcome.output)


# -- environment ----------------------------------------------------------------------

ENV = {
    "python": "import os\nset_result({'env': dict(os.environ), 'cwd': os.getcwd()})",
    "node": "setResult({env: process.env, cwd: process.cwd()});",
}
ALLOWED = {"PATH", "HOME", "LANG"}
RUNTIME_EXTRAS = {"PYTHONUNBUFFERED", "MPLBACKEND", "MPLCONFIGDIR", "MALLOC_ARENA_MAX"}


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_environment_is_an_allow_list(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch, runtime: str
) -> None:
    """The code sees PATH, HOME (its workspace), LANG and start.env, never the server's own variables."""
    monkeypatch.setenv("OASIS_SERVER_SECRET", "hunter2")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter3")
    server = await start_server()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        outcome = await SandboxClient(channel).run(
            ENV[runtime], runtime=runtime, env={"API_MODE": "test", "EMPTY": ""}
        )
    assert outcome.status == "OK", outcome.result.error
    env, cwd = outcome.output["env"], outcome.output["cwd"]
    assert set(env) - RUNTIME_EXTRAS == ALLOWED | {"API_MODE", "EMPTY"}
    assert env["API_MODE"] == "test" and env["EMPTY"] == ""
    assert env["HOME"] == cwd
    assert "hunter" not in json.dumps(outcome.output)
    for directory in env["PATH"].split(":"):
        assert os.path.isabs(directory)


# -- install_package ------------------------------------------------------------------

TRY_IMPORT = {
    "python": f"""
try:
    import {PIP_MODULE}
    set_result("present")
except ImportError:
    set_result("absent")
""",
    "node": f"""
try {{
  require('{NPM_PACKAGE}');
  setResult('present');
}} catch (err) {{
  setResult(err.code === 'MODULE_NOT_FOUND' ? 'absent' : String(err));
}}
""",
}
INSTALL_AND_USE = {
    "python": f"""
install_package("{PIP_PACKAGE}")
import {PIP_MODULE}
set_result({PIP_MODULE}.camelize("sandbox_package_test"))
""",
    "node": f"""
await installPackage('{NPM_PACKAGE}');
const isNumber = require('{NPM_PACKAGE}');
const esm = await import('{NPM_PACKAGE}');
setResult([isNumber('42'), isNumber('nope'), typeof esm.default]);
""",
}
EXPECTED_USE = {"python": "SandboxPackageTest", "node": [True, False, "function"]}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_install_package_into_the_session_only(client: SandboxClient, runtime: str) -> None:
    """The package is importable right after the call, again in the same session, and never in another."""
    before = await client.run(
        TRY_IMPORT[runtime], runtime=runtime, session_id=f"installer-{runtime}"
    )
    assert before.output == "absent", "pick a package the runtime does not already have"

    installed = await client.run(
        INSTALL_AND_USE[runtime], runtime=runtime, session_id=f"installer-{runtime}", timeout=240
    )
    assert installed.status == "OK", installed.result.error
    assert installed.output == EXPECTED_USE[runtime]

    again = await client.run(
        TRY_IMPORT[runtime], runtime=runtime, session_id=f"installer-{runtime}"
    )
    assert again.output == "present"
    elsewhere = await client.run(
        TRY_IMPORT[runtime], runtime=runtime, session_id=f"other-{runtime}"
    )
    assert elsewhere.output == "absent"
    scratch = await client.run(TRY_IMPORT[runtime], runtime=runtime)
    assert scratch.output == "absent"


@pytest.fixture
async def registry() -> AsyncIterator[LocalIndex]:
    async with remote_index() as running:
        yield running


FAILING_INSTALL = {
    "python": """
import os
try:
    install_package("oasis-no-such-package>=1")
except RuntimeError as exc:
    set_result({"error": str(exc), "files": sorted(os.listdir("."))})
""",
    "node": """
const fs = require('fs');
try {
  await installPackage('oasis-no-such-package@>=1');
} catch (err) {
  setResult({error: err.message, files: fs.readdirSync('.').sort()});
}
""",
}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_install_uses_the_configured_index_and_reports_failure(
    start_server: StartServer, registry: LocalIndex, runtime: str
) -> None:
    """SANDBOX_PIP_INDEX_URL / SANDBOX_NPM_REGISTRY are used; a failed install raises with the installer's words.

    The `>=` in the name would redirect into a file named `=1` if the name
    went through a shell; it must be passed as a plain argument.
    """
    server = await start_server(
        SANDBOX_PIP_INDEX_URL=f"{registry.url}/simple",
        SANDBOX_NPM_REGISTRY=f"{registry.url}/",
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        outcome = await SandboxClient(channel).run(
            FAILING_INSTALL[runtime], runtime=runtime, timeout=150
        )
    assert outcome.status == "OK", outcome.result.error
    error = outcome.output["error"]
    assert "oasis-no-such-package" in error
    installer_words = {"python": "No matching distribution", "node": "404"}[runtime]
    assert installer_words in error, error
    assert any("oasis-no-such-package" in path for path in registry.requests), registry.requests
    assert "=1" not in outcome.output["files"]


BAD_NAMES = {
    "python": """
import os
results = []
for name in ["x; touch pwned", "$(touch pwned)", "`touch pwned`", "--index-url=http://evil", "-r/etc/passwd", "a b", ""]:
    try:
        install_package(name)
        results.append("installed")
    except (RuntimeError, TypeError) as exc:
        results.append(str(exc))
set_result({"results": results, "pwned": os.path.exists("pwned")})
""",
    "node": """
const fs = require('fs');
const results = [];
for (const name of ["x; touch pwned", "$(touch pwned)", "`touch pwned`", "--registry=http://evil", "-g", "a b", ""]) {
  try {
    await installPackage(name);
    results.push("installed");
  } catch (err) {
    results.push(err.message);
  }
}
setResult({results, pwned: fs.existsSync('pwned')});
""",
}


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_install_refuses_names_that_are_not_package_names(
    client: SandboxClient, runtime: str
) -> None:
    """Shell syntax and installer options are refused as package names; nothing runs."""
    outcome = await client.run(BAD_NAMES[runtime], runtime=runtime, timeout=60)
    assert outcome.status == "OK", outcome.result.error
    assert outcome.output["pwned"] is False
    results = outcome.output["results"]
    assert "installed" not in results
    assert all(results), results
