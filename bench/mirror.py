"""Mirror latency through MirrorMaker 2, against a direct read from the source cluster.

Records go to ``coopr.probe`` (mirrored like the heartbeat; no worker reads it) in one DC at
a fixed rate. One consumer reads them back from the same topic (the baseline: produce,
broker, fetch) and one from the mirrored copy in the other DC. A record's latency is the time
it is read minus its CreateTime, which the producer sets and MirrorMaker 2 preserves; both
clocks are this machine's.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

from pipeline.errors import UnreachableError
from pipeline.kafka_config import KafkaSettings
from pipeline.stack.security import StackSecurity, client_settings
from pipeline.stats import percentile
from pipeline.topics import PROBE_TOPIC, mirrored
from pipeline.topology import Topology

__all__ = ["MirrorLatency", "bench_mirror"]


@dataclass(frozen=True, slots=True)
class MirrorLatency:
    """Latency percentiles in ms; ``received`` counts records that arrived before the deadline."""

    path: str
    sent: int
    received: int
    p50_ms: float
    p99_ms: float
    max_ms: float


class _Reader(threading.Thread):
    """Reads ``topic`` from its current end, recording latency of records keyed ``run_id``.

    ``warm`` is set once the warm-up record (key ``run_id + b"-warm"``) has arrived: from then
    on the fetch path is connected and positioned, so what follows is steady-state latency.
    """

    def __init__(self, settings: KafkaSettings, topic: str, run_id: bytes, expected: int):
        super().__init__(daemon=True)
        group = f"bench-{uuid.uuid4().hex[:8]}"
        self.consumer = Consumer(settings.consumer(group, **{"fetch.wait.max.ms": 10}))
        self.consumer.assign([TopicPartition(topic, 0, OFFSET_END)])
        self.run_id = run_id
        self.expected = expected
        self.latencies_ms: list[float] = []
        self.deadline = time.monotonic() + 3600.0
        self.warm = threading.Event()

    def run(self) -> None:
        warm_key = self.run_id + b"-warm"
        try:
            while len(self.latencies_ms) < self.expected and time.monotonic() < self.deadline:
                msg = self.consumer.poll(0.05)
                if msg is None or msg.error():
                    continue
                if msg.key() == warm_key:
                    self.warm.set()
                elif msg.key() == self.run_id:
                    self.latencies_ms.append(time.time() * 1000.0 - msg.timestamp()[1])
        finally:
            self.consumer.close()


def bench_mirror(
    topology: Topology,
    *,
    count: int = 1000,
    rate: float = 100.0,
    source: str | None = None,
    target: str | None = None,
    drain_s: float = 30.0,
) -> list[MirrorLatency]:
    """Send ``count`` records at ``rate`` per second; latency direct and through MirrorMaker 2.

    Before measuring, one warm-up record must reach both readers (at most 60 s), so the
    producer's connection and id set-up are not counted. Waits at most ``drain_s`` seconds
    after the last send for stragglers.
    """
    owner = topology.dc(source or topology.dcs[0].name)
    replica = topology.dc(target or next(dc.name for dc in topology.dcs if dc.name != owner.name))
    security = StackSecurity.of_topology(topology)
    sending = client_settings(security, owner, "coopr-bench")
    topic = PROBE_TOPIC
    run_id = uuid.uuid4().hex.encode()
    readers = {
        f"direct ({owner.name})": _Reader(sending, topic, run_id, count),
        f"mirrored ({owner.name}->{replica.name})": _Reader(
            client_settings(security, replica, "coopr-bench"),
            mirrored(owner.name, topic),
            run_id,
            count,
        ),
    }
    for reader in readers.values():
        reader.start()
    producer = Producer(sending.producer(**{"linger.ms": 0}))
    warm_until = time.monotonic() + 60.0
    while not all(r.warm.is_set() for r in readers.values()):
        if time.monotonic() > warm_until:
            raise UnreachableError(
                f"no record reached {replica.name} through MirrorMaker 2 in 60 s"
            )
        producer.produce(topic, key=run_id + b"-warm", value=b"")
        producer.flush(5)
        time.sleep(0.5)
    start = time.monotonic()
    for i in range(count):
        pause = start + i / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        producer.produce(topic, key=run_id, value=i.to_bytes(4, "big"))
        producer.poll(0)
    producer.flush(30)
    for reader in readers.values():
        reader.deadline = time.monotonic() + drain_s
    results = []
    for path, reader in readers.items():
        reader.join(drain_s + 5.0)
        ms = reader.latencies_ms
        results.append(
            MirrorLatency(
                path,
                count,
                len(ms),
                percentile(ms, 0.50),
                percentile(ms, 0.99),
                max(ms, default=float("nan")),
            )
        )
    return results
