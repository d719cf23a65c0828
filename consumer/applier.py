"""The applier: consumes the mirrored shard topics of the shards this DC replicates and
upserts them into the DC's Postgres.

Commit order, per batch (the guarantee: every event applied exactly once in effect, every
refused record dead-lettered exactly once):

1. read a batch: block for the first record, then take what is already fetched, at most
   ``batch_size`` records and about ``batch_bytes`` bytes, so a quiet topic costs no added
   wait;
2. decode each record; what cannot be applied (undecodable bytes, an unknown fingerprint, a
   record that is not a shard event or names another shard or DC) is refused;
3. in one database transaction (:func:`consumer.store.apply_batch`): apply the events, keep
   the refused records for the dead-letter topic, store the next offsets;
4. only then commit the same offsets to Kafka, asynchronously, so that Kafka's own tools show
   the group's lag, and ship the dead letters to ``coopr.dlq`` (:mod:`consumer.dlq`).
   Postgres is the source of truth: on assignment the applier seeks to the offsets stored
   there; while they cannot be read (the database is down), the partitions stay paused.

Batches are pipelined: while one is applied (step 3, in a thread and on a database
connection of its own), the next is read and decoded (steps 1 and 2); it is applied only once
the previous one has committed and step 4 has run for it, so batches commit in read order and
the database and the decoding work at the same time. At most two batches are held. When the
previous batch failed, the next is dropped and read again; when it left partitions waiting
for a claim (below), the next one's records of those partitions are dropped and read again.

If the database fails at 3 with a transient error (connection lost, serialization failure,
deadlock), nothing is stored: the applier seeks back to the batch's first offsets and
retries with backoff (the consumer keeps polling, so it stays in its group); a seek that
fails on a partition it still owns stops the applier rather than skip records. If the
database refuses the data of an event (a data exception, a constraint violation), the event
is found by halving the batch, dead-lettered with the database's message, and the rest is
applied. A rebalance between batches re-reads at most the uncommitted batch, which the
``(epoch, seq)`` guard makes harmless. SIGTERM finishes the batch in flight and returns;
:meth:`Applier.close` (or leaving its ``with`` block) leaves the group.

An event of a newer epoch whose claim this DC has not seen yet waits (``docs/ownership.md``,
"Replicas and the cut"): the batch's transaction applies nothing of its partition from that
event on and stores the partition's offset at that event. The applier then pauses the
partition, rewinds it to that event and reads it again every ``claim_retry_s``, while the
other partitions go on; ``/healthz`` and ``coopr_applier_waiting_partitions`` show it.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
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

from consumer.decoding import decode_incoming
from consumer.dlq import DeadLetterShipper, RefusedRecord
from consumer.store import (
    Applied,
    Incoming,
    apply_batch,
    permanent,
    refused_by_database,
    stored_offsets,
)
from pipeline.db import ConnectionTimeouts, connect
from pipeline.errors import CodecError, PipelineError, TopicNameError, first_line
from pipeline.kafka_config import KafkaSettings
from pipeline.logging import get_logger
from pipeline.shutdown import Closeable
from pipeline.topics import mirrored, shard_topic
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
WAITING = Gauge(
    "coopr_applier_waiting_partitions",
    "Partitions held at an event of a newer epoch until its claim is seen.",
    ["dc"],
)
DELAY = Histogram(
    "coopr_applier_replication_delay_seconds",
    "Apply (commit) time minus the event's occurred_at in the owner DC, per owner (source) DC.",
    ["dc", "source_dc"],
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
    """Settings of one applier process. Times in seconds, sizes in bytes."""

    dc: str
    database: str = field(repr=False)
    kafka: KafkaSettings
    topics: tuple[str, ...]
    batch_size: int = 5000
    #: Record values per batch, about (a batch passes it by about one record).
    batch_bytes: int = 16 * 1024 * 1024
    max_backoff_s: float = 5.0
    #: How often a partition that waits for a claim is read again.
    claim_retry_s: float = 0.2
    #: Defaults to ``coopr-applier-<dc>``: one group per DC.
    group: str | None = None
    #: How long the group waits for a member that stopped heartbeating before it hands that
    #: member's partitions to a standby (Kafka's default is 45 s). librdkafka heartbeats from
    #: a thread of its own, so a long batch never trips it; a crashed applier stops
    #: replication for this long, so it is kept short (the broker's floor is 6 s).
    session_timeout_s: float = 10.0
    timeouts: ConnectionTimeouts = field(default_factory=ConnectionTimeouts)

    @property
    def group_id(self) -> str:
        return self.group or f"coopr-applier-{self.dc}"


#: Records taken from the consumer's queue at most at a time.
_CHUNK = 500


@dataclass(slots=True)
class _Wait:
    """A partition held at ``event`` (its offset is where it is read again) until the claim
    of the event's epoch is seen; ``since`` and ``retry_at`` are monotonic seconds."""

    event: Incoming
    since: float
    retry_at: float
    paused: bool = True


