"""Produce and consume helpers for tests: bounded in time, never looping forever."""

from __future__ import annotations

import time
from collections.abc import Callable

from confluent_kafka import Consumer, Message, Producer, TopicPartition

from pipeline.kafka_config import KafkaSettings


def produce_one(
    settings: KafkaSettings,
    topic: str,
    *,
    key: bytes,
    value: bytes,
    headers: list[tuple[str, bytes]] | None = None,
    timestamp_ms: int | None = None,
) -> tuple[int, int]:
    """Produce one record and wait for its acknowledgement; returns (partition, offset)."""
    producer = Producer(settings.producer())
    delivered: list[Message] = []
    producer.produce(
        topic,
        key=key,
        value=value,
        headers=headers or [],
        timestamp=timestamp_ms or 0,
        on_delivery=lambda err, msg: delivered.append(msg) if err is None else None,
    )
    assert producer.flush(15) == 0, "the record was not acknowledged within 15 s"
    assert delivered, "the broker refused the record"
    return delivered[0].partition(), delivered[0].offset()


def consume_until(
    settings: KafkaSettings,
    topic: str,
    group_id: str,
    predicate: Callable[[Message], bool],
    timeout_s: float,
) -> Message | None:
    """Read ``topic`` partition 0 from the start until ``predicate`` matches or time runs out."""
    consumer = Consumer(settings.consumer(group_id))
    consumer.assign([TopicPartition(topic, 0, 0)])
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            if predicate(msg):
                return msg
        return None
    finally:
        consumer.close()
