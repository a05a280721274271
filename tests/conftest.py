"""Fixtures that start real sandbox servers on 127.0.0.1 port 0."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from oasis.sandbox.v1 import sandbox_pb2_grpc as pb_grpc
from sandbox_server import config as config_module
from sandbox_server.server import SandboxServer

from .fake_openai import FakeOpenAI, fake_openai_server
from .pki import Pki, make_pki
from .sandbox_client import SandboxClient

REPO = Path(__file__).resolve().parent.parent


def runtime_python() -> str:
    """The interpreter with numpy, pandas and matplotlib that `make install` builds."""
    configured = os.environ.get("SANDBOX_PYTHON_BIN")
    if configured:
        return configured
    built = REPO / ".runtime" / "python" / "bin" / "python"
    return str(built) if built.exists() else "python3"


def make_config(workspace: Path, **env: str) -> config_module.Config:
    values = {
        "SANDBOX_GRPC_ADDR": "127.0.0.1:0",
        "SANDBOX_ADDR": "127.0.0.1:0",
        "SANDBOX_WORKSPACE": str(workspace),
        "SANDBOX_PYTHON_BIN": runtime_python(),
        "SANDBOX_SHUTDOWN_GRACE": "2s",
    }
    # `make test` runs the security and protocol suites again with SANDBOX_LAUNCHER=cold.
    if "SANDBOX_LAUNCHER" in os.environ:
        values["SANDBOX_LAUNCHER"] = os.environ["SANDBOX_LAUNCHER"]
    values.update(env)
    return config_module.load(values)


StartServer = Callable[..., Awaitable[SandboxServer]]


@pytest.fixture
async def start_server(tmp_path: Path) -> AsyncIterator[StartServer]:
    """Start a real server with SANDBOX_* overrides: `await start_server(SANDBOX_MAX_CONCURRENT="1")`."""
    servers: list[SandboxServer] = []

    async def start(**env: str) -> SandboxServer:
        server = SandboxServer(make_config(tmp_path / f"ws{len(servers)}", **env))
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop(grace=0)


@pytest.fixture
async def server(start_server: StartServer) -> SandboxServer:
    return await start_server()


@pytest.fixture
async def channel(server: SandboxServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as chan:
        yield chan


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> pb_grpc.SandboxStub:
    return pb_grpc.SandboxStub(channel)


@pytest.fixture
def client(channel: grpc.aio.Channel) -> SandboxClient:
    return SandboxClient(channel)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Certificates for TLS tests (skipped where the openssl CLI is missing)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl CLI")
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    """A fake OpenAI-compatible chat server on loopback, answering from `fake.replies`."""
    async with fake_openai_server() as server:
        yield server
