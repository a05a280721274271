"""Optional comparisons (--extras): what isolation and the network cost, against a bare subprocess.

For each mode, the same trivial executions on servers with isolation `none`
and with network `none`, and the naive design as a floor: a bare
`python -c` / `node -e` per execution, with no sandbox, no tool channel and
no result. All interleaved with the main servers in one loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

from oasis.code import GrpcRunner
from sandbox_server.config import default_python

from . import measure, report, servers
from .cases import LATENCY_CASES, LatencyCase
from .stats import summarize

VARIANTS: Mapping[str, Mapping[str, str]] = {
    "isolation none": {"SANDBOX_ISOLATION": "none", "SANDBOX_ALLOW_INSECURE": "1"},
    "network none": {"SANDBOX_NETWORK": "none"},
}
BARE = "bare subprocess"
_CASES = {case.metric.key: case for case in LATENCY_CASES if case.metric.key in ("python", "node")}
_BARE_COMMANDS = {
    "python": [os.environ.get("SANDBOX_PYTHON_BIN") or default_python(), "-c", "print(1)"],
    "node": [shutil.which("node") or "node", "-e", "console.log(1)"],
}

Sampler = Callable[[LatencyCase], Any]


async def run_extras(
    *,
    runs: int,
    main_servers: Mapping[str, servers.ServerProcess],
    main_runners: Mapping[str, GrpcRunner],
    server_env: Callable[..., dict[str, str]],
    stack: contextlib.AsyncExitStack,
) -> dict[str, Any]:
    """Summaries by case, then column: each mode, its variants, and BARE.

    A variant is named by the isolation and network its server reports, not by
    what it was asked for: SANDBOX_ISOLATION is only the weakest level accepted,
    so a root server still chooses namespaces. A variant that ends up the same
    as its mode's server is left out.
    """
    report.progress("extras: starting the comparison servers")
    samplers: dict[str, Sampler] = {}
    skipped: list[str] = []
    for mode, main in main_servers.items():
        samplers[mode] = _server_sampler(main_runners[mode])
        for variant, overrides in VARIANTS.items():
            server = servers.ServerProcess(f"{mode}, {variant}", server_env(mode, **overrides))
            await stack.enter_async_context(server)
            assert server.info is not None and main.info is not None
            got = (server.info.isolation, server.info.network)
            label = f"{mode}, {variant} (is {got[0]}, network {got[1]})"
            if got == (main.info.isolation, main.info.network):
                skipped.append(label)
                report.progress(f"extras: left out {label}: the same as the {mode} server")
                await server.stop()
                continue
            runner = await stack.enter_async_context(GrpcRunner(server.grpc_target, max_retries=0))
            samplers[f"{mode}, isolation {got[0]}, network {got[1]}"] = _server_sampler(runner)
    samplers[BARE] = _bare_sample
    samples: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for case in _CASES.values():  # warm up
        for sample in samplers.values():
            await sample(case)
    count = max(3, runs // 2)
    report.progress(f"extras: {count} rounds over {len(samplers)} columns")
    columns = list(samplers)
    for index in range(count):
        for case in _CASES.values():
            for column in columns if index % 2 == 0 else columns[::-1]:
                samples[case.metric.key][column].append(await samplers[column](case))
    return {
        "columns": columns,
        "left_out": skipped,
        "results": {
            key: {column: summarize(seconds, scale=1000) for column, seconds in by_column.items()}
            for key, by_column in samples.items()
        },
    }


def _server_sampler(runner: GrpcRunner) -> Sampler:
    async def sample(case: LatencyCase) -> float:
        return await measure.latency(runner, case, "")

    return sample


async def _bare_sample(case: LatencyCase) -> float:
    began = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *_BARE_COMMANDS[case.runtime],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    elapsed = time.perf_counter() - began
    if process.returncode != 0 or out.strip() != b"1":
        raise measure.CheckFailed(f"bare {case.runtime}: {err.decode(errors='replace')[-500:]}")
    return elapsed
