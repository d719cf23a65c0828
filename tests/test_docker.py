"""The Kafka helpers against a broker in a container, for machines with a Docker engine.

Here (no engine) the fixture skips with the reason; the real-stack tests cover the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from pipeline.admin import TopicSpec, ensure_topics, list_topics
from pipeline.kafka_config import KafkaSettings
from tests.kafka_helpers import consume_until, produce_one

pytestmark = pytest.mark.docker


def _docker_engine_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception:  # any failure to reach an engine means: no engine here
        return False
    return True


@pytest.fixture(scope="session")
def container_kafka() -> Iterator[KafkaSettings]:
    if not _docker_engine_answers():
        pytest.skip("no Docker engine answers here; testcontainers needs one")
    from testcontainers.kafka import KafkaContainer

    with KafkaContainer("apache/kafka:4.1.1").with_kraft() as kafka:
        yield KafkaSettings(kafka.get_bootstrap_server(), client_id="tests")


def test_topics_are_created_once_and_records_round_trip(
    container_kafka: KafkaSettings, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("docker")
    assert ensure_topics(container_kafka, [TopicSpec(topic)]) == [topic]
    assert ensure_topics(container_kafka, [TopicSpec(topic)]) == []
    assert topic in list_topics(container_kafka)
    produce_one(container_kafka, topic, key=b"k", value=b"v")
    found = consume_until(container_kafka, topic, unique_name("g"), lambda m: m.key() == b"k", 20)
    assert found is not None and found.value() == b"v"
