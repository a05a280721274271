"""Guards in front of the HTTP facade: who may call it, and how many connections at once.

It answers programs, not web pages, and holds bounded resources however it
is flooded:

- `bearer_token`: everything but GET /health needs SANDBOX_AUTH_TOKEN, when set (401);
- `no_sandboxed_peers`: sandboxed code may reach the port, but gets only /health (403);
- `same_origin`: a foreign `Origin` (CSRF) or `Host` (DNS rebinding) is refused (403);
- `ConnectionCap`: at most SANDBOX_MAX_CONNECTIONS connections at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from .. import peers
from ..auth import token_matches
from ..errors import Code
from .response import error

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def bearer_token(token: str) -> Any:
    """Everything but GET /health needs `Authorization: Bearer <token>` (SANDBOX_AUTH_TOKEN)."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/health" or token_matches(request.headers.get("Authorization"), token):
            return await handler(request)
        return error(
            Code.UNAUTHENTICATED,
            "missing or wrong bearer token: send `Authorization: Bearer <SANDBOX_AUTH_TOKEN>`",
            headers={"WWW-Authenticate": "Bearer"},
        )

    return check


@web.middleware
async def no_sandboxed_peers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Sandboxed code may reach this port (SANDBOX_NETWORK=host) but gets only /health."""
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport else None
    own = transport.get_extra_info("sockname") if transport else None
    if request.path != "/health" and (
        not peer
        or not own
        # A sock_diag query, on the loop as in the gRPC interceptor (peers.py says why).
        or peers.is_sandboxed(_scoped(peer), peer[1], [own[1]], own[0])
    ):
        return error(Code.PERMISSION_DENIED, peers.MESSAGE)
    return await handler(request)


def _scoped(address: tuple[Any, ...]) -> str:
    """An IPv6 socket address's host with its scope (`fe80::1%4`): link-local needs it."""
    host = str(address[0])
    return f"{host}%{address[3]}" if len(address) == 4 and address[3] else host


def same_origin(hosts: HostCheck) -> Any:
    """Refuse web pages: a foreign `Origin` (CSRF) or `Host` (DNS rebinding) is a 403.

    GET /health stays open to any Host for probes; it tells nothing but "ready".
    """

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/health":
            return await handler(request)
        host = request.headers.get("Host")
        local = request.transport.get_extra_info("sockname") if request.transport else None
        if host is not None and not hosts.accepts(host, local[0] if local else None):
            return error(
                Code.PERMISSION_DENIED,
                f"Host {host[:100]!r} does not name this server; to reach it by that name "
                "add the name to SANDBOX_ALLOWED_HOSTS (a DNS-rebinding defence)",
            )
        origin = request.headers.get("Origin")
        if origin is not None and origin.lower() not in _own_origins(host):
            return error(
                Code.PERMISSION_DENIED,
                f"requests from web pages are refused (Origin {origin[:100]!r}); "
                "call the API from a program, not from a browser",
            )
        return await handler(request)

    return check


def _own_origins(host: str | None) -> tuple[str, ...]:
    """The origins of pages this server would itself serve (a TLS proxy may front it)."""
    return (f"http://{host.lower()}", f"https://{host.lower()}") if host else ()


def split_host(value: str) -> tuple[str, int | None]:
    """`name`, `name:port`, `[v6]:port` or a bare IPv6 address, as (lowercase name, port).

    An IP address comes back in its canonical form; ValueError when malformed.
    """
    value = value.strip().lower()
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{value!r} is not a host name or [address]:port")
        port = rest[1:]
    elif value.count(":") == 1:
        name, _, port = value.partition(":")
    else:  # a name without port, or a bare IPv6 address
        name, port = value, ""
    if port and not port.isdigit():
        raise ValueError(f"{value!r} has an invalid port")
    name = name.rstrip(".")
    with contextlib.suppress(ValueError):
        name = _canonical_ip(name)
    return name, int(port) if port else None


def _canonical_ip(text: str) -> str:
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    return str(address)


