"""Applier benchmarks: apply throughput against a bare COPY, and end-to-end replication delay.

Throughput, in alternating runs (:func:`bench.paired.alternate`): for each applier run,
``count`` distinct OperationCompleted events (pre-encoded) are written to a mirrored topic of
a made-up source DC in the replica's cluster, to which an applier in this process is
already up and attached; it is timed from the start of their writing to the last offset it
stores. For each COPY run the same rows, already rendered as CSV, are COPY'd into the same
table: the limit of any writer. Each run's rows (and topic) are deleted after it, untimed,
so every run starts from the same tables.

Delay: writers publish at ``rate`` events/s in the owner DC while a relay (owner) and an
applier (replica) run as worker processes, with MirrorMaker 2 in between. Each event's delay
is the replica row's ``applied_at`` minus the time the owner's commit returned.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from bench.load import event_for, publish_at_rate
from bench.paired import Spread, alternate
from bench.workers import start_worker, wait_until
from consumer.applier import Applier, ApplierConfig
from consumer.sequencing import Position
from consumer.store import Incoming, copy_buffer, rows_of
from pipeline.admin import TopicSpec, ensure_topics
from pipeline.backpressure import produce_with_backpressure
from pipeline.codec import decode_record, encode
from pipeline.db import connect, fetch_all
from pipeline.errors import PipelineError
from pipeline.gc_tuning import tune_for_batches
from pipeline.kafka_config import KafkaSettings
from pipeline.shutdown import run_in_thread
from pipeline.stack.processes import stop
from pipeline.stack.security import StackSecurity, client_settings
from pipeline.stats import percentile
from pipeline.topics import mirrored, shard_topic
from pipeline.topology import DataCenter, Topology

__all__ = [
    "ApplyThroughput",
    "ReplicationDelay",
    "bench_apply_throughput",
    "bench_replication_delay",
]

_BENCH_SHARD = 96
#: The longest one applier run may take (s).
_RUN_TIMEOUT_S = 600.0


@dataclass(frozen=True, slots=True)
class ApplyThroughput:
    """Events per second applied, and rows per second of a bare COPY of the same rows, over
    alternating runs."""

    events: int
    applier: Spread
    copy: Spread


@dataclass(frozen=True, slots=True)
class ReplicationDelay:
    """Outbox commit in the owner DC to row applied in the replica, in ms."""

    rate: float
    seconds: float
    events: int
    p50_ms: float
    p99_ms: float
    max_ms: float


def _events(source_dc: str, count: int) -> list[bytes]:
    return [
        encode(event_for(f"b{seq:08d}", _BENCH_SHARD, owner_dc=source_dc, epoch=1, seq=seq))
        for seq in range(1, count + 1)
    ]


def _forget(dsn: str, source_dc: str) -> None:
    """Delete a run's replica rows and the bench shard's sequencing state."""
    conn = connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("DELETE FROM replica_clusters WHERE source_dc = %s", (source_dc,))
            cur.execute("DELETE FROM replica_checkpoints WHERE source_dc = %s", (source_dc,))
            cur.execute("DELETE FROM replication_state WHERE shard = %s", (_BENCH_SHARD,))
    finally:
        conn.close()


def _applier_run(site: DataCenter, kafka: KafkaSettings, count: int) -> float:
    """Apply ``count`` events with an applier in this process that is already up: events/s
    from the start of their writing to the last offset stored.

    The applier starts on a new mirrored topic holding one event and is timed only once it
    stored that one: its start-up (connections, the group join) is left out, as in
    production, where an applier is up long before a backlog comes, and as the COPY it is
    compared with gets its connection before its clock starts. Writing the events takes a
    small part of the time the applier takes for them.
    """
    source_dc = f"bench{uuid.uuid4().hex[:6]}"
    topic = mirrored(source_dc, shard_topic(_BENCH_SHARD))
    ensure_topics(kafka, [TopicSpec(topic)])
    primer, *payloads = _events(source_dc, count + 1)
    producer = Producer(kafka.producer())
    fetch_all(site.database, "DELETE FROM replication_state WHERE shard = %s", (_BENCH_SHARD,))
    _write(producer, topic, [primer])

    stop = threading.Event()
    config = ApplierConfig(
        dc=site.name,
        database=site.database,
        kafka=kafka,
        topics=(topic,),
        group=f"bench-{source_dc}",
    )
    worker = run_in_thread(Applier(config, stop))
    # One connection for the whole wait: a new one per check would take CPU from the applier.
    watch = connect(site.database)
    watch.autocommit = True
    try:
        with watch.cursor() as cur:

            def stored() -> int:
                cur.execute("SELECT next_offset FROM applied_offsets WHERE topic = %s", (topic,))
                row = cur.fetchone()
                return 0 if row is None else int(row[0])

            wait_until(lambda: stored() > 0, _RUN_TIMEOUT_S, "the applier's start")
            start = time.monotonic()
            _write(producer, topic, payloads)
            # Every 20 ms: the period of the look is the figure's resolution.
            wait_until(
                lambda: stored() > count,
                _RUN_TIMEOUT_S,
                "the applier's last batch",
                interval_s=0.02,
            )
        return count / (time.monotonic() - start)
    finally:
        watch.close()
        stop.set()
        worker.join(60)
        _forget(site.database, source_dc)
        fetch_all(site.database, "DELETE FROM applied_offsets WHERE topic = %s", (topic,))
        AdminClient(kafka.admin()).delete_topics([topic])


def _write(producer: Producer, topic: str, values: list[bytes]) -> None:
    """Produce ``values`` to ``topic`` and wait for every acknowledgement."""
    for value in values:
        produce_with_backpressure(producer, topic, value=value, partition=0)
    if producer.flush(120) != 0:
        raise PipelineError("the benchmark's events were not all acknowledged")


def _copy_run(site: DataCenter, count: int) -> float:
    """The same rows as an applier run, rendered as CSV (untimed), COPY'd into the same
    table: rows/s of the COPY and its commit."""
    source_dc = f"bench{uuid.uuid4().hex[:6]}"
    topic = mirrored(source_dc, shard_topic(_BENCH_SHARD))
    incoming = []
    for offset, value in enumerate(_events(source_dc, count)):
        name, record = decode_record(value)
        cluster = record["cluster"]
        cluster["id"] = "c" + cluster["id"]
        incoming.append(
            Incoming(
                topic,
                0,
                offset,
                Position(_BENCH_SHARD, source_dc, 1, offset + 1),
                name,
                record,
                value,
            )
        )
    clusters, _ = rows_of(incoming)
    buf = copy_buffer(clusters)
    conn = connect(site.database)
    try:
        start = time.monotonic()
        with conn, conn.cursor() as cur:
            cur.copy_expert(
                "COPY replica_clusters (cluster_id, shard, source_dc, epoch, seq, status, deleted,"
                " latest_job_id, body, nodes, occurred_at) FROM STDIN",
                buf,
            )
        copy_s = time.monotonic() - start
    finally:
        conn.close()
    _forget(site.database, source_dc)
    return count / copy_s


def bench_apply_throughput(
    topology: Topology,
    dc: str,
    *,
    count: int = 50_000,
    runs: int = 3,
    progress: Callable[[str], None] = lambda _: None,
) -> ApplyThroughput:
    """DC ``dc``'s applier and a bare COPY of the same rows, each warmed up, then in turn
    ``runs`` times over ``count`` events."""
    tune_for_batches()  # as the worker processes do
    site = topology.dc(dc)
    kafka = client_settings(StackSecurity.of_topology(topology), site, "coopr-bench-applier")
    spreads = alternate(
        {
            "applier": lambda: _applier_run(site, kafka, count),
            "bare COPY": lambda: _copy_run(site, count),
        },
        runs=runs,
        progress=progress,
    )
    return ApplyThroughput(count, spreads["applier"], spreads["bare COPY"])


def bench_replication_delay(
    topology: Topology,
    owner: str,
    replica: str,
    *,
    rate: float = 2000.0,
    seconds: float = 60.0,
) -> ReplicationDelay:
    """Delay from outbox commit in ``owner`` to row applied in ``replica`` at ``rate`` events/s.

    A relay (owner) and an applier (replica) run as worker processes, MirrorMaker 2 between.
    Per event: the replica row's ``applied_at`` minus the time the writer's commit returned.
    """
    shards = [s for s in topology.owned_shards(owner) if replica in topology.replica_list(s)]
    workers = [
        start_worker(kind, dc, topology) for kind, dc in (("relay", owner), ("applier", replica))
    ]

    def wait_applied(committed: dict[str, float], timeout_s: float) -> dict[str, float]:
        deadline = time.monotonic() + timeout_s
        applied: dict[str, float] = {}
        while len(applied) < len(committed) and time.monotonic() < deadline:
            time.sleep(0.5)
            applied = {
                k: float(t)
                for k, t in fetch_all(
                    topology.dc(replica).database,
                    "SELECT cluster_id, extract(epoch FROM applied_at) FROM replica_clusters"
                    " WHERE cluster_id = ANY(%s)",
                    (list(committed),),
                )
            }
        return applied

    try:
        # Warm-up: a few events all the way through, so the workers' start is not measured.
        warm, _ = publish_at_rate(topology.dc(owner).database, shards, rate=10, seconds=0.5)
        if len(wait_applied(warm, 120)) < len(warm):
            raise PipelineError(f"warm-up events did not reach {replica} within 120 s")
        committed, achieved = publish_at_rate(
            topology.dc(owner).database, shards, rate=rate, seconds=seconds
        )
        applied = wait_applied(committed, 120)
    finally:
        for w in workers:
            stop(w)
    if len(applied) < len(committed):
        raise PipelineError(
            f"only {len(applied)} of {len(committed)} events reached {replica} in 120 s"
        )
    ms = [(applied[k] - t) * 1000 for k, t in committed.items()]
    return ReplicationDelay(
        min(rate, achieved),
        seconds,
        len(ms),
        percentile(ms, 0.5),
        percentile(ms, 0.99),
        max(ms, default=float("nan")),
    )
