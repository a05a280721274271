"""The one `host:port` parser, shared by the client, the CLI and the server."""

from __future__ import annotations


def host_port(address: str, *, default_port: int | None = None) -> tuple[str | None, int]:
    """(host, port) from `host:port`, `[v6]:port` or `:port` (host None: all interfaces).

    An IPv6 address must be in brackets, as in a URL, so the port is never
    ambiguous. Without a port, `default_port` when given. ValueError, naming
    the address and the expected form, for anything else.
    """
    usage = f"{address!r} is not host:port (such as 127.0.0.1:50051, [::1]:50051 or :50051)"
    if address.startswith("["):
        inside, bracket, rest = address[1:].partition("]")
        if not bracket or not inside or (rest and not rest.startswith(":")):
            raise ValueError(usage)
        host, port_text = inside, rest[1:] if rest else None
    elif address.count(":") > 1:
        raise ValueError(f"{usage}: put an IPv6 address in brackets")
    else:
        host, colon, after = address.partition(":")
        port_text = after if colon else None
    if any(c.isspace() or c == "/" for c in host):
        raise ValueError(usage)
    if port_text is None:
        if default_port is None:
            raise ValueError(f"{usage}: the port is missing")
        return host or None, default_port
    if not (port_text.isascii() and port_text.isdigit() and int(port_text) <= 65535):
        raise ValueError(usage)
    return host or None, int(port_text)
