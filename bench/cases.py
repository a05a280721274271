"""What is measured: the code each case runs, how its result is checked, and its target.

Targets are those of issue 11 (speed) and issue 12 (stateful sessions), for a
2-core machine with isolation `namespaces`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Literal

from oasis import CodeResult

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True, kw_only=True)
class Target:
    stat: str
    """"p50", "p99" or "value": which figure of the summary is held to `limit`."""
    limit: float
    at_least: bool = False
    """True where more is better (throughput)."""

    def met(self, summary: Mapping[str, float]) -> bool:
        value = summary[self.stat]
        return value >= self.limit if self.at_least else value <= self.limit

    def describe(self, unit: str) -> str:
        sign = "≥" if self.at_least else "≤"
        stat = "" if self.stat == "value" else f"{self.stat} "
        return f"{stat}{sign} {self.limit:g} {unit}"


@dataclass(frozen=True, kw_only=True)
class Metric:
    """One row of the report."""

    key: str
    label: str
    unit: str
    panel: str
    """The chart panel it is drawn in."""
    higher_is_better: bool = False
    targets: tuple[Target, ...] = ()
    shown: tuple[str, ...] = ("p50", "p90", "p99")
    """The figures of its summary the table shows; ("value",) for a single figure."""
    compared: bool = True
    """Whether the modes' ratio (warm/cold) is worth showing; not for a row that is a ratio."""


@dataclass(frozen=True, kw_only=True)
class LatencyCase:
    """One execution timed end to end through GrpcRunner.run."""

    metric: Metric
    code: str
    runtime: str = "python"
    session: Literal["none", "existing", "new", "stateful"] = "none"
    """"existing": one session per server, made during warm-up; "new": a fresh one
    each run, deleted after the timed part; "stateful": one session per server whose
    live interpreter was made during warm-up by DATAFRAME_SETUP."""
    keep_state: bool = False
    """Run in the session's live interpreter (CodeRequest.keep_state)."""
    share: float = 1.0
    """Runs of this case as a share of --runs (slow cases get fewer)."""
    check: Callable[[CodeResult], bool]


def _ms(
    key: str,
    label: str,
    *targets: Target,
    panel: str = "latency",
    shown: tuple[str, ...] = ("p50", "p90", "p99"),
) -> Metric:
    return Metric(key=key, label=label, unit="ms", panel=panel, targets=targets, shown=shown)


def _output_is(expected: object) -> Callable[[CodeResult], bool]:
    return lambda result: result.ok and result.output == expected


PANDAS_CODE = """\
import pandas as pd

frame = pd.DataFrame({"team": ["a", "b", "a"], "score": [1, 2, 3]})
set_result(frame.groupby("team")["score"].sum().to_dict())
"""
PANDAS_OUTPUT = {"a": 4, "b": 2}

CHART_CODE = """\
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(4, 3))
ax.bar(["a", "b", "c"], [3, 1, 2])
fig.savefig("chart.png")
set_result("chart.png", files=["chart.png"])
"""


def _is_chart(result: CodeResult) -> bool:
    return result.ok and len(result.files) == 1 and result.files[0].data.startswith(PNG_MAGIC)


def kept_output_is(expected: object) -> Callable[[CodeResult], bool]:
    """The output, from an interpreter that was live before the run and still is after it."""
    return lambda result: (
        result.ok and result.output == expected and result.state_kept and not result.fresh_state
    )


DATAFRAME_ROWS = 100_000
_REGIONS = ("north", "south", "east", "west", "centre")

DATAFRAME_SETUP = f"""\
import numpy as np
import pandas as pd

n = np.arange({DATAFRAME_ROWS})
regions = np.array({list(_REGIONS)!r})
pd.DataFrame({{"region": regions[n % 5], "units": n % 97}}).to_csv("sales.csv", index=False)
df = pd.read_csv("sales.csv")
set_result(len(df))
"""
"""Warm-up, keep_state in the stateful session: writes sales.csv into its workspace and
leaves `df` loaded in its live interpreter."""

DATAFRAME_STEP = 'set_result(df.groupby("region")["units"].sum().to_dict())\n'
DATAFRAME_RELOAD = 'import pandas as pd\n\ndf = pd.read_csv("sales.csv")\n' + DATAFRAME_STEP
DATAFRAME_SUMS = {
    region: sum(i % 97 for i in range(index, DATAFRAME_ROWS, len(_REGIONS)))
    for index, region in enumerate(_REGIONS)
}
"""What DATAFRAME_STEP returns."""


_TRIVIAL_TARGETS = (Target(stat="p50", limit=4), Target(stat="p99", limit=10))

