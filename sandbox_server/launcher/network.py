"""Network namespaces with outbound access only (SANDBOX_NETWORK=egress).

A session's code gets a network namespace of its own, created once and kept
while the session lives: an `oasis-init --hold-netns` process makes it, and
slirp4netns, a user-mode TCP/IP stack, wires it to the outside. Every
connection the code opens is re-made by slirp4netns from the host, so what
the code can reach is decided here, not by the code:

- slirp4netns runs with host loopback disabled (10.0.2.2 is not 127.0.0.1);
- routes inside the namespace "prohibit" (EACCES at connect) private,
  shared, link-local (cloud metadata at 169.254.169.254), multicast and
  reserved ranges and every address of the host itself, so neither the
  server's ports nor other local services are in reach, whatever
  interface they listen on;
- SANDBOX_NETWORK_ALLOW re-opens chosen private ranges; the host's own
  addresses stay closed even inside them;
- there is no IPv6 (slirp4netns is not asked for it).

Installers get a network of the same kind whose only routes lead to the
package index hosts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import shutil
import socket
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

GATEWAY = "10.0.2.2"
"""slirp4netns's router; with host loopback disabled it leads only outwards."""
DNS = "10.0.2.3"
"""slirp4netns's DNS forwarder (to the host's resolver): the sandbox's resolv.conf names it."""
_SLIRP_NET = ipaddress.IPv4Network("10.0.2.0/24")
_TAP = "tap0"

BLOCKED = tuple(
    ipaddress.IPv4Network(cidr)
    for cidr in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT, also used by some clouds internally
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local: cloud metadata services
        "168.63.129.16/32",  # Azure's host agent endpoint (public space, host-only service)
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "224.0.0.0/4",
        "240.0.0.0/4",
    )
)
"""Ranges the code never reaches unless SANDBOX_NETWORK_ALLOW names them."""

_START_TIMEOUT = 10.0
_POOL = 2
"""Networks kept ready for the next sessions or scratch executions."""
_SEARCH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class NetworkUnavailable(Exception):
    """The host cannot give sessions an egress network (what is missing is said)."""


@dataclass
class SessionNetwork:
    """One live network namespace: an open fd to it, and the processes keeping it."""

    fd: int
    _holder: asyncio.subprocess.Process
    _slirp: asyncio.subprocess.Process
    _exit_fd: int
    _closed: bool = False

    @property
    def alive(self) -> bool:
        return self._slirp.returncode is None and self._holder.returncode is None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        os.close(self.fd)
        os.close(self._exit_fd)
        if self._holder.stdin is not None:
            self._holder.stdin.close()  # the holder exits when its stdin closes
        # A signal too: slirp4netns would notice the closed exit fd only at its next poll.
        with contextlib.suppress(ProcessLookupError):
            self._slirp.terminate()
        for process in (self._slirp, self._holder):
            await _reap(process)


