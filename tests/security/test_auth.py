"""SANDBOX_AUTH_TOKEN: every RPC and HTTP endpoint but health refuses a missing or wrong bearer token."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from aiohttp import ClientSession
from grpc_health.v1 import health_pb2, health_pb2_grpc

from oasis import CodeRequest, tool_dispatcher
from oasis.code import GrpcRunner
from oasis.errors import Unauthenticated
from oasis.sandbox.v1 import sandbox_pb2 as pb
from oasis.sandbox.v1 import sandbox_pb2_grpc as pb_grpc
from sandbox_server import peers
from sandbox_server.server import SandboxServer

from ..conftest import StartServer
from ..helpers import execute_error, rpc_error, start_message
from .conftest import session_path

TOKEN = "oasis-test-token-0123456789"
WRONG = [
    None,
    "",
    "Bearer wrong-token",
    f"bearer {TOKEN}",
    TOKEN,
    f"Bearer {TOKEN}x",
    f"Bearer  {TOKEN}",
]


@pytest.fixture
async def guarded(start_server: StartServer) -> SandboxServer:
    return await start_server(SANDBOX_AUTH_TOKEN=TOKEN)


@pytest.fixture
async def guarded_stub(guarded: SandboxServer) -> AsyncIterator[pb_grpc.SandboxStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{guarded.port}") as channel:
        yield pb_grpc.SandboxStub(channel)


def metadata(header: str | None) -> tuple[tuple[str, str], ...]:
    return () if header is None else (("authorization", header),)


@pytest.mark.parametrize("header", WRONG)
async def test_grpc_refuses_missing_and_wrong_tokens(
    guarded: SandboxServer, guarded_stub: pb_grpc.SandboxStub, header: str | None
) -> None:
    """Execute, GetInfo and DeleteWorkspace answer UNAUTHENTICATED; the code never runs."""
    code = "open('ran.txt', 'w').write('yes')\nset_result(1)"
    execution = guarded_stub.Execute(metadata=metadata(header))
    # The refusal may arrive before the write; read() below reports it either way.
    with contextlib.suppress(grpc.aio.AioRpcError):
        await execution.write(start_message(code, session_id="intruder"))
    error = await rpc_error(execution.read())
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "bearer token" in error.details()
    for call in (
        guarded_stub.GetInfo(pb.GetInfoRequest(), metadata=metadata(header)),
        guarded_stub.DeleteWorkspace(
            pb.DeleteWorkspaceRequest(session_id="intruder"), metadata=metadata(header)
        ),
    ):
        assert (await rpc_error(call)).code() == grpc.StatusCode.UNAUTHENTICATED
    assert not session_path(guarded, "intruder").exists()


async def test_grpc_accepts_the_right_token_and_health_stays_open(
    guarded: SandboxServer, guarded_stub: pb_grpc.SandboxStub
) -> None:
    """With the token every RPC works; health answers SERVING to anyone."""
    async with GrpcRunner(f"127.0.0.1:{guarded.port}", token=TOKEN) as runner:
        result = await runner.run(CodeRequest(code="set_result(6 * 7)"), tool_dispatcher({}))
        assert result.output == 42
        assert (await runner.info()).isolation == "namespaces"
        assert await runner.delete_workspace("nobody") is False
    async with grpc.aio.insecure_channel(f"127.0.0.1:{guarded.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "oasis.sandbox.v1.Sandbox"):
            response = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert response.status == health_pb2.HealthCheckResponse.SERVING
    async with GrpcRunner(f"127.0.0.1:{guarded.port}", token="wrong", max_retries=0) as runner:
        with pytest.raises(Unauthenticated):
            await runner.info()
    error = await execute_error(guarded_stub, start_message("set_result(1)"))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("header", WRONG)
async def test_http_refuses_missing_and_wrong_tokens(
    guarded: SandboxServer, header: str | None
) -> None:
    """POST /execute and DELETE /workspace answer 401 with a JSON error; GET /health answers 200."""
    base = f"http://127.0.0.1:{guarded.http_port}"
    headers = {} if header is None else {"Authorization": header}
    body = {"code": "open('ran.txt', 'w').write('yes')", "session_id": "intruder"}
    async with ClientSession() as http:
        for method, path, payload in (
            ("POST", "/execute", body),
            ("DELETE", "/workspace/intruder", None),
        ):
            async with http.request(method, base + path, json=payload, headers=headers) as response:
                assert response.status == 401
                assert response.headers["WWW-Authenticate"] == "Bearer"
                assert "bearer token" in (await response.json())["error"]
        async with http.get(base + "/health", headers=headers) as response:
            assert response.status == 200
            assert (await response.json()) == {"status": "ready"}
    assert not session_path(guarded, "intruder").exists()


async def test_http_accepts_the_right_token(guarded: SandboxServer) -> None:
    """With `Authorization: Bearer <token>` the facade runs code."""
    base = f"http://127.0.0.1:{guarded.http_port}"
    async with (
        ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http,
        http.post(base + "/execute", json={"code": "set_result('in')"}) as response,
    ):
        assert response.status == 200
        assert json.loads((await response.json())["output"]) == "in"


# A bare-bones gRPC call over cleartext HTTP/2 (the runtime has no grpc package):
# GetInfo, returning how many response bytes came back in DATA frames.
RAW_GET_INFO = """
import socket, struct

