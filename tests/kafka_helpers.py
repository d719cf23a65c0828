"""Produce and consume helpers for tests: bounded in time, never looping forever."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from confluent_kafka import Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

# Defined in confluent_kafka.admin's private modules, which its stubs do not re-export.
from confluent_kafka.admin._config import AlterConfigOpType, ConfigEntry, ConfigResource
from confluent_kafka.admin._resource import ResourceType

from pipeline.admin import high_watermark
from pipeline.kafka_config import KafkaSettings


def produce_one(
    settings: KafkaSettings,
    topic: str,
    *,
    key: bytes,
    value: bytes,
    headers: Sequence[tuple[str, bytes]] = (),
    timestamp_ms: int | None = None,
) -> tuple[int, int]:
    """Produce one record and wait for its acknowledgement; returns (partition, offset)."""
    producer = Producer(settings.producer())
    delivered: list[Message] = []
    sent_headers: list[tuple[str, str | bytes | None]] = list(headers)
    producer.produce(
        topic,
        key=key,
        value=value,
        headers=sent_headers,
        timestamp=timestamp_ms or 0,
        on_delivery=lambda err, msg: delivered.append(msg) if err is None else None,
    )
    assert producer.flush(15) == 0, "the record was not acknowledged within 15 s"
    assert delivered, "the broker refused the record"
    partition, offset = delivered[0].partition(), delivered[0].offset()
    assert partition is not None and offset is not None, "an acknowledged record has both"
    return partition, offset


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


def read_to_end(settings: KafkaSettings, topic: str, start: int, timeout_s: float) -> list[Message]:
    """Every record of ``topic`` partition 0 from ``start`` to the current high watermark."""
    end = high_watermark(settings, topic)
    consumer = Consumer(settings.consumer("read-to-end"))
    consumer.assign([TopicPartition(topic, 0, start)])
    records: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while (not records or (records[-1].offset() or 0) < end - 1) and end > start:
            assert time.monotonic() < deadline, f"{topic}: read {len(records)} of {end - start}"
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                records.append(msg)
        return records
    finally:
        consumer.close()


def set_topic_config(settings: KafkaSettings, topic: str, key: str, value: str) -> None:
    """Set one config of ``topic`` (incrementally: its other settings stay)."""
    resource = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)],
    )
    admin = AdminClient(settings.admin())  # held: a collected client cancels its requests
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=15)


def delete_topic(settings: KafkaSettings, topic: str) -> None:
    admin = AdminClient(settings.admin())
    for future in admin.delete_topics([topic]).values():
        future.result(timeout=15)


def headers_of(msg: Message) -> dict[str, bytes]:
    """A record's headers by name (the last of a repeated name), values as bytes."""
    raw = msg.headers() or []
    out: dict[str, bytes] = {}
    for name, value in raw.items() if isinstance(raw, dict) else raw:
        out[name] = value.encode() if isinstance(value, str) else (value or b"")
    return out
