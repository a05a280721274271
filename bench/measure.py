"""The timed parts: one latency sample, a tool-call pace, throughput, a large transfer;
and the live interpreters whose memory is measured."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from oasis import CodeFile, CodeRequest, CodeResult, DispatchResult, ToolCall
from oasis.code import GrpcRunner, HTTPRunner, RetryAttempt

from . import memory
from .cases import PANDAS_CODE, PANDAS_OUTPUT, TOOL_CODE, TRANSFER_CODE, LatencyCase

MB = 1_000_000


class CheckFailed(Exception):
    """An execution did not return what the case expects: its numbers would mean nothing."""


def check(ok: bool, what: str, result: CodeResult) -> None:
    if not ok:
        raise CheckFailed(
            f"{what}: status {result.status.value}, output {result.output!r}, "
            f"error {result.error[-500:]!r}, logs {result.logs[-500:]!r}"
        )


async def no_tools(call: ToolCall) -> DispatchResult:
    return DispatchResult(content=f"no tool {call.name!r} here", is_error=True)


async def latency(runner: GrpcRunner, case: LatencyCase, session_id: str) -> float:
    """Seconds of one execution of `case`, from the request to the result in hand.

    A "new" session is made by this execution and deleted after the clock stops.
    """
    if case.session == "new":
        session_id = f"bench-new-{uuid.uuid4().hex[:12]}"
    request = CodeRequest(
        code=case.code,
        runtime=case.runtime,
        session_id=session_id if case.session != "none" else "",
        keep_state=case.keep_state,
    )
    began = time.perf_counter()
    result = await runner.run(request, no_tools)
    elapsed = time.perf_counter() - began
    check(case.check(result), case.metric.label, result)
    if case.session == "new":
        await runner.delete_workspace(session_id)
    return elapsed


async def tool_pace(runner: GrpcRunner | HTTPRunner, calls: int) -> list[float]:
    """Seconds between consecutive calls of one execution making `calls` sequential
    echo calls: each is one full round trip, code to client and back."""
    arrivals: list[float] = []

    async def echo(call: ToolCall) -> DispatchResult:
        arrivals.append(time.perf_counter())
        return DispatchResult(content=json.dumps(call.args))

    result = await runner.run(CodeRequest(code=TOOL_CODE.format(calls=calls)), echo)
    check(result.ok and result.output == calls, "tool calls", result)
    return [later - earlier for earlier, later in itertools.pairwise(arrivals)]


async def live_states(runner: GrpcRunner, sessions: Sequence[str]) -> None:
    """One pandas step (keep_state) in each session, one after another: each leaves
    a new live interpreter, idle and stopped."""
    for session_id in sessions:
        request = CodeRequest(code=PANDAS_CODE, session_id=session_id, keep_state=True)
        result = await runner.run(request, no_tools)
        check(
            result.ok
            and result.output == PANDAS_OUTPUT
            and result.fresh_state
            and result.state_kept,
            f"pandas step in a new live interpreter (session {session_id})",
            result,
        )


@dataclass(frozen=True, kw_only=True)
class Throughput:
    per_second: float
    count: int
    seconds: float
    retries: int
    """Executions the server refused at capacity, sent again by the runner."""


async def throughput(target: str, *, count: int, concurrency: int) -> Throughput:
    """Trivial executions per second with `concurrency` always in flight."""
    retries = 0

    def on_retry(attempt: RetryAttempt) -> None:
        nonlocal retries
        retries += 1

    pending = iter(range(count))
    async with GrpcRunner(target, max_retries=20, retry_delay=0.002, on_retry=on_retry) as runner:
        await runner.info()  # connect outside the timed part

        async def worker() -> None:
            for _ in pending:
                result = await runner.run(CodeRequest(code="set_result(1)"), no_tools)
                check(result.ok and result.output == 1, "throughput", result)

        began = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(worker())
        seconds = time.perf_counter() - began
    return Throughput(per_second=count / seconds, count=count, seconds=seconds, retries=retries)


@dataclass(frozen=True, kw_only=True)
class Transfer:
    in_mb_per_s: float
    out_mb_per_s: float
    rss_growth_mib: float
    """The server process's peak resident memory during the run, over its RSS before."""
    peak_source: str
    """"VmHWM" when the kernel's peak could be reset before the run, else "sampled"."""


async def transfer(runner: GrpcRunner, pid: int, data: bytes) -> Transfer:
    """Send `data` as an input file and get a copy back as a returned file.

    The code calls a tool when the file has arrived and again when its copy is
    written, which splits the run into the way in and the way out.
    """
    marks: dict[str, float] = {}

    async def mark(call: ToolCall) -> DispatchResult:
        marks[call.args["stage"]] = time.perf_counter()
        return DispatchResult(content="null")

    request = CodeRequest(code=TRANSFER_CODE, files=[CodeFile(name="in.bin", data=data)])
    before = memory.status(pid)["VmRSS"]
    exact = memory.reset_peak(pid)
    with memory.PeakSampler(pid) as sampler:
        began = time.perf_counter()
        result = await runner.run(request, mark)
        ended = time.perf_counter()
    peak = sampler.peak_kib
    if exact:
        peak = max(peak, memory.status(pid)["VmHWM"])
    returned = result.files[0].data if len(result.files) == 1 else b""
    check(result.ok and returned == data, "transfer: the returned file differs", result)
    return Transfer(
        in_mb_per_s=len(data) / MB / (marks["received"] - began),
        out_mb_per_s=len(data) / MB / (ended - marks["written"]),
        rss_growth_mib=(peak - before) / 1024,
        peak_source="VmHWM" if exact else "sampled",
    )


def random_bytes(size: int) -> bytes:
    """Incompressible data, so no layer can make the transfer look cheaper than it is."""
    return os.urandom(size)