def frame(kind, flags, stream, payload):
    return struct.pack('>I', len(payload))[1:] + bytes([kind, flags]) + struct.pack('>I', stream) + payload

def header(name, value):  # HPACK literal, not indexed, no Huffman
    return b'\\x00' + bytes([len(name)]) + name + bytes([len(value)]) + value

def get_info(port, connect=None):
    fields = [(b':method', b'POST'), (b':scheme', b'http'), (b':authority', b'127.0.0.1'),
              (b':path', b'/oasis.sandbox.v1.Sandbox/GetInfo'),
              (b'content-type', b'application/grpc'), (b'te', b'trailers')]
    block = b''.join(header(n, v) for n, v in fields)
    received, pending = 0, b''
    with (connect or (lambda p: socket.create_connection(('127.0.0.1', p), timeout=10)))(port) as s:
        s.sendall(b'PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n' + frame(4, 0, 0, b'')
                  + frame(1, 4, 1, block) + frame(0, 1, 1, bytes(5)))
        while chunk := s.recv(65536):
            pending += chunk
            while len(pending) >= 9 and len(pending) >= 9 + int.from_bytes(pending[:3], 'big'):
                size, kind, flags = int.from_bytes(pending[:3], 'big'), pending[3], pending[4]
                stream = int.from_bytes(pending[5:9], 'big')
                payload, pending = pending[9:9 + size], pending[9 + size:]
                if kind == 4 and not flags & 1:
                    s.sendall(frame(4, 1, 0, b''))
                if kind == 0 and stream == 1:
                    received += len(payload)
                if (stream == 1 and flags & 1 and kind in (0, 1)) or kind == 7:
                    return received
    return received
"""

REACH_THE_API = (
    RAW_GET_INFO
    + """
import json, urllib.error, urllib.request

def http(method, path, body=None):
    request = urllib.request.Request(f'http://127.0.0.1:{HTTP_PORT}{path}', method=method,
        data=json.dumps(body).encode() if body else None, headers={'Content-Type': 'application/json'})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return [response.status, response.read().decode()]
    except urllib.error.HTTPError as exc:
        return [exc.code, exc.read().decode()]

set_result({
    'execute': http('POST', '/execute', {'code': "set_result(open('secret.txt').read())",
                                         'session_id': 'victim'}),
    'delete': http('DELETE', '/workspace/victim'),
    'health': http('GET', '/health')[0],
    'grpc_bytes': get_info(GRPC_PORT),
})
"""
)


def raw_get_info(port: int) -> int:
    """Run the bare-bones GetInfo client here, outside any sandbox."""
    scope: dict[str, object] = {}
    exec(RAW_GET_INFO, scope)
    get_info = scope["get_info"]
    assert callable(get_info)
    return int(get_info(port))


@pytest.mark.parametrize("token", ["", TOKEN])
async def test_code_cannot_use_the_server_api(start_server: StartServer, token: str) -> None:
    """Code that reaches the server's own ports (host network) is refused, token or not; health stays open."""
    server = await start_server(SANDBOX_AUTH_TOKEN=token, SANDBOX_NETWORK="host")
    async with GrpcRunner(f"127.0.0.1:{server.port}", token=token or None) as runner:
        await runner.run(
            CodeRequest(code="open('secret.txt', 'w').write('victim data')", session_id="victim"),
            tool_dispatcher({}),
        )
        code = REACH_THE_API.replace("HTTP_PORT", str(server.http_port)).replace(
            "GRPC_PORT", str(server.port)
        )
        result = await runner.run(
            CodeRequest(code=code, session_id="attacker", timeout=30), tool_dispatcher({})
        )
    report = result.output
    assert report is not None, result.error
    assert report["execute"][0] == report["delete"][0] == 403
    assert "victim data" not in report["execute"][1]
    assert report["health"] == 200
    assert report["grpc_bytes"] == 0
    assert session_path(server, "victim").is_dir()
    # The same bare-bones client, from outside the sandbox, does get an answer (without a token).
    if not token:
        assert await asyncio.to_thread(raw_get_info, server.port) > 0


