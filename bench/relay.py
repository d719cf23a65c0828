"""Relay benchmarks: throughput (outbox to acknowledged) against raw librdkafka and Kafka's
ProducerPerformance, and latency beside Kafka's EndToEndLatency.

Throughput, in alternating runs (:func:`bench.paired.alternate`): for each relay run,
``count`` pre-encoded events are loaded into the DC's outbox (COPY, with the shards' seqs
advanced as :func:`producer.outbox.publish` would) and committed before the clock starts; the
clock stops when a relay that stays up for all runs has published them all. MirrorMaker 2
then copies them before the next run starts. A bare librdkafka producer with the relay's
settings, also up for all runs, sends the same number of records of the same size
round-robin over as many partitions as the DC has shards (each shard topic has one), to a
topic of its own: the limit the relay can approach. Then, on a plain stack, Kafka's
``ProducerPerformance`` with the same guarantees sends as many records as all those runs of
one side together, in one JVM: a JVM per run would pay its start and its
JIT warm-up each time, which is neither fair to it nor quick.

Latency: writers publish events at ``rate`` per second, one transaction each, while a relay
worker (a separate process, as in production) publishes them; the figure is each row's
``published_at`` (right after Kafka's acknowledgement) minus the time its commit returned.
Beside it, Kafka's ``EndToEndLatency`` (produce, acknowledge and consume, one at a time).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Producer

from bench.kafka_tools import EndToEnd, end_to_end_latency, producer_performance
from bench.load import load_outbox, outbox_payload, publish_at_rate
from bench.paired import Spread, alternate
from bench.workers import start_worker, wait_mirrored, wait_outbox_empty
from pipeline.admin import TopicSpec, ensure_topics
from pipeline.backpressure import produce_with_backpressure
from pipeline.db import connect
from pipeline.errors import PipelineError
from pipeline.gc_tuning import tune_for_batches
from pipeline.shutdown import run_in_thread
from pipeline.stack.processes import stop
from pipeline.stack.security import StackSecurity, client_settings
from pipeline.stats import percentile
from pipeline.topology import Topology
from producer.relay import Relay, RelayConfig

__all__ = [
    "RelayLatency",
    "RelayThroughput",
    "bench_kafka_end_to_end",
    "bench_relay_latency",
    "bench_relay_throughput",
]


@dataclass(frozen=True, slots=True)
class RelayThroughput:
    """Events per second through the relay and through bare librdkafka on the same bytes
    over alternating runs of ``events`` each, and through Kafka's ProducerPerformance in one
    run of ``producer_perf_records`` (None on a secured stack)."""

    events: int
    event_bytes: int
    relay: Spread
    raw: Spread
    producer_perf: float | None
    producer_perf_records: int


@dataclass(frozen=True, slots=True)
class RelayLatency:
    """Outbox insert to acknowledged-and-marked, in ms, at ``rate`` events per second."""

    rate: float
    events: int
    p50_ms: float
    p99_ms: float
    max_ms: float


_END_TO_END_TOPIC = "bench.relay.e2e"
#: The longest a run may take to drain its outbox or mirror its events (s).
_RUN_TIMEOUT_S = 300.0


def _raw_topic(partitions: int) -> TopicSpec:
    """The baselines' topic: as many partitions as the relay's shard topics together."""
    return TopicSpec(f"bench.relay.raw.p{partitions}", partitions=partitions)


def _raw_run(raw: Producer, topic: TopicSpec, payload: bytes, count: int) -> float:
    """Bare librdkafka producing ``count`` copies of ``payload`` round-robin over ``topic``'s
    partitions, as the relay spreads its rows over the shards: events/s to the last ack."""
    start = time.monotonic()
    for i in range(count):
        produce_with_backpressure(
            raw, topic.name, value=payload, key=b"00000042", partition=i % topic.partitions
        )
        raw.poll(0)
    if raw.flush(120) != 0:
        raise PipelineError("bare librdkafka did not get every acknowledgement within 120 s")
    return count / (time.monotonic() - start)


def bench_relay_throughput(
    topology: Topology,
    dc: str,
    *,
    count: int = 50_000,
    runs: int = 3,
    progress: Callable[[str], None] = lambda _: None,
) -> RelayThroughput:
    """Relay and bare librdkafka, each warmed up, then in turn ``runs`` times over ``count``
    events; then ProducerPerformance over ``count * (runs + 1)`` records.

    Both sides stay up between their runs, as a relay does in production: one relay (a
    thread here) and one producer for all runs, so neither pays its start-up (connections,
    the idempotent producer's id: half a second on a loaded machine) but in its warm-up.
    """
    tune_for_batches()  # as the worker processes do
    site = topology.dc(dc)
    shards = list(topology.owned_shards(dc))
    security = StackSecurity.of_topology(topology)
    # On a secured stack as its administrator: the baseline's topic is not the relay's.
    kafka = client_settings(security, site, "coopr-bench-relay")
    config = RelayConfig(dc=dc, database=site.database, kafka=kafka)
    # The baselines write to a topic of their own: shard topics carry only real events with
    # real seqs, or replicas would see them.
    raw_topic = _raw_topic(len(shards))
    ensure_topics(kafka, [raw_topic])
    payload = outbox_payload(shards[0], dc)
    stop_relay = threading.Event()
    relay = run_in_thread(Relay(config, stop_relay))
    try:
        wait_outbox_empty(site.database, _RUN_TIMEOUT_S)  # rows left by others must not count
        wait_mirrored(topology, dc, shards, timeout_s=_RUN_TIMEOUT_S)
        raw = Producer(config.producer_settings())

        def relay_run() -> float:
            load_outbox(site.database, dc, shards, count)
            start = time.monotonic()  # load_outbox returns once its rows are committed
            wait_outbox_empty(site.database, _RUN_TIMEOUT_S)
            rate = count / (time.monotonic() - start)
            wait_mirrored(topology, dc, shards, timeout_s=_RUN_TIMEOUT_S)
            return rate

        spreads = alternate(
            {
                "relay": relay_run,
                "raw librdkafka": lambda: _raw_run(raw, raw_topic, payload, count),
            },
            runs=runs,
            progress=progress,
        )
    finally:
        stop_relay.set()
        relay.join(60)
    records = count * (runs + 1)
    perf = None
    if security is None:  # the Java tools are given the plain listener only
        progress(f"ProducerPerformance: {records} records")
        perf = producer_performance(
            site, raw_topic.name, records=records, record_bytes=len(payload)
        )
    return RelayThroughput(
        count, len(payload), spreads["relay"], spreads["raw librdkafka"], perf, records
    )


def bench_kafka_end_to_end(topology: Topology, dc: str, *, records: int = 1000) -> EndToEnd | None:
    """Kafka's EndToEndLatency in ``dc`` with records of the relay's size (None on a secured
    stack, where the Java tools are not given credentials)."""
    if StackSecurity.of_topology(topology) is not None:
        return None
    site = topology.dc(dc)
    kafka = client_settings(None, site, "coopr-bench-relay")
    ensure_topics(kafka, [TopicSpec(_END_TO_END_TOPIC)])
    shard = topology.owned_shards(dc)[0]
    size = len(outbox_payload(shard, dc))
    return end_to_end_latency(site, _END_TO_END_TOPIC, records=records, record_bytes=size)


def bench_relay_latency(
    topology: Topology, dc: str, *, rate: float = 1000.0, seconds: float = 15.0
) -> RelayLatency:
    """Commit-to-acknowledged latency at ``rate`` events/s, with a relay worker process.

    Per event: the row's ``published_at`` (set right after Kafka's acknowledgement) minus
    the time its writer's commit returned.
    """
    site = topology.dc(dc)
    relay = start_worker("relay", dc, topology, "--poll-interval", "0.5")
    try:
        # Warm-up: a few events through the relay, so its start is not measured.
        publish_at_rate(site.database, list(topology.owned_shards(dc)), rate=10, seconds=0.5)
        wait_outbox_empty(site.database, 60)
        committed, achieved = publish_at_rate(
            site.database, list(topology.owned_shards(dc)), rate=rate, seconds=seconds
        )
        wait_outbox_empty(site.database, 60)
        published = dict(_published_at(site.database, list(committed)))
    finally:
        stop(relay)
    ms = [(published[k] - t) * 1000 for k, t in committed.items()]
    return RelayLatency(
        rate=min(rate, achieved),
        events=len(ms),
        p50_ms=percentile(ms, 0.5),
        p99_ms=percentile(ms, 0.99),
        max_ms=max(ms, default=float("nan")),
    )


def _published_at(dsn: str, keys: list[str]) -> list[tuple[str, float]]:
    conn = connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "SELECT event_key, extract(epoch FROM published_at) FROM outbox"
                " WHERE event_key = ANY(%s)",
                (keys,),
            )
            return [(k, float(t)) for k, t in cur.fetchall()]
    finally:
        conn.close()
