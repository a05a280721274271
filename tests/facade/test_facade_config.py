"""SANDBOX_ADDR: where the HTTP facade listens, and the errors that name it."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import aiohttp
import pytest

from sandbox_server.config import ConfigError
from sandbox_server.server import SandboxServer

from ..conftest import StartServer, make_config


def test_default_address_is_loopback_9000(tmp_path: Path) -> None:
    config = make_config(tmp_path, SANDBOX_ADDR="")

    assert config.http_addr == "127.0.0.1:9000"


@pytest.mark.parametrize("value", ["9000", "localhost", "127.0.0.1:port", "127.0.0.1:70000"])
def test_invalid_address_names_the_variable(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=r"^SANDBOX_ADDR: "):
        make_config(tmp_path, SANDBOX_ADDR=value)


async def test_empty_host_listens_on_all_interfaces(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    server = await start_server(SANDBOX_ADDR=":0")

    assert server.http_address == f"0.0.0.0:{server.http_port}"
    assert f"0.0.0.0:{server.http_port} (HTTP)" in server.describe()
    async with http.get(f"http://127.0.0.1:{server.http_port}/health") as response:
        assert response.status == 200


async def test_a_port_in_use_fails_the_start_naming_the_variable(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = SandboxServer(make_config(tmp_path, SANDBOX_ADDR=f"127.0.0.1:{port}"))
        with pytest.raises(
            OSError, match=re.escape(f"SANDBOX_ADDR: cannot listen on 127.0.0.1:{port}")
        ):
            await server.start()
