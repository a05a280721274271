"""TLS and mutual TLS on the gRPC port, with certificates made here by the openssl CLI.

A test CA signs the server's certificate (for 127.0.0.1) and a client
certificate; a second, rogue CA signs a client certificate the server must
refuse under mutual TLS.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from oasis import CodeRequest, tool_dispatcher
from oasis.code import GrpcRunner
from oasis.sandbox.v1 import sandbox_pb2 as pb
from oasis.sandbox.v1 import sandbox_pb2_grpc as pb_grpc
from sandbox_server.server import SandboxServer

from ..conftest import StartServer
from ..helpers import rpc_error

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


@dataclass(frozen=True)
class Pki:
    folder: Path

    def path(self, name: str) -> Path:
        return self.folder / name

    def read(self, name: str) -> bytes:
        return (self.folder / name).read_bytes()


def _openssl(folder: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)


def _ca(folder: Path, name: str) -> None:
    _openssl(
        folder, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
        "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip


def _signed(folder: Path, name: str, ca: str, extensions: str) -> None:
    _openssl(
        folder, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
    )  # fmt: skip
    (folder / f"{name}.ext").write_text(extensions)
    _openssl(
        folder, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    _ca(folder, "ca")
    _ca(folder, "rogue-ca")
    _signed(folder, "server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _signed(folder, "client", "ca", "extendedKeyUsage=clientAuth\n")
    _signed(folder, "rogue-client", "rogue-ca", "extendedKeyUsage=clientAuth\n")
    return Pki(folder)


async def get_info(server: SandboxServer, credentials: grpc.ChannelCredentials | None) -> object:
    """GetInfo over a secure channel (or a plain one when `credentials` is None)."""
    target = f"127.0.0.1:{server.port}"
    channel = (
        grpc.aio.insecure_channel(target)
        if credentials is None
        else grpc.aio.secure_channel(target, credentials)
    )
    async with channel:
        return await pb_grpc.SandboxStub(channel).GetInfo(pb.GetInfoRequest(), timeout=10)


async def test_tls_server(start_server: StartServer, pki: Pki) -> None:
    """With SANDBOX_TLS_CERT/KEY, a client trusting the CA works; plaintext and other CAs fail."""
    server = await start_server(
        SANDBOX_TLS_CERT=str(pki.path("server.pem")), SANDBOX_TLS_KEY=str(pki.path("server.key"))
    )
    async with GrpcRunner(
        f"127.0.0.1:{server.port}", root_certificates=pki.read("ca.pem")
    ) as runner:
        assert (await runner.info()).isolation == "namespaces"
        result = await runner.run(CodeRequest(code="set_result('over tls')"), tool_dispatcher({}))
        assert result.output == "over tls"
    plain = await rpc_error(get_info(server, None))
    assert plain.code() == grpc.StatusCode.UNAVAILABLE
    rogue = grpc.ssl_channel_credentials(root_certificates=pki.read("rogue-ca.pem"))
    assert (await rpc_error(get_info(server, rogue))).code() == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls(start_server: StartServer, pki: Pki) -> None:
    """With SANDBOX_TLS_CLIENT_CA, only clients with a certificate from that CA get in."""
    server = await start_server(
        SANDBOX_TLS_CERT=str(pki.path("server.pem")),
        SANDBOX_TLS_KEY=str(pki.path("server.key")),
        SANDBOX_TLS_CLIENT_CA=str(pki.path("ca.pem")),
    )
    async with GrpcRunner(
        f"127.0.0.1:{server.port}",
        root_certificates=pki.read("ca.pem"),
        private_key=pki.read("client.key"),
        certificate_chain=pki.read("client.pem"),
    ) as runner:
        result = await runner.run(CodeRequest(code="set_result('mutual')"), tool_dispatcher({}))
        assert result.output == "mutual"

    no_cert = grpc.ssl_channel_credentials(root_certificates=pki.read("ca.pem"))
    rogue_cert = grpc.ssl_channel_credentials(
        root_certificates=pki.read("ca.pem"),
        private_key=pki.read("rogue-client.key"),
        certificate_chain=pki.read("rogue-client.pem"),
    )
    for credentials in (no_cert, rogue_cert):
        assert (
            await rpc_error(get_info(server, credentials))
        ).code() == grpc.StatusCode.UNAVAILABLE
    assert (await rpc_error(get_info(server, None))).code() == grpc.StatusCode.UNAVAILABLE


async def test_tls_with_token(start_server: StartServer, pki: Pki) -> None:
    """TLS does not replace the token: a TLS client without it is UNAUTHENTICATED."""
    server = await start_server(
        SANDBOX_TLS_CERT=str(pki.path("server.pem")),
        SANDBOX_TLS_KEY=str(pki.path("server.key")),
        SANDBOX_AUTH_TOKEN="tls-and-token",
    )
    trusted = grpc.ssl_channel_credentials(root_certificates=pki.read("ca.pem"))
    error = await rpc_error(get_info(server, trusted))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    async with GrpcRunner(
        f"127.0.0.1:{server.port}", root_certificates=pki.read("ca.pem"), token="tls-and-token"
    ) as runner:
        assert (await runner.info()).isolation == "namespaces"
