"""The applier: consumes the mirrored shard topics of the shards this DC replicates and
upserts them into the DC's Postgres.

Commit order, per batch (the guarantee: every event applied exactly once in effect):

1. read a batch: block for the first record, then take what is already fetched (at most
   ``batch_size``), so a quiet topic costs no added wait;
2. decode each record; what cannot be applied (undecodable bytes, an unknown fingerprint, a
   record that is not a shard event or names another shard or DC) goes to ``coopr.dlq``, and
   the applier waits for Kafka's acknowledgement;
3. apply the rest and store the next offsets in one database transaction
   (:func:`consumer.store.apply_batch`);
4. only then commit the same offsets to Kafka, asynchronously, so that Kafka's own tools show
   the group's lag. Postgres is the source of truth: on assignment the applier seeks to the
   offsets stored there.

If the database fails at 3, nothing is stored: the applier seeks back to the batch's first
offsets and retries with backoff (the consumer keeps polling, so it stays in its group). A
rebalance between batches re-reads at most the uncommitted batch, which the ``(epoch, seq)``
guard makes harmless. SIGTERM finishes the batch in flight, leaves the group and returns.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg2
import psycopg2.extensions
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from prometheus_client import Counter, Gauge, Histogram

from consumer.dlq import DeadLetter, DeadLetters
from consumer.sequencing import Position
from consumer.store import Applied, Incoming, apply_batch, stored_offsets
from pipeline.codec import decode_record
from pipeline.db import connect
from pipeline.errors import CodecError, PipelineError, TopicNameError
from pipeline.kafka_config import KafkaSettings
from pipeline.logging import get_logger
from pipeline.topics import mirrored, parse_mirrored_shard, shard_topic
from pipeline.topology import Topology

__all__ = ["Applier", "ApplierConfig", "replicated_topics"]

log = get_logger(__name__)

APPLIED = Counter("coopr_applier_events_applied_total", "Events applied to the replica.", ["dc"])
DUPLICATES = Counter("coopr_applier_duplicates_total", "Events already applied (replays).", ["dc"])
FENCED = Counter("coopr_applier_fenced_total", "Events from an older epoch, not applied.", ["dc"])
GAPS = Counter("coopr_applier_gaps_total", "Seq jumps within an epoch (lost events).", ["dc"])
LATE = Counter("coopr_applier_late_total", "Events that arrived into a recorded gap.", ["dc"])
DEAD = Counter("coopr_applier_dead_letters_total", "Records sent to the dead-letter topic.", ["dc"])
BATCH_SIZE = Histogram(
    "coopr_applier_batch_size",
    "Records per batch.",
    ["dc"],
    buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000, 10000),
)
BATCH_SECONDS = Histogram("coopr_applier_batch_seconds", "Time to apply one batch.", ["dc"])
LAG = Gauge(
    "coopr_applier_lag_messages", "Records not yet applied, per partition.", ["dc", "topic"]
)
DELAY = Histogram(
    "coopr_applier_replication_delay_seconds",
    "Apply (commit) time minus the event's occurred_at in the owner DC.",
    ["dc"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


def replicated_topics(topology: Topology, dc: str) -> tuple[str, ...]:
    """The mirrored shard topics DC ``dc`` applies: every shard it shares with another DC."""
    return tuple(
        mirrored(source, shard_topic(shard))
        for source, shards in topology.replicated_by(dc).items()
        for shard in shards
    )


@dataclass(frozen=True, slots=True)
class ApplierConfig:
    """Settings of one applier process. Times in seconds."""

    dc: str
    database: str = field(repr=False)
    kafka: KafkaSettings
    topics: tuple[str, ...]
    batch_size: int = 5000
    max_backoff_s: float = 5.0
    #: Defaults to ``coopr-applier-<dc>``: one group per DC.
    group: str | None = None

    @property
    def group_id(self) -> str:
        return self.group or f"coopr-applier-{self.dc}"


@dataclass(slots=True)
class _Batch:
    events: list[Incoming]
    dead: list[DeadLetter]
    first_offsets: dict[tuple[str, int], int]
    next_offsets: dict[tuple[str, int], int]


class Applier:
    """The applier worker; :meth:`run` returns when ``stop`` is set (after the batch in flight)."""

    def __init__(self, config: ApplierConfig, stop: threading.Event):
        self.config = config
        self.stop = stop
        self.last_error: str | None = None
        self.assigned: list[str] = []
        self._conn: psycopg2.extensions.connection | None = None
        self._consumer = Consumer(config.kafka.consumer(config.group_id))
        self._dlq = DeadLetters(config.kafka, config.dc)
        self._labels = {"dc": config.dc}

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy unless the last batch failed."""
        details = {
            "dc": self.config.dc,
            "group": self.config.group_id,
            "assigned": len(self.assigned),
            "last_error": self.last_error,
        }
        return self.last_error is None, details

    def run(self) -> None:
        log.info("applier starting", dc=self.config.dc, topics=len(self.config.topics))
        self._consumer.subscribe(
            list(self.config.topics),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        backoff = 0.1
        try:
            while not self.stop.is_set():
                messages = self._read()
                if not messages:
                    continue
                batch = self._decode(messages)
                started = time.monotonic()
                try:
                    if batch.dead:
                        self._dlq.send(batch.dead)
                    result = apply_batch(self._db(), batch.events, batch.next_offsets)
                except (psycopg2.Error, PipelineError) as e:
                    self._fail(batch, e, backoff)
                    backoff = min(backoff * 2, self.config.max_backoff_s)
                    continue
                BATCH_SECONDS.labels(**self._labels).observe(time.monotonic() - started)
                backoff = 0.1
                self.last_error = None
                self._committed(batch, result)
        finally:
            # close() leaves the group at once, instead of after the session timeout.
            self._consumer.close()
            if self._conn is not None:
                self._conn.close()
            log.info("applier stopped", dc=self.config.dc)

    def _db(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.config.database)
        return self._conn

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            stored = stored_offsets(self._db(), [(p.topic, p.partition) for p in partitions])
        except (psycopg2.Error, PipelineError) as e:
            # Without the stored offsets the partitions cannot start anywhere safe; the
            # earliest offset is safe (replays change nothing), only slower.
            log.warning("stored offsets unavailable, starting at the beginning", error=str(e))
            stored = {}
        for p in partitions:
            p.offset = stored.get((p.topic, p.partition), OFFSET_BEGINNING)
        consumer.incremental_assign(partitions)
        self.assigned = sorted({*self.assigned, *(p.topic for p in partitions)})
        log.info(
            "partitions assigned",
            dc=self.config.dc,
            count=len(partitions),
            resumed=sum(1 for p in partitions if (p.topic, p.partition) in stored),
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {p.topic for p in partitions}
        self.assigned = [t for t in self.assigned if t not in revoked]
        log.info("partitions revoked", dc=self.config.dc, count=len(partitions))

    def _read(self) -> list[Message]:
        first = self._consumer.poll(0.2)
        if first is None:
            return []
        rest = (
            self._consumer.consume(self.config.batch_size - 1, timeout=0)
            if self.config.batch_size > 1
            else []
        )
        messages = []
        for msg in [first, *rest]:
            err = msg.error()
            if err is None:
                messages.append(msg)
            elif err.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error", error=err.str())
        return messages

    def _decode(self, messages: Sequence[Message]) -> _Batch:
        batch = _Batch([], [], {}, {})
        for msg in messages:
            topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
            key = (topic, partition)
            batch.first_offsets.setdefault(key, offset)
            batch.next_offsets[key] = offset + 1
            value = msg.value()
            try:
                source = parse_mirrored_shard(topic)
                if value is None:
                    raise CodecError("the record has no value")
                name, record = decode_record(value)
                if name not in ("OperationCompleted", "RestartCheckpoint"):
                    raise CodecError(f"a {name} is not a shard event")
                if record["shard"] != source.shard or record["owner_dc"] != source.source_dc:
                    raise CodecError(
                        f"the event names shard {record['shard']} of {record['owner_dc']},"
                        f" but it was read from {topic}"
                    )
            except (CodecError, TopicNameError) as e:
                batch.dead.append(
                    DeadLetter(topic, partition, offset, msg.key(), value, str(e), type(e).__name__)
                )
                continue
            position = Position(source.shard, source.source_dc, record["epoch"], record["seq"])
            batch.events.append(Incoming(topic, partition, offset, position, name, record, value))
        return batch

    def _fail(self, batch: _Batch, error: Exception, backoff: float) -> None:
        """Nothing of the batch was stored: read it again after ``backoff`` seconds."""
        self.last_error = (
            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        )
        log.warning(
            "batch not applied, retrying",
            dc=self.config.dc,
            error=self.last_error,
            backoff_s=backoff,
            records=len(batch.events) + len(batch.dead),
        )
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        for (topic, partition), offset in batch.first_offsets.items():
            # A partition revoked meanwhile cannot be sought: its new owner starts from the
            # offsets stored in the database.
            with contextlib.suppress(KafkaException):
                self._consumer.seek(TopicPartition(topic, partition, offset))
        self.stop.wait(backoff)

    def _committed(self, batch: _Batch, result: Applied) -> None:
        now = datetime.now(UTC)
        APPLIED.labels(**self._labels).inc(len(result.applied))
        DUPLICATES.labels(**self._labels).inc(result.duplicates)
        FENCED.labels(**self._labels).inc(len(result.fenced))
        GAPS.labels(**self._labels).inc(len(result.gaps))
        LATE.labels(**self._labels).inc(result.late)
        if result.late:
            log.info("late events filled recorded gaps", dc=self.config.dc, events=result.late)
        DEAD.labels(**self._labels).inc(len(batch.dead))
        BATCH_SIZE.labels(**self._labels).observe(len(batch.events) + len(batch.dead))
        delay = DELAY.labels(**self._labels)
        for ev in result.applied:
            delay.observe((now - ev.occurred_at).total_seconds())
        for gap in result.gaps:
            log.warning(
                "gap in a shard: events never arrived",
                dc=self.config.dc,
                shard=gap.shard,
                source_dc=gap.source_dc,
                epoch=gap.epoch,
                after_seq=gap.after_seq,
                before_seq=gap.before_seq,
            )
        # One line per shard and batch: a stale DC replaying can send thousands.
        fenced = collections.Counter(ev.position.shard for ev in result.fenced)
        for shard, count in sorted(fenced.items()):
            log.warning(
                "fenced: events of an older epoch not applied",
                dc=self.config.dc,
                shard=shard,
                events=count,
            )
        for letter in batch.dead:
            log.warning(
                "dead letter",
                dc=self.config.dc,
                topic=letter.topic,
                offset=letter.offset,
                reason=letter.reason,
            )
        self._consumer.commit(
            offsets=[TopicPartition(t, p, o) for (t, p), o in batch.next_offsets.items()],
            asynchronous=True,
        )
        for (topic, partition), next_offset in batch.next_offsets.items():
            _, high = self._consumer.get_watermark_offsets(
                TopicPartition(topic, partition), cached=True
            )
            if high >= 0:
                LAG.labels(dc=self.config.dc, topic=topic).set(max(0, high - next_offset))
