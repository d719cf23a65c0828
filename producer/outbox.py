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
from pipeline.errors import NotOwnerError, PipelineError, ShardNotWritableError
from pipeline.events import OperationCompleted, RestartCheckpoint

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
    owns it but it is read-only. Nothing is committed here: the caller commits or rolls back.
    """
    if conn.autocommit:
        raise PipelineError("publish needs the caller's open transaction (autocommit is on)")
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE shard_ownership o SET last_seq = o.last_seq + 1"
            " FROM local_dc l"
            " WHERE o.shard = %s AND o.owner_dc = l.name AND o.writable"
            " RETURNING o.epoch, o.last_seq, l.name",
            (event.shard,),
        )
        row = cur.fetchone()
        if row is None:
            cur.execute(
                "SELECT o.owner_dc, l.name FROM shard_ownership o, local_dc l WHERE o.shard = %s",
                (event.shard,),
            )
            found = cur.fetchone()
            if found is None:
                raise PipelineError(
                    f"shard {event.shard} is not in this DC's shard_ownership table"
                )
            owner, local = found
            if owner == local:
                raise ShardNotWritableError(event.shard, owner)
            raise NotOwnerError(event.shard, owner, local)
        epoch, seq, local = row
        stamped = dataclasses.replace(event, owner_dc=local, epoch=epoch, seq=seq)
        cur.execute(
            "INSERT INTO outbox (shard, epoch, seq, event_type, event_key, payload)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (event.shard, epoch, seq, type(event).__name__, event_key(event), encode(stamped)),
        )
        # Delivered at commit, once per transaction however many events it adds.
        cur.execute(f"NOTIFY {OUTBOX_CHANNEL}")
    return Published(event.shard, epoch, seq, stamped)
