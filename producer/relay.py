"""The outbox relay: publishes committed outbox rows to the DC's shard topics, in order.

One relay per DC publishes at a time: it holds a PostgreSQL session advisory lock, and any
other relay of the DC waits as a standby, trying the lock every ``standby_poll_s``. When the
active relay dies its session ends, the lock is released, and a standby takes over.

Commit order, per batch (the guarantee: nothing is lost, a row may be published twice):

1. read up to ``batch_size`` unpublished rows in id order (seq order within each shard);
2. produce them to ``coopr.shard.NN`` with an idempotent producer (``acks=all``);
3. wait for every delivery report (records never time out: while Kafka is away the relay
   waits, and reports it in its health);
4. mark published, in one statement, for each shard the rows up to its first failed
   delivery. A crash between 3 and 4 re-publishes those rows: consumers absorb duplicates
   by ``(epoch, seq)``. A failed row and those after it in its shard are sent again, in
   order, after a backoff.

The relay wakes on ``NOTIFY coopr_outbox`` (sent by :func:`producer.outbox.publish` at
commit) and polls every ``poll_interval_s`` in case a notification was missed. Published rows
older than ``retention_s`` are pruned every ``prune_interval_s``.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import psycopg2
import psycopg2.extensions
from confluent_kafka import KafkaError, Message, Producer
from prometheus_client import Counter, Gauge, Histogram

from pipeline.db import connect
from pipeline.errors import PipelineError, UnreachableError
from pipeline.kafka_config import KafkaSettings
from pipeline.logging import get_logger
from pipeline.topics import shard_topic
from producer.outbox import OUTBOX_CHANNEL

__all__ = ["RELAY_LOCK", "Relay", "RelayConfig"]

log = get_logger(__name__)

#: Advisory lock key that makes one relay per DC (per database) the active one.
RELAY_LOCK = 0x636F6F70726C79

PUBLISHED = Counter(
    "coopr_relay_events_published_total", "Outbox rows acknowledged by Kafka.", ["dc"]
)
FAILED = Counter(
    "coopr_relay_delivery_failures_total", "Deliveries Kafka did not acknowledge.", ["dc"]
)
BACKLOG = Gauge("coopr_relay_outbox_backlog", "Outbox rows not yet published.", ["dc"])
ACTIVE = Gauge("coopr_relay_active", "1 while this relay holds the DC's relay lock.", ["dc"])
LATENCY = Histogram(
    "coopr_relay_publish_latency_seconds",
    "Outbox commit (row creation) to Kafka acknowledgement.",
    ["dc"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """Settings of one relay process. Times in seconds unless the name says ms."""

    dc: str
    database: str = field(repr=False)
    kafka: KafkaSettings
    batch_size: int = 5000
    poll_interval_s: float = 1.0
    standby_poll_s: float = 1.0
    retention_s: float = 24 * 3600.0
    prune_interval_s: float = 60.0
    stop_grace_s: float = 30.0
    max_backoff_s: float = 5.0

    def producer_settings(self) -> dict[str, Any]:
        """librdkafka settings: idempotent, ``acks=all``, never giving a record up.

        A record that timed out while a later one of its shard got through would reach Kafka
        after it, out of seq order. So records never time out (the relay waits while Kafka is
        away), and any other failure that could leave a gap is fatal to the producer, which
        the relay then replaces before sending the rows again, in order.
        """
        return self.kafka.producer(
            **{
                "linger.ms": 1,
                "message.timeout.ms": 0,
                "enable.gapless.guarantee": True,
                "queue.buffering.max.messages": max(100_000, 2 * self.batch_size),
            }
        )


class Relay:
    """The relay worker; :meth:`run` returns when ``stop`` is set (after the batch in flight)."""

    def __init__(self, config: RelayConfig, stop: threading.Event):
        self.config = config
        self.stop = stop
        self.instance = f"{socket.gethostname()}-{os.getpid()}"
        self.active = False
        self.last_error: str | None = None
        self.backlog = 0
        self._conn: psycopg2.extensions.connection | None = None
        self._producer = Producer(config.producer_settings())
        # Set on a fatal idempotence error: that producer can send nothing more.
        self._producer_broken = False
        self._next_prune = 0.0
        self._next_backlog = 0.0
        self._labels = {"dc": config.dc}

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy unless the last attempt failed; the role tells active from standby."""
        role = "active" if self.active else "standby"
        details = {
            "dc": self.config.dc,
            "instance": self.instance,
            "role": role,
            "backlog": self.backlog,
            "last_error": self.last_error,
        }
        return self.last_error is None, details

    def run(self) -> None:
        backoff = 0.1
        log.info("relay starting", dc=self.config.dc, instance=self.instance)
        while not self.stop.is_set():
            try:
                if not self._ensure_active():
                    self.stop.wait(self.config.standby_poll_s)
                    continue
                published = self._publish_batch()
                self._housekeeping()
                self.last_error = None
                backoff = 0.1
                if published == 0:
                    self._wait_for_rows()
            except (psycopg2.Error, PipelineError) as e:
                self.last_error = (
                    str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                )
                log.warning("relay retrying", error=self.last_error, backoff_s=backoff)
                self._drop_connection()
                if self._producer_broken:
                    self._producer = Producer(self.config.producer_settings())
                    self._producer_broken = False
                self.stop.wait(backoff)
                backoff = min(backoff * 2, self.config.max_backoff_s)
        self._drop_connection()
        self._producer.flush(self.config.stop_grace_s)
        log.info("relay stopped", dc=self.config.dc, instance=self.instance)

    def _ensure_active(self) -> bool:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.config.database)
            self._conn.autocommit = True
            self.active = False
        if self.active:
            return True
        with self._conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (RELAY_LOCK,))
            row = cur.fetchone()
            if row is None or not row[0]:
                return False
            cur.execute(f"LISTEN {OUTBOX_CHANNEL}")
        self.active = True
        ACTIVE.labels(**self._labels).set(1)
        log.info("relay active", dc=self.config.dc, instance=self.instance)
        return True

    def _drop_connection(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None
        if self.active:
            log.info("relay gave up the lock", dc=self.config.dc, instance=self.instance)
        self.active = False
        ACTIVE.labels(**self._labels).set(0)

    def _publish_batch(self) -> int:
        """Publish one batch; returns how many rows were marked published."""
        assert self._conn is not None
        with self._conn.cursor() as cur:
            cur.execute(
                "SELECT id, shard, epoch, seq, event_type, event_key, payload,"
                " extract(epoch FROM created_at)"
                " FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT %s",
                (self.config.batch_size,),
            )
            rows = cur.fetchall()
        if not rows:
            return 0
        delivered: set[int] = set()
        failed: dict[int, str] = {}

        def on_delivery(row_id: int, err: KafkaError | None, msg: Message) -> None:
            if err is None:
                delivered.add(row_id)
            else:
                failed[row_id] = err.str()
                self._producer_broken = self._producer_broken or err.fatal()

        for row_id, shard, epoch, seq, event_type, key, payload, _ in rows:
            headers = [
                ("event-type", event_type.encode()),
                ("epoch", str(epoch).encode()),
                ("seq", str(seq).encode()),
            ]
            while True:
                try:
                    self._producer.produce(
                        shard_topic(shard),
                        value=bytes(payload),
                        key=key.encode(),
                        partition=0,
                        headers=headers,
                        on_delivery=partial(on_delivery, row_id),
                    )
                    break
                except BufferError:
                    # The local queue is full: serve delivery reports to make room.
                    self._producer.poll(0.05)
        self._await_reports(lambda: len(delivered) + len(failed) < len(rows))

        # Per shard, only the prefix before the first row not acknowledged: a later row must
        # not be marked while an earlier one of the same shard still has to be sent again.
        blocked: set[int] = set()
        done: list[int] = []
        latencies: list[float] = []
        now = time.time()
        for row_id, shard, *_, created in rows:
            if shard in blocked or row_id not in delivered:
                blocked.add(shard)
                continue
            done.append(row_id)
            latencies.append(now - float(created))
        if done:
            with self._conn.cursor() as cur:
                cur.execute(
                    "UPDATE outbox SET published_at = clock_timestamp() WHERE id = ANY(%s)", (done,)
                )
        PUBLISHED.labels(**self._labels).inc(len(done))
        latency = LATENCY.labels(**self._labels)
        for seconds in latencies:
            latency.observe(seconds)
        if len(done) < len(rows):
            FAILED.labels(**self._labels).inc(len(rows) - len(delivered))
            reason = next(iter(failed.values()), "no delivery report in time")
            raise UnreachableError(
                f"{len(rows) - len(done)} of {len(rows)} rows not yet acknowledged: {reason}"
            )
        return len(done)

    def _await_reports(self, outstanding: Callable[[], bool]) -> None:
        """Serve delivery reports while ``outstanding()``: as long as it takes while running
        (Kafka may be away for a while), at most ``stop_grace_s`` once stop is set."""
        waited_since = time.monotonic()
        warned = False
        grace_until: float | None = None
        while outstanding():
            self._producer.poll(0.05)
            now = time.monotonic()
            if self.stop.is_set():
                grace_until = grace_until or now + self.config.stop_grace_s
                if now > grace_until:
                    return  # the rows stay unpublished: the next relay sends them again
            if not warned and now - waited_since > 10.0:
                warned = True
                self.last_error = "waiting over 10 s for Kafka to acknowledge the batch"
                log.warning("kafka is not acknowledging, waiting", dc=self.config.dc)

    def _wait_for_rows(self) -> None:
        """Sleep until a NOTIFY arrives, the poll interval passes, or stop is set."""
        assert self._conn is not None
        deadline = time.monotonic() + self.config.poll_interval_s
        while not self.stop.is_set():
            self._conn.poll()
            if self._conn.notifies:
                self._conn.notifies.clear()
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            # Short slices so that a stop request is seen within 0.2 s.
            select.select([self._conn], [], [], min(left, 0.2))

    def _housekeeping(self) -> None:
        assert self._conn is not None
        now = time.monotonic()
        if now >= self._next_backlog:
            with self._conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                self.backlog = int((cur.fetchone() or (0,))[0])
            BACKLOG.labels(**self._labels).set(self.backlog)
            self._next_backlog = now + 1.0
        if now >= self._next_prune:
            with self._conn.cursor() as cur:
                cur.execute(
                    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE published_at"
                    " < now() - make_interval(secs => %s) ORDER BY id LIMIT 50000)",
                    (self.config.retention_s,),
                )
                if cur.rowcount:
                    log.info("pruned published rows", dc=self.config.dc, rows=cur.rowcount)
            self._next_prune = now + self.config.prune_interval_s
