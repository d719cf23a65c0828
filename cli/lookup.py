"""Where things are and what they hold, for the operator's commands: each DC's Kafka and
database reached within ``--timeout``, the shard topics of a DC and their offset ranges, the
offsets its applier stored, and records read from a range of offsets.

Every failure to answer is an :class:`~pipeline.errors.UnreachableError` naming the DC and
the component (its Kafka or its database), so a command ends with one line, not a trace.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import click
import psycopg2.extensions
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._listoffsets import OffsetSpec

from pipeline.db import ConnectionTimeouts, connect
from pipeline.errors import PipelineError, UnreachableError
from pipeline.kafka_config import ClientConfig, KafkaSettings, settings_for
from pipeline.topics import SHARD_PREFIX, mirrored, parse_mirrored_shard, shard_topic
from pipeline.topology import DataCenter, Topology

__all__ = [
    "TIME",
    "OffsetRange",
    "applied_offsets",
    "database",
    "iso_time",
    "kafka_settings",
    "offset_for_time",
    "offset_ranges",
    "offsets_since",
    "read_range",
    "shard_topics",
    "timestamps_at",
    "topic_names",
    "topic_of",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class _Time(click.ParamType[int]):
    """A point in time, converted to milliseconds since the epoch: ISO-8601 (UTC when it names
    no zone) or a number of milliseconds since the epoch."""

    name = "time"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip()
        if text.isdigit():
            return int(text)
        try:
            at = datetime.fromisoformat(text)
        except ValueError:
            self.fail(
                f"{text!r} is neither ISO-8601 (2024-05-01T12:00:00Z, UTC when no zone is"
                " given) nor milliseconds since the epoch",
                param,
                ctx,
            )
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        # Integer arithmetic: a float timestamp can land a millisecond early.
        return (at - _EPOCH) // timedelta(milliseconds=1)


#: The type of a ``--from-time`` option: ISO-8601 or epoch ms, given as epoch ms.
TIME = _Time()


@dataclass(frozen=True, slots=True)
class OffsetRange:
    """Partition 0 of a topic: its first retained offset and its end (the next offset)."""

    low: int
    high: int

    def check(self, topic: str, offset: int) -> None:
        """:class:`PipelineError` giving the range when ``offset`` is outside it (the end
        itself is allowed: nothing to read yet)."""
        if not self.low <= offset <= self.high:
            raise PipelineError(
                f"offset {offset} is outside {topic}: it holds offsets {self.low} to"
                f" {self.high - 1}" + (" (empty)" if self.low == self.high else "")
            )


def kafka_settings(site: DataCenter, timeout_s: float) -> KafkaSettings:
    """Settings for ``site``'s Kafka whose requests give up after ``timeout_s``."""
    # No librdkafka log lines: a broker that does not answer is reported once, in words
    # (UnreachableError), not as a connection failure printed every 50 ms.
    return settings_for(site, "coopr-cli", request_timeout_ms=int(timeout_s * 1000), log_level=0)


def database(site: DataCenter, timeout_s: float) -> psycopg2.extensions.connection:
    """A connection to ``site``'s database; :class:`UnreachableError` naming the DC when it
    does not answer within ``timeout_s``."""
    timeouts = ConnectionTimeouts(connect_s=max(1, math.ceil(timeout_s)))
    try:
        return connect(site.database, timeouts=timeouts)
    except UnreachableError as e:
        raise UnreachableError(f"{site.name}'s database did not answer: {e}") from None


#: librdkafka's errors that say the broker answered and refused us.
_REFUSALS = (KafkaError._AUTHENTICATION, KafkaError._SSL)


def _note_refusal(dc: str, err: KafkaError) -> None:
    if err.code() in _REFUSALS:
        _refused[dc] = err.str()


def _unreachable(
    site: DataCenter, timeout_s: float, what: str, client: AdminClient | Consumer
) -> UnreachableError:
    """The error of a request to ``site``'s Kafka that failed: the broker's refusal of our
    login or TLS handshake when ``client`` heard one, else that it did not answer."""
    client.poll(0)  # serves the error callbacks, which tell a refusal from silence
    refusal = _refused.pop(site.name, None)
    if refusal is not None:
        return UnreachableError(
            f"{site.name}'s Kafka at {site.kafka} refused us ({what}): {refusal}"
        )
    return UnreachableError(
        f"{site.name}'s Kafka at {site.kafka} did not answer within {timeout_s:g} s ({what})"
    )


def topic_names(site: DataCenter, timeout_s: float) -> set[str]:
    """Every topic in ``site``'s Kafka; :class:`UnreachableError` when it does not answer."""
    admin = AdminClient(_with_refusals(site, kafka_settings(site, timeout_s).admin()))
    try:
        return set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException:
        raise _unreachable(site, timeout_s, "listing topics", admin) from None


def shard_topics(site: DataCenter, timeout_s: float) -> list[str]:
    """The shard topics in ``site``'s Kafka, local and mirrored copies, sorted by source DC
    and shard (local ones first)."""
    return _shard_topics_among(topic_names(site, timeout_s))


