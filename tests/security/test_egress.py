"""SANDBOX_NETWORK=egress (the default): the code reaches the outside, never the host.

Each session has a network namespace of its own behind slirp4netns. The code
must not reach the host's loopback, the server's own ports (on loopback or
on the host's other addresses), link-local cloud metadata or private ranges,
and must reach a private test host only when SANDBOX_NETWORK_ALLOW names it.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from oasis.sandbox.v1 import sandbox_pb2 as pb
from sandbox_server.launcher.network import HostView, host_addresses

from ..conftest import StartServer
from ..helpers import eventually
from ..nethost import TestHost, netns_host
from .conftest import client_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

PROBE = """
import json, os, socket
report = {}
for name, (host, port) in json.loads(os.environ['TARGETS']).items():
    try:
        with socket.create_connection((host, port), timeout=3) as s:
            s.sendall(b'from the sandbox')
        report[name] = 'connected'
    except OSError as exc:
        report[name] = type(exc).__name__
report['netns'] = os.readlink('/proc/self/ns/net')
report['resolv'] = open('/etc/resolv.conf').read()
set_result(report)
"""


class Recorder:
    """A TCP listener that records what reaches it."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self.received.append(await asyncio.wait_for(reader.read(100), 5))
        except (TimeoutError, ConnectionError):
            self.received.append(b"")
        writer.close()

    async def start(self, host: str = "0.0.0.0", sock: socket.socket | None = None) -> int:
        if sock is not None:
            self._server = await asyncio.start_server(self._handle, sock=sock)
        else:
            self._server = await asyncio.start_server(self._handle, host, 0)
        return int(self._server.sockets[0].getsockname()[1])

    def close(self) -> None:
        assert self._server is not None
        self._server.close()


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    running = Recorder()
    yield running
    running.close()


@pytest.fixture
async def private_host() -> AsyncIterator[TestHost]:
    async with netns_host() as host:
        yield host


def _routed_neighbour() -> str | None:
    """An address, not the host's own, in a network the host routes other than by default."""
    view = HostView.read()
    for network in sorted(view.networks):
        for address in network.hosts():
            if address not in view.addresses:
                return str(address)
    return None


def _public_host_address() -> str | None:
    own = sorted(str(a) for a in host_addresses() if not a.is_loopback)
    return own[0] if own else None


async def test_egress_is_the_default_and_keeps_the_host_out_of_reach(
    start_server: StartServer, recorder: Recorder
) -> None:
    """Host loopback, the server's gRPC and HTTP ports (on every interface) and metadata are refused."""
    server = await start_server(SANDBOX_GRPC_ADDR="0.0.0.0:0", SANDBOX_ADDR="0.0.0.0:0")
    port = await recorder.start("0.0.0.0")
    targets: dict[str, tuple[str, int]] = {
        "host loopback": ("127.0.0.1", port),
        "slirp gateway (host loopback when not disabled)": ("10.0.2.2", port),
        "server grpc via gateway": ("10.0.2.2", server.port),
        "metadata": ("169.254.169.254", 80),
    }
    neighbour = _routed_neighbour()
    if neighbour:
        targets["a network the host routes directly"] = (neighbour, port)
    public = _public_host_address()
    if public:
        targets["host address"] = (public, port)
        targets["server grpc on host address"] = (public, server.port)
        targets["server http on host address"] = (public, server.http_port)
    async with client_for(server) as client:
        info = await client.stub.GetInfo(pb.GetInfoRequest())
        outcome = await client.run(PROBE, env={"TARGETS": json.dumps(targets)}, timeout=60)
    assert info.network == "egress"
    report = outcome.output
    assert report is not None, outcome.result.error
    for name in targets:
        assert report[name] != "connected", f"{name} was reachable from the sandbox"
    if neighbour:
        assert report["a network the host routes directly"] == "PermissionError"
    assert recorder.received == []
    assert report["resolv"].strip() == "nameserver 10.0.2.3"
    assert report["netns"] != os.readlink("/proc/self/ns/net")


