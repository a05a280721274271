"""Test hosts: network namespaces of the test's own, reached from this host over a veth pair.

The sandbox's egress network refuses private ranges, so a service the code
should reach lives at a private address in a namespace the test makes, and
the server is started with that address in SANDBOX_NETWORK_ALLOW. Servers
"on" the test host are ordinary sockets of this process, created inside its
namespace from a short-lived thread (setns changes only the calling thread).
"""

from __future__ import annotations

import asyncio
import ctypes
import ipaddress
import os
import secrets
import shutil
import socket
import subprocess
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

_CLONE_NEWNET = 0x40000000
_IP = shutil.which("ip", path="/usr/sbin:/usr/bin:/sbin:/bin") or "ip"


class TestHost:
    """A namespace at `address`, whose peer end on this host is `gateway`."""

    __test__ = False  # not a pytest class

    def __init__(self, holder: subprocess.Popen[bytes], address: str, gateway: str, link: str):
        self._holder = holder
        self.address = address
        self.gateway = gateway
        self._link = link

    @property
    def namespace(self) -> str:
        return f"/proc/{self._holder.pid}/ns/net"

    def listen(self, kind: int = socket.SOCK_STREAM) -> socket.socket:
        """A socket bound to this host's address (port chosen by the kernel), listening if TCP."""
        made: list[socket.socket] = []
        failed: list[BaseException] = []

        def inside() -> None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = os.open(self.namespace, os.O_RDONLY)
                try:
                    if libc.setns(fd, _CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns")
                finally:
                    os.close(fd)
                sock = socket.socket(socket.AF_INET, kind)
                sock.bind((self.address, 0))
                if kind == socket.SOCK_STREAM:
                    sock.listen(64)
                sock.setblocking(False)
                made.append(sock)
            except BaseException as exc:  # reported to the caller's thread
                failed.append(exc)

        thread = threading.Thread(target=inside)
        thread.start()
        thread.join(10)
        if failed:
            raise failed[0]
        return made[0]

    def close(self) -> None:
        subprocess.run([_IP, "link", "del", self._link], capture_output=True, check=False)
        self._holder.kill()
        self._holder.wait(5)


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10)
    if done.returncode != 0:
        raise OSError(f"{' '.join(argv)}: {done.stderr.strip()}")


@asynccontextmanager
async def netns_host() -> AsyncIterator[TestHost]:
    """A fresh test host at a random 10.213.x.y/30 address (needs root)."""
    holder = subprocess.Popen(["unshare", "--net", "--", "sleep", "600"])  # noqa: ASYNC220
    own = os.readlink("/proc/self/ns/net")
    for _ in range(500):  # bounded: the holder unshares within milliseconds
        try:
            if os.readlink(f"/proc/{holder.pid}/ns/net") != own:
                break
        except OSError:
            pass
        await asyncio.sleep(0.01)
    subnet = ipaddress.IPv4Network(
        f"10.213.{secrets.randbelow(256)}.{4 * secrets.randbelow(64)}/30"
    )
    gateway, address = (str(host) for host in subnet.hosts())
    link = f"ot{secrets.token_hex(4)}"
    host = TestHost(holder, address, gateway, link)
    try:
        inside = ["nsenter", f"--net={host.namespace}", _IP]
        _run(
            _IP,
            "link",
            "add",
            link,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            str(holder.pid),
        )
        _run(_IP, "addr", "add", f"{gateway}/30", "dev", link)
        _run(_IP, "link", "set", link, "up")
        _run(*inside, "addr", "add", f"{address}/30", "dev", "eth0")
        _run(*inside, "link", "set", "eth0", "up")
        _run(*inside, "link", "set", "lo", "up")
        yield host
    finally:
        host.close()
