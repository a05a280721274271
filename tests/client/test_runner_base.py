"""What both runners share: the CodeRunner protocol, transport seams, retry pauses, lifecycle."""

from __future__ import annotations

import aiohttp
import grpc
import pytest

from oasis import CodeRequest, CodeRunner, Status, tool_dispatcher
from oasis.code import GrpcRunner, HTTPRunner
from oasis.code._base import MAX_RETRY_DELAY, Retry
from oasis.sandbox.v1 import sandbox_pb2 as pb
from oasis.sandbox.v1 import sandbox_pb2_grpc as pb_grpc
from sandbox_server.server import SandboxServer

ADD = CodeRequest(code="set_result(call_tool('add', {'a': 2, 'b': 3}))")


def http_url(server: SandboxServer) -> str:
    return f"http://127.0.0.1:{server.http_port}"


def test_both_runners_are_code_runners() -> None:
    assert isinstance(GrpcRunner("127.0.0.1:1"), CodeRunner)
    assert isinstance(HTTPRunner("http://127.0.0.1:1"), CodeRunner)


async def test_grpc_runner_uses_the_callers_channel_and_leaves_it_open(
    server: SandboxServer,
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        # The target names an address nothing listens on: only the channel can reach the server.
        async with GrpcRunner("127.0.0.1:1", channel=channel, max_retries=0) as runner:
            result = await runner.run(ADD, tool_dispatcher({"add": lambda a, b: a + b}))
        assert (result.status, result.output) == (Status.OK, 5), result.error

        with pytest.raises(RuntimeError, match="closed"):
            await runner.info()
        # The runner is closed; the caller's channel still works.
        info = await pb_grpc.SandboxStub(channel).GetInfo(pb.GetInfoRequest(), timeout=10)
        assert info.runtimes


async def test_http_runner_uses_the_callers_session_and_leaves_it_open(
    server: SandboxServer,
) -> None:
    requests: list[str] = []

    async def on_request_start(
        session: aiohttp.ClientSession,
        context: object,
        params: aiohttp.TraceRequestStartParams,
    ) -> None:
        requests.append(f"{params.method} {params.url.path}")

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        async with HTTPRunner(http_url(server), session=session) as runner:
            result = await runner.run(ADD, tool_dispatcher({"add": lambda a, b: a + b}))
        assert (result.status, result.output) == (Status.OK, 5), result.error
        assert requests == ["POST /execute"]

        with pytest.raises(RuntimeError, match="closed"):
            await runner.run(ADD, tool_dispatcher({}))
        assert not session.closed
        async with session.get(http_url(server) + "/health") as response:
            assert response.status == 200


async def test_a_channel_comes_with_its_own_tls_and_options() -> None:
    async with grpc.aio.insecure_channel("127.0.0.1:1") as channel:
        with pytest.raises(ValueError, match="channel's own"):
            GrpcRunner("127.0.0.1:1", channel=channel, root_certificates=b"pem")
        with pytest.raises(ValueError, match="channel's own"):
            GrpcRunner("127.0.0.1:1", channel=channel, channel_options=[("grpc.enable_retries", 0)])


@pytest.mark.parametrize("runner", [GrpcRunner, HTTPRunner])
def test_negative_retry_settings_are_refused(runner: type[GrpcRunner | HTTPRunner]) -> None:
    url = "http://127.0.0.1:1" if runner is HTTPRunner else "127.0.0.1:1"
    with pytest.raises(ValueError, match="must not be negative"):
        runner(url, max_retries=-1)
    with pytest.raises(ValueError, match="must not be negative"):
        runner(url, retry_delay=-0.5)


def test_retry_pauses_double_from_retry_delay_with_jitter_and_a_cap() -> None:
    retry = Retry(target="t", max_retries=100, retry_delay=0.5, on_retry=None)

    for number, base in [(1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0)]:
        delays = [retry.delay(number) for _ in range(200)]
        assert all(base <= d <= base * 1.25 for d in delays), (number, min(delays), max(delays))
        assert len(set(delays)) > 1, "no jitter"
    for number in (6, 50, 100):
        assert MAX_RETRY_DELAY <= retry.delay(number) <= MAX_RETRY_DELAY * 1.25


def test_a_retry_delay_above_the_cap_is_kept() -> None:
    retry = Retry(target="t", max_retries=3, retry_delay=30.0, on_retry=None)

    assert all(30.0 <= retry.delay(n) <= 37.5 for n in (1, 2, 3))