LATENCY_CASES = (
    LatencyCase(
        metric=_ms("python", "Python set_result(1), no session", *_TRIVIAL_TARGETS),
        code="set_result(1)",
        check=_output_is(1),
    ),
    LatencyCase(
        metric=_ms("python_session", "Python set_result(1), existing session", *_TRIVIAL_TARGETS),
        code="set_result(1)",
        session="existing",
        check=_output_is(1),
    ),
    LatencyCase(
        metric=_ms("python_new_session", "Python set_result(1), first in a new session"),
        code="set_result(1)",
        session="new",
        share=0.5,
        check=_output_is(1),
    ),
    LatencyCase(
        metric=_ms(
            "pandas", "pandas import + 3-row groupby (session)", Target(stat="p50", limit=15)
        ),
        code=PANDAS_CODE,
        session="existing",
        share=0.15,
        check=_output_is(PANDAS_OUTPUT),
    ),
    LatencyCase(
        metric=_ms(
            "chart", "matplotlib bar chart, PNG returned (session)", Target(stat="p50", limit=150)
        ),
        code=CHART_CODE,
        session="existing",
        share=0.15,
        check=_is_chart,
    ),
    LatencyCase(
        metric=_ms("node", "Node.js setResult(1), no session", Target(stat="p50", limit=5)),
        code="setResult(1)",
        runtime="node",
        share=0.5,
        check=_output_is(1),
    ),
    LatencyCase(
        metric=_ms(
            "python_state",
            "Python set_result(1), keep_state, live interpreter",
            Target(stat="p50", limit=3),
        ),
        code="set_result(1)",
        session="stateful",
        keep_state=True,
        check=kept_output_is(1),
    ),
    LatencyCase(
        metric=_ms("dataframe_kept", "groupby-sum, 100,000-row DataFrame kept (keep_state)"),
        code=DATAFRAME_STEP,
        session="stateful",
        keep_state=True,
        share=0.5,
        check=kept_output_is(DATAFRAME_SUMS),
    ),
    LatencyCase(
        metric=_ms("dataframe_reload", "the same, DataFrame reloaded from CSV (session)"),
        code=DATAFRAME_RELOAD,
        session="stateful",
        share=0.15,
        check=_output_is(DATAFRAME_SUMS),
    ),
)

TOOL_CODE = """\
for i in range({calls}):
    if call_tool("echo", {{"i": i}}) != {{"i": i}}:
        raise AssertionError("the echo tool answered wrongly")
set_result({calls})
"""

TOOL_GRPC = _ms(
    "tool_grpc",
    "tool call round trip, gRPC",
    Target(stat="p50", limit=0.4),
    panel="tool",
    shown=("p50", "p90"),
)
TOOL_HTTP = _ms(
    "tool_http",
    "tool call round trip, HTTP facade",
    Target(stat="p50", limit=0.7),
    panel="tool",
    shown=("p50", "p90"),
)

THROUGHPUT = Metric(
    key="throughput",
    label="trivial Python executions/s, concurrency 8",
    unit="exec/s",
    panel="throughput",
    shown=("value",),
    higher_is_better=True,
    targets=(Target(stat="value", limit=400, at_least=True),),
)

TRANSFER_CODE = """\
import os
import shutil

size = os.path.getsize("in.bin")
call_tool("mark", {"stage": "received"})
shutil.copyfile("in.bin", "out.bin")
call_tool("mark", {"stage": "written"})
set_result(size, files=["out.bin"])
"""

TRANSFER_IN = Metric(
    key="transfer_in",
    label="file in (client to code)",
    unit="MB/s",
    panel="transfer",
    shown=("value",),
    higher_is_better=True,
)
TRANSFER_OUT = Metric(
    key="transfer_out",
    label="file out (code to client)",
    unit="MB/s",
    panel="transfer",
    shown=("value",),
    higher_is_better=True,
)
TRANSFER_RSS = Metric(
    key="transfer_rss",
    label="server RSS growth, file in and out",
    unit="MiB",
    panel="memory",
    shown=("value",),
    targets=(Target(stat="value", limit=64),),
)
IDLE_PSS = Metric(
    key="idle_pss",
    label="idle PSS, server and all its processes",
    unit="MiB",
    panel="memory",
    shown=("value",),
    targets=(Target(stat="value", limit=512),),
)

DATAFRAME_RATIO = Metric(
    key="dataframe_ratio",
    label="DataFrame step: reloaded ÷ kept (p50)",
    unit="x",
    panel="stateful",
    shown=("value",),
    higher_is_better=True,
    compared=False,
)

LIVE_STATES = 200
"""Live interpreters of the memory rows (issue 12's target is for this many)."""
LIVE_STATES_PSS = Metric(
    key="live_states_pss",
    label="idle live Python interpreters, one pandas step each: PSS growth (warm only)",
    unit="MiB",
    panel="memory",
    shown=("value",),
    targets=(Target(stat="value", limit=2048),),
)
LIVE_STATE_PSS_EACH = Metric(
    key="live_state_pss_each",
    label="the same, per interpreter",
    unit="MiB",
    panel="memory",
    shown=("value",),
)


def all_metrics(*, transfer_mib: int, live_states: int) -> list[Metric]:
    """Every row of the report, in order; transfer and live-interpreter labels name
    the size, and the memory target of the live interpreters scales with their number."""
    size = f"{transfer_mib} MiB"
    states_target = replace(
        LIVE_STATES_PSS.targets[0],
        limit=LIVE_STATES_PSS.targets[0].limit * live_states / LIVE_STATES,
    )
    return [
        *(case.metric for case in LATENCY_CASES),
        DATAFRAME_RATIO,
        TOOL_GRPC,
        TOOL_HTTP,
        THROUGHPUT,
        replace(TRANSFER_IN, label=f"{size} {TRANSFER_IN.label}"),
        replace(TRANSFER_OUT, label=f"{size} {TRANSFER_OUT.label}"),
        replace(TRANSFER_RSS, label=f"{TRANSFER_RSS.label} ({size})"),
        IDLE_PSS,
        replace(
            LIVE_STATES_PSS,
            label=f"{live_states} {LIVE_STATES_PSS.label}",
            targets=(states_target,),
        ),
        LIVE_STATE_PSS_EACH,
    ]
