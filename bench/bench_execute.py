"""End-to-end latency of trivial executions, measured side by side in one run.

    make bench            (or: python bench/bench_execute.py --runs 50)

Starts a real sandbox server on loopback and times, over gRPC, a trivial
Python and Node.js execution and one with a tool call round trip. As the
baseline it times the naive design on the same machine in the same run: a
bare `python -c` / `node -e` subprocess per execution, with no sandbox, no
tool channel and no result. Ratios are what to compare across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from oasis.sandbox.v1 import sandbox_pb2 as pb
from oasis.sandbox.v1 import sandbox_pb2_grpc as pb_grpc
from sandbox_server import config as config_module
from sandbox_server.server import SandboxServer


async def execute(
    stub: pb_grpc.SandboxStub, code: str, runtime: str, session_id: str = ""
) -> pb.ExecutionResult:
    outgoing: asyncio.Queue[pb.ExecuteRequest | None] = asyncio.Queue()
    start = pb.StartExecution(code=code, runtime=runtime, session_id=session_id)
    outgoing.put_nowait(pb.ExecuteRequest(start=start))

    async def requests():  # type: ignore[no-untyped-def]
        while (message := await outgoing.get()) is not None:
            yield message

    result = None
    async for response in stub.Execute(requests()):
        kind = response.WhichOneof("kind")
        if kind == "tool_call":
            answer = pb.ToolResult(
                call_id=response.tool_call.call_id, data=json.dumps({"ok": True})
            )
            outgoing.put_nowait(pb.ExecuteRequest(tool_result=answer))
        elif kind == "result":
            result = response.result
    outgoing.put_nowait(None)
    assert result is not None and result.status == pb.ExecutionResult.OK, result
    return result


def summarize(name: str, samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    row = {
        "median_ms": statistics.median(samples) * 1000,
        "p90_ms": samples[int(len(samples) * 0.9) - 1] * 1000,
        "min_ms": samples[0] * 1000,
    }
    print(
        f"{name:<34} median {row['median_ms']:7.1f} ms   p90 {row['p90_ms']:7.1f} ms   min {row['min_ms']:7.1f} ms"
    )
    return row


def server_config(workspace: str, **overrides: str) -> config_module.Config:
    env = {
        "SANDBOX_GRPC_ADDR": "127.0.0.1:0",
        "SANDBOX_ADDR": "127.0.0.1:0",
        "SANDBOX_WORKSPACE": workspace,
    }
    env.update({k: v for k, v in os.environ.items() if k.startswith("SANDBOX_") and k not in env})
    env.update(overrides)
    return config_module.load(env)


async def main(runs: int) -> None:
    with (
        tempfile.TemporaryDirectory() as isolated_root,
        tempfile.TemporaryDirectory() as bare_root,
        tempfile.TemporaryDirectory() as offline_root,
    ):
        config = server_config(isolated_root)
        # The same server without isolation shows what the isolation costs,
        # and one without a network what the egress network costs.
        bare_config = server_config(bare_root, SANDBOX_ISOLATION="none", SANDBOX_ALLOW_INSECURE="1")
        offline_config = server_config(offline_root, SANDBOX_NETWORK="none")
        async with (
            SandboxServer(config) as server,
            SandboxServer(bare_config) as bare_server,
            SandboxServer(offline_config) as offline_server,
            grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as chan,
            grpc.aio.insecure_channel(f"127.0.0.1:{bare_server.port}") as bare_chan,
            grpc.aio.insecure_channel(f"127.0.0.1:{offline_server.port}") as offline_chan,
        ):
            assert server.sandbox is not None
            print(
                f"isolation: {server.sandbox.isolation}, network: {server.sandbox.network.value} "
                "(and isolation none, network none, for comparison)"
            )
            stub, bare = pb_grpc.SandboxStub(chan), pb_grpc.SandboxStub(bare_chan)
            offline = pb_grpc.SandboxStub(offline_chan)
            cases = {
                "sandbox python set_result": (stub, "set_result(1)", "python"),
                "  same, in a session": (stub, "set_result(1)", "python", "bench"),
                "  same, network none": (offline, "set_result(1)", "python"),
                "  same, isolation none": (bare, "set_result(1)", "python"),
                "sandbox python 1 tool call": (stub, "set_result(call_tool('t'))", "python"),
                "sandbox node setResult": (stub, "setResult(1)", "node"),
                "  same, isolation none ": (bare, "setResult(1)", "node"),
                "sandbox node 1 tool call": (stub, "setResult(await callTool('t'))", "node"),
            }
            baselines = {
                "naive subprocess python -c": [config.python_bin, "-c", "print(1)"],
                "naive subprocess node -e": [config.node_bin or "node", "-e", "console.log(1)"],
            }
            samples: dict[str, list[float]] = {name: [] for name in [*cases, *baselines]}
            for target, code, runtime, *session in cases.values():
                await execute(target, code, runtime, *session)  # warm up
            # Interleave the cases so machine noise hits all of them alike.
            for _ in range(runs):
                for name, (target, code, runtime, *session) in cases.items():
                    began = time.perf_counter()
                    await execute(target, code, runtime, *session)
                    samples[name].append(time.perf_counter() - began)
                for name, argv in baselines.items():
                    began = time.perf_counter()
                    # Blocking on purpose: this is the naive design being measured.
                    subprocess.run(argv, check=True, capture_output=True)  # noqa: ASYNC221
                    samples[name].append(time.perf_counter() - began)
            sequential = await tool_call_pace(stub)
    print(f"{runs} runs each, interleaved, on {os.cpu_count()} cores")
    rows = {name: summarize(name, values) for name, values in samples.items()}

    def ratio(a: str, b: str) -> float:
        return rows[a]["median_ms"] / rows[b]["median_ms"]

    print(
        "ratios (medians): "
        f"python sandbox/naive {ratio('sandbox python set_result', 'naive subprocess python -c'):.2f}x, "
        f"node sandbox/naive {ratio('sandbox node setResult', 'naive subprocess node -e'):.2f}x, "
        f"python isolated/none {ratio('sandbox python set_result', '  same, isolation none'):.2f}x, "
        f"python scratch egress/network none {ratio('sandbox python set_result', '  same, network none'):.2f}x, "
        f"python session egress/network none {ratio('  same, in a session', '  same, network none'):.2f}x, "
        f"node isolated/none {ratio('sandbox node setResult', '  same, isolation none '):.2f}x"
    )
    first, last = sequential[:100], sequential[-100:]
    print(
        f"1000 sequential tool calls in one execution: first 100 {statistics.median(first) * 1000:.2f} ms"
        f"/call, last 100 {statistics.median(last) * 1000:.2f} ms/call (median)"
    )


async def tool_call_pace(stub: pb_grpc.SandboxStub) -> list[float]:
    """Seconds between consecutive tool calls of one execution making 1000 of them."""
    arrivals: list[float] = []
    code = "for i in range(1000):\n    call_tool('t', {'i': i})\nset_result(1)"
    outgoing: asyncio.Queue[pb.ExecuteRequest | None] = asyncio.Queue()
    outgoing.put_nowait(pb.ExecuteRequest(start=pb.StartExecution(code=code)))

    async def requests():  # type: ignore[no-untyped-def]
        while (message := await outgoing.get()) is not None:
            yield message

    async for response in stub.Execute(requests()):
        if response.WhichOneof("kind") == "tool_call":
            arrivals.append(time.perf_counter())
            answer = pb.ToolResult(call_id=response.tool_call.call_id, data="1")
            outgoing.put_nowait(pb.ExecuteRequest(tool_result=answer))
    outgoing.put_nowait(None)
    return [b - a for a, b in itertools.pairwise(arrivals)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    asyncio.run(main(parser.parse_args().runs))
