"""HTTPRunner against the real facade: the documented patterns in Python and Node.js."""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest

from oasis import (
    CapacityExhausted,
    CodeFile,
    CodeRequest,
    DispatchResult,
    FailedPrecondition,
    InvalidRequest,
    Status,
    ToolCall,
    tool_dispatcher,
)
from oasis.code import HTTPRunner
from sandbox_server.server import SandboxServer

from ..conftest import StartServer
from ..helpers import eventually, new_marker, pids_with
from .conftest import base_url, free_port

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
async def runner(server: SandboxServer) -> AsyncIterator[HTTPRunner]:
    async with HTTPRunner(base_url(server), timeout=30) as runner:
        yield runner


def code_for(runtime: str, python: str, node: str) -> CodeRequest:
    return CodeRequest(code=python if runtime == "python" else node, runtime=runtime)


BOTH = pytest.mark.parametrize("runtime", ["python", "node"])


# -- the documented patterns -------------------------------------------------------------


@BOTH
async def test_sequential_chain(runner: HTTPRunner, runtime: str) -> None:
    calls: list[str] = []

    def search(query: str) -> list[dict[str, str]]:
        calls.append("search")
        return [{"url": f"https://example.test/{query}/1"}]

    def fetch(url: str) -> dict[str, str]:
        calls.append("fetch")
        return {"title": f"Page at {url}"}

    request = code_for(
        runtime,
        "hits = call_tool('search', {'query': 'oasis'})\n"
        "page = call_tool('fetch', {'url': hits[0]['url']})\n"
        "set_result({'title': page['title']})",
        "const hits = await callTool('search', {query: 'oasis'});\n"
        "const page = await callTool('fetch', {url: hits[0].url});\n"
        "setResult({title: page.title});",
    )
    result = await runner.run(request, tool_dispatcher({"search": search, "fetch": fetch}))

    assert result.status is Status.OK, result.error
    assert result.output == {"title": "Page at https://example.test/oasis/1"}
    assert calls == ["search", "fetch"]


@BOTH
async def test_conditional(runner: HTTPRunner, runtime: str) -> None:
    advice_asked: list[str] = []

    def advice(kind: str) -> str:
        advice_asked.append(kind)
        return f"take a {kind}"

    request = code_for(
        runtime,
        "w = call_tool('weather', {'city': 'Oslo'})\n"
        "kind = 'coat' if w['temp'] < 10 else 'sunscreen'\n"
        "set_result(call_tool('advice', {'kind': kind}))",
        "const w = await callTool('weather', {city: 'Oslo'});\n"
        "const kind = w.temp < 10 ? 'coat' : 'sunscreen';\n"
        "setResult(await callTool('advice', {kind}));",
    )
    tools = {"weather": lambda city: {"city": city, "temp": 3}, "advice": advice}
    result = await runner.run(request, tool_dispatcher(tools))

    assert result.output == "take a coat", result.error
    assert advice_asked == ["coat"]


@BOTH
async def test_parallel_fan_out_is_dispatched_concurrently(
    runner: HTTPRunner, runtime: str
) -> None:
    in_flight = 0
    all_in = asyncio.Event()

    async def lookup(id: int) -> dict[str, int]:
        nonlocal in_flight
        in_flight += 1
        if in_flight == 4:
            all_in.set()
        # Fails unless all four calls are being dispatched at the same time.
        async with asyncio.timeout(20):
            await all_in.wait()
        return {"id": id, "square": id * id}

    request = code_for(
        runtime,
        "rows = call_tools_parallel([('lookup', {'id': i}) for i in range(4)])\n"
        "set_result([r['square'] for r in rows])",
        "const rows = await callToolsParallel([0, 1, 2, 3].map(i => ['lookup', {id: i}]));\n"
        "setResult(rows.map(r => r.square));",
    )
    result = await runner.run(request, tool_dispatcher({"lookup": lookup}))

    assert result.output == [0, 1, 4, 9], result.error


async def test_visualization_returns_a_png_python(runner: HTTPRunner) -> None:
    code = (
        "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
        "series = call_tool('series')\n"
        "plt.plot(series)\nplt.title('growth')\nplt.savefig('chart.png')\n"
        "set_result({'points': len(series)}, files=['chart.png'])"
    )
    result = await runner.run(
        CodeRequest(code=code), tool_dispatcher({"series": lambda: [1, 4, 9, 16]})
    )

    assert result.status is Status.OK, result.error
    assert result.output == {"points": 4}
    [chart] = result.files
    assert (chart.name, chart.mime) == ("chart.png", "image/png")
    assert chart.data.startswith(PNG_SIGNATURE)
    assert chart.size == len(chart.data) > 1000


