"""HTTPRunner's up-front checks: the base URL in the constructor, the dispatch in run()."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from oasis import CodeRequest, Status
from oasis.code import HTTPRunner
from sandbox_server.server import SandboxServer

from .conftest import base_url


@pytest.mark.parametrize(
    ("url", "example"),
    [
        ("127.0.0.1:9000", "'http://127.0.0.1:9000'"),
        ("localhost:9000", "'http://localhost:9000'"),
        ("", "'http://127.0.0.1:9000'"),
        ("http://", "'http://127.0.0.1:9000'"),
        ("ftp://sandbox:9000", "'http://127.0.0.1:9000'"),
        ("http://sandbox:port", "'http://127.0.0.1:9000'"),
    ],
)
def test_a_url_without_http_scheme_and_host_is_refused(url: str, example: str) -> None:
    with pytest.raises(ValueError, match="http:// or https://") as error:
        HTTPRunner(url)
    assert f"got {url!r}" in str(error.value)
    assert f"such as {example}" in str(error.value)


@pytest.mark.parametrize("url", ["http://127.0.0.1:9000/", "https://sandbox.example/api"])
def test_http_and_https_urls_are_accepted(url: str) -> None:
    HTTPRunner(url)


async def test_a_dict_of_tools_works_and_a_wrong_dispatch_never_runs(
    server: SandboxServer,
) -> None:
    session_id = f"shape-{uuid.uuid4().hex[:8]}"
    ledger = CodeRequest(code="open('ran.txt', 'w').write('ran')", session_id=session_id)
    check = CodeRequest(
        code="import os\nset_result(os.path.exists('ran.txt'))", session_id=session_id
    )
    wrong: Any = lambda a, b, c: None  # noqa: E731

    async with HTTPRunner(base_url(server)) as runner:
        with pytest.raises(TypeError, match=r"signature \(a, b, c\)"):
            await runner.run(ledger, wrong)
        with pytest.raises(TypeError, match="got dict_items"):
            await runner.run(ledger, {"double": len}.items())  # type: ignore[arg-type]
        result = await runner.run(check, {})
        assert result.status is Status.OK, result.error
        assert result.output is False

        code = "set_result(call_tool('double', {'x': 21}))"
        result = await runner.run(CodeRequest(code=code), {"double": lambda x: x * 2})
        assert result.status is Status.OK, result.error
        assert result.output == 42
