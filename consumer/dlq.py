"""Dead letters: records the applier cannot apply go to the local ``coopr.dlq`` with why.

A refused record is written to the table ``dead_letters`` in the same transaction as the
offsets past it (:func:`consumer.store.apply_batch`), and :class:`DeadLetterShipper` then
produces it to ``coopr.dlq`` and deletes the row once Kafka acknowledged it. So every refused
record becomes exactly one dead letter however often its batch is retried (a failed
transaction leaves no row; a committed one is never read again), and none is lost while Kafka
is away (the row waits). Only a crash between the acknowledgement and the delete sends one
twice.

The dead letter keeps the record's key and value byte for byte; headers say where it came
from and why it was refused, so it can be re-driven after a fix:

- ``dlq-reason``: the reason in words;
- ``dlq-error``: the error class (``MissingMarkerError``, ``UnknownFingerprintError``,
  ``DataError (22P05)`` for a record the database refused, ...);
- ``source-topic``, ``source-partition``, ``source-offset``: where it was read;
- ``source-dc``: the DC whose applier refused it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import psycopg2.extensions
from confluent_kafka import KafkaError, Message, Producer
from psycopg2.extras import execute_values

from pipeline.backpressure import produce_with_backpressure
from pipeline.kafka_config import KafkaSettings
from pipeline.shutdown import Closeable
from pipeline.topics import DLQ_TOPIC

__all__ = ["DeadLetterShipper", "RefusedRecord", "store_refused"]


@dataclass(frozen=True, slots=True)
class RefusedRecord:
    """A record the applier refused, where it was read, and why."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str
    error: str


def store_refused(cur: psycopg2.extensions.cursor, records: Sequence[RefusedRecord]) -> None:
    """Add ``records`` to ``dead_letters`` in the cursor's transaction (once per source
    record)."""
    if records:
        execute_values(
            cur,
            "INSERT INTO dead_letters (source_topic, source_partition, source_offset, key, value,"
            " reason, error) VALUES %s ON CONFLICT DO NOTHING",
            [(r.topic, r.partition, r.offset, r.key, r.value, r.reason, r.error) for r in records],
        )


class DeadLetterShipper(Closeable):
    """Ships ``dead_letters`` rows to the DC's ``coopr.dlq`` (idempotent producer, records
    that never time out) and deletes each row once acknowledged. Not thread-safe."""

    def __init__(self, kafka: KafkaSettings, dc: str):
        self._producer = Producer(kafka.producer(**{"linger.ms": 0, "message.timeout.ms": 0}))
        self._dc = dc
        # Rows queued in the producer: never produced twice by this process.
        self._in_flight: set[int] = set()
        self._acknowledged: list[int] = []
        self.failures = 0

    def close(self, timeout_s: float = 5.0) -> None:
        """Wait up to ``timeout_s`` for queued letters; the rows of the others stay and are
        shipped by the next applier."""
        self._producer.flush(timeout_s)

    def ship(self, conn: psycopg2.extensions.connection, limit: int = 1000) -> int:
        """Delete the rows Kafka acknowledged since the last call, then produce the rows not
        yet queued; returns how many letters it queued."""
        self._producer.poll(0)
        with conn, conn.cursor() as cur:
            if self._acknowledged:
                cur.execute("DELETE FROM dead_letters WHERE id = ANY(%s)", (self._acknowledged,))
                self._acknowledged = []
            cur.execute(
                "SELECT id, source_topic, source_partition, source_offset, key, value, reason,"
                " error FROM dead_letters WHERE id <> ALL(%s) ORDER BY id LIMIT %s",
                (sorted(self._in_flight), limit),
            )
            rows = cur.fetchall()
        for row_id, topic, partition, offset, key, value, reason, error in rows:
            produce_with_backpressure(
                self._producer,
                DLQ_TOPIC,
                key=bytes(key) if key is not None else None,
                value=bytes(value) if value is not None else None,
                headers=[
                    ("dlq-reason", reason.encode()),
                    ("dlq-error", error.encode()),
                    ("source-topic", topic.encode()),
                    ("source-partition", str(partition).encode()),
                    ("source-offset", str(offset).encode()),
                    ("source-dc", self._dc.encode()),
                ],
                on_delivery=partial(self._on_delivery, row_id),
            )
            self._in_flight.add(row_id)
        return len(rows)

    def _on_delivery(self, row_id: int, err: KafkaError | None, msg: Message) -> None:
        self._in_flight.discard(row_id)
        if err is None:
            self._acknowledged.append(row_id)
        else:
            # The row stays: it is produced again by the next ship().
            self.failures += 1
