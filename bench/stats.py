"""Percentiles and summaries of timing samples."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), interpolated linearly between the nearest ranks."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(
    samples: Sequence[float], *, scale: float = 1.0, quantiles: Sequence[int] = (50, 90, 99)
) -> dict[str, float]:
    """`p50`, `p90`, ... of the samples times `scale`, with `n`, `min` and `max`."""
    summary = {f"p{q}": percentile(samples, q) * scale for q in quantiles}
    summary.update(n=len(samples), min=min(samples) * scale, max=max(samples) * scale)
    return summary
