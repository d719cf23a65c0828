"""Thin helpers over confluent_kafka's AdminClient: topic listing and creation, watermarks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._listoffsets import OffsetSpec

# confluent_kafka.admin re-exports NewTopic from cimpl, but its stubs do not declare that.
from confluent_kafka.cimpl import NewTopic

from pipeline.errors import UnreachableError
from pipeline.kafka_config import KafkaSettings

__all__ = ["TopicSpec", "end_offsets", "ensure_topics", "high_watermark", "list_topics"]


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic to create: name, partitions, replication factor and topic configs."""

    name: str
    partitions: int = 1
    replication_factor: int = 1
    config: Mapping[str, str] = field(default_factory=dict)


def list_topics(settings: KafkaSettings, timeout_s: float = 5.0) -> set[str]:
    """Names of the cluster's topics; :class:`UnreachableError` if it does not answer in time."""
    admin = AdminClient(settings.admin())
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as e:
        raise UnreachableError(
            f"Kafka at {settings.bootstrap_servers} did not answer within {timeout_s:g} s: {e}"
        ) from None
    return set(metadata.topics)


def ensure_topics(
    settings: KafkaSettings, specs: Iterable[TopicSpec], timeout_s: float = 30.0
) -> list[str]:
    """Create the topics that do not exist yet; returns the names it created."""
    specs = list(specs)
    existing = list_topics(settings)
    missing = [s for s in specs if s.name not in existing]
    if not missing:
        return []
    admin = AdminClient(settings.admin())
    futures = admin.create_topics(
        [
            NewTopic(
                s.name,
                num_partitions=s.partitions,
                replication_factor=s.replication_factor,
                config=dict(s.config),
            )
            for s in missing
        ],
        request_timeout=timeout_s,
    )
    created = []
    for name, future in futures.items():
        try:
            future.result(timeout=timeout_s)
            created.append(name)
        except KafkaException as e:
            if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise UnreachableError(f"creating topic {name} failed: {e.args[0].str()}") from None
    return created


def high_watermark(settings: KafkaSettings, topic: str, partition: int = 0) -> int:
    """The offset the next record of ``topic``/``partition`` will get."""
    consumer = Consumer(settings.consumer("coopr-watermarks"))
    try:
        _, high = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=settings.request_timeout_ms / 1000.0
        )
    except KafkaException as e:
        raise UnreachableError(
            f"no watermarks for {topic} from {settings.bootstrap_servers}: {e}"
        ) from None
    finally:
        consumer.close()
    return int(high)


def end_offsets(admin: AdminClient, topics: Iterable[str], timeout_s: float) -> dict[str, int]:
    """The high watermark of partition 0 of each of ``topics``, in one request per broker;
    a topic whose answer failed or did not come within ``timeout_s`` is left out.

    One ``list_offsets`` call rather than a consumer's per-partition query: that one times
    out on the first query of a topic whose metadata it has not cached yet."""
    latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]  # untyped in the library
    wanted = {TopicPartition(t, 0): latest for t in topics}
    if not wanted:
        return {}
    futures = admin.list_offsets(wanted, request_timeout=timeout_s)
    found: dict[str, int] = {}
    for tp, future in futures.items():
        try:
            found[tp.topic] = int(future.result(timeout=timeout_s).offset)
        except (KafkaException, TimeoutError):
            continue
    return found
