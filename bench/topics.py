"""``topics show`` benchmark: its decode rate against kcat reading the same records raw.

``count`` distinct OperationCompleted events (encoded as the relay writes them, about 1.2 KB
each) are produced to a throw-away topic of one partition in a DC's Kafka. Then, in the same
run, ``coopr-pipeline topics show --format json`` (a subprocess, as an operator runs it) and
``kcat -C -e`` (the raw bytes, no decoding) each read the whole topic to a pipe, timed from
the start of the process to its exit: startup included, as an operator waits for it. The topic
is deleted at the end.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from bench.load import event_for
from pipeline.admin import TopicSpec, ensure_topics
from pipeline.backpressure import produce_with_backpressure
from pipeline.codec import encode
from pipeline.errors import PipelineError
from pipeline.kafka_config import KafkaSettings
from pipeline.topology import Topology

__all__ = ["TopicsShow", "bench_topics_show"]


@dataclass(frozen=True, slots=True)
class TopicsShow:
    """Records per second read by ``topics show --format json`` and by ``kcat -C -e``,
    whole process runs (s) included."""

    records: int
    record_bytes: int
    show_s: float
    kcat_s: float

    @property
    def show_per_s(self) -> float:
        return self.records / self.show_s

    @property
    def kcat_per_s(self) -> float:
        return self.records / self.kcat_s


def bench_topics_show(topology: Topology, dc: str, *, count: int) -> TopicsShow:
    """Fill a new topic of ``dc`` with ``count`` events, then time both readers over it."""
    kcat = shutil.which("kcat")
    if kcat is None:
        raise PipelineError(
            "kcat is not on PATH: deploy/scripts/install-system-deps.sh installs it"
        )
    site = topology.dc(dc)
    settings = KafkaSettings(site.kafka, client_id="coopr-bench")
    topic = f"coopr.bench.topics.{uuid.uuid4().hex[:8]}"
    ensure_topics(settings, [TopicSpec(topic)])
    try:
        size = _fill(settings, topic, count)
        show = [sys.executable, "-m", "cli", "topics", "show", "--dc", dc, "--topic", topic]
        show_s = _timed([*show, "--format", "json", "--topology", topology.source], count)
        raw = [kcat, "-C", "-b", site.kafka, "-t", topic, "-p", "0", "-o", "beginning", "-e"]
        kcat_s = _timed([*raw, "-q", "-f", "%s\n"], None)
    finally:
        AdminClient(settings.admin()).delete_topics([topic])
    return TopicsShow(records=count, record_bytes=size, show_s=show_s, kcat_s=kcat_s)


def _fill(settings: KafkaSettings, topic: str, count: int) -> int:
    """Produce ``count`` distinct events to ``topic``; returns the size of one (bytes)."""
    producer = Producer(settings.producer(**{"linger.ms": 20}))
    size = 0
    for i in range(count):
        value = encode(event_for(f"{90_000_000 + i:08d}", shard=i % 16, seq=i + 1))
        size = len(value)
        produce_with_backpressure(producer, topic, value=value, key=str(i % 16).encode())
    if producer.flush(60) != 0:
        raise PipelineError(f"{topic}: records not acknowledged within 60 s")
    return size


def _timed(argv: list[str], lines: int | None) -> float:
    """Run ``argv`` to its end, its output to a pipe read here; the wall time in seconds.
    With ``lines``, its output must hold that many lines (every record shown)."""
    start = time.monotonic()
    done = subprocess.run(argv, capture_output=True, check=False)
    elapsed = time.monotonic() - start
    if done.returncode != 0:
        raise PipelineError(f"{argv[0]} failed: {done.stderr.decode(errors='replace')[-500:]}")
    printed = done.stdout.count(b"\n")
    if lines is not None and printed != lines:
        raise PipelineError(f"{' '.join(argv[:6])} printed {printed} lines, not {lines}")
    return elapsed
