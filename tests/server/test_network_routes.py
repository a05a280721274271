"""The routes an egress namespace gets: what is closed, what is opened, never the host."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from sandbox_server.launcher.network import HostView, routes

HOST = HostView(
    addresses=frozenset({IPv4Address("192.0.2.2"), IPv4Address("10.213.7.1")}),
    networks=frozenset({IPv4Network("192.0.2.0/24"), IPv4Network("10.0.0.0/8")}),
)


def prohibited(commands: list[str]) -> set[str]:
    return {c.split()[-1] for c in commands if c.startswith("route add prohibit")}


def test_private_ranges_the_hosts_networks_and_its_addresses_are_closed() -> None:
    closed = prohibited(routes([], HOST))
    assert {"10.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16"} <= closed
    assert {"192.0.2.0/24", "192.0.2.2/32", "10.213.7.1/32", "168.63.129.16/32"} <= closed
    assert not any(IPv4Network(net).subnet_of(IPv4Network("10.0.2.0/24")) for net in closed)
    assert len(closed) == len(routes([], HOST))  # each once: `ip -batch` stops at a duplicate


def test_allowed_ranges_open_but_never_the_host_and_deny_wins() -> None:
    allowed = [IPv4Network("10.213.7.0/24"), IPv4Network("192.0.2.0/24")]
    commands = routes(allowed, HOST, deny=[IPv4Network("10.213.7.128/25")])
    closed = prohibited(commands)
    assert "route add 192.0.2.0/24 via 10.0.2.2 dev tap0" in commands
    assert "192.0.2.0/24" not in closed and "192.0.2.2/32" in closed
    assert "10.213.7.1/32" in closed  # the host's own address inside an allowed range
    assert "10.213.7.128/25" in closed  # denied inside an allowed range: more specific


def test_installer_routes_lead_only_to_the_index_and_never_to_the_host() -> None:
    commands = routes([], HOST, only={IPv4Address("151.101.0.223"), IPv4Address("192.0.2.2")})
    assert commands == ["route del default", "route add 151.101.0.223/32 via 10.0.2.2 dev tap0"]