class HostCheck:
    """Which `Host` header values name this server (the DNS-rebinding defence).

    A rebinding page reaches the server under its own domain name, which is
    what tells it apart; so any port is accepted with a known name (proxies
    and published container ports change it). Known names: localhost,
    127.0.0.1, [::1], the machine's host name, the host of SANDBOX_ADDR, and
    the IP address the connection arrived on. SANDBOX_ALLOWED_HOSTS adds
    entries: `name` (any port) or `name:port` (only that port; a Host without
    a port is port 80).
    """

    def __init__(self, listen_host: str | None, allowed: tuple[str, ...]) -> None:
        self._names = {"localhost", "127.0.0.1", "::1", socket.gethostname().lower()}
        if listen_host:
            self._names.add(split_host(listen_host)[0])
        self._with_port: set[tuple[str, int]] = set()
        for entry in allowed:
            try:
                name, port = split_host(entry)
            except ValueError:
                log.warning("SANDBOX_ALLOWED_HOSTS: ignoring %r, not a host or host:port", entry)
                continue
            if port is None:
                self._names.add(name)
            else:
                self._with_port.add((name, port))

    def accepts(self, host: str, local_address: str | None) -> bool:
        """Whether `host` (a Host header) names this server; `local_address` is the
        address the connection arrived on."""
        try:
            name, port = split_host(host)
        except ValueError:
            return False
        if name in self._names or (name, port or 80) in self._with_port:
            return True
        # The address the client reached is one of this machine's own: with SANDBOX_ADDR
        # on all interfaces that may be any of them, and a rebinding page sends a name instead.
        return local_address is not None and name == _canonical_ip(local_address)


class ConnectionCap:
    """At most `limit` client connections at once (SANDBOX_MAX_CONNECTIONS), so that a
    flood of connections cannot use up the server's file descriptors.

    At the limit a new connection takes the place of the oldest idle one (kept
    alive between requests, or one that never finished its headers): dropping
    it loses no work and a real client reconnects, so idle connections cannot
    lock clients out. When every connection has a request in progress, the new
    one is closed at once.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.factory: Callable[[], RequestHandler] | None = None
        """aiohttp's protocol factory (the runner's server), set once the runner is set up."""
        self.refused = 0
        self.evicted = 0
        self._open: dict[RequestHandler, None] = {}  # in accept order: oldest first
        self._busy: set[RequestHandler] = set()

    @property
    def count(self) -> int:
        return len(self._open)

    def accept(self) -> asyncio.Protocol:
        """The listener's protocol factory, called once per accepted socket."""
        assert self.factory is not None
        if len(self._open) >= self.limit and not self._evict_idle():
            self.refused += 1
            log.warning(
                "HTTP connection refused: %d connections are busy (SANDBOX_MAX_CONNECTIONS)",
                len(self._open),
            )
            return _Refused()
        handler = self.factory()
        self._open[handler] = None
        return _Counted(handler, self._open)

    def _evict_idle(self) -> bool:
        # A handler without transport is accepted but not connected yet: closing it now would leak.
        idle = (h for h in self._open if h not in self._busy and h.transport is not None)
        victim = next(idle, None)
        if victim is None:
            return False
        del self._open[victim]
        victim.force_close()
        self.evicted += 1
        return True

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Marks the connection busy while one of its requests is handled."""
        self._busy.add(request.protocol)
        try:
            return await handler(request)
        finally:
            self._busy.discard(request.protocol)


class _Counted(asyncio.Protocol):
    """An accepted connection: aiohttp's handler, left in `open` until the socket closes."""

    def __init__(self, handler: RequestHandler, open_: dict[RequestHandler, None]) -> None:
        self._handler = handler
        self._open = open_

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._handler.data_received(data)

    def eof_received(self) -> None:
        self._handler.eof_received()  # aiohttp's answer is None: the transport closes

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._open.pop(self._handler, None)
        self._handler.connection_lost(exc)


class _Refused(asyncio.Protocol):
    """A connection over the cap: reset at once, so that its descriptor is freed now."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).abort()
