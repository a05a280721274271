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
from oasis import CodeRequest
from oasis.code import GrpcRunner, HTTPRunner, MiB
from sandbox_server.config import default_python

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CONCURRENCY = 8
EXISTING_SESSION = "bench-session"
STATEFUL_SESSION = "bench-state"
SESSIONS = {"existing": EXISTING_SESSION, "stateful": STATEFUL_SESSION}
"""The session of each LatencyCase.session kind made during warm-up."""
STATE_HEADROOM = 16
"""Live interpreters and sessions the live-interpreter server allows beyond those measured."""


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
    live_states: int
    """Live interpreters whose memory is measured (warm launcher only)."""
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
        live_states=20 if quick else cases.LIVE_STATES,
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
    if "warm" in modes:
        await live_states_memory(options, results)
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
    dataframe_ratio(results, modes)
    return results.document(
        modes=modes,
        metrics=cases.all_metrics(
            transfer_mib=options.transfer_mib, live_states=options.live_states
        ),
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
    """The stateful session's DataFrame, then one of each case, so that nothing is
    measured on its first use."""
    setup = CodeRequest(code=cases.DATAFRAME_SETUP, session_id=STATEFUL_SESSION, keep_state=True)
    result = await runner.run(setup, measure.no_tools)
    measure.check(
        result.ok and result.output == cases.DATAFRAME_ROWS and result.state_kept,
        "DataFrame setup (keep_state)",
        result,
    )
    for case in cases.LATENCY_CASES:
        await measure.latency(runner, case, SESSIONS.get(case.session, ""))
    await measure.tool_pace(runner, 10)
    await measure.tool_pace(http_runner, 10)


async def settle(options: Options, runner: GrpcRunner, http_runner: HTTPRunner) -> None:
    """Warm up, then wait idle; without the stateful session, whose live interpreter
    would count in the server's memory (live interpreters have rows of their own)."""
    await warm_up(runner, http_runner)
    await runner.delete_workspace(STATEFUL_SESSION)
    await expect_live(runner, 0)
    await asyncio.sleep(options.idle_seconds)


async def expect_live(runner: GrpcRunner, count: int) -> None:
    """Raise CheckFailed unless the server holds exactly `count` live interpreters."""
    stateful = (await runner.info()).stateful
    if not stateful.enabled or stateful.live != count:
        raise measure.CheckFailed(
            f"the server holds {stateful.live} live interpreters where {count} should be "
            f"(stateful sessions {'on' if stateful.enabled else 'off: ' + stateful.reason})"
        )


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
        await settle(options, runner, http_runner)
        tree = memory.tree_memory(server.pid)
    pss = sum(process.pss_kib for process in tree) / 1024
    results.set_value(cases.IDLE_PSS, mode, pss, processes=len(tree))
    return [dataclasses.asdict(process) for process in tree]


async def live_states_memory(options: Options, results: Results) -> None:
    """PSS growth of a warm server and all its processes for `options.live_states`
    idle live interpreters, each in its own session after one pandas step.

    On a server of its own, for the reason idle_memory gives; warm only: a cold
    live interpreter imports pandas itself (60 MiB and more each), so as many
    of them on a cold server could take all the machine's memory.
    """
    count = options.live_states
    report.progress(
        f"live interpreters: a warm server alone, warmed up, {options.idle_seconds:g} s idle, "
        f"then {count} sessions with one pandas step each (keep_state), {options.idle_seconds:g} "
        "s idle"
    )
    limit = str(count + STATE_HEADROOM)
    env = server_env("warm", SANDBOX_MAX_STATES=limit, SANDBOX_MAX_SESSIONS=limit)
    async with (
        servers.ServerProcess("warm live interpreters", env) as server,
        GrpcRunner(server.grpc_target, max_retries=0) as runner,
        HTTPRunner(server.http_url, max_retries=0) as http_runner,
    ):
        await settle(options, runner, http_runner)
        before = memory.tree_memory(server.pid)
        began = time.perf_counter()
        await measure.live_states(runner, [f"bench-live-{index:03d}" for index in range(count)])
        seconds = time.perf_counter() - began
        await expect_live(runner, count)
        await asyncio.sleep(options.idle_seconds)
        after = memory.tree_memory(server.pid)
        await expect_live(runner, count)  # none ended while it was measured
    before_mib = sum(process.pss_kib for process in before) / 1024
    after_mib = sum(process.pss_kib for process in after) / 1024
    growth = after_mib - before_mib
    results.set_value(
        cases.LIVE_STATES_PSS,
        "warm",
        growth,
        live=count,
        before_mib=before_mib,
        after_mib=after_mib,
        processes_before=len(before),
        processes_after=len(after),
        growth_by_name_mib=growth_by_name(before, after),
        steps_seconds=seconds,
    )
    results.set_value(cases.LIVE_STATE_PSS_EACH, "warm", growth / count, live=count)


def growth_by_name(
    before: list[memory.ProcessMemory], after: list[memory.ProcessMemory]
) -> dict[str, float]:
    """PSS growth in MiB by process name, largest first: where the growth went."""
    totals: dict[str, float] = defaultdict(float)
    for sign, tree in ((-1, before), (1, after)):
        for process in tree:
            totals[process.name] += sign * process.pss_kib / 1024
    return dict(sorted(totals.items(), key=lambda item: -abs(item[1])))


def dataframe_ratio(results: Results, modes: tuple[str, ...]) -> None:
    """Reloaded ÷ kept, p50, per mode: what keeping the DataFrame saves a step."""
    for mode in modes:
        kept = results.summaries.get("dataframe_kept", {}).get(mode)
        reloaded = results.summaries.get("dataframe_reload", {}).get(mode)
        if kept and reloaded and kept["p50"]:
            results.set_value(
                cases.DATAFRAME_RATIO,
                mode,
                reloaded["p50"] / kept["p50"],
                reloaded_p50_ms=reloaded["p50"],
                kept_p50_ms=kept["p50"],
            )


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
                seconds = await measure.latency(runners[mode], case, SESSIONS.get(case.session, ""))
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
