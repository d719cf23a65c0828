"""Kafka client settings: one frozen object, turned into librdkafka's dotted dict in one place."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ClientConfig", "KafkaSettings"]

#: librdkafka settings as confluent_kafka takes them.
ClientConfig = dict[str, str | int | float | bool]


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """Connection settings of one Kafka cluster.

    ``request_timeout_ms`` bounds each admin or metadata request (ms). ``log_level`` is
    librdkafka's syslog level for its own stderr lines (3: errors); errors that matter reach
    the caller as exceptions or error callbacks either way.
    """

    bootstrap_servers: str
    client_id: str = "coopr-pipeline"
    security_protocol: str = "PLAINTEXT"
    request_timeout_ms: int = 10_000
    log_level: int = 3

    def common(self) -> ClientConfig:
        """Settings every client (producer, consumer, admin) shares."""
        return {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            "security.protocol": self.security_protocol,
            "log_level": self.log_level,
        }

    def admin(self) -> ClientConfig:
        """An AdminClient's settings."""
        return {**self.common(), "socket.timeout.ms": self.request_timeout_ms}

    def producer(self, **overrides: str | int | float | bool) -> ClientConfig:
        """An idempotent producer (``acks=all``): no loss, no duplicates from retries."""
        return {
            **self.common(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            **overrides,
        }

    def consumer(self, group_id: str, **overrides: str | int | float | bool) -> ClientConfig:
        """A consumer that commits nothing by itself: the caller stores offsets after its work."""
        return {
            **self.common(),
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            **overrides,
        }
