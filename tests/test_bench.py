"""``bench``: the results file and its summary table (quick), alternating runs, and one
``bench all --quick`` with tiny counts on the real stack, whose results file must hold every
benchmark with its figures, its baseline and their ratio."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.paired import Spread, alternate
from bench.results import (
    SECTION_KEYS,
    compared,
    default_path,
    document,
    failed,
    skipped,
    summary_rows,
    uncompared,
    write,
)
from tests.conftest import RunningStack


def test_every_section_has_the_same_keys_and_the_ratio_of_medians() -> None:
    relay = compared(
        {"events_per_s": Spread((8.0, 10.0, 9.0)), "events": 100},
        "bare librdkafka",
        {"events_per_s": Spread((20.0, 18.0, 30.0))},
        key="events_per_s",
        better="higher",
        also=("events",),
    )
    sections = [
        relay,
        uncompared({"up_s": 60.0}, "nothing else starts a stack"),
        skipped("does not fit"),
        failed("broker gone"),
    ]
    for section in sections:
        assert set(SECTION_KEYS) <= set(section)
    assert relay["ratio"] == pytest.approx(9.0 / 20.0)
    assert relay["figures"]["events_per_s"] == {
        "median": 9.0,
        "min": 8.0,
        "max": 10.0,
        "runs": [8.0, 10.0, 9.0],
    }
    assert relay["baseline"]["name"] == "bare librdkafka"
    with pytest.raises(ValueError, match="better"):
        compared({"x": 1.0}, "b", {"x": 1.0}, key="x", better="more")


def test_the_summary_has_a_row_per_benchmark_baseline_and_extra_figure() -> None:
    relay = compared(
        {"events_per_s": Spread((8_000.0, 10_000.0, 9_000.0)), "latency_p99_ms": 12.5},
        "bare librdkafka",
        {"events_per_s": Spread((20_000.0,))},
        key="events_per_s",
        better="higher",
        also=("latency_p99_ms",),
        kafka_producer_perf={
            "name": "Kafka ProducerPerformance",
            "compared": "events_per_s",
            "events_per_s": 30_000.0,
            "ratio": 0.3,
        },
    )
    rows = summary_rows({"relay": relay, "stack": skipped("no room")})
    assert all(len(row) == 6 for row in rows)
    assert rows[0] == [
        "relay",
        "events_per_s",
        "9,000 (8,000..10,000)",
        "bare librdkafka",
        "20,000 (20,000..20,000)",
        "0.45",
    ]
    assert rows[1][3:] == ["Kafka ProducerPerformance", "30,000", "0.30"]
    assert rows[2][:3] == ["relay", "latency_p99_ms", "12.5"]
    assert rows[3][:4] == ["stack", "skipped", "-", "no room"]


def test_the_results_file_is_json_under_a_utc_name(tmp_path: Path) -> None:
    started = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert default_path(started) == Path(".bench/bench-20260102T030405Z.json")
    doc = document(
        {"stack": skipped("no room")},
        started=started,
        finished=started,
        command="bench all --quick",
        quick=True,
        machine={"cpu_count": 2},
        versions={"python": "3.11"},
    )
    path = write(tmp_path / "deeper" / "results.json", doc)
    assert json.loads(path.read_text()) == doc
    assert list(path.parent.iterdir()) == [path]  # nothing partial left behind


def test_sides_are_warmed_up_then_alternate_in_rotating_order() -> None:
    calls: list[str] = []

    def side(name: str, figure: float) -> float:
        calls.append(name)
        return figure

    spreads = alternate(
        {"a": lambda: side("a", 1.0), "b": lambda: side("b", 2.0)}, runs=3, progress=print
    )
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert spreads["a"].runs == (1.0, 1.0, 1.0)
    assert spreads["b"].ratio_to(spreads["a"]) == 2.0


#: Counts small enough for the test suite; the shape of the results is what is checked.
_TINY = {
    "codec": {"seconds": 0.1},
    "mirror": {"count": 20, "rate": 50.0},
    "relay": {"count": 300, "rate": 100.0, "seconds": 1.0, "end_to_end_records": 20},
    "applier": {"count": 300, "rate": 100.0, "seconds": 1.0},
    "topics": {"count": 200},
    "catchup": {"events": 500},
}


@pytest.mark.stack
@pytest.mark.slow
def test_bench_all_quick_writes_every_section(
    stack: RunningStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cli import bench as bench_cli
    from cli.app import main

    monkeypatch.setattr(bench_cli, "_QUICK", _TINY)
    output = tmp_path / "results.json"
    result = CliRunner().invoke(
        main,
        ["bench", "all", "--quick", "--run-dir", str(stack.run_dir), "--output", str(output)],
    )
    print(result.output)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == str(output)
    results = json.loads(output.read_text())
    assert results["quick"] is True
    assert results["machine"]["cpu_count"] >= 1
    assert results["versions"]["kafka"] and results["versions"]["postgres"]
    benchmarks = results["benchmarks"]
    # The stack was up already: a second one does not fit in --quick; nor does replay.
    assert "skipped" in benchmarks.pop("stack")
    assert "skipped" in benchmarks.pop("replay")
    assert set(benchmarks) == set(_TINY)
    for name, section in benchmarks.items():
        assert set(SECTION_KEYS) <= set(section), name
        key = section["compared"]
        assert section["figures"][key] is not None, name
        assert section["baseline"][key] is not None, name
        assert math.isfinite(section["ratio"]) and section["ratio"] > 0, name
    relay = benchmarks["relay"]
    assert relay["kafka_producer_perf"]["events_per_s"] > 0
    assert relay["kafka_end_to_end"]["p99_ms"] >= relay["kafka_end_to_end"]["p50_ms"]
    assert benchmarks["catchup"]["figures"]["backlog"] >= 500