class Egress:
    """Makes egress-only network namespaces; `probe()` first, at server start."""

    def __init__(
        self,
        init_binary: Path,
        *,
        allow: Sequence[ipaddress.IPv4Network] = (),
        deny: Sequence[ipaddress.IPv4Network] = (),
        slirp: str | None = None,
        ip: str | None = None,
    ) -> None:
        self._init = str(init_binary)
        self._allow = tuple(allow)
        self._deny = tuple(deny)
        self._slirp = slirp or shutil.which("slirp4netns", path=_SEARCH_PATH)
        self._ip = ip or shutil.which("ip", path=_SEARCH_PATH)
        self._ready: list[SessionNetwork] = []
        self._filling: asyncio.Task[None] | None = None

    async def take(self) -> SessionNetwork:
        """A new public-egress network, made ahead of time when one is ready: its ~10 ms
        of set-up then stays off the path of the execution that needs it."""
        network = self._ready.pop() if self._ready else None
        if network is not None and not network.alive:
            await network.close()  # its slirp4netns died while it waited: make a new one
            network = None
        if self._filling is None or self._filling.done():
            self._filling = asyncio.create_task(self._fill(), name="egress-pool")
        return network if network is not None else await self.create()

    async def _fill(self) -> None:
        while len(self._ready) < _POOL:
            try:
                self._ready.append(await self.create())
            except OSError:
                log.exception("could not prepare an egress network")
                return

    async def close(self) -> None:
        """Close the networks made ahead of time (those handed out are their owners')."""
        if self._filling is not None:
            self._filling.cancel()
            await asyncio.gather(self._filling, return_exceptions=True)
        ready, self._ready = self._ready, []
        for network in ready:
            await network.close()

    async def probe(self) -> None:
        """NetworkUnavailable unless a network can be made here (the real thing, once)."""
        missing = [
            package
            for package, found in (("slirp4netns", self._slirp), ("iproute2", self._ip))
            if not found
        ]
        if missing:
            raise NetworkUnavailable(f"install {' and '.join(missing)} (Debian packages)")
        try:
            network = await self.create()
        except OSError as exc:
            raise NetworkUnavailable(str(exc)) from None
        await network.close()

    async def create(
        self, *, only: Iterable[ipaddress.IPv4Address] | None = None
    ) -> SessionNetwork:
        """A new namespace: public egress, or with `only`, routes to just those addresses."""
        assert self._slirp and self._ip, "probe() first"
        holder = await asyncio.create_subprocess_exec(
            self._init,
            "--hold-netns",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={},
            start_new_session=True,
        )
        network: SessionNetwork | None = None
        try:
            assert holder.stdout is not None
            async with asyncio.timeout(_START_TIMEOUT):
                if await holder.stdout.readline() != b"ready\n":
                    raise OSError("oasis-init could not create a network namespace")
                fd = os.open(f"/proc/{holder.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    slirp, exit_fd = await self._start_slirp(holder.pid)
                except BaseException:
                    os.close(fd)
                    raise
                network = SessionNetwork(fd, holder, slirp, exit_fd)
                await self._route(network, only)
            return network
        except BaseException:
            if network is not None:
                await network.close()
            else:
                if holder.stdin is not None:
                    holder.stdin.close()
                await _reap(holder)
            raise

    async def _start_slirp(self, pid: int) -> tuple[asyncio.subprocess.Process, int]:
        ready_r, ready_w = os.pipe()
        exit_r, exit_w = os.pipe()
        try:
            slirp = await asyncio.create_subprocess_exec(
                str(self._slirp),
                "--configure",
                "--mtu=65520",
                "--disable-host-loopback",
                "--enable-sandbox",  # its own mount namespace, capabilities dropped
                "--enable-seccomp",
                f"--ready-fd={ready_w}",
                f"--exit-fd={exit_r}",
                str(pid),
                _TAP,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(ready_w, exit_r),
                env={},
                start_new_session=True,
            )
        except BaseException:
            for fd in (ready_r, ready_w, exit_r, exit_w):
                os.close(fd)
            raise
        os.close(ready_w)
        os.close(exit_r)
        try:
            # slirp4netns writes "1" once the interface is configured; EOF means it died.
            if await _read_byte(ready_r) != b"1":
                assert slirp.stderr is not None
                error = (await slirp.stderr.read(2000)).decode(errors="replace").strip()
                raise OSError(f"slirp4netns failed: {error or 'no reason given'}")
        except BaseException:  # a failure, a timeout or a cancel: nothing may stay behind
            os.close(exit_w)
            with contextlib.suppress(ProcessLookupError):
                slirp.kill()
            await _reap(slirp)
            raise
        return slirp, exit_w

    async def _route(
        self, network: SessionNetwork, only: Iterable[ipaddress.IPv4Address] | None
    ) -> None:
        view = await asyncio.to_thread(HostView.read)  # read afresh: addresses change
        commands = routes(self._allow, view, deny=self._deny, only=only)
        process = await asyncio.create_subprocess_exec(
            self._init,
            "--join-netns",
            str(network.fd),
            "--",
            str(self._ip),
            "-batch",
            "-",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            pass_fds=(network.fd,),
            env={},
        )
        _, error = await process.communicate("\n".join(commands).encode() + b"\n")
        if process.returncode != 0:
            raise OSError(
                f"setting up the sandbox's routes failed: {error.decode().strip()[-500:]}"
            )


def routes(
    allow: Sequence[ipaddress.IPv4Network],
    host: HostView,
    *,
    deny: Sequence[ipaddress.IPv4Network] = (),
    only: Iterable[ipaddress.IPv4Address] | None = None,
) -> list[str]:
    """`ip -batch` commands for a namespace whose default route is slirp4netns's gateway."""
    if only is not None:
        # Nothing but the given addresses (and slirp's own subnet, for DNS); never the host.
        return ["route del default"] + [
            f"route add {address}/32 via {GATEWAY} dev {_TAP}"
            for address in sorted(set(only) - host.addresses)
        ]
    opened = [net for net in allow if not any(net.subnet_of(closed) for closed in deny)]
    closed = {net for net in BLOCKED if not any(net.subnet_of(o) for o in opened)}
    # What the host reaches directly (its own subnets, VPN and cluster routes) is
    # closed too, unless allowed: it may be public address space.
    closed |= {net for net in host.networks if not any(net.subnet_of(o) for o in opened)}
    closed |= set(deny)
    # The host itself stays closed even inside an allowed range: /32 is the most specific.
    closed |= {ipaddress.IPv4Network(address) for address in host.addresses}
    # slirp4netns's own subnet stays (its connected route, more specific than 10/8, wins).
    closed = {net for net in closed if not net.subnet_of(_SLIRP_NET)}
    commands = [f"route add prohibit {net}" for net in sorted(closed)]
    commands += [f"route add {net} via {GATEWAY} dev {_TAP}" for net in opened if net not in closed]
    return commands


@dataclass(frozen=True)
class HostView:
    """What this host's network namespace holds: its own addresses and the networks it
    routes other than by its default route."""

    addresses: frozenset[ipaddress.IPv4Address]
    networks: frozenset[ipaddress.IPv4Network]

    @classmethod
    def read(cls) -> HostView:
        return cls(frozenset(host_addresses()), frozenset(_routed_networks()))


def _routed_networks() -> set[ipaddress.IPv4Network]:
    """Destinations of the host's main routing table, the default route left out."""
    found: set[ipaddress.IPv4Network] = set()
    try:
        with open("/proc/net/route", encoding="ascii") as table:
            next(table, None)
            for line in table:
                fields = line.split()
                # Destination and mask are little-endian hex words.
                destination = ipaddress.IPv4Address(int(fields[1], 16).to_bytes(4, "little"))
                mask = ipaddress.IPv4Address(int(fields[7], 16).to_bytes(4, "little"))
                if int(mask):
                    found.add(ipaddress.IPv4Network(f"{destination}/{mask}", strict=False))
    except (OSError, ValueError, IndexError):
        log.warning("could not read the host's routes from /proc/net/route")
    return found


def host_addresses() -> set[ipaddress.IPv4Address]:
    """Every IPv4 address of this host's network namespace (its local routes)."""
    found: set[ipaddress.IPv4Address] = set()
    try:
        with open("/proc/net/fib_trie", encoding="ascii") as trie:
            previous = ""
            for line in trie:
                # A leaf "|-- 192.0.2.2" is followed by "/32 host LOCAL" for own addresses.
                if "/32 host LOCAL" in line and previous.strip().startswith("|--"):
                    found.add(ipaddress.IPv4Address(previous.split()[-1]))
                previous = line
    except (OSError, ValueError):
        log.warning("could not read the host's addresses from /proc/net/fib_trie")
    return {address for address in found if not address.is_loopback}


def write_resolv_conf(folder: Path) -> Path:
    """The sandbox's /etc/resolv.conf: slirp4netns's DNS, the only resolver it can reach."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o755)
    path = folder / "resolv.conf"
    partial = path.with_suffix(".tmp")
    partial.write_text(f"nameserver {DNS}\n")
    partial.chmod(0o644)
    partial.replace(path)
    return path


async def _read_byte(fd: int) -> bytes:
    """One byte from a pipe, read by the event loop (no thread left blocked on a cancel)."""
    reader = asyncio.StreamReader()
    transport, _ = await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    try:
        return await reader.read(1)
    finally:
        transport.close()


async def _reap(process: asyncio.subprocess.Process) -> None:
    try:
        await asyncio.wait_for(process.wait(), 2.0)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


@contextlib.asynccontextmanager
async def installer_network(
    egress: Egress | None, hosts: Sequence[str]
) -> AsyncIterator[SessionNetwork | None]:
    """A network whose only routes lead to the package index `hosts`; None without egress."""
    if egress is None:
        yield None
        return
    addresses = await resolve(hosts)
    own = (await asyncio.to_thread(HostView.read)).addresses
    if addresses and addresses <= own:
        # Every port of this host would be open to the package's build code.
        raise OSError(
            f"the package index ({', '.join(hosts)}) is served by this host, which "
            "sandboxed installers may not reach; serve it from another machine"
        )
    network = await egress.create(only=addresses)
    try:
        yield network
    finally:
        await network.close()


async def resolve(hosts: Sequence[str]) -> set[ipaddress.IPv4Address]:
    """The IPv4 addresses of `hosts`, loopback left out (slirp4netns cannot reach it)."""
    loop = asyncio.get_running_loop()
    found: set[ipaddress.IPv4Address] = set()
    for host in hosts:
        try:
            infos = await loop.getaddrinfo(
                host, 443, family=socket.AF_INET, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise OSError(f"cannot resolve the package index host {host!r}: {exc}") from None
        found.update(ipaddress.IPv4Address(info[4][0]) for info in infos)
    reachable = {address for address in found if not address.is_loopback}
    if found and not reachable:
        raise OSError(
            f"the package index ({', '.join(hosts)}) is on this host's loopback, which "
            "installers cannot reach when the code's network is isolated; serve it from "
            "another machine"
        )
    return reachable
