"""Server lifecycle: the gRPC server, health, reflection, the HTTP facade, and graceful stop."""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from oasis.code._wire import MAX_MESSAGE
from oasis.sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc

from .auth import TokenInterceptor
from .config import Config
from .core import Sandbox
from .errors import InUse
from .facade import Facade
from .peers import SandboxedPeerInterceptor
from .service import SandboxService

log = logging.getLogger(__name__)

SERVICE_NAME = sandbox_pb2.DESCRIPTOR.services_by_name["Sandbox"].full_name
_STREAMS_PER_CONNECTION = 256
_IDLE_CONNECTION_MS = 10 * 60 * 1000
_REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


class SandboxServer:
    """A running sandbox service; `async with SandboxServer(config) as server:`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.sandbox: Sandbox | None = None
        self.port = 0
        self.http_port = 0
        """The HTTP facade's bound port (SANDBOX_ADDR)."""
        self._grpc: grpc.aio.Server | None = None
        self._facade: Facade | None = None
        self._health = health.aio.HealthServicer()
        self._stopped = False

    @property
    def address(self) -> str:
        host = self.config.grpc_addr.rsplit(":", 1)[0] or "0.0.0.0"
        return f"{host}:{self.port}"

    @property
    def http_address(self) -> str:
        host = self.config.http_addr.rsplit(":", 1)[0] or "0.0.0.0"
        return f"{host}:{self.http_port}"

    async def start(self) -> None:
        self.sandbox = await Sandbox.start(self.config)
        config = self.config
        # The token check runs first; the peer check wraps the service's own handlers.
        peer_check = SandboxedPeerInterceptor(f"/{SERVICE_NAME}/")
        interceptors: list[grpc.aio.ServerInterceptor] = [peer_check]
        if config.auth_token:
            interceptors.insert(0, TokenInterceptor(config.auth_token))
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE + 64 * 1024),
                ("grpc.max_send_message_length", MAX_MESSAGE + 64 * 1024),
                # A flood of idle connections must not take every file descriptor:
                # past the cap new connections are closed at once, idle ones time out.
                ("grpc.max_allowed_incoming_connections", config.max_connections),
                # A second server on the same port must fail, not share it silently.
                ("grpc.so_reuseport", 0),
                ("grpc.max_concurrent_streams", _STREAMS_PER_CONNECTION),
                ("grpc.max_connection_idle_ms", _IDLE_CONNECTION_MS),
            ],
        )
        sandbox_pb2_grpc.add_SandboxServicer_to_server(SandboxService(self.sandbox), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        _add_reflection(
            server,
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
        )
        credentials = None
        if config.tls_cert and config.tls_key:
            client_ca = config.tls_client_ca.read_bytes() if config.tls_client_ca else None
            credentials = grpc.ssl_server_credentials(
                [(config.tls_key.read_bytes(), config.tls_cert.read_bytes())],
                root_certificates=client_ca,
                require_client_auth=client_ca is not None,
            )
        try:
            if credentials is not None:
                self.port = server.add_secure_port(config.grpc_addr, credentials)
            else:
                self.port = server.add_insecure_port(config.grpc_addr)
        except RuntimeError:  # grpc's word for "could not bind"
            self.port = 0
        if self.port == 0:
            await self.sandbox.close()
            raise InUse(
                f"SANDBOX_GRPC_ADDR: cannot listen on {config.grpc_addr}: the port is in use "
                "(another sandbox server?) or the address is not this machine's"
            )
        peer_check.ports.add(self.port)
        await server.start()
        self._grpc = server
        facade = Facade(self.sandbox, self.config)
        try:
            await facade.start()
        except BaseException:
            await server.stop(0)
            await self.sandbox.close()
            raise
        self._facade = facade
        self.http_port = facade.port
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float | None = None, hurry: asyncio.Event | None = None) -> None:
        """Health NOT_SERVING, refuse new work, let running executions finish (for `grace`
        seconds, or until `hurry` is set), then kill them."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.config.shutdown_grace if grace is None else grace
        await self._health.enter_graceful_shutdown()
        if self.sandbox is not None:
            await self.sandbox.shutdown(grace, hurry)
        if self._facade is not None:
            await self._facade.stop()
        if self._grpc is not None:
            await self._grpc.stop(1.0)
        if self.sandbox is not None:
            await self.sandbox.close()

    async def __aenter__(self) -> SandboxServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def describe(self) -> str:
        assert self.sandbox is not None
        info = self.sandbox.info()
        runtimes = ", ".join(f"{name} {version}" for name, version in info.runtimes.items())
        c = self.config
        return (
            f"oasis sandbox {info.version} listening on {self.address} (gRPC) and "
            f"{self.http_address} (HTTP) | runtimes: {runtimes} | "
            f"isolation: {info.isolation} | resource control: {info.resource_control} | "
            f"max_concurrent={c.max_concurrent} "
            f"timeout={c.default_timeout:g}s (max {c.max_timeout:g}s) max_output={c.max_output}B "
            f"session_ttl={c.session_ttl:g}s workspace={c.workspace_root}"
        )


def _add_reflection(server: grpc.aio.Server, service_names: tuple[str, ...]) -> None:
    """Serve reflection as v1alpha and as v1, which grpcurl and newer clients ask for first.

    grpcio-reflection ships only v1alpha; v1 is the same protocol renamed (its
    messages are identical on the wire), so the v1alpha servicer answers both.
    """
    reflection.enable_server_reflection(service_names, server)
    servicer = reflection.aio.ReflectionServicer(service_names)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(_REFLECTION_V1, {"ServerReflectionInfo": v1}),)
    )


async def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully; a second signal stops at once."""
    stop, hurry = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            log.info("second signal: stopping running executions now")
            hurry.set()
        stop.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
    server = SandboxServer(config)
    await server.start()
    try:
        log.info("%s", server.describe())
        await stop.wait()
        log.info(
            "shutting down: finishing running executions (grace %gs; "
            "Ctrl-C again to stop them now)",
            config.shutdown_grace,
        )
    finally:
        await server.stop(hurry=hurry)
    log.info("stopped")
