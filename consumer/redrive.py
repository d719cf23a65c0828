"""Redriving dead letters: records a DC's applier refused, taken again through the applier's
decoding and sequencing after a fix (a newly shipped schema version, say).

A dead letter is a record of the DC's local ``coopr.dlq`` (partition 0), written by
:class:`consumer.dlq.DeadLetterShipper`: the refused record's key and value byte for byte,
and headers saying why and where the applier read it. Its ID is its offset in that
partition.

:func:`redrive` takes the letters one at a time, each in its own transaction, so the
applier waits at most for one letter's apply:

1. a letter whose source record a redrive recorded already (``dead_letter_redrives``) is
   reported as already redriven, with when and how; nothing else is done;
2. :func:`consumer.decoding.decode_incoming` decodes it as the applier does; a letter that
   still fails is reported still refused, with the reason, and nothing is written;
3. :func:`consumer.store.apply_events` sequences and upserts it as the applier would have:
   it takes the shard's ``replication_state`` row lock (``FOR UPDATE``), so a redrive and
   the running applier serialise; ``applied_offsets`` is never touched, the applier's
   position in its topics stays its own. A refused event's later events usually opened a
   gap for it, so it is applied as a late event and the gap closes;
4. the final outcome (applied, duplicate, fenced) is recorded in ``dead_letter_redrives``,
   keyed by the source record, in the same transaction. An event that waits for a claim not
   seen yet, or that the database refuses, is rolled back and stays redrivable.

Exactly once: the key is unique. Two redrives of one letter at the same time serialise on
the shard's lock; the second finds the event applied (a duplicate) and its insert of the
key finds the first one's row: it rolls back and reports the letter already redriven.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

import psycopg2
import psycopg2.extensions
from confluent_kafka import Message

from consumer.decoding import decode_incoming
from consumer.sequencing import Position
from consumer.store import Applied, Incoming, apply_events, permanent
from pipeline.errors import CodecError, TopicNameError, first_line

__all__ = [
    "RECORDED",
    "DeadLetter",
    "Outcome",
    "Redrive",
    "Redriven",
    "Source",
    "redrive",
    "redriven",
    "unshipped",
]


class Outcome(StrEnum):
    """What redriving one dead letter did (or would do, in a dry run)."""

    #: Applied by the sequence check (late into its gap, in order, or an old owner's tail)
    #: and upserted under the ``(epoch, seq)`` guard: a row with a newer event keeps it.
    APPLIED = "applied"
    #: The replica had the event already: nothing changed.
    DUPLICATE = "duplicate"
    #: Of an older epoch, beyond the cut of the claim that took the shard from it: never
    #: applied, as the applier would have fenced it.
    FENCED = "fenced"
    #: Of a newer epoch whose claim this DC has not seen yet: not applied, not recorded.
    WAITS = "waits"
    #: It still does not decode, or the database still refuses it: not recorded.
    STILL_REFUSED = "still_refused"
    #: A redrive recorded its source record before: nothing done.
    ALREADY_REDRIVEN = "already_redriven"


#: The outcomes recorded in ``dead_letter_redrives``: the letter is done with.
RECORDED = frozenset({Outcome.APPLIED, Outcome.DUPLICATE, Outcome.FENCED})


class Source(NamedTuple):
    """Where the applier read a refused record: a mirrored shard topic's partition and offset."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record of a DC's ``coopr.dlq``: ``id`` is its offset (partition 0),
    ``timestamp_ms`` its Kafka timestamp (when it was shipped, ms since the Unix epoch),
    ``headers`` its headers as text (invalid UTF-8 replaced)."""

    id: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]

    @classmethod
    def from_message(cls, msg: Message) -> DeadLetter:
        raw = msg.headers() or []
        pairs = raw.items() if isinstance(raw, dict) else raw
        headers = {
            name: value.decode("utf-8", "replace") if isinstance(value, bytes) else value or ""
            for name, value in pairs
        }
        return cls(msg.offset() or 0, msg.timestamp()[1], msg.key(), msg.value(), headers)

    @property
    def reason(self) -> str:
        """Why the applier refused it, in words (``dlq-reason``)."""
        return self.headers.get("dlq-reason", "")

    @property
    def error(self) -> str:
        """The error class (``dlq-error``): ``UnknownFingerprintError``, ``DataError (22P05)``."""
        return self.headers.get("dlq-error", "")

    @property
    def source_dc(self) -> str:
        """The DC whose applier refused it (``source-dc``)."""
        return self.headers.get("source-dc", "")

    @property
    def source(self) -> Source | None:
        """Where the applier read the record; None when the headers do not say (a record
        some other program wrote to ``coopr.dlq``)."""
        try:
            return Source(
                self.headers["source-topic"],
                int(self.headers["source-partition"]),
                int(self.headers["source-offset"]),
            )
        except (KeyError, ValueError):
            return None

    def decode(self) -> Incoming:
        """The event, decoded now as the applier decodes: with the schemas this process
        loads (``$COOPR_SCHEMA_DIR`` or the shipped ones). Raises
        :class:`~pipeline.errors.CodecError` or :class:`~pipeline.errors.TopicNameError`
        when it still fails."""
        source = self.source
        if source is None:
            raise CodecError(
                "not a dead letter of the applier: no source-topic, source-partition and"
                " source-offset headers"
            )
        return decode_incoming(source.topic, source.partition, source.offset, self.key, self.value)


@dataclass(frozen=True, slots=True)
class Redriven:
    """What a redrive recorded of a source record: the letter it redrove, the outcome, the
    event's position, and when (the commit's transaction time)."""

    letter: int
    outcome: Outcome
    position: Position
    at: datetime


@dataclass(frozen=True, slots=True)
class Redrive:
    """The outcome of redriving one letter. ``position`` is the decoded event's (None when it
    did not decode); ``error`` the error class of a letter still refused; ``earlier`` what an
    earlier redrive recorded, for a letter already redriven."""

    letter: DeadLetter
    outcome: Outcome
    detail: str
    position: Position | None = None
    error: str | None = None
    earlier: Redriven | None = None


_RECORDED_COLUMNS = (
    "source_topic, source_partition, source_offset, letter, outcome, shard, source_dc, epoch,"
    " seq, redriven_at"
)


def _from_row(row: tuple[Any, ...]) -> tuple[Source, Redriven]:
    topic, partition, offset, letter, outcome, shard, dc, epoch, seq, at = row
    position = Position(shard, dc, epoch, seq)
    return Source(topic, partition, offset), Redriven(letter, Outcome(outcome), position, at)


def redriven(
    conn: psycopg2.extensions.connection, sources: Iterable[Source]
) -> dict[Source, Redriven]:
    """What redrives recorded of each of ``sources`` that has a record."""
    wanted = sorted(set(sources))
    if not wanted:
        return {}
    with conn, conn.cursor() as cur:
        cur.execute(
            f"SELECT {_RECORDED_COLUMNS} FROM dead_letter_redrives"
            " WHERE (source_topic, source_partition, source_offset) IN %s",
            (tuple(wanted),),
        )
        return dict(_from_row(row) for row in cur.fetchall())


def unshipped(conn: psycopg2.extensions.connection) -> int:
    """How many refused records wait in ``dead_letters`` to be shipped to ``coopr.dlq``."""
    with conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM dead_letters")
        row = cur.fetchone()
        return int(row[0]) if row else 0


def redrive(
    conn: psycopg2.extensions.connection, letters: Iterable[DeadLetter], *, dry_run: bool
) -> Iterator[Redrive]:
    """Redrive ``letters`` in order into ``conn``'s database, yielding each one's outcome once
    it is committed.

    With ``dry_run`` every letter runs the same statements in one transaction, each behind a
    savepoint (kept when the letter is done with, so later letters see it as the real run
    would), and the whole transaction is rolled back at the end: nothing changes. It holds
    the row locks of the shards it touched until then. Raises psycopg2's errors when the
    database fails otherwise than by refusing an event's data; what was committed until then
    stays.
    """
    try:
        for letter in letters:
            with conn.cursor() as cur:
                cur.execute("SAVEPOINT redrive")
                result = _redrive_one(cur, letter)
                if result.outcome not in RECORDED:
                    cur.execute("ROLLBACK TO SAVEPOINT redrive")
                elif dry_run:
                    cur.execute("RELEASE SAVEPOINT redrive")
            if not dry_run:
                conn.commit()
            yield result
    finally:
        if not conn.closed:
            conn.rollback()


def _redrive_one(cur: psycopg2.extensions.cursor, letter: DeadLetter) -> Redrive:
    """Steps 1 to 4 of the module's docstring for one letter, in the cursor's transaction;
    the caller keeps its effects only for a :data:`RECORDED` outcome."""
    source = letter.source
    earlier = _recorded(cur, source) if source is not None else None
    if earlier is not None:
        return _already(letter, earlier)
    try:
        event = letter.decode()
    except (CodecError, TopicNameError) as e:
        return Redrive(letter, Outcome.STILL_REFUSED, str(e), error=type(e).__name__)
    try:
        applied = apply_events(cur, [event])
    except psycopg2.Error as e:
        if not permanent(e):
            raise
        return Redrive(
            letter,
            Outcome.STILL_REFUSED,
            f"the database refused the event: {first_line(e)}",
            event.position,
            f"{type(e).__name__} ({e.pgcode})",
        )
    outcome, detail = _classify(applied, event.position)
    if outcome in RECORDED and not _record(cur, letter, event, outcome):
        # A concurrent redrive of the same record committed first: this one rolls back.
        earlier = _recorded(cur, Source(event.topic, event.partition, event.offset))
        assert earlier is not None, "the insert conflicted with a committed row"
        return _already(letter, earlier)
    return Redrive(letter, outcome, detail, event.position)


def _already(letter: DeadLetter, earlier: Redriven) -> Redrive:
    by = "" if earlier.letter == letter.id else f" by dead letter {earlier.letter}"
    return Redrive(
        letter,
        Outcome.ALREADY_REDRIVEN,
        f"redriven at {earlier.at.isoformat(timespec='seconds')}{by}: {earlier.outcome}",
        earlier.position,
        earlier=earlier,
    )


def _classify(applied: Applied, pos: Position) -> tuple[Outcome, str]:
    """The outcome of one event's :func:`apply_events`, and what it means in words."""
    where = f"shard {pos.shard} epoch {pos.epoch} seq {pos.seq}"
    if applied.applied:
        if applied.late:
            how = "late, into the gap its stream had open for it"
        elif applied.gaps:
            gap = applied.gaps[0]
            how = (
                f"seqs {gap.after_seq + 1} to {gap.before_seq - 1} before it never arrived"
                " (gap recorded)"
            )
        else:
            how = "next in its stream"
        return Outcome.APPLIED, f"{where}: {how}"
    if applied.fenced:
        return Outcome.FENCED, f"{where}: an older epoch beyond the cut of the claim that ended it"
    if applied.waiting:
        return Outcome.WAITS, f"{where}: the claim of epoch {pos.epoch} is not seen here yet"
    return Outcome.DUPLICATE, f"{where}: the replica had it already"


def _recorded(cur: psycopg2.extensions.cursor, source: Source) -> Redriven | None:
    cur.execute(
        f"SELECT {_RECORDED_COLUMNS} FROM dead_letter_redrives"
        " WHERE source_topic = %s AND source_partition = %s AND source_offset = %s",
        source,
    )
    row = cur.fetchone()
    return None if row is None else _from_row(row)[1]


def _record(
    cur: psycopg2.extensions.cursor, letter: DeadLetter, event: Incoming, outcome: Outcome
) -> bool:
    """Record the redrive of ``event``'s source record; False when a concurrent redrive
    recorded it first (the unique key waits for that one's commit, then conflicts)."""
    pos = event.position
    cur.execute(
        "INSERT INTO dead_letter_redrives (source_topic, source_partition, source_offset,"
        " letter, outcome, shard, source_dc, epoch, seq) VALUES (%s, %s, %s, %s, %s, %s, %s,"
        " %s, %s) ON CONFLICT DO NOTHING RETURNING 1",
        (
            event.topic,
            event.partition,
            event.offset,
            letter.id,
            str(outcome),
            pos.shard,
            pos.source_dc,
            pos.epoch,
            pos.seq,
        ),
    )
    return cur.fetchone() is not None
