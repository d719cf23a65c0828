"""The results file of ``bench``: one JSON document per run, and its summary table.

Shape::

    {"started_at": ISO 8601 UTC, "finished_at": ..., "seconds": wall time (s),
     "command": "bench all --quick", "quick": true,
     "machine": {...}, "versions": {...},            # bench.environment
     "benchmarks": {"relay": SECTION, "applier": SECTION, ...}}

Every SECTION has the same keys: ``figures`` (what was measured; a figure measured in
alternating runs is ``{"median", "min", "max", "runs"}``), ``baseline`` (``{"name", ...}``
with the same figure under the same key, or null where there is none), ``compared`` (that
key), ``better`` (``"higher"`` or ``"lower"``), ``ratio`` (measured over baseline, medians;
null without a baseline), ``seconds`` (the benchmark's wall time) and ``also`` (keys of
further figures the summary table shows). A benchmark that did
not run has empty figures and says why in ``skipped`` (left out on purpose) or ``failed``.
Further baselines of a section are objects under their own key with a ``name``, their
``compared`` key, its value and their ``ratio`` (the relay's ``kafka_producer_perf``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.paired import Spread

__all__ = [
    "SECTION_KEYS",
    "Section",
    "compared",
    "default_path",
    "document",
    "failed",
    "figure_of",
    "skipped",
    "summary_rows",
    "uncompared",
    "write",
]

Section = dict[str, Any]

#: Keys every section has.
SECTION_KEYS = ("figures", "baseline", "compared", "better", "ratio", "seconds", "also")


def _plain(figures: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.as_json() if isinstance(v, Spread) else v for k, v in figures.items()}


def figure_of(value: Any) -> float | None:
    """A figure's single value: the median of one measured in rounds, else itself."""
    if isinstance(value, Spread):
        return value.median
    if isinstance(value, Mapping):
        return figure_of(value.get("median"))
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _ratio(measured: Any, baseline: Any) -> float | None:
    m, b = figure_of(measured), figure_of(baseline)
    return None if m is None or not b else m / b


def compared(
    figures: Mapping[str, Any],
    baseline_name: str,
    baseline: Mapping[str, Any],
    *,
    key: str,
    better: str,
    seconds: float = 0.0,
    also: tuple[str, ...] = (),
    **extra: Any,
) -> Section:
    """A section comparing ``figures[key]`` with ``baseline[key]``; ``also`` names further
    figures for the summary table; ``extra`` keys (further baselines) are kept as they are."""
    if better not in ("higher", "lower"):
        raise ValueError(f"better must be 'higher' or 'lower', not {better!r}")
    return {
        "figures": _plain(figures),
        "baseline": {"name": baseline_name, **_plain(baseline)},
        "compared": key,
        "better": better,
        "ratio": _ratio(figures[key], baseline[key]),
        "seconds": seconds,
        "also": list(also),
        **extra,
    }


def uncompared(
    figures: Mapping[str, Any], why: str, *, seconds: float = 0.0, also: tuple[str, ...] = ()
) -> Section:
    """A section without a baseline, saying why there is none; ``also`` as for
    :func:`compared`."""
    return {
        "figures": _plain(figures),
        "baseline": None,
        "compared": None,
        "better": None,
        "ratio": None,
        "seconds": seconds,
        "also": list(also),
        "no_baseline": why,
    }


def _not_run(key: str, reason: str, seconds: float) -> Section:
    return {
        "figures": {},
        "baseline": None,
        "compared": None,
        "better": None,
        "ratio": None,
        "seconds": seconds,
        "also": [],
        key: reason,
    }


def skipped(reason: str, *, seconds: float = 0.0) -> Section:
    """A benchmark left out on purpose, and why."""
    return _not_run("skipped", reason, seconds)


def failed(reason: str, *, seconds: float = 0.0) -> Section:
    """A benchmark that raised, and its error."""
    return _not_run("failed", reason, seconds)


def document(
    benchmarks: Mapping[str, Section],
    *,
    started: datetime,
    finished: datetime,
    command: str,
    quick: bool,
    machine: Mapping[str, Any],
    versions: Mapping[str, Any],
) -> dict[str, Any]:
    """The whole results file."""
    return {
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": finished.isoformat(timespec="seconds"),
        "seconds": round((finished - started).total_seconds(), 1),
        "command": command,
        "quick": quick,
        "machine": dict(machine),
        "versions": dict(versions),
        "benchmarks": dict(benchmarks),
    }


def default_path(started: datetime, folder: Path = Path(".bench")) -> Path:
    """``.bench/bench-<UTC time>.json`` in the current folder."""
    return folder / f"bench-{started:%Y%m%dT%H%M%SZ}.json"


def write(path: Path, results: Mapping[str, Any]) -> Path:
    """Write ``results`` to ``path`` (its folder made), whole or not at all; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    os.replace(partial, path)
    return path


def _shown(value: Any) -> str:
    """A figure for the table: a median with its range, or a single value; ``-`` for none."""
    single = figure_of(value)
    if single is None:
        return "-"
    text = _number(single)
    if isinstance(value, Mapping) and "min" in value:
        text += f" ({_number(value['min'])}..{_number(value['max'])})"
    return text


def _number(x: float) -> str:
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def _ratio_text(ratio: Any) -> str:
    return "-" if ratio is None else f"{ratio:.2f}"


def _row(
    name: str, key: str, figures: Mapping[str, Any], baseline: Mapping[str, Any], ratio: Any
) -> list[str]:
    return [
        name,
        key,
        _shown(figures.get(key)),
        baseline["name"],
        _shown(baseline.get(key)),
        _ratio_text(ratio),
    ]


def summary_rows(benchmarks: Mapping[str, Section]) -> list[list[str]]:
    """One row per benchmark (BENCHMARK, FIGURE, MEASURED, BASELINE, BASELINE VALUE, RATIO),
    one per further baseline and one per figure in ``also``; a benchmark that did not run
    says why."""
    rows: list[list[str]] = []
    for name, section in benchmarks.items():
        reason = section.get("skipped") or section.get("failed")
        if reason is not None:
            rows.append([name, "skipped" if "skipped" in section else "FAILED", "-", reason])
            continue
        figures, key, baseline = section["figures"], section["compared"], section["baseline"]
        if key is not None and baseline is not None:
            rows.append(_row(name, key, figures, baseline, section["ratio"]))
            for extra in section.values():
                if isinstance(extra, Mapping) and "name" in extra and extra is not baseline:
                    rows.append(_row(name, extra["compared"], figures, extra, extra.get("ratio")))
        rows.extend([name, k, _shown(figures.get(k)), "-", "-", "-"] for k in section["also"])
    return [row + ["-"] * (6 - len(row)) for row in rows]
