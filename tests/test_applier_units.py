"""The applier's own logic with a consumer stand-in (a real broker does not fail a seek on
demand): after a failed batch it rewinds to the batch's first offsets, and a rewind that fails
must stop it, never let it go on past records it did not apply; a batch is bounded in records
and in bytes."""

from __future__ import annotations

import threading

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from consumer.applier import Applier, ApplierConfig, _Batch
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
    """Owns ``owned``, fails every seek, serves ``queued`` records; remembers seeks."""

    def __init__(self, owned: list[TopicPartition], queued: list[Record] | None = None):
        self.owned = owned
        self.queued = queued or []
        self.seeks: list[tuple[str, int, int]] = []

    def poll(self, timeout: float) -> Record | None:
        return self.queued.pop(0) if self.queued else None

    def consume(self, num_messages: int, timeout: float) -> list[Record]:
        taken, self.queued = self.queued[:num_messages], self.queued[num_messages:]
        return taken

    def assignment(self) -> list[TopicPartition]:
        return self.owned

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))
        raise KafkaException(KafkaError(KafkaError._STATE, "Erroneous state"))

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
