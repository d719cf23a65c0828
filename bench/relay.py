"""Relay benchmarks: throughput (outbox to acknowledged) against raw librdkafka, and latency.

Throughput: ``count`` pre-encoded events are loaded into the DC's outbox (COPY, with the
shards' seqs advanced as :func:`producer.outbox.publish` would), then a relay runs until the
backlog is zero. In the same run, a bare librdkafka producer with the relay's settings sends
the same bytes to the same topics: the limit the relay can approach.

Latency: writers publish events at ``rate`` per second, one transaction each, while a relay
worker (a separate process, as in production) publishes them; the figure is each row's
``published_at`` (right after Kafka's acknowledgement) minus the time its commit returned.
"""

from __future__ import annotations

import dataclasses
import io
import threading
import time
from collections import Counter
from dataclasses import dataclass

from confluent_kafka import Producer

from bench.codec import sample_operation_completed
from bench.load import publish_at_rate
from bench.workers import start_worker
from pipeline.admin import TopicSpec, ensure_topics, high_watermark
from pipeline.backpressure import produce_with_backpressure
from pipeline.codec import encode
from pipeline.db import connect
from pipeline.errors import PipelineError
from pipeline.shutdown import run_in_thread
from pipeline.stack.processes import stop
from pipeline.stack.security import StackSecurity, client_settings
from pipeline.stats import percentile
from pipeline.topics import mirrored, shard_topic
from pipeline.topology import Topology
from producer.relay import Relay, RelayConfig

__all__ = ["RelayLatency", "RelayThroughput", "bench_relay_latency", "bench_relay_throughput"]


@dataclass(frozen=True, slots=True)
class RelayThroughput:
    """Events per second through the relay and through bare librdkafka, same bytes."""

    events: int
    event_bytes: int
    relay_per_s: float
    raw_per_s: float


@dataclass(frozen=True, slots=True)
class RelayLatency:
    """Outbox insert to acknowledged-and-marked, in ms, at ``rate`` events per second."""

    rate: float
    events: int
    p50_ms: float
    p99_ms: float
    max_ms: float


_RAW_TOPIC = "bench.relay.raw"


def _payload(shard: int, owner_dc: str = "", epoch: int = 0, seq: int = 0) -> bytes:
    event = sample_operation_completed(node_count=2)
    return encode(dataclasses.replace(event, shard=shard, owner_dc=owner_dc, epoch=epoch, seq=seq))


def _wait_empty(dsn: str, timeout_s: float) -> None:
    conn = connect(dsn)
    conn.autocommit = True
    deadline = time.monotonic() + timeout_s
    try:
        with conn.cursor() as cur:
            while time.monotonic() < deadline:
                cur.execute("SELECT EXISTS (SELECT 1 FROM outbox WHERE published_at IS NULL)")
                if not (cur.fetchone() or (True,))[0]:
                    return
                time.sleep(0.05)
    finally:
        conn.close()
    raise PipelineError(f"the outbox did not drain within {timeout_s:g} s")


def _wait_mirrored(
    topology: Topology, dc: str, shards: list[int], timeout_s: float = 180.0
) -> None:
    """Wait until MirrorMaker 2 has copied the shards to their first replica, so that its work
    for one phase does not take CPU from the next."""
    deadline = time.monotonic() + timeout_s
    security = StackSecurity.of_topology(topology)
    owner = client_settings(security, topology.dc(dc), "coopr-bench")
    for shard in shards:
        replica = client_settings(
            security, topology.dc(topology.replica_list(shard)[0]), "coopr-bench"
        )
        target = high_watermark(owner, shard_topic(shard))
        copy = mirrored(dc, shard_topic(shard))
        while high_watermark(replica, copy) < target:
            if time.monotonic() > deadline:
                raise PipelineError(f"MirrorMaker 2 did not catch up within {timeout_s:g} s")
            time.sleep(0.5)


def _load_outbox(dsn: str, dc: str, shards: list[int], count: int) -> None:
    """COPY ``count`` real events into the outbox, round-robin over ``shards``, each with the
    next seq of its shard, as :func:`producer.outbox.publish` would write them."""
    per_shard = Counter(shards[i % len(shards)] for i in range(count))
    conn = connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            buf = io.StringIO()
            for shard, n in per_shard.items():
                cur.execute(
                    "UPDATE shard_ownership SET last_seq = last_seq + %s WHERE shard = %s"
                    " RETURNING epoch, last_seq",
                    (n, shard),
                )
                epoch, last = cur.fetchone() or (0, 0)
                for seq in range(last - n + 1, last + 1):
                    payload = _payload(shard, dc, epoch, seq).hex()
                    buf.write(
                        f"{shard}\t{epoch}\t{seq}\tOperationCompleted\t00000042\t\\\\x{payload}\n"
                    )
            buf.seek(0)
            cur.copy_from(
                buf,
                "outbox",
                columns=("shard", "epoch", "seq", "event_type", "event_key", "payload"),
            )
    finally:
        conn.close()


def _relay_until_empty(config: RelayConfig, timeout_s: float = 300.0) -> float:
    """Run a relay in this process until the outbox is empty; returns the seconds it took."""
    stop = threading.Event()
    start = time.monotonic()
    worker = run_in_thread(Relay(config, stop))
    try:
        _wait_empty(config.database, timeout_s)
        return time.monotonic() - start
    finally:
        stop.set()
        worker.join(60)


def bench_relay_throughput(topology: Topology, dc: str, *, count: int = 50_000) -> RelayThroughput:
    """Relay throughput and, in the same run, bare librdkafka on the same bytes."""
    site = topology.dc(dc)
    shards = list(topology.owned_shards(dc))
    # On a secured stack as its administrator: the baseline's topic is not the relay's.
    kafka = client_settings(StackSecurity.of_topology(topology), site, "coopr-bench-relay")
    config = RelayConfig(dc=dc, database=site.database, kafka=kafka)
    _relay_until_empty(config)  # rows left by others must not count
    _wait_mirrored(topology, dc, shards)

    # The baseline writes the same bytes to a topic of its own: shard topics carry only real
    # events with real seqs, or replicas would see them.
    ensure_topics(kafka, [TopicSpec(_RAW_TOPIC)])
    raw = Producer(config.producer_settings())
    payload = _payload(shards[0])
    start = time.monotonic()
    for _ in range(count):
        produce_with_backpressure(raw, _RAW_TOPIC, value=payload, key=b"00000042", partition=0)
        raw.poll(0)
    if raw.flush(120) != 0:
        raise PipelineError("bare librdkafka did not get every acknowledgement within 120 s")
    raw_s = time.monotonic() - start

    _load_outbox(site.database, dc, shards, count)
    relay_s = _relay_until_empty(config)
    return RelayThroughput(count, len(payload), count / relay_s, count / raw_s)


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
        _wait_empty(site.database, 60)
        committed, achieved = publish_at_rate(
            site.database, list(topology.owned_shards(dc)), rate=rate, seconds=seconds
        )
        _wait_empty(site.database, 60)
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
