"""Refuse API requests that come from sandboxed code itself.

With SANDBOX_NETWORK=host the code shares the host's network, so it can
connect to the server's own ports like any client, and without a token it
could then run code in any session whose id it guesses. Every socket on this
host appears in the kernel's tables (/proc/net/tcp, tcp6) with its owner's
uid: a request whose peer socket belongs to a session uid is refused, token
or not. Peers on other machines are not in the tables and are not affected.
"""

from __future__ import annotations

import inspect
import ipaddress
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from .isolation import UID_BASE, UID_COUNT

MESSAGE = "requests from inside the sandbox are refused"


def _proc_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    """How /proc/net/tcp* prints an address: the raw 32-bit words in host order, then the port."""
    words = struct.unpack(f"={len(address.packed) // 4}I", address.packed)
    return "".join(f"{word:08X}" for word in words) + f":{port:04X}"


def socket_uid(host: str, port: int) -> int | None:
    """The uid owning the TCP socket on this host whose own end is host:port; None if none is."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv4Address):
        # An IPv4 client socket is in tcp, or in tcp6 when it was opened as IPv6.
        wanted = {
            "/proc/net/tcp": _proc_address(address, port),
            "/proc/net/tcp6": _proc_address(ipaddress.IPv6Address(f"::ffff:{address}"), port),
        }
    else:
        wanted = {"/proc/net/tcp6": _proc_address(address, port)}
    for table, local in wanted.items():
        try:
            with open(table, encoding="ascii") as rows:
                for row in rows:
                    if local in row:
                        fields = row.split()
                        if fields[1] == local:
                            return int(fields[7])
        except (OSError, IndexError, ValueError):
            continue
    return None


def is_sandboxed(host: str, port: int) -> bool:
    """Whether the peer at host:port is a socket of a session uid on this host."""
    uid = socket_uid(host, port)
    return uid is not None and UID_BASE <= uid < UID_BASE + UID_COUNT


def grpc_peer_is_sandboxed(peer: str) -> bool:
    """The same for a gRPC peer string: `ipv4:127.0.0.1:4242` or `ipv6:[::1]:4242`."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return False
    host, _, port = rest.rpartition(":")
    try:
        return is_sandboxed(host.strip("[]"), int(port))
    except ValueError:
        return False


class SandboxedPeerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses the Sandbox service's RPCs (PERMISSION_DENIED) to peers that are sandboxed code."""

    def __init__(self, service_prefix: str) -> None:
        self._prefix = service_prefix

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(self._prefix):
            return handler
        return _guarded(handler)


async def _refuse_sandboxed(context: grpc.aio.ServicerContext) -> None:
    if grpc_peer_is_sandboxed(context.peer()):
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, MESSAGE)


def _guarded(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The same handler, checking the peer first (the Sandbox service has only these two kinds)."""
    codecs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        unary = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await _refuse_sandboxed(context)
            return await unary(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **codecs)
    if handler.stream_stream is not None:
        stream = handler.stream_stream
        if not inspect.isasyncgenfunction(stream):  # a handler that writes through the context

            async def stream_coroutine(requests: Any, context: grpc.aio.ServicerContext) -> Any:
                await _refuse_sandboxed(context)
                return await stream(requests, context)

            return grpc.stream_stream_rpc_method_handler(stream_coroutine, **codecs)

        async def stream_stream(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            await _refuse_sandboxed(context)
            async for response in stream(requests, context):
                yield response

        return grpc.stream_stream_rpc_method_handler(stream_stream, **codecs)
    raise TypeError(f"no peer check for this kind of RPC handler: {handler!r}")
