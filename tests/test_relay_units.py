"""The relay's bookkeeper without a database: what it holds when the database is away."""

from __future__ import annotations

import threading
import time

from pipeline.kafka_config import KafkaSettings
from producer.relay import Relay, RelayConfig
from tests.ownership_helpers import wait_until


def test_marks_are_kept_and_reported_while_the_database_is_unreachable() -> None:
    config = RelayConfig(
        dc="dc1",
        database="postgresql://postgres@127.0.0.1:1/none",
        kafka=KafkaSettings("127.0.0.1:1", log_level=0),
        stop_grace_s=1.0,
        max_backoff_s=0.2,
    )
    relay = Relay(config, threading.Event())
    books = relay._books
    books.mark([1, 2, 3], [time.time()] * 3)
    wait_until(lambda: books.last_error is not None, 10, "the failed mark is reported")
    healthy, details = relay.health()
    assert not healthy and "unreachable" in details["last_error"]
    started = time.monotonic()
    relay.close()
    assert time.monotonic() - started < config.stop_grace_s + 1.5, "close gives up in time"
    assert not books._thread.is_alive()
    assert sum(len(ids) for ids, _ in books._marks) == 3, "unmarked, they are sent again"
