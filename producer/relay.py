"""The outbox relay: publishes committed outbox rows to the DC's shard topics, in order.

One relay per DC publishes at a time: it holds a PostgreSQL session advisory lock, and any
other relay of the DC waits as a standby, trying the lock every ``standby_poll_s``. When the
active relay dies its session ends, the lock is released, and a standby takes over. The
session ends even when nothing tells the server the relay is gone (a host that died, a proxy
that keeps TCP alive): the relay runs a statement at least every ``poll_interval_s``, and the
server ends its session after ``lock_silence_s`` without one (``idle_session_timeout``).

Each round (the guarantee: nothing is lost, a row may be published twice, a shard's rows
reach Kafka in seq order):

1. serve delivery reports and hand the rows Kafka acknowledged, per shard up to the first one
   it has not, to the **bookkeeper** (below), which marks them published. A crash between an
   acknowledgement and its mark re-publishes the row: consumers absorb duplicates by
   ``(epoch, seq)``;
2. read the unpublished rows of every shard that has none in flight and is not blocked, in
   id order (seq order within a shard), past the last row of the shard this relay saw
   acknowledged (so a row acknowledged but not marked yet is not sent again): at most
   ``batch_size`` per shard and ``batch_bytes`` in all (at least one row). Only shards this
   DC owns under a running lease, and only rows of the shard's current epoch (below);
3. produce them with an idempotent producer (``acks=all``, records never time out, gapless);
4. wait for their delivery reports, at most ``ack_timeout_s``.

The bookkeeper is a thread with a database connection of its own. It marks acknowledged rows
published (one statement for all it holds), refreshes the backlog figures every second and
prunes, so that none of that database work holds up publishing: the next rows are read and
sent while the last ones are being marked. A mark that fails is kept and tried again; when
the relay stops, it waits up to ``stop_grace_s`` for the marks it holds.

A shard whose records are not acknowledged by then is **stuck** (a partition without a
leader, a topic that is gone): it gets no new rows until its reports arrive, health names it,
and the other shards go on. A shard whose record Kafka refuses (too large for its topic, the
topic missing, not authorised) is **blocked**: its rows are sent again, in order, one at
first, after a backoff that doubles up to ``blocked_retry_max_s``; health names it with the
reason. A fatal producer error (the idempotent producer can no longer keep the order, as after
a refused batch) replaces the producer; the rows it had not acknowledged are sent again.

Which shards it publishes (``docs/ownership.md``): a shard's rows go out only while
``shard_ownership`` names this DC the owner at the rows' epoch and the lease runs
(``lease_until > clock_timestamp()``), whether or not the shard is writable: a shard made
read-only for a planned handover is still flushed. A shard whose lease ended waits until the
controller renews it (**unleased**), then flows on in order. Rows of an epoch this DC no
longer owns (another DC took the shard over) are **disowned**: never published, never pruned,
they are the orphans ``ownership orphans`` lists. Health names both kinds of shards.

The relay wakes on ``NOTIFY coopr_outbox`` (sent by :func:`producer.outbox.publish` at
commit) and polls every ``poll_interval_s`` in case a notification was missed. Published rows
older than ``retention_s`` are pruned every ``prune_interval_s``; unpublished rows never are.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import psycopg2
import psycopg2.extensions
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from prometheus_client import Counter, Gauge, Histogram

from pipeline.backpressure import produce_with_backpressure
from pipeline.db import ConnectionTimeouts, connect
from pipeline.errors import ConfigError, PipelineError, first_line
from pipeline.kafka_config import KafkaSettings
from pipeline.logging import get_logger
from pipeline.shutdown import Closeable
from pipeline.topics import SHARD_MAX_MESSAGE_BYTES, shard_topic
from producer.outbox import OUTBOX_CHANNEL

__all__ = ["RELAY_LOCK", "Relay", "RelayConfig"]

log = get_logger(__name__)

#: Advisory lock key that makes one relay per DC (per database) the active one.
RELAY_LOCK = 0x636F6F70726C79

PUBLISHED = Counter(
    "coopr_relay_events_published_total", "Outbox rows acknowledged by Kafka.", ["dc"]
)
FAILED = Counter(
    "coopr_relay_delivery_failures_total", "Deliveries Kafka did not acknowledge.", ["dc"]
)
BACKLOG = Gauge(
    "coopr_relay_outbox_backlog",
    "Outbox rows not yet published (disowned rows included: they never will be).",
    ["dc"],
)
UNLEASED = Gauge(
    "coopr_relay_unleased_shards",
    "Shards with rows to publish held back because this DC's lease on them has ended.",
    ["dc"],
)
DISOWNED = Gauge(
    "coopr_relay_disowned_shards",
    "Shards with unpublished rows of an epoch this DC no longer owns (orphans, kept).",
    ["dc"],
)
ACTIVE = Gauge("coopr_relay_active", "1 while this relay holds the DC's relay lock.", ["dc"])
BLOCKED = Gauge(
    "coopr_relay_blocked_shards", "Shards held back because Kafka refused a record.", ["dc"]
)
STUCK = Gauge(
    "coopr_relay_stuck_shards",
    "Shards with records unacknowledged for longer than the acknowledgement timeout.",
    ["dc"],
)
PRODUCER_RESTARTS = Counter(
    "coopr_relay_producer_restarts_total", "Producers replaced after a fatal error.", ["dc"]
)
LATENCY = Histogram(
    "coopr_relay_publish_latency_seconds",
    "Outbox commit (row creation) to Kafka acknowledgement.",
    ["dc"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

#: Delivery errors that say nothing about the record itself: its producer failed or purged it.
_COLLATERAL = frozenset(
    {
        KafkaError._FATAL,
        KafkaError._PURGE_QUEUE,
        KafkaError._PURGE_INFLIGHT,
        KafkaError._GAPLESS_GUARANTEE,
    }
)
#: Per shard, unpublished rows in id order past the shard's ``after`` id (the last one this
#: relay saw acknowledged, whose mark may still be on its way), cut at the row and byte limits
#: (the first row of a round is always taken, whatever its size). A blocked shard due for a
#: retry sends one row.
#: The cut is computed on ids and sizes only, so that no payload is sorted; the caller puts
#: the rows in id order. Only shards this DC (``dc``) owns under a running lease, only rows of
#: the epoch it owns them at; `writable` is not looked at, so a handover flushes its shard.
#: Disowned rows are older than every row of the current epoch (a DC writes a shard's epoch
#: only after it owns it): each round's index walk steps over them first, a cost bounded by
#: the few rows a takeover leaves behind.
_FETCH = """
WITH candidates AS (
    SELECT c.id, c.size
    FROM shard_ownership s
    LEFT JOIN unnest(%(after_shards)s::integer[], %(after_ids)s::bigint[]) AS a (shard, id)
        ON a.shard = s.shard
    CROSS JOIN LATERAL (
        SELECT id, octet_length(payload) AS size
        FROM outbox
        WHERE outbox.shard = s.shard AND outbox.epoch = s.epoch AND published_at IS NULL
            AND outbox.id > COALESCE(a.id, 0)
        ORDER BY id
        LIMIT CASE WHEN s.shard = ANY(%(probe)s) THEN 1 ELSE %(rows)s END
    ) c
    WHERE s.shard <> ALL(%(skip)s) AND s.owner_dc = %(dc)s
        AND s.lease_until > clock_timestamp()
), chosen AS (
    SELECT id FROM (
        SELECT id, sum(size) OVER (ORDER BY id) - size AS before FROM candidates
    ) w
    WHERE before < %(bytes)s
)
SELECT o.id, o.shard, o.epoch, o.seq, o.event_type, o.event_key, o.payload,
       extract(epoch FROM o.created_at)
