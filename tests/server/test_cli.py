"""The `oasis-sandbox` command itself, and reflection as v1 (what grpcurl asks for first)."""

from __future__ import annotations

import re
import subprocess
import sys

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2

import sandbox_server
from sandbox_server.cli import main
from sandbox_server.settings import SETTINGS

from ..conftest import REPO


def test_version_prints_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"oasis-sandbox {sandbox_server.__version__}\n"


async def test_reflection_v1_lists_the_services(channel: grpc.aio.Channel) -> None:
    """A v1 client (same messages, new package name) gets the service list too."""
    call = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    [response] = [response async for response in call]
    names = {s.name for s in response.list_services_response.service}
    assert {"oasis.sandbox.v1.Sandbox", "grpc.health.v1.Health"} <= names


def test_serve_help_lists_every_setting_the_server_reads() -> None:
    """One table (sandbox_server/settings.py) names every SANDBOX_* variable the server
    reads; `serve --help` prints it and the README's Configuration section has each."""
    done = subprocess.run(
        [sys.executable, "-m", "sandbox_server", "serve", "--help"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    tabled = {setting.name for setting in SETTINGS}
    read = set()
    for source in (REPO / "sandbox_server").rglob("*.py"):
        read |= set(re.findall(r'"(SANDBOX_[A-Z0-9_]+)"', source.read_text()))
    assert read <= tabled, f"read by the server but not in settings.py: {sorted(read - tabled)}"
    readme = (REPO / "README.md").read_text()
    for name in tabled:
        assert name in done.stdout
        assert f"`{name}`" in readme, f"{name} is not in the README"
