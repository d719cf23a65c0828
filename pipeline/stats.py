"""Summary statistics of measurements, one definition for every report (demo, benchmarks)."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["percentile"]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0 <= q <= 1) of ``values``, NaN when there are none.

    Linear interpolation between the two nearest ranks, as PostgreSQL's ``percentile_cont``
    and NumPy's default compute it, so figures from SQL and from Python compare. ``values``
    need not be sorted; the result is in the values' unit.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} is outside 0..1")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
