"""`make bench`: the sandbox's speed and memory, every launcher mode side by side.

    python bench/run.py [--modes cold,warm] [--runs N] [--quick] [--extras]

Starts one server per launcher mode (SANDBOX_LAUNCHER), measures every case on
each, interleaved so that machine noise hits all modes alike, prints the
machine and a table, writes JSON (bench/results/latest.json) and draws a PNG
chart (bench/results/latest.png).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import cases, measure, memory, report, servers
from bench.extras import run_extras
from bench.results import Results
from oasis.code import GrpcRunner, HTTPRunner, MiB
from sandbox_server.config import default_python

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CONCURRENCY = 8
EXISTING_SESSION = "bench-session"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Options:
    modes: tuple[str, ...]
    runs: int
    """Samples of each trivial case; slower cases take a share of it."""
    tool_calls: int
    throughput_count: int
    transfer_mib: int
    transfer_repeats: int
    idle_seconds: float
    extras: bool
    json_path: Path
    png_path: Path | None


def parse_args(argv: list[str] | None = None) -> Options:
    supported = servers.supported_modes()
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--modes",
        default=",".join(supported),
        help=f"launcher modes, comma-separated (this server: {', '.join(supported)})",
    )
    parser.add_argument("--runs", type=int, help="samples of each trivial case (default 200)")
    parser.add_argument("--quick", action="store_true", help="few samples, for development")
    parser.add_argument(
        "--extras",
        action="store_true",
        help="also compare with isolation none, network none and a bare subprocess",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=RESULTS / "latest.json",
        dest="json_path",
        help="where the JSON goes",
    )
    parser.add_argument(
        "--png",
        type=Path,
        default=RESULTS / "latest.png",
        dest="png_path",
        help="where the chart goes",
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG chart")
    args = parser.parse_args(argv)
    modes = tuple(dict.fromkeys(m.strip() for m in args.modes.split(",") if m.strip()))
    unknown = [mode for mode in modes if mode not in supported]
    if not modes or unknown:
        parser.error(
            f"--modes: {', '.join(unknown) or 'none given'}: this server supports "
            f"{', '.join(supported)} (it reads no {servers.LAUNCHER_VARIABLE} otherwise, "
            "so any other mode would measure the same launcher twice)"
        )
    quick = args.quick
    runs = args.runs if args.runs is not None else (10 if quick else 200)
    if runs < 1:
        parser.error("--runs: must be at least 1")
    return Options(
        modes=modes,
        runs=runs,
        tool_calls=200 if quick else 1000,
        throughput_count=40 if quick else 200,
        transfer_mib=100,
        transfer_repeats=1 if quick else 3,
        idle_seconds=2.0 if quick else 5.0,
        extras=args.extras,
        json_path=args.json_path,
        png_path=None if args.no_plot else args.png_path,
    )


def server_env(mode: str, **overrides: str) -> dict[str, str]:
    """The settings every benchmark server gets; SANDBOX_LAUNCHER only where it is read."""
    env = {"SANDBOX_MAX_CONCURRENT": str(CONCURRENCY), **overrides}
    if len(servers.supported_modes()) > 1:
        env[servers.LAUNCHER_VARIABLE] = mode
    return env


async def run(options: Options) -> dict[str, Any]:
    started = time.perf_counter()
    results = Results()
    modes = options.modes
    idle_processes = {mode: await idle_memory(options, mode, results) for mode in modes}
    async with contextlib.AsyncExitStack() as stack:
        started_servers = [
            await stack.enter_async_context(servers.ServerProcess(mode, server_env(mode)))
            for mode in modes
        ]
        report.progress(f"started {len(modes)} server(s): {', '.join(modes)}")
        by_mode = dict(zip(modes, started_servers, strict=True))
        runners = {
            mode: await stack.enter_async_context(GrpcRunner(server.grpc_target, max_retries=0))
            for mode, server in by_mode.items()
        }
        http_runners = {
            mode: await stack.enter_async_context(HTTPRunner(server.http_url, max_retries=0))
            for mode, server in by_mode.items()
        }
        bulk_runners = {
            mode: await stack.enter_async_context(
                GrpcRunner(
                    server.grpc_target,
                    max_retries=0,
                    max_file_size=(options.transfer_mib + 1) * MiB,
                    timeout=120.0,
                )
            )
            for mode, server in by_mode.items()
        }
        first = started_servers[0].info
        assert first is not None
        facts = report.machine(first)
        report.progress(report.describe_machine(facts))

        report.progress("warming up")
        for mode in modes:
            await warm_up(runners[mode], http_runners[mode])

        await latency_cases(options, runners, results)

        report.progress(f"tool calls: {options.tool_calls} sequential, gRPC and HTTP")
        for metric, chosen in ((cases.TOOL_GRPC, runners), (cases.TOOL_HTTP, http_runners)):
            for mode in modes:
                pace = await measure.tool_pace(chosen[mode], options.tool_calls)
                results.add_samples(metric, mode, pace)

        report.progress(f"throughput: {options.throughput_count} executions, {CONCURRENCY} at once")
        for mode, server in by_mode.items():
            done = await measure.throughput(
                server.grpc_target, count=options.throughput_count, concurrency=CONCURRENCY
            )
            results.set_value(
                cases.THROUGHPUT, mode, done.per_second, seconds=done.seconds, retries=done.retries
            )

        report.progress(f"transfer: {options.transfer_mib} MiB in and out")
        await transfers(options, by_mode, bulk_runners, results)

        extras = None
        if options.extras:
            extras = await run_extras(
                runs=options.runs,
                main_servers=by_mode,
                main_runners=runners,
                server_env=server_env,
                stack=stack,
            )

    results.summarize_samples()
    return results.document(
        modes=modes,
        metrics=cases.all_metrics(transfer_mib=options.transfer_mib),
        wall=time.perf_counter() - started,
        machine=facts,
        settings={
            "server_env": {mode: server_env(mode) for mode in modes},
            **{
                field.name: str(value) if isinstance(value, Path) else value
                for field in dataclasses.fields(options)
                if (value := getattr(options, field.name)) is not None
            },
        },
        idle_processes=idle_processes,
        extras=extras,
    )


async def warm_up(runner: GrpcRunner, http_runner: HTTPRunner) -> None:
    """One of each case, so that nothing is measured on its first use."""
    for case in cases.LATENCY_CASES:
        await measure.latency(runner, case, EXISTING_SESSION)
    await measure.tool_pace(runner, 10)
    await measure.tool_pace(http_runner, 10)


async def idle_memory(options: Options, mode: str, results: Results) -> list[dict[str, Any]]:
    """PSS of a warmed-up server and all its processes after a few idle seconds.

    On a server of its own, running alone: PSS divides a shared page among all
    the processes that map it, so another server alongside would take its
    share of the interpreter's and libraries' pages and make this one look smaller.
    """
    report.progress(
        f"idle memory: a {mode} server alone, warmed up, then {options.idle_seconds:g} s idle"
    )
    async with (
        servers.ServerProcess(f"{mode} idle", server_env(mode)) as server,
        GrpcRunner(server.grpc_target, max_retries=0) as runner,
        HTTPRunner(server.http_url, max_retries=0) as http_runner,
    ):
        await warm_up(runner, http_runner)
        await asyncio.sleep(options.idle_seconds)
        tree = memory.tree_memory(server.pid)
    pss = sum(process.pss_kib for process in tree) / 1024
    results.set_value(cases.IDLE_PSS, mode, pss, processes=len(tree))
    return [dataclasses.asdict(process) for process in tree]


def planned_runs(case: cases.LatencyCase, runs: int) -> int:
    return max(min(3, runs), round(runs * case.share))


def due(index: int, planned: int, runs: int) -> bool:
    """Whether a case planned `planned` times in `runs` rounds runs in round `index`:
    spread evenly, so slow cases sample the whole run and not only its start."""
    return (index + 1) * planned // runs > index * planned // runs


async def latency_cases(options: Options, runners: dict[str, GrpcRunner], results: Results) -> None:
    plan = {case.metric.key: planned_runs(case, options.runs) for case in cases.LATENCY_CASES}
    report.progress("latency: " + ", ".join(f"{key} x{count}" for key, count in plan.items()))
    modes = list(options.modes)
    began = time.perf_counter()
    for index in range(options.runs):
        # Alternate which mode goes first, so neither always follows the other.
        order = modes if index % 2 == 0 else modes[::-1]
        for case in cases.LATENCY_CASES:
            if not due(index, plan[case.metric.key], options.runs):
                continue
            for mode in order:
                seconds = await measure.latency(runners[mode], case, EXISTING_SESSION)
                results.add_samples(case.metric, mode, [seconds])
        if (index + 1) % max(1, options.runs // 5) == 0:
            report.progress(
                f"  round {index + 1}/{options.runs}, {time.perf_counter() - began:.0f} s"
            )


async def transfers(
    options: Options,
    by_mode: dict[str, servers.ServerProcess],
    runners: dict[str, GrpcRunner],
    results: Results,
) -> None:
    data = measure.random_bytes(options.transfer_mib * MiB)
    done: dict[str, list[measure.Transfer]] = defaultdict(list)
    for _ in range(options.transfer_repeats):
        for mode, server in by_mode.items():
            done[mode].append(await measure.transfer(runners[mode], server.pid, data))
    for mode, runs in done.items():
        results.set_value(
            cases.TRANSFER_IN,
            mode,
            statistics.median(run.in_mb_per_s for run in runs),
            runs=[run.in_mb_per_s for run in runs],
        )
        results.set_value(
            cases.TRANSFER_OUT,
            mode,
            statistics.median(run.out_mb_per_s for run in runs),
            runs=[run.out_mb_per_s for run in runs],
        )
        results.set_value(
            cases.TRANSFER_RSS,
            mode,
            max(run.rss_growth_mib for run in runs),
            runs=[run.rss_growth_mib for run in runs],
            peak_source=runs[0].peak_source,
        )


def plot(json_path: Path, png_path: Path) -> None:
    """Draw the chart with the code's interpreter, which has matplotlib (.venv has not)."""
    python = os.environ.get("SANDBOX_PYTHON_BIN") or default_python()
    env = dict(os.environ)
    prebuilt = HERE.parent / ".runtime" / "mplconfig"
    if "MPLCONFIGDIR" not in env and prebuilt.is_dir():
        env["MPLCONFIGDIR"] = str(prebuilt)  # its font cache, built by make install
    done = subprocess.run(
        [python, str(HERE / "plot.py"), str(json_path), str(png_path)],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        report.progress(f"note: no chart: {python} could not draw it:\n{done.stderr[-2000:]}")
    else:
        report.progress(f"chart: {png_path}")


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    document = asyncio.run(run(options))
    report.write_json(options.json_path, document)
    report.print_report(document)
    report.progress(f"\nJSON: {options.json_path}")
    if options.png_path is not None:
        plot(options.json_path, options.png_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
