"""The figures a run collects, and the JSON document they become."""

from __future__ import annotations

import dataclasses
import datetime
import os
import sys
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from .cases import Metric
from .stats import summarize


def ratio_columns(modes: Sequence[str]) -> tuple[str, str] | None:
    """(numerator, denominator) of the ratio column: warm/cold when both ran."""
    if "warm" in modes and "cold" in modes:
        return ("warm", "cold")
    return (modes[-1], modes[0]) if len(modes) > 1 else None


class Results:
    """Figures by metric key, then by column (a mode, or a variant in the extras)."""

    def __init__(self) -> None:
        self.summaries: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
        self.samples: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.details: dict[str, dict[str, Any]] = defaultdict(dict)

    def add_samples(self, metric: Metric, column: str, seconds: list[float]) -> None:
        self.samples[metric.key][column].extend(seconds)

    def summarize_samples(self) -> None:
        for key, columns in self.samples.items():
            for column, seconds in columns.items():
                self.summaries[key][column] = summarize(seconds, scale=1000)

    def set_value(self, metric: Metric, column: str, value: float, **detail: Any) -> None:
        self.summaries[metric.key][column] = {"value": value}
        if detail:
            self.details[metric.key][column] = detail

    def ratio(self, metric: Metric, columns: tuple[str, str]) -> float | None:
        found = self.summaries.get(metric.key, {})
        numerator, denominator = found.get(columns[0]), found.get(columns[1])
        stat = metric.shown[0]
        if not metric.compared or numerator is None or denominator is None or not denominator[stat]:
            return None
        return numerator[stat] / denominator[stat]

    def document(
        self,
        *,
        modes: Sequence[str],
        metrics: Sequence[Metric],
        wall: float,
        machine: dict[str, Any],
        settings: dict[str, Any],
        idle_processes: dict[str, Any],
        extras: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """Everything the run found, as bench/results/latest.json holds it (times in ms)."""
        ratio_of = ratio_columns(modes)
        return {
            "harness": {
                "argv": sys.argv[1:],
                "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "wall_seconds": round(wall, 1),
            },
            "machine": machine | {"load_average_end": os.getloadavg()},
            "settings": settings,
            "modes": list(modes),
            "ratio_of": list(ratio_of) if ratio_of else None,
            "metrics": [
                {
                    **dataclasses.asdict(metric),
                    "targets": [
                        {**dataclasses.asdict(target), "text": target.describe(metric.unit)}
                        for target in metric.targets
                    ],
                    "results": self.summaries.get(metric.key, {}),
                    "ratio": self.ratio(metric, ratio_of) if ratio_of else None,
                    "details": self.details.get(metric.key, {}),
                    "samples_ms": {
                        column: [round(seconds * 1000, 4) for seconds in samples]
                        for column, samples in self.samples.get(metric.key, {}).items()
                    },
                }
                for metric in metrics
            ],
            "idle_processes": idle_processes,
            "extras": extras,
        }
