"""The machine-readable `code` of the facade's errors: the gRPC name of the same failure.

The statuses that test_facade_api and test_facade_hardening reach check their
code there; these are the ones only a particular server setup reaches.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import grpc
import pytest

from oasis.sandbox.v1 import sandbox_pb2 as pb
from oasis.sandbox.v1 import sandbox_pb2_grpc as pb_grpc
from sandbox_server.errors import Code
from sandbox_server.server import SandboxServer

from ..conftest import StartServer
from ..helpers import rpc_error
from .conftest import CallbackServer, base_url

TOKEN = "error-codes-token"


def test_every_code_is_a_grpc_status_with_an_http_error_status() -> None:
    for code in Code:
        assert code.name in grpc.StatusCode.__members__, code
        assert 400 <= code.http_status < 600, code


@pytest.mark.parametrize(("method", "path"), [("POST", "/execute"), ("DELETE", "/workspace/s1")])
async def test_a_missing_token_is_401_unauthenticated(
    http: aiohttp.ClientSession, start_server: StartServer, method: str, path: str
) -> None:
    server = await start_server(SANDBOX_AUTH_TOKEN=TOKEN)

    async with http.request(method, base_url(server) + path, json={"code": "pass"}) as response:
        answer = await response.json()
        assert (response.status, response.headers["WWW-Authenticate"]) == (401, "Bearer")
    assert answer["code"] == "UNAUTHENTICATED"
    assert "bearer token" in answer["error"]


async def test_deleting_a_busy_session_is_409_failed_precondition_in_both_transports(
    http: aiohttp.ClientSession,
    server: SandboxServer,
    stub: pb_grpc.SandboxStub,
    callback: CallbackServer,
) -> None:
    release = callback.hold()
    body = {"code": "call_tool('wait')", "session_id": "busy", "callback_url": callback.url}
    running = asyncio.create_task(_post(http, server, "/execute", body))
    await callback.wait_for_calls(1)

    async with http.delete(base_url(server) + "/workspace/busy") as response:
        status, answer = response.status, await response.json()
    grpc_error = await rpc_error(stub.DeleteWorkspace(pb.DeleteWorkspaceRequest(session_id="busy")))
    release.set()
    await running

    assert (status, answer["code"]) == (409, "FAILED_PRECONDITION")
    assert "running execution" in answer["error"]
    assert grpc_error.code().name == answer["code"]
    assert grpc_error.details() == answer["error"]


REACH_THE_FACADE = """
import json, urllib.error, urllib.request
request = urllib.request.Request('http://127.0.0.1:PORT/execute', data=b'{"code": "pass"}',
                                 headers={'Content-Type': 'application/json'})
try:
    urllib.request.urlopen(request, timeout=10)
except urllib.error.HTTPError as exc:
    set_result([exc.code, json.loads(exc.read())])
"""


async def test_code_inside_a_sandbox_is_403_permission_denied(
    http: aiohttp.ClientSession, start_server: StartServer
) -> None:
    server = await start_server(SANDBOX_NETWORK="host")
    code = REACH_THE_FACADE.replace("PORT", str(server.http_port))

    status, answer = await _post(http, server, "/execute", {"code": code, "timeout": 30})

    assert status == 200, answer
    refused_status, refused = json.loads(answer["output"])
    assert (refused_status, refused["code"]) == (403, "PERMISSION_DENIED")


async def _post(
    http: aiohttp.ClientSession, server: SandboxServer, path: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    async with http.post(base_url(server) + path, json=body) as response:
        return response.status, await response.json()