@dataclass(slots=True)
class _Batch:
    events: list[Incoming]
    refused: list[RefusedRecord]
    first_offsets: dict[tuple[str, int], int]
    next_offsets: dict[tuple[str, int], int]

    def without(self, partitions: Collection[tuple[str, int]]) -> _Batch | None:
        """This batch without the records of ``partitions``; None when nothing is left."""
        left = _Batch(
            [ev for ev in self.events if (ev.topic, ev.partition) not in partitions],
            [r for r in self.refused if (r.topic, r.partition) not in partitions],
            {k: o for k, o in self.first_offsets.items() if k not in partitions},
            {k: o for k, o in self.next_offsets.items() if k not in partitions},
        )
        return left if left.next_offsets else None


@dataclass(slots=True)
class _Flight:
    """A batch being applied; the future gives its result and the time it committed."""

    batch: _Batch
    future: Future[tuple[Applied, datetime]]
    started: float = field(default_factory=time.monotonic)


class Applier(Closeable):
    """The applier worker; :meth:`run` returns when ``stop`` is set (after the batch in
    flight). A context manager: leaving it closes the consumer (leaving the group at once),
    the dead-letter producer and the database connection."""

    def __init__(self, config: ApplierConfig, stop: threading.Event):
        self.config = config
        self.stop = stop
        self.last_error: str | None = None
        self.assigned: list[str] = []
        # Offsets at assignment and dead letters on one connection, batches on another: the
        # applying thread's transaction must never see a statement of the main thread.
        self._conn: psycopg2.extensions.connection | None = None
        self._apply_conn: psycopg2.extensions.connection | None = None
        self._applying = ThreadPoolExecutor(max_workers=1, thread_name_prefix="applier-apply")
        session_ms = int(config.session_timeout_s * 1000)
        self._consumer = Consumer(
            config.kafka.consumer(
                config.group_id,
                **{"session.timeout.ms": session_ms, "heartbeat.interval.ms": session_ms // 4},
            )
        )
        self._letters = DeadLetterShipper(config.kafka, config.dc)
        # Partitions assigned while their stored offsets could not be read: paused until then.
        self._awaiting: dict[tuple[str, int], TopicPartition] = {}
        # Partitions held at an event whose claim is not seen yet.
        self._waiting: dict[tuple[str, int], _Wait] = {}
        self._labels = {"dc": config.dc}
        self._log = log.bind(dc=config.dc)

    def close(self) -> None:
        """Leave the group, flush the dead letters in flight, close the connections."""
        self._applying.shutdown()
        self._consumer.close()
        self._letters.close()
        self._close_connections()

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy unless the last batch failed or partitions wait for their offsets. A
        partition waiting for a claim is listed (``waiting_for_claims``: which epoch, from
        which offset, for how many seconds) but healthy: the claim normally follows within a
        mirror delay, and a longer wait is the controller's or the mirror's problem."""
        awaiting = sorted(f"{t}[{p}]" for t, p in list(self._awaiting))
        now = time.monotonic()
        waiting = {
            f"{t}[{p}]": f"shard {w.event.position.shard} epoch {w.event.position.epoch} from"
            f" offset {w.event.offset}, {now - w.since:.0f} s"
            for (t, p), w in sorted(dict(self._waiting).items())
        }
        details = {
            "dc": self.config.dc,
            "group": self.config.group_id,
            "assigned": len(self.assigned),
            "awaiting_offsets": awaiting,
            "waiting_for_claims": waiting,
            "last_error": self.last_error,
        }
        return self.last_error is None and not awaiting, details

    def run(self) -> None:
        self._log.info("applier starting", topics=len(self.config.topics))
        self._consumer.subscribe(
            list(self.config.topics),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        backoff = 0.1
        flight: _Flight | None = None
        while not self.stop.is_set():
            self._resume_awaiting()
            self._retry_waiting()
            messages = self._read()
            batch = self._decode(messages) if messages else None
            if flight is not None:
                backoff, batch = self._land(flight, batch, backoff)
                flight = None
            if batch is not None:
                flight = _Flight(batch, self._applying.submit(self._apply_timed, batch))
            else:
                self._ship_letters()
        if flight is not None:
            self._land(flight, None, backoff)
        self._log.info("applier stopped")

    def _land(
        self, flight: _Flight, following: _Batch | None, backoff: float
    ) -> tuple[float, _Batch | None]:
        """Wait for the batch in flight and finish it (step 4), or read it again after
        ``backoff`` s when it failed; returns the next backoff and what is left of the
        ``following`` batch (read meanwhile) to apply."""
        try:
            result, committed_at = flight.future.result()
        except (psycopg2.Error, PipelineError) as e:
            self._fail(flight.batch, e, backoff, following)
            return min(backoff * 2, self.config.max_backoff_s), None
        BATCH_SECONDS.labels(**self._labels).observe(time.monotonic() - flight.started)
        self.last_error = None
        self._committed(flight.batch, result, committed_at)
        if result.refused:
            self._ship_letters()
        if following is not None and result.waiting:
            # Those partitions were rewound to their waiting event: read again from there.
            following = following.without(result.waiting.keys())
        return 0.1, following

    def _close_connections(self) -> None:
        for conn in (self._conn, self._apply_conn):
            if conn is not None:
                conn.close()
        self._conn = self._apply_conn = None

    def _db(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.config.database, timeouts=self.config.timeouts)
        return self._conn

    def _apply_timed(self, batch: _Batch) -> tuple[Applied, datetime]:
        """:meth:`_apply`, and the time it committed (for the replication delay)."""
        return self._apply(batch), datetime.now(UTC)

    def _apply(self, batch: _Batch) -> Applied:
        """Apply the batch (in the applying thread); when the database refuses some events'
        data, dead-letter those and apply the rest."""
        if self._apply_conn is None or self._apply_conn.closed:
            self._apply_conn = connect(self.config.database, timeouts=self.config.timeouts)
        conn = self._apply_conn
        try:
            return apply_batch(conn, batch.events, batch.next_offsets, batch.refused)
        except psycopg2.Error as e:
            if not permanent(e):
                raise
            refused = refused_by_database(conn, batch.events)
            if not refused:
                raise
        for ev, error in refused:
            batch.refused.append(
                RefusedRecord(
                    ev.topic,
                    ev.partition,
                    ev.offset,
                    ev.key,
                    ev.payload,
                    f"the database refused the event: {first_line(error)}",
                    f"{type(error).__name__} ({error.pgcode})",
                )
            )
        dropped = {id(ev) for ev, _ in refused}
        batch.events = [ev for ev in batch.events if id(ev) not in dropped]
        return apply_batch(conn, batch.events, batch.next_offsets, batch.refused)

    def _ship_letters(self) -> None:
        """Send the committed dead letters; a failure leaves them for the next call."""
        try:
            self._letters.ship(self._db())
        except (psycopg2.Error, PipelineError) as e:
            self._log.warning("dead letters not shipped yet", error=first_line(e))

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned = sorted({*self.assigned, *(p.topic for p in partitions)})
        try:
            stored = stored_offsets(self._db(), [(p.topic, p.partition) for p in partitions])
        except (psycopg2.Error, PipelineError) as e:
            # Starting anywhere else would replay or skip: wait for the database instead.
            consumer.incremental_assign(partitions)
            consumer.pause(partitions)
            self._awaiting.update({(p.topic, p.partition): p for p in partitions})
            self.last_error = first_line(e)
            self._log.warning(
                "stored offsets unavailable, partitions paused",
                count=len(partitions),
                error=self.last_error,
            )
            return
        self._assign_at(consumer, partitions, stored)

    def _assign_at(
        self,
        consumer: Consumer,
        partitions: list[TopicPartition],
        stored: dict[tuple[str, int], int],
    ) -> None:
        for p in partitions:
            p.offset = stored.get((p.topic, p.partition), OFFSET_BEGINNING)
        consumer.incremental_assign(partitions)
        self._log.info(
            "partitions assigned",
            count=len(partitions),
            resumed=sum(1 for p in partitions if (p.topic, p.partition) in stored),
        )

    def _resume_awaiting(self) -> None:
        """Start the paused partitions at their stored offsets once the database answers."""
        if not self._awaiting:
            return
        try:
            stored = stored_offsets(self._db(), list(self._awaiting))
        except (psycopg2.Error, PipelineError) as e:
            self.last_error = first_line(e)
            self.stop.wait(1.0)
            return
        partitions = [TopicPartition(t, p) for t, p in self._awaiting]
        self._awaiting.clear()
        # Assigned again, now with the offsets: a seek would race the fetch already set up.
        self._consumer.incremental_unassign(partitions)
        self._assign_at(self._consumer, partitions, stored)
        self._consumer.resume(partitions)
        self.last_error = None

    def _retry_waiting(self) -> None:
        """Resume the partitions held for a claim whose retry is due: they read their waiting
        event again (the rewind put them there)."""
        now = time.monotonic()
        due = [key for key, w in self._waiting.items() if w.paused and w.retry_at <= now]
        for key in due:
            self._waiting[key].paused = False
        if due:
            self._consumer.resume([TopicPartition(t, p) for t, p in due])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {p.topic for p in partitions}
        self.assigned = [t for t in self.assigned if t not in revoked]
        for p in partitions:
            self._awaiting.pop((p.topic, p.partition), None)
            # Its new owner starts from the stored offset, which never passed the event.
            self._waiting.pop((p.topic, p.partition), None)
        WAITING.labels(**self._labels).set(len(self._waiting))
        self._log.info("partitions revoked", count=len(partitions))

    def _read(self) -> list[Message]:
        first = self._consumer.poll(0.2)
        if first is None:
            return []
        fetched = [first]
        size = len(first.value() or b"")
        while len(fetched) < self.config.batch_size and size < self.config.batch_bytes:
            # As many as fit, at the average size so far: the cut passes the bound by about
            # one record.
            fits = max(1, int((self.config.batch_bytes - size) * len(fetched) / max(1, size)))
            chunk = self._consumer.consume(
                min(_CHUNK, fits, self.config.batch_size - len(fetched)), timeout=0
            )
            if not chunk:
                break
            fetched += chunk
            size += sum(len(m.value() or b"") for m in chunk)
        messages = []
        for msg in fetched:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    self._log.warning("consumer error", error=err.str())
            elif not self._paused((msg.topic() or "", msg.partition() or 0)):
                # A record of a paused partition fetched before the pause is read again later.
                messages.append(msg)
        return messages

    def _paused(self, key: tuple[str, int]) -> bool:
        wait = self._waiting.get(key)
        return key in self._awaiting or (wait is not None and wait.paused)

    def _decode(self, messages: Sequence[Message]) -> _Batch:
        batch = _Batch([], [], {}, {})
        for msg in messages:
            topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
            key = (topic, partition)
            batch.first_offsets.setdefault(key, offset)
            batch.next_offsets[key] = offset + 1
            value = msg.value()
            try:
                batch.events.append(decode_incoming(topic, partition, offset, msg.key(), value))
            except (CodecError, TopicNameError) as e:
                batch.refused.append(
                    RefusedRecord(
                        topic, partition, offset, msg.key(), value, str(e), type(e).__name__
                    )
                )
        return batch

    def _fail(
        self,
        batch: _Batch,
        error: Exception,
        backoff: float,
        following: _Batch | None = None,
    ) -> None:
        """Nothing of the batch was stored: read it again, and the ``following`` batch read
        meanwhile with it, after ``backoff`` seconds."""
        self.last_error = first_line(error)
        self._log.warning(
            "batch not applied, retrying",
            error=self.last_error,
            backoff_s=backoff,
            records=len(batch.events) + len(batch.refused),
        )
        self._close_connections()
        offsets = dict(following.first_offsets) if following is not None else {}
        offsets.update(batch.first_offsets)
        self._rewind(offsets)
        self.stop.wait(backoff)

    def _rewind(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Read each partition again from its offset. A partition revoked meanwhile is left
        to its new owner, which starts from the stored offsets. Raises :class:`PipelineError`
        when a seek fails on a partition still owned: going on would commit offsets past
        records never applied."""
        owned = {(p.topic, p.partition) for p in self._consumer.assignment()}
        for (topic, partition), offset in offsets.items():
            if (topic, partition) not in owned:
                continue
            try:
                self._consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as e:
                raise PipelineError(
                    f"cannot read {topic} [{partition}] again from offset {offset}"
                    f" ({e.args[0].str()}): stopping instead of skipping records"
                ) from None

    def _hold(self, batch: _Batch, result: Applied) -> None:
        """Pause and rewind the partitions waiting for a claim, to be read again in
        ``claim_retry_s``; forget those that went past their waiting event."""
        now = time.monotonic()
        for key in batch.next_offsets.keys() - result.waiting.keys():
            wait = self._waiting.get(key)
            if wait is not None and not wait.paused:
                del self._waiting[key]
                self._log.info(
                    "claim seen, partition goes on",
                    topic=key[0],
                    partition=key[1],
                    waited_s=round(now - wait.since, 3),
                )
        owned = {(p.topic, p.partition) for p in self._consumer.assignment()}
        held = {key: ev for key, ev in result.waiting.items() if key in owned}
        for key, ev in held.items():
            wait = self._waiting.get(key)
            if wait is None or wait.event.offset != ev.offset:
                wait = self._waiting[key] = _Wait(ev, now, now)
                self._log.info(
                    "partition waits for the claim of a newer epoch",
                    topic=key[0],
                    partition=key[1],
                    offset=ev.offset,
                    shard=ev.position.shard,
                    epoch=ev.position.epoch,
                )
            wait.paused, wait.retry_at = True, now + self.config.claim_retry_s
        if held:
            # Paused first: no record past the event is fetched between the seek and the pause.
            self._consumer.pause([TopicPartition(t, p) for t, p in held])
            self._rewind({key: ev.offset for key, ev in held.items()})
        WAITING.labels(**self._labels).set(len(self._waiting))

    def _committed(
        self, batch: _Batch, result: Applied, committed_at: datetime | None = None
    ) -> None:
        now = committed_at or datetime.now(UTC)
        APPLIED.labels(**self._labels).inc(len(result.applied))
        DUPLICATES.labels(**self._labels).inc(result.duplicates)
        FENCED.labels(**self._labels).inc(len(result.fenced))
        GAPS.labels(**self._labels).inc(len(result.gaps))
        LATE.labels(**self._labels).inc(result.late)
        if result.late:
            self._log.info("late events filled recorded gaps", events=result.late)
        DEAD.labels(**self._labels).inc(len(result.refused))
        BATCH_SIZE.labels(**self._labels).observe(len(batch.events) + len(batch.refused))
        delays: dict[str, Histogram] = {}
        for ev in result.applied:
            source = ev.position.source_dc
            if source not in delays:
                delays[source] = DELAY.labels(dc=self.config.dc, source_dc=source)
            delays[source].observe((now - ev.occurred_at).total_seconds())
        for gap in result.gaps:
            self._log.warning(
                "gap in a shard: events never arrived",
                shard=gap.shard,
                source_dc=gap.source_dc,
                epoch=gap.epoch,
                after_seq=gap.after_seq,
                before_seq=gap.before_seq,
            )
        # One line per shard and batch: a stale DC replaying can send thousands.
        fenced = collections.Counter(ev.position.shard for ev in result.fenced)
        for shard, count in sorted(fenced.items()):
            self._log.warning(
                "fenced: events of an older epoch not applied", shard=shard, events=count
            )
        for letter in result.refused:
            self._log.warning(
                "dead letter", topic=letter.topic, offset=letter.offset, reason=letter.reason
            )
        self._hold(batch, result)
        self._consumer.commit(
            offsets=[TopicPartition(t, p, o) for (t, p), o in result.next_offsets.items()],
            asynchronous=True,
        )
        for (topic, partition), next_offset in result.next_offsets.items():
            _, high = self._consumer.get_watermark_offsets(
                TopicPartition(topic, partition), cached=True
            )
            if high >= 0:
                LAG.labels(dc=self.config.dc, topic=topic).set(max(0, high - next_offset))