FROM outbox o JOIN chosen USING (id)
"""
#: The backlog (every unpublished row, disowned ones included: an index-only count), the
#: shards held back for their lease (this DC owns them, the lease ended, rows of their epoch
#: wait) and the disowned shards: those whose oldest unpublished row is of an epoch this DC
#: does not own now. Disowned rows are the oldest of their shard (see _FETCH), so the oldest
#: row tells, in one index probe per shard.
_BACKLOG = """
WITH shards AS (
    SELECT s.shard,
        oldest.epoch IS NOT NULL AND (s.owner_dc <> %(dc)s OR oldest.epoch <> s.epoch)
            AS disowned,
        CASE WHEN s.owner_dc = %(dc)s AND s.lease_until <= clock_timestamp() THEN EXISTS (
            SELECT FROM outbox
            WHERE shard = s.shard AND epoch = s.epoch AND published_at IS NULL
        ) ELSE false END AS unleased
    FROM shard_ownership s LEFT JOIN LATERAL (
        SELECT epoch FROM outbox
        WHERE shard = s.shard AND published_at IS NULL ORDER BY id LIMIT 1
    ) oldest ON true
)
SELECT (SELECT count(*) FROM outbox WHERE published_at IS NULL),
    array(SELECT shard FROM shards WHERE unleased ORDER BY shard),
    array(SELECT shard FROM shards WHERE disowned ORDER BY shard)
