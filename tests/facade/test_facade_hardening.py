"""Attacks on the HTTP facade, each replayed against a real server.

Cross-site requests and DNS rebinding, bodies built to blow up the parser (and
their gRPC counterpart), parallel tool calls that inflate memory, and floods
of connections.
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

from oasis.code import MiB
from oasis.sandbox.v1 import sandbox_pb2 as pb
from oasis.sandbox.v1 import sandbox_pb2_grpc as pb_grpc
from sandbox_server import service
from sandbox_server.facade import MAX_BODY, callbacks
from sandbox_server.facade import request as facade_request
from sandbox_server.server import SandboxServer

from ..conftest import StartServer
from ..helpers import eventually, execute_error, start_message
from .conftest import CallbackServer, base_url

# -- helpers ----------------------------------------------------------------------


async def post_execute(
    http: aiohttp.ClientSession, server: SandboxServer, body: bytes, **headers: str
) -> tuple[int, dict[str, Any]]:
    headers.setdefault("Content-Type", "application/json")
    async with http.post(base_url(server) + "/execute", data=body, headers=headers) as response:
        return response.status, await response.json()


def execute_body(code: str, **fields: Any) -> bytes:
    return json.dumps({"code": code, "timeout": 30, **fields}).encode()


@contextmanager
def peak_rss() -> Iterator[list[int]]:
    """Growth of this process's peak resident memory (the server runs in it) over the block.

    Yields a list that holds the growth in bytes afterwards; empty where the
    kernel does not let the peak mark be reset.
    """
    found: list[int] = []
    try:
        Path("/proc/self/clear_refs").write_text("5")  # peak (VmHWM) := current RSS
    except OSError:
        yield found
        return
    before = _status_kib("VmRSS")
    yield found
    found.append((_status_kib("VmHWM") - before) * 1024)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


# -- cross-site requests and DNS rebinding ----------------------------------------------

BROWSER = {"Content-Type": "text/plain", "Origin": "http://evil.example", "Host": "evil.example"}


DENIED = (403, "PERMISSION_DENIED")
NOT_JSON = (415, "INVALID_ARGUMENT")


@pytest.mark.parametrize(
    ("headers", "status", "message"),
    [
        # What a page on any site can send with fetch() and no CORS preflight.
        (BROWSER, DENIED, "does not name this server"),
        ({"Content-Type": "application/json", "Host": "rebound.example:9000"}, DENIED, "ALLOWED"),
        ({"Content-Type": "application/json", "Origin": "http://evil.example"}, DENIED, "web page"),
        ({"Content-Type": "application/json", "Origin": "null"}, DENIED, "web page"),
        ({"Content-Type": "text/plain"}, NOT_JSON, "application/json"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, NOT_JSON, "application/json"),
    ],
)
async def test_what_a_web_page_can_send_is_refused_and_runs_nothing(
    http: aiohttp.ClientSession,
    server: SandboxServer,
    callback: CallbackServer,
    headers: dict[str, str],
    status: tuple[int, str],
    message: str,
) -> None:
    attack = execute_body("call_tool('pwned')", callback_url=callback.url)
    refused, answer = await post_execute(http, server, attack, **headers)

    assert (refused, answer.get("code")) == status
    assert list(answer) == ["error", "code"]
    assert message in answer["error"]
    # The API's own kind of client still gets through; the refused code never called its tool.
    ok = execute_body("set_result(call_tool('ok'))", callback_url=callback.url)
    assert (await post_execute(http, server, ok))[0] == 200
    assert [call["name"] for call in callback.calls] == ["ok"]


async def test_deleting_a_workspace_from_a_page_is_refused(
    http: aiohttp.ClientSession, server: SandboxServer
) -> None:
    url = base_url(server) + "/workspace/s1"
    for headers in [{"Origin": "http://evil.example"}, {"Host": "evil.example"}]:
        async with http.delete(url, headers=headers) as response:
            assert response.status == 403
            assert (await response.json())["code"] == "PERMISSION_DENIED"


async def test_health_stays_open_to_any_host_and_origin(
    http: aiohttp.ClientSession, server: SandboxServer
) -> None:
    headers = {"Origin": "http://evil.example", "Host": "evil.example"}
    async with http.get(base_url(server) + "/health", headers=headers) as response:
        assert response.status == 200
        assert await response.json() == {"status": "ready"}


async def test_names_of_the_server_and_allowed_hosts_are_accepted(
    http: aiohttp.ClientSession, start_server: StartServer
) -> None:
    server = await start_server(SANDBOX_ALLOWED_HOSTS="Sandbox.Internal, api.example:8080")
    port = server.http_port

    async def status(host: str, **headers: str) -> int:
        url = base_url(server) + "/workspace/s1"
        async with http.delete(url, headers={"Host": host, **headers}) as response:
            return response.status

    for host in [
        f"127.0.0.1:{port}",
        f"localhost:{port}",
        "localhost.",
        f"[::1]:{port}",
        socket.gethostname(),
        "sandbox.internal:1234",  # a name without port: any port
        "api.example:8080",  # name:port: that port only
    ]:
        assert await status(host) == 204, host
    for host in ["api.example:8081", "api.example", "evil.example", "127.0.0.2", "[::1"]:
        assert await status(host) == 403, host
    own = f"127.0.0.1:{port}"
    assert await status(own, Origin=f"http://{own}") == 204
    assert await status(own, Origin=f"http://{own}.evil.example") == 403


async def test_on_all_interfaces_the_address_a_client_reached_is_accepted(
    http: aiohttp.ClientSession, start_server: StartServer
) -> None:
    server = await start_server(SANDBOX_ADDR=":0")
    # 127.0.0.2 is one of this machine's addresses (all of 127/8 is), but not a built-in name.
    url = f"http://127.0.0.2:{server.http_port}/workspace/s1"
    async with http.delete(url) as response:
        assert response.status == 204
    async with http.delete(base_url(server) + "/workspace/s1", headers={"Host": "127.0.0.2"}) as r:
        assert r.status == 403  # arrived on 127.0.0.1: not the address it names


# -- bodies built to blow up the parser ---------------------------------------------------


def fill_body(head: bytes, item: bytes, tail: bytes) -> bytes:
    """`head` + item,item,...,item + `tail`, just under the 32 MiB body limit."""
    count = (MAX_BODY - len(head) - len(tail)) // (len(item) + 1)
    return head + (item + b",") * (count - 1) + item + tail


@pytest.mark.parametrize(
    "body",
    [
        # Eleven million empty objects: 2.2 GB and 77 s of CPU before the fix.
        fill_body(b'{"code":"x","files":[', b"{}", b"]}"),
        fill_body(b'{"code":"x","other":[', b"[]", b"]}"),
        fill_body(b'{"code":"x","other":[', b"1", b"]}"),
    ],
    ids=["empty-files", "empty-arrays", "numbers"],
)
async def test_a_body_of_millions_of_values_is_refused_before_they_are_built(
    http: aiohttp.ClientSession,
    server: SandboxServer,
    body: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    converted = collections.Counter[str]()
    input_file = facade_request._input_file

    def counting_input_file(index: int, value: Any) -> Any:
        converted["files"] += 1
        return input_file(index, value)

    monkeypatch.setattr(facade_request, "_input_file", counting_input_file)
    with peak_rss() as growth:
        refused = asyncio.create_task(post_execute(http, server, body))
        health: list[int] = []
        while not health or not refused.done():  # health is answered while the body is handled
            async with http.get(base_url(server) + "/health") as response:
                health.append(response.status)
            await asyncio.sleep(0.01)
        status, answer = await refused

    assert status == 400
    assert "JSON values" in answer["error"]
    assert "SANDBOX_MAX_INPUT_FILES" in answer["error"]
    assert set(health) == {200}
    assert converted["files"] == 0
    if growth:
        assert growth[0] < 500 * MiB, f"peak memory grew by {growth[0] // MiB} MiB"


async def test_more_files_than_allowed_are_refused_before_they_are_decoded(
    http: aiohttp.ClientSession, start_server: StartServer
) -> None:
    server = await start_server(SANDBOX_MAX_INPUT_FILES="3")
    files = [{"name": f"f{i}.txt", "data": "eA=="} for i in range(4)]

    status, answer = await post_execute(http, server, execute_body("pass", files=files))

    assert status == 400
    assert answer["error"] == "4 input files; at most 3 are accepted (SANDBOX_MAX_INPUT_FILES)"
    status, _ = await post_execute(http, server, execute_body("pass", files=files[:3]))
    assert status == 200


def spy_on_conversion(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of files in each StartExecution the servicer converts to the core's spec."""
    seen: list[int] = []
    convert = service.spec_from_proto

    def spy(start: pb.StartExecution) -> Any:
        seen.append(len(start.files))
        return convert(start)

    monkeypatch.setattr(service, "spec_from_proto", spy)
    return seen


