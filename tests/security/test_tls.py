"""TLS and mutual TLS on the gRPC port, with certificates made here by the openssl CLI.

A test CA signs the server's certificate (for 127.0.0.1) and a client
certificate; a second, rogue CA signs a client certificate the server must
refuse under mutual TLS.
"""

from __future__ import annotations

import shutil

import grpc
import pytest

from oasis import CodeRequest, tool_dispatcher
from oasis.code import GrpcRunner
from oasis.sandbox.v1 import sandbox_pb2 as pb
from oasis.sandbox.v1 import sandbox_pb2_grpc as pb_grpc
from sandbox_server.server import SandboxServer

from ..conftest import StartServer
from ..helpers import rpc_error
from ..pki import Pki

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


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
