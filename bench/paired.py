"""Measuring a path and its baselines side by side, equally warm.

A baseline measured once, cold, beside a warm path (or the other way round) says little: on
this machine raw librdkafka made 32k events/s in a first run and 171-177k/s in the next two.
So every side runs once untimed first, then the sides take turns for ``runs`` rounds, the
order rotating each round so that no side always follows the same one; each side's figure is
the median of its rounds, with their range beside it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Spread", "alternate"]


@dataclass(frozen=True, slots=True)
class Spread:
    """One side's figures over the rounds, in the unit its runs return (e.g. events/s)."""

    runs: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def low(self) -> float:
        return min(self.runs)

    @property
    def high(self) -> float:
        return max(self.runs)

    def ratio_to(self, baseline: Spread) -> float:
        """This side's median over ``baseline``'s median."""
        return self.median / baseline.median

    def as_json(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.low, "max": self.high, "runs": list(self.runs)}


def alternate(
    sides: Mapping[str, Callable[[], float]],
    *,
    runs: int = 3,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Spread]:
    """Warm each side up with one untimed run, then run the sides in turn ``runs`` times.

    Each callable does one run and returns its figure; whatever it needs before its clock
    starts (loading, encoding) it does first, untimed. ``progress`` hears one line per run.
    """
    if runs < 1:
        raise ValueError(f"runs must be at least 1, not {runs}")
    names = list(sides)
    for name in names:
        progress(f"{name}: warm-up run")
        sides[name]()
    figures: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(runs):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            figures[name].append(sides[name]())
            progress(f"{name}: run {round_ + 1} of {runs}: {figures[name][-1]:,.0f}")
    return {name: Spread(tuple(values)) for name, values in figures.items()}