# A 2x2 PNG built with Node's zlib: Node has no plotting library in the runtime.
NODE_PNG = """
const zlib = require('zlib');
const fs = require('fs');
const table = Array.from({length: 256}, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
const crc = (buf) => {
  let c = 0xffffffff;
  for (const b of buf) c = table[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
};
const chunk = (type, data) => {
  const len = Buffer.alloc(4); len.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type), data]);
  const sum = Buffer.alloc(4); sum.writeUInt32BE(crc(body));
  return Buffer.concat([len, body, sum]);
};
const [r, g, b] = await callTool('color');
const ihdr = Buffer.alloc(13);
ihdr.writeUInt32BE(2, 0); ihdr.writeUInt32BE(2, 4); ihdr[8] = 8; ihdr[9] = 2;
const row = Buffer.from([0, r, g, b, r, g, b]);
const png = Buffer.concat([
  Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
  chunk('IHDR', ihdr), chunk('IDAT', zlib.deflateSync(Buffer.concat([row, row]))), chunk('IEND', Buffer.alloc(0)),
]);
fs.writeFileSync('chart.png', png);
setResult({bytes: png.length}, ['chart.png']);
"""


async def test_visualization_returns_a_png_node(runner: HTTPRunner) -> None:
    result = await runner.run(
        CodeRequest(code=NODE_PNG, runtime="node"), tool_dispatcher({"color": lambda: [255, 0, 0]})
    )

    assert result.status is Status.OK, result.error
    [chart] = result.files
    assert (chart.name, chart.mime) == ("chart.png", "image/png")
    assert chart.data.startswith(PNG_SIGNATURE)
    assert result.output == {"bytes": len(chart.data)}


@BOTH
async def test_input_files(runner: HTTPRunner, runtime: str) -> None:
    table = b"name,amount\nrent,1200\nfood,300\nbooks,45\n"
    request = code_for(
        runtime,
        "import csv\nrows = list(csv.DictReader(open('data/spend.csv')))\n"
        "set_result(sum(int(r['amount']) for r in rows))",
        "const fs = require('fs');\n"
        "const lines = fs.readFileSync('data/spend.csv', 'utf8').trim().split('\\n').slice(1);\n"
        "setResult(lines.reduce((s, l) => s + Number(l.split(',')[1]), 0));",
    )
    request.files = [CodeFile(name="data/spend.csv", data=table, mime="text/csv")]
    result = await runner.run(request, tool_dispatcher({}))

    expected = sum(int(r["amount"]) for r in csv.DictReader(io.StringIO(table.decode())))
    assert result.output == expected, result.error


@BOTH
async def test_session_persistence_and_delete(runner: HTTPRunner, runtime: str) -> None:
    session = f"s-{uuid.uuid4().hex[:12]}"
    request = code_for(
        runtime,
        "import os\nn = int(open('count').read()) + 1 if os.path.exists('count') else 1\n"
        "open('count', 'w').write(str(n))\nset_result(n)",
        "const fs = require('fs');\n"
        "const n = fs.existsSync('count') ? Number(fs.readFileSync('count', 'utf8')) + 1 : 1;\n"
        "fs.writeFileSync('count', String(n));\nsetResult(n);",
    )
    request.session_id = session
    dispatch = tool_dispatcher({})

    counts = [(await runner.run(request, dispatch)).output for _ in range(3)]
    assert await runner.delete_workspace(session) is True
    assert await runner.delete_workspace(session) is False  # parity with GrpcRunner
    after_delete = (await runner.run(request, dispatch)).output

    assert counts == [1, 2, 3]
    assert after_delete == 1


async def test_keep_state_and_reset_state(runner: HTTPRunner) -> None:
    dispatch = tool_dispatcher({})
    step = CodeRequest(code="import math\nradius = 2.0", session_id="http-state", keep_state=True)
    first = await runner.run(step, dispatch)
    step.code = "set_result(round(math.pi * radius**2, 2))"
    second = await runner.run(step, dispatch)
    resets = [await runner.reset_state("http-state"), await runner.reset_state("http-state")]
    step.code = "set_result('radius' in globals())"
    after = await runner.run(step, dispatch)

    assert (first.fresh_state, first.fresh_state_reason, first.state_kept) == (True, "", True)
    assert (second.output, second.fresh_state, second.state_kept) == (12.57, False, True)
    assert resets == [True, False]
    assert after.output is False and after.fresh_state and after.fresh_state_reason