def _shard_topics_among(names: Iterable[str]) -> list[str]:
    names = set(names)
    local = sorted(t for t in names if t.startswith(SHARD_PREFIX))
    copies = []
    for name in names:
        try:
            copy = parse_mirrored_shard(name)
        except PipelineError:
            continue
        copies.append((copy.source_dc, copy.shard, name))
    return local + [name for _, _, name in sorted(copies)]


#: A request that timed out in librdkafka (locally or at the broker): the broker did not answer.
_TIMEOUTS = frozenset({KafkaError._TIMED_OUT, KafkaError.REQUEST_TIMED_OUT})


def offset_ranges(
    site: DataCenter, topics: Iterable[str], timeout_s: float
) -> dict[str, OffsetRange]:
    """The offset range of partition 0 of each of ``topics`` in ``site``'s Kafka, asked in
    two requests; :class:`UnreachableError` when the broker does not answer in time."""
    topics = list(topics)
    if not topics:
        return {}
    admin = AdminClient(_with_refusals(site, kafka_settings(site, timeout_s).admin()))
    ends: dict[str, list[int]] = {t: [] for t in topics}
    # Untyped in the library.
    specs = (OffsetSpec.earliest(), OffsetSpec.latest())  # type: ignore[no-untyped-call]
    for spec in specs:
        futures = admin.list_offsets(
            {TopicPartition(t, 0): spec for t in topics}, request_timeout=timeout_s
        )
        for tp, future in futures.items():
            try:
                ends[tp.topic].append(int(future.result(timeout=timeout_s).offset))
            except KafkaException as e:
                if e.args[0].code() in _TIMEOUTS:
                    raise _unreachable(site, timeout_s, f"offsets of {tp.topic}", admin) from None
                raise PipelineError(
                    f"{site.name}: no offsets for {tp.topic}: {e.args[0].str()}"
                ) from None
            except TimeoutError:
                raise _unreachable(site, timeout_s, f"offsets of {tp.topic}", admin) from None
    return {t: OffsetRange(low, high) for t, (low, high) in ends.items()}


def applied_offsets(conn: psycopg2.extensions.connection) -> dict[str, int]:
    """The next offset the DC's applier will read of each mirrored topic (partition 0), as
    stored in its database with the rows it applied."""
    with conn, conn.cursor() as cur:
        cur.execute("SELECT topic, next_offset FROM applied_offsets WHERE partition = 0")
        return {topic: int(offset) for topic, offset in cur.fetchall()}


def topic_of(
    topology: Topology,
    dc: str,
    shard: int | None,
    source: str | None,
    topic: str | None,
    existing: Iterable[str],
) -> str:
    """The topic meant by ``--topic T``, or by ``--shard S [--source DC]`` in DC ``dc``: the
    shard's local topic without a source (or with ``dc`` itself), else the copy mirrored from
    ``source``. ``existing`` are the DC's topics (all, or only its shard topics); any of them
    may be named with ``--topic``. A :class:`PipelineError` lists the DC's shard topics when
    the topic does not exist."""
    existing = set(existing)
    if topic is None:
        if shard is None:
            raise click.UsageError(
                "give --shard S (with --source DC for a mirrored copy) or --topic T"
            )
        if not 0 <= shard < topology.shard_count:
            raise PipelineError(
                f"no shard {shard}: the topology has shards 0 to {topology.shard_count - 1}"
            )
        if source is not None:
            topology.dc(source)
        topic = shard_topic(shard) if source in (None, dc) else mirrored(source, shard_topic(shard))
    if topic not in existing:
        raise PipelineError(
            f"no topic {topic} in {dc}'s Kafka; its shard topics are: "
            + (", ".join(_shard_topics_among(existing)) or "none")
        )
    return topic


def offset_for_time(
    site: DataCenter, topic: str, at_ms: int, span: OffsetRange, timeout_s: float
) -> int:
    """The first offset of ``topic`` whose record is stamped at or after ``at_ms`` (the
    broker's time index), or the end when none is. A :class:`PipelineError` gives the
    earliest retained record's time when ``at_ms`` is before it and retention deleted older
    records."""
    consumer = _reader(site, timeout_s)
    try:
        found = consumer.offsets_for_times([TopicPartition(topic, 0, at_ms)], timeout=timeout_s)
        if span.low > 0:
            first = _first_time(consumer, topic, span.low, timeout_s)
            if first is not None and at_ms < first:
                raise PipelineError(
                    f"{topic} no longer holds records from before {iso_time(first)}: retention"
                    f" deleted offsets 0 to {span.low - 1}; the earliest is offset {span.low}"
                )
    except KafkaException:
        raise _unreachable(site, timeout_s, f"the time index of {topic}", consumer) from None
    finally:
        consumer.close()
    offset = found[0].offset
    return span.high if offset < 0 else int(offset)