"""


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """Settings of one relay process. Times in seconds, sizes in bytes."""

    dc: str
    database: str = field(repr=False)
    kafka: KafkaSettings
    #: Rows per shard and round.
    batch_size: int = 5000
    #: Payload bytes per round, all shards together.
    batch_bytes: int = 16 * 1024 * 1024
    poll_interval_s: float = 1.0
    ack_timeout_s: float = 5.0
    standby_poll_s: float = 1.0
    #: The server ends the active relay's session after this long without a statement,
    #: releasing its lock for a standby.
    lock_silence_s: float = 15.0
    retention_s: float = 24 * 3600.0
    prune_interval_s: float = 60.0
    stop_grace_s: float = 30.0
    max_backoff_s: float = 5.0
    blocked_retry_max_s: float = 30.0
    timeouts: ConnectionTimeouts = field(default_factory=ConnectionTimeouts)

    def __post_init__(self) -> None:
        # The relay is silent for at most a poll interval or an acknowledgement wait, plus
        # the time its own statements take.
        quiet = max(self.poll_interval_s, self.ack_timeout_s)
        if self.lock_silence_s < quiet + 2.0:
            raise ConfigError(
                f"must be at least 2 s above the poll interval and the acknowledgement timeout"
                f" ({quiet:g} s), not {self.lock_silence_s:g}",
                field="lock_silence_s",
            )

    def producer_settings(self) -> dict[str, Any]:
        """librdkafka settings: idempotent, ``acks=all``, never giving a record up.

        A record that timed out while a later one of its shard got through would reach Kafka
        after it, out of seq order. So records never time out (the relay waits while Kafka is
        away), and any other failure that could leave a gap is fatal to the producer, which
        the relay then replaces before sending the rows again, in order.
        """
        return self.kafka.producer(
            **{
                "linger.ms": 1,
                "message.timeout.ms": 0,
                "enable.gapless.guarantee": True,
                "message.max.bytes": SHARD_MAX_MESSAGE_BYTES,
                "queue.buffering.max.messages": max(100_000, 2 * self.batch_size),
            }
        )


#: A delivery report not received yet.
_PENDING = object()


@dataclass(slots=True, eq=False)
class _Flight:
    """The rows of one shard produced in one round, in seq order, and their reports."""

    shard: int
    ids: list[int] = field(default_factory=list)
    created: list[float] = field(default_factory=list)
    reports: list[object] = field(default_factory=list)
    sent_at: float = field(default_factory=time.monotonic)
    #: Rows already marked published: a prefix.
    marked: int = 0
    reported: int = 0
    #: A later row of the shard was refused before it was sent: the shard stays blocked.
    cut: bool = False

    def on_delivery(self, index: int, err: KafkaError | None, msg: Message) -> None:
        self.reports[index] = err
        self.reported += 1

    @property
    def complete(self) -> bool:
        return self.reported == len(self.ids)

    def acknowledged(self) -> int:
        """How many rows, from the first, Kafka acknowledged."""
        n = self.marked
        while n < len(self.ids) and self.reports[n] is None:
            n += 1
        return n

    def refusal(self) -> KafkaError | None:
        """The first error that concerns the records themselves, if any."""
        for report in self.reports:
            if isinstance(report, KafkaError) and report.code() not in _COLLATERAL:
                return report
        return None


@dataclass(slots=True)
class _Block:
    """Why a shard is held back, since when (s since the epoch), and when to try again."""

    reason: str
    since: float
    retry_at: float
    failures: int


class _Bookkeeper:
    """The relay's database work that publishing need not wait for, on a thread and a
    connection of its own: marking acknowledged rows published, the backlog figures (every
    second while ``active()``), pruning.

    Marks are kept until their statement commits: any failure (the database unreachable, or
    anything else: a thread that stopped would never mark again) keeps them for the next
    try, after a backoff that doubles up to ``max_backoff_s``, and shows in health."""

    def __init__(self, config: RelayConfig, active: Callable[[], bool]):
        self.config = config
        self.active = active
        self.last_error: str | None = None
        self.backlog = 0
        #: Shards held back because their lease ended, and shards with disowned rows.
        self.unleased: list[int] = []
        self.disowned: list[int] = []
        self._marks: list[tuple[list[int], list[float]]] = []
        self._wake = threading.Condition()
        #: Set by close(): the monotonic time until which held marks are still tried.
        self._closing_until: float | None = None
        self._conn: psycopg2.extensions.connection | None = None
        self._next_prune = 0.0
        self._next_backlog = 0.0
        self._labels = {"dc": config.dc}
        self._log = log.bind(dc=config.dc)
        self._thread = threading.Thread(target=self._run, name="relay-bookkeeper", daemon=True)
        self._thread.start()

    def mark(self, ids: list[int], created: list[float]) -> None:
        """Have ``ids`` (rows Kafka acknowledged, created at ``created``, s since the epoch)
        marked published."""
        with self._wake:
            self._marks.append((ids, created))
            self._wake.notify()

    def close(self) -> None:
        """Mark what is held, for at most ``stop_grace_s``, then close the connection; marks
        left are published again by the next relay."""
        with self._wake:
            self._closing_until = time.monotonic() + self.config.stop_grace_s
            self._wake.notify()
        self._thread.join(self.config.stop_grace_s + 1.0)
        with self._wake:
            left = sum(len(ids) for ids, _ in self._marks)
        if left:
            self._log.warning("relay stopping without marking the last rows", rows=left)

    def _run(self) -> None:
        backoff = 0.1
        while True:
            with self._wake:
                if not self._marks and self._closing_until is None:
                    self._wake.wait(0.2)
                marks, self._marks = self._marks, []
                closing = self._closing_until is not None
            try:
                self._mark(marks)
                marks = []
                if not closing:
                    self._housekeeping()
                self.last_error = None
                backoff = 0.1
            except Exception as e:  # a thread that died would never mark again
                self.last_error = first_line(e)
                self._log.warning("relay bookkeeping retrying", error=self.last_error)
                with self._wake:
                    self._marks[:0] = marks
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                if closing and time.monotonic() + backoff > (self._closing_until or 0.0):
                    break
                time.sleep(backoff)
                backoff = min(backoff * 2, self.config.max_backoff_s)
                continue
            if closing:
                with self._wake:
                    if not self._marks:
                        break
        if self._conn is not None:
            self._conn.close()

    def _cursor(self) -> psycopg2.extensions.cursor:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.config.database, timeouts=self.config.timeouts)
            self._conn.autocommit = True
        return self._conn.cursor()

    def _mark(self, marks: list[tuple[list[int], list[float]]]) -> None:
        ids = [i for batch, _ in marks for i in batch]
        if not ids:
            return
        with self._cursor() as cur:
            # By primary key only: a published_at condition would let the planner walk the
            # partial index of unpublished rows, testing each against the whole id list.
            cur.execute(
                "UPDATE outbox SET published_at = clock_timestamp() WHERE id = ANY(%s)", (ids,)
            )
        PUBLISHED.labels(**self._labels).inc(len(ids))
        now = time.time()
        latency = LATENCY.labels(**self._labels)
        for _, created in marks:
            for seconds in created:
                latency.observe(now - seconds)

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if not self.active():
            return
        if now >= self._next_backlog:
            with self._cursor() as cur:
                cur.execute(_BACKLOG, {"dc": self.config.dc})
                backlog, self.unleased, self.disowned = cur.fetchone() or (0, [], [])
                self.backlog = int(backlog)
            BACKLOG.labels(**self._labels).set(self.backlog)
            UNLEASED.labels(**self._labels).set(len(self.unleased))
            DISOWNED.labels(**self._labels).set(len(self.disowned))
            self._next_backlog = now + 1.0
        if now >= self._next_prune:
            with self._cursor() as cur:
                cur.execute(
                    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE published_at"
                    " < now() - make_interval(secs => %s) ORDER BY id LIMIT 50000)",
                    (self.config.retention_s,),
                )
                if cur.rowcount:
                    self._log.info("pruned published rows", rows=cur.rowcount)
            self._next_prune = now + self.config.prune_interval_s


class Relay(Closeable):
    """The relay worker; :meth:`run` returns when ``stop`` is set (after the batch in flight).

    A context manager: leaving it gives up the lock and closes the producer."""

    def __init__(self, config: RelayConfig, stop: threading.Event):
        self.config = config
        self.stop = stop
        self.instance = f"{socket.gethostname()}-{os.getpid()}"
        self.active = False
        self.last_error: str | None = None
        self._conn: psycopg2.extensions.connection | None = None
        self._producer = Producer(config.producer_settings())
        # Set on a fatal producer error: that producer can send nothing more.
        self._producer_broken = False
        self._flights: dict[int, _Flight] = {}
        self._blocked: dict[int, _Block] = {}
        #: Per shard, the last row id Kafka acknowledged while this relay was active: the
        #: rows up to it need no sending again, marked or not yet.
        self._after: dict[int, int] = {}
        self._books = _Bookkeeper(config, lambda: self.active)
        self._labels = {"dc": config.dc}
        self._log = log.bind(dc=config.dc, instance=self.instance)

    def close(self) -> None:
        """Give the lock up, mark what was acknowledged (for at most ``stop_grace_s``) and
        drop what the producer still holds (sent again by the next relay: nothing
        unacknowledged is marked)."""
        self._drop_connection()
        self._books.close()
        self._producer.purge()
        self._producer.flush(0)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy unless the last attempt failed or a shard is blocked or stuck; the role
        tells active from standby. Unleased and disowned shards are listed but healthy: the
        relay does what ownership says, the controller's health tells why. Called from another
        thread: it reads snapshots only."""
        now = time.monotonic()
        books = self._books
        last_error = self.last_error or books.last_error
        blocked = {str(s): b.reason for s, b in sorted(dict(self._blocked).items())}
        stuck = {
            str(f.shard): f"{len(f.ids) - f.reported} records unacknowledged for"
            f" {now - f.sent_at:.0f} s"
            for f in sorted(list(self._flights.values()), key=lambda f: f.shard)
            if not f.complete and now - f.sent_at > self.config.ack_timeout_s
        }
        details = {
            "dc": self.config.dc,
            "instance": self.instance,
            "role": "active" if self.active else "standby",
            "backlog": books.backlog,
            "last_error": last_error,
            "blocked_shards": blocked,
            "stuck_shards": stuck,
            "unleased_shards": list(books.unleased),
            "disowned_shards": list(books.disowned),
        }
        return last_error is None and not blocked and not stuck, details

    def run(self) -> None:
        backoff = 0.1
        self._log.info("relay starting")
        while not self.stop.is_set():
            try:
                if not self._ensure_active():
                    self.stop.wait(self.config.standby_poll_s)
                    continue
                sent = self._round()
                self.last_error = None
                backoff = 0.1
                if sent == 0:
                    self._wait_for_rows()
            except (psycopg2.Error, PipelineError) as e:
                self.last_error = first_line(e)
                self._log.warning("relay retrying", error=self.last_error, backoff_s=backoff)
                self._drop_connection()
                self.stop.wait(backoff)
                backoff = min(backoff * 2, self.config.max_backoff_s)
        self._finish()
        self._log.info("relay stopped")

    def _finish(self) -> None:
        """On stop: wait up to ``stop_grace_s`` for the records in flight, handing them to
        the bookkeeper as they are acknowledged; what is left unmarked the next relay sends
        again."""
        until = time.monotonic() + self.config.stop_grace_s
        try:
            while self._flights and time.monotonic() < until and self._conn is not None:
                self._await(list(self._flights.values()), min(until, time.monotonic() + 1.0))
                self._settle()
        except (psycopg2.Error, PipelineError) as e:
            self._log.warning("relay stopping without marking the last rows", error=str(e))
        self._drop_connection()

    def _ensure_active(self) -> bool:
        if self._conn is None or self._conn.closed:
            self._conn = connect(
                self.config.database,
                timeouts=self.config.timeouts,
                idle_session_timeout_s=self.config.lock_silence_s,
            )
            self._conn.autocommit = True
            # psycopg2 appends a notification after every statement that brings one; only
            # "rows arrived" matters, so a few are enough and memory stays bounded.
            self._conn.notifies = collections.deque(maxlen=64)  # type: ignore[assignment]
            self.active = False
        if self.active:
            return True
        with self._conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (RELAY_LOCK,))
            row = cur.fetchone()
            if row is None or not row[0]:
                return False
            cur.execute(f"LISTEN {OUTBOX_CHANNEL}")
        self.active = True
        ACTIVE.labels(**self._labels).set(1)
        self._log.info("relay active")
        return True

    def _drop_connection(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None
        if self.active:
            self._log.info("relay gave up the lock")
        self.active = False
        ACTIVE.labels(**self._labels).set(0)

    def _round(self) -> int:
        """Settle what was acknowledged, send the next rows, wait for them; returns how many
        rows were sent."""
        assert self._conn is not None
        self._settle()
        self._conn.notifies.clear()  # the fetch below sees every row committed so far
        now = time.monotonic()
        skip = set(self._flights) | {s for s, b in self._blocked.items() if b.retry_at > now}
        probe = [s for s in self._blocked if s not in skip]
        with self._conn.cursor() as cur:
            cur.execute(
                _FETCH,
                {
                    "dc": self.config.dc,
                    "probe": probe,
                    "skip": sorted(skip),
                    "rows": self.config.batch_size,
                    "bytes": self.config.batch_bytes,
                    "after_shards": list(self._after),
                    "after_ids": list(self._after.values()),
                },
            )
            rows = sorted(cur.fetchall(), key=lambda row: row[0])  # id: seq order in a shard
        if not rows:
            return 0
        flights = self._send(rows)
        self._await(flights, time.monotonic() + self.config.ack_timeout_s)
        self._settle()
        return len(rows)

    def _send(self, rows: Iterable[tuple[Any, ...]]) -> list[_Flight]:
        """Produce ``rows``; a record refused at once blocks its shard (and the rest of its
        rows stay unsent); a fatal error stops sending."""
        flights: dict[int, _Flight] = {}
        refused: set[int] = set()
        for row_id, shard, epoch, seq, event_type, key, payload, created in rows:
            if shard in refused or self._producer_broken:
                continue
            flight = flights.get(shard)
            if flight is None:
                flight = flights[shard] = self._flights[shard] = _Flight(shard)
            headers = [
                ("event-type", event_type.encode()),
                ("epoch", str(epoch).encode()),
                ("seq", str(seq).encode()),
            ]
            flight.reports.append(_PENDING)
            try:
                produce_with_backpressure(
                    self._producer,
                    shard_topic(shard),
                    value=bytes(payload),
                    key=key.encode(),
                    partition=0,
                    headers=headers,
                    on_delivery=partial(flight.on_delivery, len(flight.ids)),
                )
            except KafkaException as e:
                flight.reports.pop()
                err: KafkaError = e.args[0]
                if err.fatal() or err.code() == KafkaError._FATAL:
                    self._producer_broken = True
                else:
                    refused.add(shard)
                    flight.cut = True
                    self._block(shard, f"row {row_id} (seq {seq}): {err.str()}")
                continue
            flight.ids.append(row_id)
            flight.created.append(float(created))
        for shard, flight in flights.items():
            if not flight.ids:
                del self._flights[shard]
        return list(flights.values())

    def _poll(self, timeout_s: float) -> None:
        """Serve delivery reports; a fatal producer error marks the producer broken."""
        try:
            self._producer.poll(timeout_s)
        except KafkaException as e:
            self._producer_broken = True
            self._log.error("fatal producer error", error=e.args[0].str())

    def _await(self, flights: list[_Flight], until: float) -> None:
        """Serve delivery reports until ``flights`` are all reported, the producer failed,
        or ``until`` (monotonic s)."""
        while not self._producer_broken and time.monotonic() < until:
            if all(f.complete for f in flights):
                return
            self._poll(0.05)

    def _settle(self) -> None:
        """Mark what Kafka acknowledged; retire reported flights; block refused shards;
        replace a broken producer."""
        self._poll(0)
        if self._producer_broken:
            self._replace_producer()
        marks: list[int] = []
        latencies: list[float] = []
        for shard, flight in list(self._flights.items()):
            acked = flight.acknowledged()
            if acked > flight.marked:
                marks += flight.ids[flight.marked : acked]
                latencies += flight.created[flight.marked : acked]
                self._after[shard] = flight.ids[acked - 1]
            flight.marked = acked
            if not flight.complete:
                continue
            del self._flights[shard]
            refusal = flight.refusal()
            failed = len(flight.ids) - acked
            if failed:
                FAILED.labels(**self._labels).inc(failed)
            if refusal is not None:
                self._block(shard, refusal.str())
            elif acked == len(flight.ids) and not flight.cut and shard in self._blocked:
                del self._blocked[shard]
                self._log.info("shard unblocked", shard=shard)
        if marks:
            self._books.mark(marks, latencies)
        now = time.monotonic()
        STUCK.labels(**self._labels).set(
            sum(1 for f in self._flights.values() if now - f.sent_at > self.config.ack_timeout_s)
        )
        BLOCKED.labels(**self._labels).set(len(self._blocked))

    def _replace_producer(self) -> None:
        """A fatal error: the producer's unreported records are given up (sent again by the
        new producer, in order); a shard whose record was refused is blocked."""
        self._producer.purge()
        # The refused record's own report tells which shard to block: serve what is left.
        until = time.monotonic() + 1.0
        while any(not f.complete for f in self._flights.values()) and time.monotonic() < until:
            with contextlib.suppress(KafkaException):  # the fatal error again, being handled
                self._producer.poll(0.05)
        for flight in self._flights.values():
            for i, report in enumerate(flight.reports):
                if report is _PENDING:
                    flight.reports[i] = KafkaError(KafkaError._FATAL)
            flight.reported = len(flight.ids)
        self._producer = Producer(self.config.producer_settings())
        self._producer_broken = False
        PRODUCER_RESTARTS.labels(**self._labels).inc()
        self._log.warning("producer replaced after a fatal error")

    def _block(self, shard: int, reason: str) -> None:
        previous = self._blocked.get(shard)
        failures = previous.failures + 1 if previous else 1
        delay = min(self.config.blocked_retry_max_s, 0.5 * 2**failures)
        self._blocked[shard] = _Block(
            reason,
            previous.since if previous else time.time(),
            time.monotonic() + delay,
            failures,
        )
        self._log.warning("shard blocked", shard=shard, reason=reason, retry_in_s=delay)

    def _wait_for_rows(self) -> None:
        """Sleep until a NOTIFY arrives, the poll interval passes, or stop is set; delivery
        reports of stuck shards are served meanwhile."""
        assert self._conn is not None
        deadline = time.monotonic() + self.config.poll_interval_s
        while not self.stop.is_set():
            self._conn.poll()
            if self._conn.notifies:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            # Short slices so that a stop request is seen within 0.2 s.
            select.select([self._conn], [], [], min(left, 0.2))
            if self._flights:
                self._poll(0)
