"""The transactional outbox: how a Coopr server records an event with the change it reports.

:func:`publish` adds the event to the ``outbox`` table inside the caller's open transaction,
so the event exists if and only if the state change commits. It assigns the shard's next
``(epoch, seq)``: the ``UPDATE`` of the shard's ownership row takes its row lock, so writers of
one shard wait for each other until commit, and seqs have no gaps (a rolled-back transaction
gives its number back) and commit in seq order. The relay publishes rows in that order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import psycopg2.extensions

from pipeline.codec import encode
from pipeline.errors import (
    EventTooLargeError,
    NotOwnerError,
    PipelineError,
    ShardNotWritableError,
)
from pipeline.events import OperationCompleted, RestartCheckpoint
from pipeline.topics import MAX_EVENT_BYTES

__all__ = ["OUTBOX_CHANNEL", "Published", "ShardEvent", "event_key", "publish"]

#: LISTEN/NOTIFY channel that wakes the relay when rows are committed to the outbox.
OUTBOX_CHANNEL = "coopr_outbox"

ShardEvent = OperationCompleted | RestartCheckpoint


@dataclass(frozen=True, slots=True)
class Published:
    """Where an event landed in the outbox: its shard, epoch and seq, and the stamped event."""

    shard: int
    epoch: int
    seq: int
    event: ShardEvent


def event_key(event: ShardEvent) -> str:
    """The Kafka key of a shard event: its cluster ID."""
    if isinstance(event, OperationCompleted):
        return event.cluster.id
    return event.job.cluster_id


def publish(conn: psycopg2.extensions.connection, event: ShardEvent) -> Published:
    """Add ``event`` to this DC's outbox in the caller's open transaction.

    The event's ``owner_dc``, ``epoch`` and ``seq`` are assigned here (whatever the caller
    put there); ``shard`` must be the cluster's shard. Raises :class:`NotOwnerError` (naming
    the owner DC) when another DC owns the shard, :class:`ShardNotWritableError` when this DC
    owns it but it is read-only or its lease has ended, :class:`InvalidEventError` when the
    event does not match its schema and :class:`EventTooLargeError` when it is over
    :data:`MAX_EVENT_BYTES`. The seq is taken only once the event is encoded, so a refused
    event leaves no hole in the shard's seqs even if the caller commits its other changes.
    Nothing is committed here: the caller commits or rolls back.
    """
    if conn.autocommit:
        raise PipelineError("publish needs the caller's open transaction (autocommit is on)")
    with conn.cursor() as cur:
        # The row lock, held until the caller commits, makes writers of one shard queue: seqs
        # are gapless and commit in seq order. Taken only when this DC may write the shard:
        # it owns it, it is not read-only, and the lease the controller renews still runs
        # by this database's clock (a stalled controller stops writes when the lease ends).
        cur.execute(
            "SELECT o.epoch, o.last_seq, l.name FROM shard_ownership o"
            " JOIN local_dc l ON o.owner_dc = l.name"
            " WHERE o.shard = %s AND o.writable AND o.lease_until > clock_timestamp()"
            " FOR UPDATE OF o",
            (event.shard,),
        )
        row = cur.fetchone()
        if row is None:
            raise _refusal(cur, event.shard)
        epoch, last_seq, local = row
        seq = last_seq + 1
        stamped = dataclasses.replace(event, owner_dc=local, epoch=epoch, seq=seq)
        key = event_key(stamped)
        payload = encode(stamped)
        size = len(payload) + len(key.encode())
        if size > MAX_EVENT_BYTES:
            raise EventTooLargeError(size, MAX_EVENT_BYTES)
        # One round trip; the NOTIFY is delivered at commit, once per transaction however
        # many events it adds.
        cur.execute(
            "UPDATE shard_ownership SET last_seq = %s WHERE shard = %s;"
            "INSERT INTO outbox (shard, epoch, seq, event_type, event_key, payload)"
            " VALUES (%s, %s, %s, %s, %s, %s);"
            f"NOTIFY {OUTBOX_CHANNEL}",
            (seq, event.shard, event.shard, epoch, seq, type(event).__name__, key, payload),
        )
    return Published(event.shard, epoch, seq, stamped)


def _refusal(cur: psycopg2.extensions.cursor, shard: int) -> PipelineError:
    """Why this DC may not write ``shard``: another DC owns it, or it is read-only here."""
    cur.execute(
        "SELECT o.owner_dc, l.name, o.writable FROM shard_ownership o, local_dc l"
        " WHERE o.shard = %s",
        (shard,),
    )
    found = cur.fetchone()
    if found is None:
        return PipelineError(f"shard {shard} is not in this DC's shard_ownership table")
    owner, local, writable = found
    if owner != local:
        return NotOwnerError(shard, owner, local)
    if writable:
        return ShardNotWritableError(
            shard, owner, "its lease has ended: this DC cannot hear a majority of DCs"
        )
    return ShardNotWritableError(shard, owner)