def offsets_since(
    site: DataCenter, topics: Iterable[str], at_ms: int, timeout_s: float
) -> dict[str, int | None]:
    """Per topic of ``topics`` (partition 0) in ``site``'s Kafka, the first offset whose
    record is stamped at or after ``at_ms`` (ms since the epoch; the broker's time index), or
    None when no record is: one request for every topic."""
    topics = list(topics)
    if not topics:
        return {}
    consumer = _reader(site, timeout_s)
    try:
        found = consumer.offsets_for_times(
            [TopicPartition(t, 0, at_ms) for t in topics], timeout=timeout_s
        )
    except KafkaException:
        raise _unreachable(site, timeout_s, "the time index", consumer) from None
    finally:
        consumer.close()
    return {tp.topic: None if tp.offset < 0 else int(tp.offset) for tp in found}


def read_range(
    site: DataCenter,
    topic: str,
    start: int,
    stop: int | None,
    timeout_s: float,
    *,
    follow: threading.Event | None = None,
) -> Iterator[Message]:
    """The records of ``topic`` [0] from offset ``start`` up to ``stop`` (exclusive), read by
    a consumer that joins no group and commits nothing. Without ``stop`` it ends at the end it
    finds, unless ``follow`` is given: then it waits for new records until that is set. A
    broker silent for ``timeout_s`` while records are due is an :class:`UnreachableError`."""
    if stop is not None and start >= stop:
        return
    consumer = _reader(site, timeout_s)
    try:
        consumer.assign([TopicPartition(topic, 0, start)])
        next_offset, quiet_since = start, time.monotonic()
        while not (follow is not None and follow.is_set()):
            records = [m for m in consumer.consume(500, timeout=0.2) if m.error() is None]
            if records:
                quiet_since = time.monotonic()
            elif follow is None and _at_end(consumer, topic, next_offset, stop, timeout_s):
                return
            elif follow is None and time.monotonic() - quiet_since > timeout_s:
                raise _unreachable(
                    site, timeout_s, f"reading {topic} at offset {next_offset}", consumer
                )
            for msg in records:
                next_offset = (msg.offset() or 0) + 1
                if stop is not None and next_offset > stop:
                    return
                yield msg
            if stop is not None and next_offset >= stop:
                return
    except KafkaException:
        raise _unreachable(site, timeout_s, f"reading {topic}", consumer) from None
    finally:
        consumer.close()


def _at_end(
    consumer: Consumer, topic: str, next_offset: int, stop: int | None, timeout_s: float
) -> bool:
    _, high = consumer.get_watermark_offsets(
        TopicPartition(topic, 0), timeout=timeout_s, cached=False
    )
    return next_offset >= (high if stop is None else min(stop, high))


def timestamps_at(site: DataCenter, offsets: Mapping[str, int], timeout_s: float) -> dict[str, int]:
    """The timestamp (ms since the epoch) of the record at each topic's offset (partition 0),
    all read by one consumer; at an offset retention deleted, the first record kept. Every
    offset must hold a record (be below the topic's end). :class:`UnreachableError` naming
    the topics whose record did not come within ``timeout_s``."""
    if not offsets:
        return {}
    # One record per partition is all it needs: small fetches.
    consumer = _reader(site, timeout_s, **{"max.partition.fetch.bytes": 65536})
    found: dict[str, int] = {}
    try:
        consumer.assign([TopicPartition(t, 0, o) for t, o in offsets.items()])
        deadline = time.monotonic() + timeout_s
        while len(found) < len(offsets):
            if time.monotonic() > deadline:
                missing = ", ".join(sorted(offsets.keys() - found.keys()))
                raise _unreachable(site, timeout_s, f"reading the records of {missing}", consumer)
            for msg in consumer.consume(500, timeout=0.2):
                topic = msg.topic()
                if msg.error() is None and topic is not None and topic not in found:
                    found[topic] = int(msg.timestamp()[1])
                    consumer.pause([TopicPartition(topic, 0)])
    except KafkaException:
        raise _unreachable(site, timeout_s, "reading records", consumer) from None
    finally:
        consumer.close()
    return found


def _reader(site: DataCenter, timeout_s: float, **overrides: str | int | bool) -> Consumer:
    # A group id is required by librdkafka even for assign(); nothing is ever committed.
    return Consumer(
        _with_refusals(
            site,
            kafka_settings(site, timeout_s).consumer(
                f"coopr-cli-{uuid.uuid4().hex[:8]}", **{"enable.partition.eof": False, **overrides}
            ),
        )
    )


#: Per DC, the last refusal a client heard (librdkafka reports it to a callback, not to the
#: request that failed).
_refused: dict[str, str] = {}


def _with_refusals(site: DataCenter, config: ClientConfig) -> dict[str, Any]:
    return {**config, "error_cb": partial(_note_refusal, site.name)}


def _first_time(consumer: Consumer, topic: str, offset: int, timeout_s: float) -> int | None:
    consumer.assign([TopicPartition(topic, 0, offset)])
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                return int(msg.timestamp()[1])
        return None
    finally:
        consumer.unassign()


def iso_time(ms: int) -> str:
    """Milliseconds since the epoch as ISO-8601 in UTC, to the millisecond."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
