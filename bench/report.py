"""What the run prints and keeps: the machine, the table, and the JSON document."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from oasis.code import SandboxInfo

from . import cases, servers
from .cases import Metric
from .results import ratio_columns

Summary = Mapping[str, float]
"""p50/p90/p99 (and n, min, max) of a sampled figure, or `value` of a single one."""


def machine(info: SandboxInfo) -> dict[str, Any]:
    """The facts that numbers from different machines or commits must be read against."""
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "kernel": platform.release(),
        "harness_python": platform.python_version(),
        "code_python": info.runtimes.get("python", "?"),
        "node": info.runtimes.get("node", "not available"),
        "isolation": info.isolation,
        "network": info.network,
        "resource_control": info.resource_control,
        "server_version": info.version,
        "commit": _git("rev-parse", "--short", "HEAD"),
        "uncommitted_changes": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "load_average": os.getloadavg(),
    }


def describe_machine(facts: Mapping[str, Any]) -> str:
    load = ", ".join(f"{value:.2f}" for value in facts["load_average"])
    dirty = " (with uncommitted changes)" if facts["uncommitted_changes"] else ""
    return (
        f"machine: {facts['cores']} cores ({facts['cpu']}), Linux {facts['kernel']}, "
        f"load average {load} at start\n"
        f"code runs on Python {facts['code_python']} and Node.js {facts['node']}; "
        f"harness on Python {facts['harness_python']}\n"
        f"server {facts['server_version']} at {facts['commit']}{dirty}: "
        f"isolation {facts['isolation']}, network {facts['network']}, "
        f"resource control {facts['resource_control']}"
    )


def number(value: float) -> str:
    if abs(value) < 10:
        return f"{value:.2f}"
    if abs(value) < 1000:
        return f"{value:.1f}"
    return f"{value:.0f}"


def cell(metric: Metric, summary: Summary | None) -> str:
    if summary is None:
        return "-"
    text = " / ".join(number(summary[stat]) for stat in metric.shown)
    if metric.targets:
        text += " ✓" if all(target.met(summary) for target in metric.targets) else " ✗"
    return text


def ratio(metric: Metric, numerator: Summary | None, denominator: Summary | None) -> str:
    stat = metric.shown[0]
    if not metric.compared or numerator is None or denominator is None or not denominator[stat]:
        return "-"
    return f"{numerator[stat] / denominator[stat]:.2f}x"


def table(
    metrics: Sequence[Metric],
    results: Mapping[str, Mapping[str, Summary]],
    columns: Sequence[str],
    *,
    ratio_of: tuple[str, str] | None = None,
) -> str:
    """A Markdown table: a row per metric, a column per mode, then a ratio and the target.

    `results[metric.key][column]`; `ratio_of` = (numerator column, denominator column).
    """
    header = ["", "unit", *columns]
    if ratio_of is not None:
        header.append(f"{ratio_of[0]}/{ratio_of[1]}")
    with_targets = any(metric.targets for metric in metrics)
    if with_targets:
        header.append("target")
    rows = [header, ["---"] * len(header)]
    for metric in metrics:
        found = results.get(metric.key, {})
        unit = (
            metric.unit
            if metric.shown == ("value",)
            else f"{metric.unit}, {'/'.join(metric.shown)}"
        )
        row = [metric.label, unit, *(cell(metric, found.get(column)) for column in columns)]
        if ratio_of is not None:
            row.append(ratio(metric, found.get(ratio_of[0]), found.get(ratio_of[1])))
        if with_targets:
            row.append(", ".join(target.describe(metric.unit) for target in metric.targets))
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for row in rows:
        if row[0] == "---":
            row = ["-" * width for width in widths]
        lines.append(
            "| " + " | ".join(text.ljust(w) for text, w in zip(row, widths, strict=True)) + " |"
        )
    return "\n".join(lines)


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1) + "\n")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return done.stdout.strip()


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def print_report(document: Mapping[str, Any]) -> None:
    """The machine, what was run, and the table (and the extras' table, if any)."""
    modes = document["modes"]
    settings = document["settings"]
    metrics = cases.all_metrics(
        transfer_mib=settings["transfer_mib"], live_states=settings["live_states"]
    )
    results = {entry["key"]: entry["results"] for entry in document["metrics"]}
    print()
    print(describe_machine(document["machine"]))
    print(
        f"{settings['runs']} runs of each trivial case (slower cases fewer), modes interleaved; "
        f"{settings['tool_calls']} sequential tool calls in one execution; throughput over "
        f"{settings['throughput_count']} executions; {settings['transfer_repeats']} transfer(s) "
        f"of {settings['transfer_mib']} MiB each way (RSS: the largest growth); "
        f"server env {settings['server_env'][modes[0]]}; "
        f"wall time {document['harness']['wall_seconds']:.0f} s"
    )
    print()
    print(table(metrics, results, modes, ratio_of=ratio_columns(modes)))
    print("\n✓/✗: the target of issue 11 (speed) or 12 (stateful sessions) is met / not met.")
    print(
        "DataFrame rows: in one session, a step reusing `df` (loaded by an earlier, untimed "
        "keep_state step) against a one-shot execution reading it from the CSV that step wrote; "
        "the ratio row is the reloaded step's p50 over the kept one's."
    )
    if "warm" in modes:
        print(
            f"{settings['live_states']} live interpreters: a warm server of their own; the cold "
            "launcher is left out, as each of its live interpreters imports pandas itself "
            f"(60 MiB and more), so {settings['live_states']} of them could exhaust the "
            "machine's memory."
        )
    if len(modes) == 1:
        print(
            f"Only the {modes[0]} launcher: this server reads no {servers.LAUNCHER_VARIABLE}, "
            "so there is nothing to compare it with."
        )
    extras = document.get("extras")
    if extras:
        print("\nExtras: trivial executions on differently configured servers\n")
        compared = [
            dataclasses.replace(case.metric, targets=())
            for case in cases.LATENCY_CASES
            if case.metric.key in extras["results"]
        ]
        print(table(compared, extras["results"], extras["columns"]))
        for label in extras["left_out"]:
            print(f"Left out: {label}, the same as its mode's server.")
