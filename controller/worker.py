"""The controller worker: for now its liveness part (``docs/ownership.md``).

Every ``interval_s`` it publishes this DC's heartbeat to the local ``coopr.heartbeat``
(MirrorMaker 2 carries it to every other DC as ``<dc>.coopr.heartbeat``), and it reads the
local copies of every other DC's heartbeats from their end: what arrived before it started
says nothing about now. Its health and metrics say which DCs it hears, which it suspects,
and whether it is fenced (it hears fewer than a majority). Claims, leases and takeover come
next, on this loop.

Heartbeats are sent with a delivery timeout of a few intervals: one that could not leave in
time is dropped rather than delivered late, when its echoes would be stale.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import OFFSET_END, Consumer, KafkaError, Message, Producer, TopicPartition
from prometheus_client import Counter, Gauge

from controller.liveness import Liveness
from pipeline.codec import decode, encode
from pipeline.errors import CodecError, first_line
from pipeline.events import Heartbeat
from pipeline.kafka_config import KafkaSettings
from pipeline.logging import get_logger
from pipeline.shutdown import Closeable
from pipeline.topics import HEARTBEAT_TOPIC, mirrored

__all__ = ["Controller", "ControllerConfig"]

log = get_logger(__name__)

SENT = Counter("coopr_controller_heartbeats_sent_total", "Heartbeats published.", ["dc"])
HEARD = Gauge("coopr_controller_dcs_heard", "Other DCs heard within the failure timeout.", ["dc"])
SUSPECTED = Gauge("coopr_controller_dcs_suspected", "Other DCs this DC suspects.", ["dc"])
FENCED = Gauge("coopr_controller_fenced", "1 while this DC hears fewer than a majority.", ["dc"])


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    """Settings of one controller. Times in seconds."""

    dc: str
    kafka: KafkaSettings
    #: Every DC of the topology, witnesses included.
    dcs: tuple[str, ...]
    interval_s: float = 1.0
    failure_timeout_s: float = 10.0


class Controller(Closeable):
    """The controller worker; :meth:`run` returns when ``stop`` is set."""

    def __init__(self, config: ControllerConfig, stop: threading.Event):
        self.config = config
        self.stop = stop
        self.liveness = Liveness(config.dc, config.dcs, config.failure_timeout_s)
        timeout_ms = int(max(1000, 3 * config.interval_s * 1000))
        self._producer = Producer(
            config.kafka.producer(**{"linger.ms": 0, "message.timeout.ms": timeout_ms})
        )
        self._consumer = Consumer(config.kafka.consumer(f"coopr-controller-{config.dc}"))
        self._labels = {"dc": config.dc}
        self._log = log.bind(dc=config.dc, controller_id=self.liveness.controller_id)
        self.last_error: str | None = None

    def close(self) -> None:
        self._consumer.close()
        self._producer.flush(self.config.interval_s)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy unless fenced or failing to send; lists the DCs heard and suspected."""
        now = time.monotonic()
        fenced = self.liveness.fenced(now)
        details = {
            "dc": self.config.dc,
            "controller_id": self.liveness.controller_id,
            "heard": sorted(self.liveness.heard(now)),
            "suspected": sorted(self.liveness.suspected(now)),
            "fenced": fenced,
            "last_heard_s": {k: round(v, 3) for k, v in self.liveness.last_heard(now).items()},
            "last_error": self.last_error,
        }
        return not fenced and self.last_error is None, details

    def run(self) -> None:
        others = [dc for dc in self.config.dcs if dc != self.config.dc]
        self._consumer.assign(
            [TopicPartition(mirrored(dc, HEARTBEAT_TOPIC), 0, OFFSET_END) for dc in others]
        )
        self._log.info("controller starting", dcs=len(self.config.dcs))
        next_send = time.monotonic()
        was_fenced = False
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= next_send:
                self._send(now)
                next_send = max(next_send + self.config.interval_s, now)
                was_fenced = self._observe(now, was_fenced)
            msg = self._consumer.poll(max(0.0, min(0.1, next_send - time.monotonic())))
            if msg is not None:
                self._receive(msg)
        self._log.info("controller stopped")

    def _send(self, now: float) -> None:
        heartbeat = self.liveness.next_heartbeat(now, datetime.now(UTC))
        try:
            self._producer.produce(
                HEARTBEAT_TOPIC,
                key=self.config.dc.encode(),
                value=encode(heartbeat),
                on_delivery=self._on_delivery,
            )
        except BufferError:
            self.last_error = "the local Kafka takes no more heartbeats"
        self._producer.poll(0)
        SENT.labels(**self._labels).inc()

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        self.last_error = None if err is None else f"heartbeat not delivered: {err.str()}"

    def _receive(self, msg: Message) -> None:
        if msg.error() is not None or msg.value() is None:
            return
        try:
            event = decode(msg.value() or b"")
        except CodecError as e:
            self._log.warning(
                "undecodable heartbeat ignored", topic=msg.topic(), error=first_line(e)
            )
            return
        if isinstance(event, Heartbeat):
            self.liveness.receive(event, time.monotonic())

    def _observe(self, now: float, was_fenced: bool) -> bool:
        heard = self.liveness.heard(now)
        suspected = self.liveness.suspected(now)
        fenced = self.liveness.fenced(now)
        HEARD.labels(**self._labels).set(len(heard))
        SUSPECTED.labels(**self._labels).set(len(suspected))
        FENCED.labels(**self._labels).set(1 if fenced else 0)
        if fenced != was_fenced:
            self._log.warning(
                "fenced: hears fewer than a majority" if fenced else "hears a majority again",
                heard=sorted(heard),
            )
        return fenced
