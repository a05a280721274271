"""Draw bench/results/latest.json as a PNG: `python bench/plot.py RESULTS.json OUT.png`.

Run by the harness with the code's interpreter (.runtime/python), which has
matplotlib; it needs nothing else, so it imports nothing from the project.
Bars are p50 (or the single value); whiskers reach p90, a dot marks p99, and
red dashes the targets (dotted: a p99 target).
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

PANELS = {
    "latency": ("One execution, end to end", "ms (log scale)", True),
    "tool": ("Tool call round trip, per call", "ms", False),
    "throughput": ("Throughput, concurrency 8", "executions/s", False),
    "transfer": ("Large file transfer", "MB/s", False),
    "memory": ("Server memory", "MiB", False),
    "stateful": ("DataFrame step: reloaded ÷ kept, p50", "times", False),
}
COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52")


def draw_panel(ax: Axes, metrics: list[dict[str, Any]], modes: list[str], panel: str) -> None:
    title, unit, log = PANELS[panel]
    width = 0.8 / len(modes)
    for m, mode in enumerate(modes):
        for x, metric in enumerate(metrics):
            summary = metric["results"].get(mode)
            if summary is None:
                continue
            stat = metric["shown"][0]
            position = x - 0.4 + width * (m + 0.5)
            value = summary[stat]
            ax.bar(
                position,
                value,
                width * 0.9,
                color=COLOURS[m % len(COLOURS)],
                label=mode if x == 0 else None,
            )
            if "p90" in summary:
                ax.plot([position, position], [value, summary["p90"]], color="black", linewidth=1)
            if "p99" in summary and "p99" in metric["shown"]:
                ax.plot(position, summary["p99"], marker=".", color="black")
            ax.annotate(
                f"{value:.3g}",
                (position, value),
                textcoords="offset points",
                xytext=(0, 2),
                ha="center",
                fontsize=7,
            )
    for x, metric in enumerate(metrics):
        for target in metric["targets"]:
            style = ":" if target["stat"] == "p99" else "--"
            ax.hlines(
                target["limit"], x - 0.45, x + 0.45, colors="red", linestyles=style, linewidth=1
            )
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels([textwrap.fill(metric["label"], 18) for metric in metrics], fontsize=7)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(unit, fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    if log:
        ax.set_yscale("log")
    ax.set_xlim(-0.5, len(metrics) - 0.5)
    ax.legend(fontsize=7)


def main(source: Path, destination: Path) -> None:
    document = json.loads(source.read_text())
    modes = document["modes"]
    facts = document["machine"]
    figure = plt.figure(figsize=(18, 9), layout="constrained")
    grid = figure.add_gridspec(2, 4)
    places = {
        "latency": grid[0, :3],
        "tool": grid[0, 3],
        "throughput": grid[1, 0],
        "transfer": grid[1, 1],
        "memory": grid[1, 2],
        "stateful": grid[1, 3],
    }
    for panel, place in places.items():
        metrics = [metric for metric in document["metrics"] if metric["panel"] == panel]
        if metrics:
            draw_panel(figure.add_subplot(place), metrics, modes, panel)
    figure.suptitle(
        f"Oasis sandbox {facts['server_version']} ({facts['commit']}), "
        f"{facts['cores']} cores, isolation {facts['isolation']}, network {facts['network']}, "
        f"Python {facts['code_python']}, Node.js {facts['node']}; "
        f"{document['harness']['finished']}",
        fontsize=10,
    )
    figure.supxlabel(
        "bars: p50 (or the single value); whiskers to p90; dots: p99; "
        "red dashes: the targets of issues 11 and 12 (dotted: p99)",
        fontsize=8,
    )
    destination.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(destination, dpi=100)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
