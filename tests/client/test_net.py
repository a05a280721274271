"""The one host:port parser that the client, the CLI and the server share."""

from __future__ import annotations

import pytest

from oasis._net import host_port


@pytest.mark.parametrize(
    ("address", "expected"),
    [("127.0.0.1:50051", ("127.0.0.1", 50051)), (":9000", (None, 9000)),
     ("[::1]:0", ("::1", 0)), ("[::]:80", ("::", 80)), ("localhost:65535", ("localhost", 65535))],
)  # fmt: skip
def test_host_port_splits_what_it_should(address: str, expected: tuple[str | None, int]) -> None:
    assert host_port(address) == expected


def test_a_missing_port_takes_the_default_only_when_one_is_given() -> None:
    assert host_port("sandbox", default_port=50051) == ("sandbox", 50051)
    assert host_port("[::1]", default_port=7) == ("::1", 7)
    with pytest.raises(ValueError, match="the port is missing"):
        host_port("sandbox")


@pytest.mark.parametrize(
    "address", ["::1:80", "[::1]x", "[]:80", "host:", "host:65536", "host:http", "a b:1", "h/x:1",
                "host:\uff18\uff10"],  # full-width digits: isdigit() alone would pass them,
)  # fmt: skip
def test_host_port_names_the_address_it_refuses(address: str) -> None:
    with pytest.raises(ValueError, match="is not host:port") as refused:
        host_port(address)
    assert repr(address) in str(refused.value)
