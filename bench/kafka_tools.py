"""Kafka's own performance tools as baselines: ``ProducerPerformance`` (producer throughput)
and ``EndToEndLatency`` (produce to consume, one record at a time), from the kafka-tools jar
the stack already runs on, started as the stack starts its JVMs
(:func:`pipeline.stack.kafka.java_argv`).

Both run idempotent with ``acks=all`` against a DC's own listener, so they measure the same
broker as the relay. Each run is a fresh JVM: its client's JIT warm-up is inside its figures,
which matters more the fewer records it sends.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.stack.kafka import java_argv
from pipeline.topology import DataCenter

__all__ = ["EndToEnd", "end_to_end_latency", "producer_performance"]

#: Small heaps: the tools hold a few batches, and the brokers and MirrorMakers need the memory.
_HEAP_MB = 256

_SUMMARY = re.compile(r"(\d+) records sent, ([\d.]+) records/sec .* 50th")
_AVERAGE = re.compile(r"Avg latency: ([\d.]+) ms")
_PERCENTILES = re.compile(r"Percentiles: 50th = (\d+), 99th = (\d+), 99\.9th = (\d+)")


@dataclass(frozen=True, slots=True)
class EndToEnd:
    """``EndToEndLatency``: records sent one at a time, each read back before the next;
    latencies in ms (the tool reports whole ms but for the average)."""

    records: int
    avg_ms: float
    p50_ms: float
    p99_ms: float
    p999_ms: float


def _run(main_class: str, args: list[str], timeout_s: float) -> str:
    """Run a Kafka tool to its end; its output (stdout and stderr)."""
    argv = java_argv(main_class, *args, max_heap_mb=_HEAP_MB)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise PipelineError(f"{main_class} did not finish within {timeout_s:g} s") from None
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise PipelineError(f"{main_class} failed: {output.strip()[-500:]}")
    return output


def _client_properties() -> list[str]:
    """The relay's delivery guarantees in the Java client's names."""
    return ["acks=all", "enable.idempotence=true", "linger.ms=1"]


def producer_performance(
    site: DataCenter, topic: str, *, records: int, record_bytes: int, timeout_s: float = 300.0
) -> float:
    """``ProducerPerformance`` sending ``records`` of ``record_bytes`` as fast as it can to
    ``topic`` (which must exist); the records per second it reports."""
    output = _run(
        "org.apache.kafka.tools.ProducerPerformance",
        [
            *("--topic", topic, "--num-records", str(records), "--throughput", "-1"),
            *("--record-size", str(record_bytes)),
            *("--producer-props", f"bootstrap.servers={site.kafka}", *_client_properties()),
        ],
        timeout_s,
    )
    found = _SUMMARY.findall(output)
    if not found or int(found[-1][0]) != records:
        raise PipelineError(f"ProducerPerformance printed no summary of {records} records")
    return float(found[-1][1])


def end_to_end_latency(
    site: DataCenter, topic: str, *, records: int, record_bytes: int, timeout_s: float = 300.0
) -> EndToEnd:
    """``EndToEndLatency`` over ``records`` of ``record_bytes`` on ``topic`` (one partition;
    the tool creates it if it is missing)."""
    with tempfile.TemporaryDirectory(prefix="coopr-bench-e2e-") as tmp:
        # Its positional arguments take acks; the rest of the settings come from a file.
        props = Path(tmp) / "client.properties"
        props.write_text("\n".join(p for p in _client_properties() if not p.startswith("acks")))
        output = _run(
            "org.apache.kafka.tools.EndToEndLatency",
            [site.kafka, topic, str(records), "all", str(record_bytes), str(props)],
            timeout_s,
        )
    average, percentiles = _AVERAGE.search(output), _PERCENTILES.search(output)
    if average is None or percentiles is None:
        raise PipelineError("EndToEndLatency printed no latencies")
    p50, p99, p999 = (float(v) for v in percentiles.groups())
    return EndToEnd(records, float(average.group(1)), p50, p99, p999)