async def test_grpc_start_with_millions_of_files_is_refused_before_conversion(
    server: SandboxServer,
    channel: grpc.aio.Channel,
    stub: pb_grpc.SandboxStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    converted = spy_on_conversion(monkeypatch)
    files = pb.StartExecution.DESCRIPTOR.fields_by_name["files"].number
    # 1.9 million empty `files` entries, two bytes each: a start message under 4 MiB.
    start = pb.StartExecution.FromString(bytes([files << 3 | 2, 0]) * 1_900_000)
    start.code = "set_result(1)"
    health = health_pb2_grpc.HealthStub(channel)

    refused = asyncio.create_task(execute_error(stub, pb.ExecuteRequest(start=start)))
    statuses = []
    while not statuses or not refused.done():  # other tenants are served meanwhile
        answer = await health.Check(health_pb2.HealthCheckRequest())
        statuses.append(answer.status)
        await asyncio.sleep(0.01)
    error = await refused

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "1900000 input files" in (error.details() or "")
    assert "SANDBOX_MAX_INPUT_FILES" in (error.details() or "")
    assert set(statuses) == {health_pb2.HealthCheckResponse.SERVING}
    assert converted == []


async def test_grpc_start_with_too_many_env_variables_is_refused_before_conversion(
    server: SandboxServer, stub: pb_grpc.SandboxStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    converted = spy_on_conversion(monkeypatch)
    request = start_message("set_result(1)", env={f"V{i}": "" for i in range(100_000)})

    error = await execute_error(stub, request)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "env: 100000 variables" in (error.details() or "")
    assert converted == []


# -- tool calls in flight ---------------------------------------------------------------

PAD = 512 * 1024
"""Bytes of arguments per call (the callback fixture takes bodies up to 1 MiB)."""
CALL = PAD + 4096
"""Room for one call: its arguments plus the callback body's other fields."""


class ConcurrencyProbe:
    """A slow tool endpoint that records how many calls it held at once, per execution."""

    def __init__(self) -> None:
        self.active: collections.Counter[str] = collections.Counter()
        self.peak: collections.Counter[str] = collections.Counter()
        self.peak_total = 0

    async def answer(self, body: dict[str, Any]) -> web.Response:
        execution = body["execution_id"]
        self.active[execution] += 1
        self.peak[execution] = max(self.peak[execution], self.active[execution])
        self.peak_total = max(self.peak_total, self.active.total())
        try:
            await asyncio.sleep(0.2)
        finally:
            self.active[execution] -= 1
        args = body["args"]
        return web.json_response({"data": json.dumps([args["i"], len(args["pad"])])})


PARALLEL_CALLS = f"""
pad = "x" * {PAD}
set_result(call_tools_parallel([("echo", dict(i=i, pad=pad)) for i in range(10)]))
"""


async def test_parallel_large_tool_calls_wait_for_room_and_all_complete(
    http: aiohttp.ClientSession,
    start_server: StartServer,
    callback: CallbackServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(callbacks, "CALL_BYTES_PER_EXECUTION", 3 * CALL)
    monkeypatch.setattr(callbacks, "CALL_BYTES_TOTAL", 4 * CALL)
    server = await start_server()
    probe = ConcurrencyProbe()
    callback.answer = probe.answer

    results = await asyncio.gather(
        *(
            post_execute(
                http,
                server,
                execute_body(PARALLEL_CALLS, callback_url=callback.url, execution_id=name),
            )
            for name in ("exec-a", "exec-b")
        )
    )

    for status, answer in results:
        assert status == 200, answer
        assert json.loads(answer["output"]) == [[i, PAD] for i in range(10)]
    assert len(callback.calls) == 20
    assert 2 <= probe.peak["exec-a"] <= 3  # still parallel, but within one execution's budget
    assert probe.peak["exec-b"] <= 3
    assert probe.peak_total <= 4  # within the facade's budget


async def test_a_tool_call_larger_than_the_budget_is_a_tool_error(
    http: aiohttp.ClientSession,
    server: SandboxServer,
    callback: CallbackServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(callbacks, "CALL_BYTES_PER_EXECUTION", 256 * 1024)
    code = (
        "try:\n    call_tool('big', {'pad': 'x' * (512 * 1024)})\n"
        "except RuntimeError as exc:\n    set_result(str(exc))\n"
    )

    status, answer = await post_execute(http, server, execute_body(code, callback_url=callback.url))

    assert status == 200, answer
    assert "more than the 262144 bytes a callback may take" in json.loads(answer["output"])
    assert callback.calls == []


# -- connection floods -----------------------------------------------------------------


async def test_idle_connections_beyond_the_cap_are_dropped_and_clients_get_in(
    http: aiohttp.ClientSession, start_server: StartServer
) -> None:
    server = await start_server(SANDBOX_MAX_CONNECTIONS="16")
    flood: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for i in range(40):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
            if i % 2:  # half of them start a request and never finish its headers
                writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            flood.append((reader, writer))

        def dropped() -> int:
            return sum(reader.at_eof() for reader, _ in flood)

        # At most 16 held: each connection over the cap took the place of an idle one.
        await eventually(lambda: dropped() >= 40 - 16, what="idle connections dropped")
        async with http.get(base_url(server) + "/health") as response:
            assert response.status == 200
        status, answer = await post_execute(http, server, execute_body("set_result(2 + 2)"))
        assert (status, answer["output"]) == (200, "4")
    finally:
        for _, writer in flood:
            writer.close()


async def test_when_every_connection_is_busy_a_new_one_is_closed_at_once(
    http: aiohttp.ClientSession, start_server: StartServer
) -> None:
    server = await start_server(SANDBOX_MAX_CONNECTIONS="16")
    busy: list[asyncio.StreamWriter] = []
    try:
        for _ in range(16):  # requests in progress: bodies that never finish arriving
            reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
            writer.write(
                b"POST /execute HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\nExpect: 100-continue\r\n\r\n"
            )
            busy.append(writer)
            # The handler has started (and marked its connection busy) once it asks for the body.
            assert (await reader.readline()).startswith(b"HTTP/1.1 100")

        reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        try:
            async with asyncio.timeout(10):
                assert await reader.read() == b""  # closed without an answer
        except ConnectionResetError:
            pass
        writer.close()
    finally:
        for writer in busy:
            writer.close()

    async def healthy() -> bool:
        try:
            async with http.get(base_url(server) + "/health") as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    await eventually(healthy, what="a free connection once the busy ones went away")