async def test_an_allowed_private_host_is_reachable_and_others_are_not(
    start_server: StartServer, private_host: TestHost, recorder: Recorder
) -> None:
    port = await recorder.start(sock=private_host.listen())
    target = {"test host": (private_host.address, port)}
    closed = await start_server()
    opened = await start_server(SANDBOX_NETWORK_ALLOW=f"{private_host.address}/32")
    denied = await start_server(
        SANDBOX_NETWORK_ALLOW=f"{private_host.address}/32", SANDBOX_NETWORK_DENY="10.213.0.0/16"
    )
    async with client_for(denied) as client:
        overruled = await client.run(PROBE, env={"TARGETS": json.dumps(target)}, timeout=60)
    assert overruled.output is not None, overruled.result.error
    assert overruled.output["test host"] == "PermissionError"  # deny wins over allow
    async with client_for(closed) as client:
        refused = await client.run(PROBE, env={"TARGETS": json.dumps(target)}, timeout=60)
    assert refused.output is not None, refused.result.error
    assert refused.output["test host"] == "PermissionError"
    assert recorder.received == []
    async with client_for(opened) as client:
        allowed = await client.run(PROBE, env={"TARGETS": json.dumps(target)}, timeout=60)
    assert allowed.output is not None, allowed.result.error
    assert allowed.output["test host"] == "connected"
    # slirp4netns relays the bytes on its own time: the result may come first.
    await eventually(
        lambda: recorder.received == [b"from the sandbox"], what="the bytes to reach the host"
    )


async def test_each_session_has_its_own_network_for_all_its_executions(
    start_server: StartServer,
) -> None:
    server = await start_server()
    targets = {"env": {"TARGETS": "{}"}}
    async with client_for(server) as client:
        first = await client.run(PROBE, session_id="net-a", timeout=60, **targets)
        again = await client.run(PROBE, session_id="net-a", timeout=60, **targets)
        other = await client.run(PROBE, session_id="net-b", timeout=60, **targets)
        scratch = await client.run(PROBE, timeout=60, **targets)
    namespaces = [o.output["netns"] for o in (first, again, other, scratch)]
    assert namespaces[0] == namespaces[1]
    assert len({namespaces[0], namespaces[2], namespaces[3]}) == 3


async def test_a_session_network_ends_with_its_session(start_server: StartServer) -> None:
    """Deleting a session ends the processes that kept its namespace (holder and slirp4netns)."""
    server = await start_server()

    def namespace_holders(namespace: str) -> list[int]:
        holders = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.readlink(f"/proc/{pid}/ns/net") == namespace:
                    holders.append(int(pid))
            except OSError:
                continue
        return holders

    async with client_for(server) as client:
        outcome = await client.run(PROBE, session_id="short", env={"TARGETS": "{}"}, timeout=60)
        namespace = outcome.output["netns"]
        assert namespace_holders(namespace), "the session's namespace should be held while it lives"
        await client.stub.DeleteWorkspace(pb.DeleteWorkspaceRequest(session_id="short"))
    for _ in range(100):  # bounded: the holder exits as soon as its stdin closes
        if not namespace_holders(namespace):
            break
        await asyncio.sleep(0.05)
    assert namespace_holders(namespace) == []


def _our_slirps() -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        name, parent = (
            stat.split("(", 1)[1].rsplit(")", 1)[0],
            int(stat.rsplit(")", 1)[1].split()[1]),
        )
        if name == "slirp4netns" and parent == os.getpid():
            found.append(int(pid))
    return found


async def test_networks_made_ahead_are_closed_with_the_server(start_server: StartServer) -> None:
    """Scratch runs take networks prepared ahead of time; stopping the server ends them all."""
    server = await start_server()
    async with client_for(server) as client:
        for _ in range(3):
            outcome = await client.run(PROBE, env={"TARGETS": "{}"}, timeout=60)
            assert outcome.output is not None, outcome.result.error
    assert _our_slirps(), "networks should be kept ready while the server runs"
    await server.stop(grace=0)
    assert _our_slirps() == []
