"""The applier's own logic with a consumer stand-in (a real broker does not fail a seek on
demand): after a failed batch it rewinds to the batch's first offsets, and a rewind that fails
must stop it, never let it go on past records it did not apply; a batch is bounded in records
and in bytes; a partition waiting for a claim is paused, rewound and read again later; the
batch read while another was applied is read again when that one failed, and loses the
records of the partitions that one left waiting."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from datetime import UTC, datetime

import psycopg2
import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from consumer.applier import Applier, ApplierConfig, _Batch, _Flight
from consumer.sequencing import Position
from consumer.store import Applied, Incoming
from pipeline.errors import PipelineError
from pipeline.kafka_config import KafkaSettings

TOPIC = "dc1.coopr.shard.01"


class Record:
    """What the applier reads of a consumed record."""

    def __init__(self, offset: int, size: int):
        self._offset, self._value = offset, b"x" * size

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value


class ConsumerStandIn:
    """Owns ``owned``, fails every seek unless ``seeks_work``, serves ``queued`` records;
    remembers seeks, pauses and resumes."""

    def __init__(
        self,
        owned: list[TopicPartition],
        queued: list[Record] | None = None,
        seeks_work: bool = False,
    ):
        self.owned = owned
        self.queued = queued or []
        self.seeks_work = seeks_work
        self.seeks: list[tuple[str, int, int]] = []
        self.paused: list[tuple[str, int]] = []
        self.resumed: list[tuple[str, int]] = []

    def poll(self, timeout: float) -> Record | None:
        return self.queued.pop(0) if self.queued else None

    def consume(self, num_messages: int, timeout: float) -> list[Record]:
        taken, self.queued = self.queued[:num_messages], self.queued[num_messages:]
        return taken

    def assignment(self) -> list[TopicPartition]:
        return self.owned

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))
        if not self.seeks_work:
            raise KafkaException(KafkaError(KafkaError._STATE, "Erroneous state"))

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused += [(p.topic, p.partition) for p in partitions]

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.resumed += [(p.topic, p.partition) for p in partitions]

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        pass

    def get_watermark_offsets(self, tp: TopicPartition, cached: bool) -> tuple[int, int]:
        return -1, -1

    def close(self) -> None:
        pass


def applier_with(consumer: ConsumerStandIn, **settings: int) -> Applier:
    config = ApplierConfig(
        dc="dc2",
        database="postgresql://postgres@127.0.0.1:1/none",
        kafka=KafkaSettings("127.0.0.1:1", log_level=0),
        topics=(TOPIC,),
        **settings,  # type: ignore[arg-type]
    )
    applier = Applier(config, threading.Event())
    applier._consumer.close()
    applier._consumer = consumer  # type: ignore[assignment]
    return applier


def batch() -> _Batch:
    return _Batch([], [], {(TOPIC, 0): 7}, {(TOPIC, 0): 12})


def test_a_rewind_that_fails_on_an_owned_partition_stops_the_applier() -> None:
    consumer = ConsumerStandIn([TopicPartition(TOPIC, 0)])
    applier = applier_with(consumer)
    try:
        with pytest.raises(PipelineError, match="stopping instead of skipping records"):
            applier._fail(batch(), RuntimeError("database gone"), 0.0)
        assert consumer.seeks == [(TOPIC, 0, 7)]
    finally:
        applier._letters.close(0)


def test_a_partition_revoked_meanwhile_is_left_to_its_new_owner() -> None:
    consumer = ConsumerStandIn([])
    applier = applier_with(consumer)
    try:
        applier._fail(batch(), RuntimeError("database gone"), 0.0)
        assert consumer.seeks == []
    finally:
        applier._letters.close(0)


def test_a_batch_is_cut_by_bytes_as_well_as_by_count() -> None:
    records = [Record(offset, 100_000) for offset in range(3000)]
    applier = applier_with(ConsumerStandIn([], records), batch_size=5000, batch_bytes=1_000_000)
    try:
        first = applier._read()
        assert len(first) == 10, "1 MB of 100 kB records"
        by_count = applier_with(
            ConsumerStandIn([], [Record(o, 10) for o in range(50)]), batch_size=20
        )
        assert len(by_count._read()) == 20
        by_count._letters.close(0)
    finally:
        applier._letters.close(0)


def test_a_partition_waiting_for_a_claim_is_paused_rewound_and_read_again_later() -> None:
    # The batch read offsets 7 and 8; the event at 7 is of an epoch whose claim is unknown.
    consumer = ConsumerStandIn([TopicPartition(TOPIC, 0)], [Record(8, 10)], seeks_work=True)
    applier = applier_with(consumer, claim_retry_s=0.3)  # type: ignore[arg-type]
    try:
        record = {"occurred_at": datetime.now(UTC)}
        waiting = Incoming(TOPIC, 0, 7, Position(1, "dc1", 65, 1), "RestartCheckpoint", record, b"")
        result = Applied([], 0, [], [], 0, {(TOPIC, 0): waiting}, {(TOPIC, 0): 7})
        applier._committed(_Batch([waiting], [], {(TOPIC, 0): 7}, {(TOPIC, 0): 9}), result)
        assert consumer.paused == [(TOPIC, 0)] and consumer.seeks == [(TOPIC, 0, 7)]
        assert applier._read() == [], "a record fetched before the pause is not applied"
        waits = applier.health()[1]["waiting_for_claims"]
        assert list(waits) == [f"{TOPIC}[0]"] and "epoch 65 from offset 7" in waits[f"{TOPIC}[0]"]

        applier._retry_waiting()
        assert consumer.resumed == [], "read again only after claim_retry_s"
        time.sleep(0.35)
        applier._retry_waiting()
        assert consumer.resumed == [(TOPIC, 0)]

        # Read again, and this time applied: the partition goes on.
        again = Applied([waiting], 0, [], [], 0, {}, {(TOPIC, 0): 8})
        applier._committed(_Batch([waiting], [], {(TOPIC, 0): 7}, {(TOPIC, 0): 8}), again)
        assert applier.health()[1]["waiting_for_claims"] == {}
        assert consumer.paused == [(TOPIC, 0)], "paused once"
    finally:
        applier._letters.close(0)


OTHER = "dc3.coopr.shard.02"


def flight_of(batch: _Batch, outcome: Applied | Exception) -> _Flight:
    future: Future[tuple[Applied, datetime]] = Future()
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result((outcome, datetime.now(UTC)))
    return _Flight(batch, future)


def test_the_batch_read_meanwhile_is_read_again_when_the_one_applied_failed() -> None:
    owned = [TopicPartition(TOPIC, 0), TopicPartition(OTHER, 0)]
    consumer = ConsumerStandIn(owned, seeks_work=True)
    applier = applier_with(consumer)
    following = _Batch([], [], {(TOPIC, 0): 12, (OTHER, 0): 3}, {(TOPIC, 0): 20, (OTHER, 0): 5})
    try:
        gone = psycopg2.OperationalError("server closed the connection")
        backoff, left = applier._land(flight_of(batch(), gone), following, 0.1)
        assert left is None, "nothing of the following batch is applied"
        assert sorted(consumer.seeks) == [(TOPIC, 0, 7), (OTHER, 0, 3)]
        assert backoff == 0.2, "the next try waits longer"
    finally:
        applier._letters.close(0)


def test_the_batch_read_meanwhile_drops_the_partitions_left_waiting_for_a_claim() -> None:
    owned = [TopicPartition(TOPIC, 0), TopicPartition(OTHER, 0)]
    consumer = ConsumerStandIn(owned, seeks_work=True)
    applier = applier_with(consumer)
    record = {"occurred_at": datetime.now(UTC)}
    waiting = Incoming(TOPIC, 0, 9, Position(1, "dc1", 65, 1), "RestartCheckpoint", record, b"")
    later = Incoming(TOPIC, 0, 12, Position(1, "dc1", 65, 2), "RestartCheckpoint", record, b"")
    other = Incoming(OTHER, 0, 3, Position(2, "dc3", 1, 4), "RestartCheckpoint", record, b"")
    applied = _Batch([waiting], [], {(TOPIC, 0): 7}, {(TOPIC, 0): 12})
    result = Applied([], 0, [], [], 0, {(TOPIC, 0): waiting}, {(TOPIC, 0): 9})
    following = _Batch(
        [later, other], [], {(TOPIC, 0): 12, (OTHER, 0): 3}, {(TOPIC, 0): 13, (OTHER, 0): 4}
    )
    try:
        _, left = applier._land(flight_of(applied, result), following, 0.0)
        assert consumer.seeks == [(TOPIC, 0, 9)], "rewound to the waiting event"
        assert left is not None and left.events == [other]
        assert left.next_offsets == {(OTHER, 0): 4}, "nothing of the waiting partition is stored"
    finally:
        applier._letters.close(0)
