"""The standard services (health, reflection) and GetInfo."""

from __future__ import annotations

import subprocess

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import sandbox_server
from oasis.sandbox.v1 import sandbox_pb2 as pb
from oasis.sandbox.v1 import sandbox_pb2_grpc as pb_grpc

from ..conftest import StartServer, runtime_python
from ..helpers import rpc_error

SERVICE = "oasis.sandbox.v1.Sandbox"


async def test_health_serving(channel: grpc.aio.Channel) -> None:
    """The overall server and the Sandbox service both report SERVING."""
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE):
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    error = await rpc_error(stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service")))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def reflect(
    channel: grpc.aio.Channel, *requests: reflection_pb2.ServerReflectionRequest
) -> list[reflection_pb2.ServerReflectionResponse]:
    """Send reflection requests on one stream and collect the answers."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(iter(requests))
    return [response async for response in call]


async def test_reflection_lists_the_services(channel: grpc.aio.Channel) -> None:
    """Reflection names the Sandbox, Health and reflection services, as grpcurl needs."""
    [response] = await reflect(channel, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in response.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names


async def test_reflection_describes_the_contract(channel: grpc.aio.Channel) -> None:
    """The descriptors served by reflection are enough to rebuild the contract (with its imports)."""
    [response] = await reflect(
        channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE)
    )
    pool = descriptor_pool.DescriptorPool()
    protos = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]
    pending = {p.name: p for p in protos}
    while pending:  # add dependencies first
        for name, proto in list(pending.items()):
            if all(dep not in pending for dep in proto.dependency):
                pool.Add(proto)
                del pending[name]
    service = pool.FindServiceByName(SERVICE)
    methods = {m.name: (m.input_type.full_name, m.output_type.full_name) for m in service.methods}
    assert methods == {
        "Execute": ("oasis.sandbox.v1.ExecuteRequest", "oasis.sandbox.v1.ExecuteResponse"),
        "ResetState": ("oasis.sandbox.v1.ResetStateRequest", "oasis.sandbox.v1.ResetStateResponse"),
        "DeleteWorkspace": (
            "oasis.sandbox.v1.DeleteWorkspaceRequest",
            "oasis.sandbox.v1.DeleteWorkspaceResponse",
        ),
        "GetInfo": ("oasis.sandbox.v1.GetInfoRequest", "oasis.sandbox.v1.GetInfoResponse"),
    }
    execute = service.methods_by_name["Execute"]
    assert execute.client_streaming and execute.server_streaming
    timeout_type = (
        pool.FindMessageTypeByName("oasis.sandbox.v1.StartExecution")
        .fields_by_name["timeout"]
        .message_type
    )
    assert timeout_type is not None and timeout_type.full_name == "google.protobuf.Duration"


def interpreter_version(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


async def test_get_info_defaults(stub: pb_grpc.SandboxStub) -> None:
    """Runtimes with their real versions, the default limits, isolation level and server version."""
    info = await stub.GetInfo(pb.GetInfoRequest())
    runtimes = {r.name: r.version for r in info.runtimes}
    assert set(runtimes) == {"python", "node"}
    python = interpreter_version(
        [runtime_python(), "-c", "import platform; print(platform.python_version())"]
    )
    assert runtimes["python"] == python
    assert runtimes["node"] == interpreter_version(["node", "--version"]).lstrip("v")
    limits = info.limits
    assert limits.max_concurrent == 4
    assert limits.default_timeout.ToSeconds() == 30
    assert limits.max_timeout.ToSeconds() == 300
    assert limits.max_output == 512 * 1024
    assert limits.session_ttl.ToSeconds() == 3600
    assert info.isolation
    assert info.server_version == sandbox_server.__version__


async def test_get_info_reflects_configuration(start_server: StartServer) -> None:
    """Limits in GetInfo are the ones configured through SANDBOX_* variables."""
    server = await start_server(
        SANDBOX_MAX_CONCURRENT="7",
        SANDBOX_MAX_OUTPUT="64KiB",
        SANDBOX_SESSION_TTL="90s",
        SANDBOX_MAX_TIMEOUT="2m",
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        info = await pb_grpc.SandboxStub(channel).GetInfo(pb.GetInfoRequest())
    assert info.limits.max_concurrent == 7
    assert info.limits.max_output == 64 * 1024
    assert info.limits.session_ttl.ToSeconds() == 90
    assert info.limits.max_timeout.ToSeconds() == 120
