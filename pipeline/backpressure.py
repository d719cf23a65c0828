"""Producing to Kafka when librdkafka's local queue is full, in one place.

``Producer.produce`` raises :class:`BufferError` instead of blocking when the queue
(``queue.buffering.max.messages``/``.kbytes``) is full; serving delivery reports empties it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

__all__ = ["produce_with_backpressure"]

DeliveryCallback = Callable[[KafkaError | None, Message], None]


def produce_with_backpressure(
    producer: Producer,
    topic: str,
    *,
    value: bytes | None,
    key: bytes | None = None,
    partition: int | None = None,
    headers: Sequence[tuple[str, bytes]] | None = None,
    on_delivery: DeliveryCallback | None = None,
    poll_s: float = 0.05,
) -> None:
    """Queue one record, serving delivery reports ``poll_s`` seconds at a time while the local
    queue is full; never drops the record and never raises :class:`BufferError`."""
    optional: dict[str, Any] = {
        "key": key,
        "partition": partition,
        "headers": list(headers) if headers is not None else None,
        "on_delivery": on_delivery,
    }
    kwargs = {k: v for k, v in optional.items() if v is not None}
    while True:
        try:
            producer.produce(topic, value=value, **kwargs)
            return
        except BufferError:
            producer.poll(poll_s)
