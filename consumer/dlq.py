"""Dead letters: records the applier cannot apply go to the local ``coopr.dlq`` with why.

The record keeps its key and value byte for byte; headers say where it came from and why it
was refused, so it can be re-driven after a fix:

- ``dlq-reason``: the reason in words;
- ``dlq-error``: the error class (``MissingMarkerError``, ``UnknownFingerprintError``, ...);
- ``source-topic``, ``source-partition``, ``source-offset``: where it was read;
- ``source-dc``: the DC whose applier refused it.

:meth:`DeadLetters.send` returns only once Kafka acknowledged every record, so the caller
may then commit the offsets past them.
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import KafkaError, Message, Producer

from pipeline.errors import UnreachableError
from pipeline.kafka_config import KafkaSettings
from pipeline.topics import DLQ_TOPIC

__all__ = ["DeadLetter", "DeadLetters"]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A refused record and the reason."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str
    error: str


class DeadLetters:
    """Producer of the DC's dead-letter topic (idempotent, ``acks=all``)."""

    def __init__(self, kafka: KafkaSettings, dc: str, timeout_s: float = 30.0):
        self._producer = Producer(kafka.producer(**{"linger.ms": 0}))
        self._dc = dc
        self._timeout_s = timeout_s

    def send(self, letters: list[DeadLetter]) -> None:
        """Produce every letter and wait for the acknowledgements (at most ``timeout_s``)."""
        failures: list[str] = []

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                failures.append(err.str())

        for letter in letters:
            self._producer.produce(
                DLQ_TOPIC,
                key=letter.key,
                value=letter.value,
                headers=[
                    ("dlq-reason", letter.reason.encode()),
                    ("dlq-error", letter.error.encode()),
                    ("source-topic", letter.topic.encode()),
                    ("source-partition", str(letter.partition).encode()),
                    ("source-offset", str(letter.offset).encode()),
                    ("source-dc", self._dc.encode()),
                ],
                on_delivery=on_delivery,
            )
        left = self._producer.flush(self._timeout_s)
        if left or failures:
            reason = (
                failures[0] if failures else f"{left} not acknowledged in {self._timeout_s:g} s"
            )
            raise UnreachableError(f"dead letters not stored: {reason}")
