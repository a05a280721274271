"""Refuse API requests that come from sandboxed code itself: the second line of defence.

The first line is the network: under egress and none the code has its own
namespace and cannot reach the server at all. With SANDBOX_NETWORK=host it
shares the host's network and can connect to the server like any client, so
every request from a local peer is traced to the socket that made it, and
refused when that socket belongs to a session uid, token or not.

The client's socket is found by an exact lookup of the whole connection
(its address and port, and ours) through the kernel's sock_diag netlink
interface, and it must be ESTABLISHED: a TIME_WAIT or listening socket that
happens to share a port (shown with uid 0) proves nothing. When a local peer
cannot be traced, or its address cannot be parsed, the request is refused.
Peers on other machines are not in this host's tables and are not affected.
A forwarder run by another local process still defeats any ownership check:
that is what the network isolation is for.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
import time
import urllib.parse
from collections.abc import Iterable

import grpc

from oasis._net import host_port

from .guard import GuardInterceptor, Refusal
from .isolation import UID_BASE, UID_COUNT
from .launcher.network import host_addresses

MESSAGE = "requests from inside the sandbox are refused"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_TCP_ESTABLISHED = 1
_NO_COOKIE = 0xFFFFFFFF
_UID_OFFSET = 64
"""inet_diag_msg: family, state, timer, retrans (4 bytes), sockid (48), expires, rqueue, wqueue, then uid."""
_LOCAL_TTL = 5.0


class Undecided(Exception):
    """The peer could not be traced to a socket: treated as sandboxed."""


def tcp_socket_uid(
    local: Address, local_port: int, remote: Address, remote_port: int, interface: int = 0
) -> int | None:
    """The uid of the ESTABLISHED TCP socket with exactly this connection; None if there is none.

    `interface`: the scope of a link-local connection (its interface index).
    """
    family = socket.AF_INET if local.version == 4 else socket.AF_INET6
    sockid = struct.pack(
        "!HH16s16s", local_port, remote_port, local.packed.ljust(16, b"\0"),
        remote.packed.ljust(16, b"\0"),
    ) + struct.pack("=III", interface, _NO_COOKIE, _NO_COOKIE)  # fmt: skip
    request = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
    header = struct.pack("=IHHII", 16 + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as link:
        link.settimeout(1.0)
        link.send(header + request)
        answer = link.recv(8192)
    kind = struct.unpack_from("=H", answer, 4)[0]
    if kind == _NLMSG_ERROR:
        code = -struct.unpack_from("=i", answer, 16)[0]
        if code == errno.ENOENT:
            return None
        raise OSError(code, f"sock_diag lookup failed: {errno.errorcode.get(code, code)}")
    if kind != _SOCK_DIAG_BY_FAMILY or len(answer) < 16 + _UID_OFFSET + 4:
        raise OSError(f"sock_diag answered an unexpected message (type {kind})")
    state = answer[16 + 1]
    if state != _TCP_ESTABLISHED:
        return None
    uid: int = struct.unpack_from("=I", answer, 16 + _UID_OFFSET)[0]
    return uid


class _LocalAddresses:
    """This host's own addresses, re-read at most every few seconds (not per request)."""

    def __init__(self) -> None:
        self._read_at = -_LOCAL_TTL
        self._addresses: frozenset[Address] = frozenset()

    def get(self) -> frozenset[Address]:
        if time.monotonic() - self._read_at > _LOCAL_TTL:
            self._addresses = frozenset([*host_addresses(), *_ipv6_addresses()])
            self._read_at = time.monotonic()
        return self._addresses


def _ipv6_addresses() -> list[ipaddress.IPv6Address]:
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as table:
            return [ipaddress.IPv6Address(int(line.split()[0], 16)) for line in table]
    except (OSError, ValueError, IndexError):
        return []


_local = _LocalAddresses()


def is_sandboxed(
    peer_host: str, peer_port: int, server_ports: Iterable[int], server_host: str | None = None
) -> bool:
    """Whether the client at peer_host:peer_port is sandboxed code (or cannot be traced)."""
    try:
        uid = _peer_uid(peer_host, peer_port, server_ports, server_host)
    except (Undecided, OSError, ValueError):
        return True
    return uid is not None and UID_BASE <= uid < UID_BASE + UID_COUNT


def _peer_uid(
    peer_host: str, peer_port: int, server_ports: Iterable[int], server_host: str | None
) -> int | None:
    """The uid of a local client's socket; None for a peer on another machine.

    The lookup is made for every peer: whether an address is "ours" is not
    decided by comparing text (a link-local peer carries a scope, `%eth0`).
    """
    peer, interface = _plain(peer_host)
    local = _local.get()
    # The server's side of the connection: given (HTTP), or any address we have (gRPC).
    candidates = [_plain(server_host)[0]] if server_host else [peer, *local]
    for server_port in set(server_ports):
        for server in candidates:
            if server.version != peer.version:
                continue
            uid = tcp_socket_uid(peer, peer_port, server, server_port, interface)
            if uid is None and peer.version == 4:
                # A dual-stack client socket holds the IPv4 connection as mapped IPv6.
                uid = tcp_socket_uid(_mapped(peer), peer_port, _mapped(server), server_port)
            if uid is not None:
                return uid
    if peer.is_loopback or peer.is_link_local or peer in local:
        raise Undecided(f"no established connection from {peer_host}:{peer_port} to this server")
    return None  # another machine: its sockets are not in our tables


def _plain(text: str) -> tuple[Address, int]:
    """The address without its scope (IPv4 for a mapped IPv6 one), and the scope's interface."""
    host, _, scope = text.partition("%")
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped, 0
    if not scope:
        return address, 0
    return address, int(scope) if scope.isdigit() else socket.if_nametoindex(scope)


def _mapped(address: Address) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(f"::ffff:{address}")


def parse_grpc_peer(peer: str) -> tuple[str, int]:
    """(host, port) from `ipv4:127.0.0.1:4242`, `ipv6:[::1]:4242` or `ipv6:%5B::1%5D:4242`."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        raise ValueError(f"not a TCP peer: {peer!r}")
    host, port = host_port(urllib.parse.unquote(rest))
    if host is None:
        raise ValueError(f"no address in peer {peer!r}")
    return host, port


def grpc_peer_is_sandboxed(peer: str, server_ports: Iterable[int]) -> bool:
    """The same for a gRPC peer string; anything that is not a TCP peer is refused."""
    try:
        host, port = parse_grpc_peer(peer)
    except ValueError:
        return True
    return is_sandboxed(host, port, server_ports)


class SandboxedPeerInterceptor(GuardInterceptor):
    """Refuses the Sandbox service's RPCs (PERMISSION_DENIED) to peers that are sandboxed code.

    `ports` is filled in once the server has bound its port.
    """

    def __init__(self, service_prefix: str) -> None:
        self.ports: set[int] = set()
        super().__init__(self._check, covers=lambda method: method.startswith(service_prefix))

    async def _check(
        self, details: grpc.HandlerCallDetails, context: grpc.aio.ServicerContext
    ) -> Refusal | None:
        # On the loop: an exact sock_diag lookup answers within its send (~20 us,
        # a thread hop costs five times that), and the /proc reads are cached.
        # Not cached itself: a peer's address and port may belong to another
        # socket once the connection closes.
        if grpc_peer_is_sandboxed(context.peer(), self.ports):
            return grpc.StatusCode.PERMISSION_DENIED, MESSAGE
        return None