async def test_reset_state_errors_are_mapped(runner: HTTPRunner) -> None:
    assert await runner.reset_state("never-created") is False
    with pytest.raises(InvalidRequest) as bad_id:
        await runner.reset_state("-no")
    with pytest.raises(InvalidRequest) as no_session:
        await runner.run(CodeRequest(code="x = 1", keep_state=True), tool_dispatcher({}))

    assert (bad_id.value.code, bad_id.value.http_status) == ("INVALID_ARGUMENT", 400)
    assert "session_id" in no_session.value.message


# -- results and errors ------------------------------------------------------------------


async def test_tool_errors_reach_the_code(runner: HTTPRunner) -> None:
    async def dispatch(call: ToolCall) -> DispatchResult:
        if call.name == "raises":
            raise LookupError("the index is offline")
        return DispatchResult(content="quota exceeded", is_error=True)

    code = (
        "caught = []\n"
        "for name in ('raises', 'refuses'):\n"
        "    try:\n        call_tool(name)\n"
        "    except RuntimeError as exc:\n        caught.append(str(exc))\n"
        "set_result(caught)"
    )
    result = await runner.run(CodeRequest(code=code), dispatch)

    raised, refused = result.output
    assert "the index is offline" in raised
    assert "quota exceeded" in refused


async def test_status_follows_from_the_outcome(runner: HTTPRunner) -> None:
    ok = await runner.run(CodeRequest(code="print('fine')"), tool_dispatcher({}))
    failed = await runner.run(CodeRequest(code="1/0"), tool_dispatcher({}))
    slow = await runner.run(
        CodeRequest(code="import time\ntime.sleep(30)", timeout=1), tool_dispatcher({})
    )

    assert (ok.status, ok.logs, ok.output) == (Status.OK, "fine\n", None)
    assert failed.status is Status.ERROR
    assert "ZeroDivisionError" in failed.error
    assert failed.exit_code != 0
    assert slow.status is Status.TIMEOUT
    assert slow.exit_code == -1


async def test_files_over_max_file_size_keep_name_mime_and_size_only(server: SandboxServer) -> None:
    code = (
        "open('small.txt', 'w').write('x' * 10)\nopen('large.txt', 'w').write('y' * 5000)\n"
        "set_result(None, files=['small.txt', 'large.txt'])"
    )
    async with HTTPRunner(base_url(server), max_file_size=1000) as runner:
        result = await runner.run(CodeRequest(code=code), tool_dispatcher({}))

    small, large = result.files
    assert (small.name, small.data, small.size) == ("small.txt", b"x" * 10, 10)
    assert (large.name, large.mime, large.data, large.size) == (
        "large.txt",
        "text/plain",
        b"",
        5000,
    )


async def test_bad_request_raises_invalid_request(runner: HTTPRunner) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await runner.run(CodeRequest(code="x", runtime="cobol"), tool_dispatcher({}))

    assert (caught.value.code, caught.value.http_status) == ("INVALID_ARGUMENT", 400)
    assert str(caught.value) == "unsupported runtime: cobol; supported: python, node"


async def test_env_is_refused_because_the_api_cannot_carry_it(runner: HTTPRunner) -> None:
    with pytest.raises(InvalidRequest, match="environment"):
        await runner.run(CodeRequest(code="pass", env={"A": "1"}), tool_dispatcher({}))


async def test_capacity_exhausted_after_the_last_attempt(start_server: StartServer) -> None:
    server = await start_server(SANDBOX_MAX_CONCURRENT="1")
    release = asyncio.Event()

    async def wait(call: ToolCall) -> DispatchResult:
        await release.wait()
        return DispatchResult(content="done")

    async with HTTPRunner(base_url(server), max_retries=1) as runner:
        started = asyncio.Event()

        async def blocker(call: ToolCall) -> DispatchResult:
            started.set()
            return await wait(call)

        first = asyncio.create_task(runner.run(CodeRequest(code="call_tool('wait')"), blocker))
        async with asyncio.timeout(30):
            await started.wait()
        with pytest.raises(CapacityExhausted) as caught:
            await runner.run(CodeRequest(code="pass"), tool_dispatcher({}))
        release.set()
        assert (await first).status is Status.OK

    assert (caught.value.code, caught.value.http_status) == ("RESOURCE_EXHAUSTED", 503)
    assert "capacity reached" in caught.value.message


# -- lifecycle and cancellation ----------------------------------------------------------