# The second line of defence under SANDBOX_NETWORK=host: tricks that hid the
# code's socket from the old peer check (which matched the first row with the
# client's port, TIME_WAIT rows included, and could not parse IPv6 peers).
DISGUISED_CLIENT = (
    RAW_GET_INFO
    + """
import json, socket, urllib.parse

def via_time_wait(host):
    # A TIME_WAIT row on port P (the kernel shows uid 0 for it), then P reused for the real call.
    family = socket.AF_INET6 if ':' in host else socket.AF_INET
    def connect(port):
        listener = socket.socket(family)
        listener.bind((host, 0))
        listener.listen()
        first = socket.socket(family)
        first.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        first.bind((host, 0))
        reused = first.getsockname()[1]
        first.connect(listener.getsockname()[:2])
        accepted, _ = listener.accept()
        first.close()  # closed first, so the TIME_WAIT row is on our side
        accepted.close()
        listener.close()
        s = socket.socket(family)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, reused))
        s.settimeout(10)
        s.connect((host, port))
        return s
    return connect

def http_status(connect, port):
    body = json.dumps({'code': "open('planted.txt', 'w').write('x')", 'session_id': 'victim'})
    with connect(port) as s:
        s.sendall(('POST /execute HTTP/1.1\\r\\nHost: localhost\\r\\nContent-Type: application/json\\r\\n'
                   f'Content-Length: {len(body)}\\r\\nConnection: close\\r\\n\\r\\n{body}').encode())
        return int(s.recv(100).split()[1])

HOST = 'ADDRESS'
connect = via_time_wait(HOST) if TRICK == 'time_wait' else (
    lambda port: socket.create_connection((HOST, port), timeout=10))
set_result({'grpc_bytes': get_info(GRPC_PORT, connect), 'http': http_status(connect, HTTP_PORT)})
"""
)


def _link_local() -> str | None:
    """This host's first link-local IPv6 address with its scope, if it has one."""
    try:
        rows = Path("/proc/net/if_inet6").read_text().split("\n")
    except OSError:
        return None
    for row in filter(None, rows):
        hexa, _, _, scope, _, name = row.split()
        if scope == "20":  # link scope
            return f"{ipaddress.IPv6Address(int(hexa, 16))}%{name}"
    return None


@pytest.mark.parametrize(
    ("trick", "address"),
    [("time_wait", "127.0.0.1"), ("time_wait", "::1"), ("ipv6", "::1"), ("ipv6", "link-local")],
)
async def test_disguised_sockets_of_the_code_are_still_refused(
    start_server: StartServer, trick: str, address: str
) -> None:
    """TIME_WAIT rows on the code's source port, and IPv6 peers (loopback or link-local, whose
    scope once hid them), no longer pass as outside clients."""
    if address == "link-local":
        address = _link_local() or ""
        if not address:
            pytest.skip("no link-local IPv6 address here")
    bind = "[::]" if "%" in address else f"[{address}]" if ":" in address else address
    server = await start_server(
        SANDBOX_NETWORK="host", SANDBOX_GRPC_ADDR=f"{bind}:0", SANDBOX_ADDR=f"{bind}:0"
    )
    if bind == "[::]":
        bind = "[::1]"  # where the outside client below connects
    code = (
        DISGUISED_CLIENT.replace("ADDRESS", address)
        .replace("TRICK", repr(trick))
        .replace("GRPC_PORT", str(server.port))
        .replace("HTTP_PORT", str(server.http_port))
    )
    async with GrpcRunner(f"{bind}:{server.port}") as runner:
        result = await runner.run(
            CodeRequest(code=code, session_id="attacker", timeout=30), tool_dispatcher({})
        )
        outside = await runner.run(CodeRequest(code="set_result(1)"), tool_dispatcher({}))
    assert result.output == {"grpc_bytes": 0, "http": 403}, result.error
    assert not (session_path(server, "victim") / "planted.txt").exists()
    assert outside.output == 1  # the same kind of local client, outside the sandbox, is served


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("ipv4:127.0.0.1:4242", ("127.0.0.1", 4242)),
        ("ipv6:[::1]:4242", ("::1", 4242)),
        ("ipv6:%5B::1%5D:4242", ("::1", 4242)),
        ("ipv6:[fe80::1%25eth0]:80", ("fe80::1%eth0", 80)),
    ],
)
def test_grpc_peers_are_parsed(peer: str, expected: tuple[str, int]) -> None:
    assert peers.parse_grpc_peer(peer) == expected


@pytest.mark.parametrize(
    "peer", ["unix:/tmp/socket", "ipv4:127.0.0.1", "ipv4::4242", "ipv4:127.0.0.1:99999", "x"]
)
def test_unparsable_grpc_peers_are_treated_as_sandboxed(peer: str) -> None:
    """Anything but a TCP peer with an address and a port is refused, as sandboxed code is."""
    with pytest.raises(ValueError):
        peers.parse_grpc_peer(peer)
    assert peers.grpc_peer_is_sandboxed(peer, [50051])
