"""Sandboxed code: a bar chart of data.csv, returned as chart.png.

Run it from the repository root with the sandbox running (`make run`):

    .venv/bin/oasis-sandbox exec examples/chart.py --file examples/data.csv --out ./out

`--file` puts data.csv into the execution's workspace; the chart comes back
through set_result(files=...) and `--out` saves it as out/chart.png.
"""

import matplotlib

matplotlib.use("Agg")  # no display in the sandbox
import matplotlib.pyplot as plt
import pandas as pd

data = pd.read_csv("data.csv")
print(data.to_string(index=False))

fig, ax = plt.subplots(figsize=(6, 4))
ax.bar(data["city"], data["temp"], color="tab:orange")
ax.set_ylabel("temperature (°C)")
ax.set_title("Temperature by city")
fig.tight_layout()
fig.savefig("chart.png", dpi=100)

warmest = data.loc[data["temp"].idxmax()]
set_result(  # noqa: F821 - provided by the sandbox's prelude
    {"cities": len(data), "warmest": warmest["city"], "temp": int(warmest["temp"])},
    files=["chart.png"],
)