async def test_cancelling_run_kills_the_code_and_its_tool_calls(start_server: StartServer) -> None:
    server = await start_server(SANDBOX_MAX_CONCURRENT="1")
    marker = new_marker()
    dispatch_started = asyncio.Event()
    dispatch_cancelled = asyncio.Event()

    async def hang(call: ToolCall) -> DispatchResult:
        dispatch_started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            dispatch_cancelled.set()
            raise
        raise AssertionError("unreachable")

    # The code outlives a failed tool call: only the cancellation can stop it.
    code = (
        "import subprocess, time\n"
        f"subprocess.Popen(['/bin/sh', '-c', 'sleep 300 # {marker}'])\n"
        "try:\n    call_tool('hang')\nexcept RuntimeError:\n    pass\n"
        "time.sleep(300)"
    )
    async with HTTPRunner(base_url(server), timeout=120) as runner:
        task = asyncio.create_task(runner.run(CodeRequest(code=code), hang))
        async with asyncio.timeout(30):
            await dispatch_started.wait()
        assert pids_with(marker)

        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        assert dispatch_cancelled.is_set()
        await eventually(lambda: not pids_with(marker), what="the code's processes are gone")
        # The execution slot is free again.
        result = await runner.run(CodeRequest(code="set_result(1)"), tool_dispatcher({}))
        assert result.output == 1


async def test_aclose_is_idempotent_and_run_after_close_fails(server: SandboxServer) -> None:
    runner = HTTPRunner(base_url(server))
    assert (await runner.run(CodeRequest(code="set_result(2)"), tool_dispatcher({}))).output == 2
    callback_url = runner.callback_url

    await runner.aclose()
    await runner.aclose()

    with pytest.raises(RuntimeError, match="closed"):
        await runner.run(CodeRequest(code="pass"), tool_dispatcher({}))
    # The callback listener is gone with it.
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.post(callback_url, json={})


async def test_callback_for_an_unknown_execution_is_404(runner: HTTPRunner) -> None:
    await runner.run(CodeRequest(code="pass"), tool_dispatcher({}))  # starts the listener

    async with (
        aiohttp.ClientSession() as http,
        http.post(
            runner.callback_url, json={"execution_id": "nobody", "name": "x", "args": {}}
        ) as response,
    ):
        status, body = response.status, await response.json()

    assert status == 404
    assert body == {"error": "unknown execution_id: nobody"}


async def test_results_of_many_runs_on_one_runner_do_not_mix(runner: HTTPRunner) -> None:
    async def echo(call: ToolCall) -> DispatchResult:
        return DispatchResult(content=str(call.args["n"]))

    requests = [
        CodeRequest(code=f"set_result(call_tool('echo', {{'n': {n}}}) * 2)") for n in range(4)
    ]
    results = await asyncio.gather(*(runner.run(r, echo) for r in requests))

    assert [r.output for r in results] == [0, 2, 4, 6]


async def test_delete_workspace_errors_are_mapped(runner: HTTPRunner) -> None:
    holding = asyncio.Event()
    release = asyncio.Event()

    async def hold(call: ToolCall) -> DispatchResult:
        holding.set()
        await release.wait()
        return DispatchResult(content="ok")

    busy = asyncio.create_task(
        runner.run(CodeRequest(code="call_tool('hold')", session_id="busy"), hold)
    )
    async with asyncio.timeout(30):
        await holding.wait()
    with pytest.raises(FailedPrecondition) as in_use:
        await runner.delete_workspace("busy")
    release.set()
    await busy
    with pytest.raises(InvalidRequest) as bad_id:
        await runner.delete_workspace("-no")

    assert (in_use.value.code, in_use.value.http_status) == ("FAILED_PRECONDITION", 409)
    assert "running execution" in in_use.value.message
    assert (bad_id.value.code, bad_id.value.http_status) == ("INVALID_ARGUMENT", 400)


async def test_callback_listener_uses_callback_addr(server: SandboxServer) -> None:
    port = free_port()
    async with HTTPRunner(base_url(server), callback_addr=f"127.0.0.1:{port}") as runner:
        result = await runner.run(
            CodeRequest(code="set_result(call_tool('one'))"), tool_dispatcher({"one": lambda: 1})
        )

    assert runner.callback_url == f"http://127.0.0.1:{port}/_oasis/dispatch"
    assert result.output == 1


async def test_large_files_both_ways(runner: HTTPRunner) -> None:
    payload = bytes(range(256)) * (5 * 4096)  # 5 MiB: base64-encoded and decoded off the loop
    code = (
        "data = open('in.bin', 'rb').read()\n"
        "open('out.bin', 'wb').write(data[::-1])\n"
        "set_result(len(data), files=['out.bin'])"
    )
    request = CodeRequest(code=code, files=[CodeFile(name="in.bin", data=payload)])
    result = await runner.run(request, tool_dispatcher({}))

    assert result.output == len(payload), result.error
    [out] = result.files
    assert out.data == payload[::-1]
    assert out.size == len(payload)
