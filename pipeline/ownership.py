"""Shard ownership as one DC's database records it (tables ``shard_ownership`` and
``ownership_claims``, ``docs/ownership.md``).

Seeded from the topology when the database is migrated: every shard at epoch 1, owned by its
initial owner, writable only in the owner's own database, with an endless lease (static
ownership). A controller changes it later: it turns leases finite and renews them, records
the claims it sees, and takes shards over.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import psycopg2.extensions
from psycopg2.extras import execute_values

from pipeline.events import OwnershipChange, OwnershipChangeReason
from pipeline.topology import Topology

__all__ = [
    "INITIAL_EPOCH",
    "OWNERSHIP_CHANNEL",
    "Claim",
    "ShardOwner",
    "read_claims",
    "read_ownership",
    "record_claim",
    "seed_ownership",
]

INITIAL_EPOCH = 1
#: NOTIFY channel (payload: the shard) when a shard's owner, epoch or writability changes.
OWNERSHIP_CHANNEL = "coopr_ownership"


@dataclass(frozen=True, slots=True)
class ShardOwner:
    """Who owns ``shard`` at ``epoch``; ``writable``: not made read-only (a handover, or this
    DC is not the owner); ``leased``: the owner's lease runs now (always true under static
    ownership). This DC may write the shard when it is the owner, writable and leased."""

    shard: int
    owner_dc: str
    epoch: int
    writable: bool
    leased: bool = True


@dataclass(frozen=True, slots=True)
class Claim:
    """A claim of ``shard`` at ``epoch`` by ``to_dc``, taking it from ``from_dc`` at
    ``from_epoch``. ``cut``: the last seq of ``from_epoch`` the new owner applied (0: none);
    replicas apply ``from_epoch`` up to it and fence the rest."""

    shard: int
    epoch: int
    from_dc: str
    from_epoch: int
    to_dc: str
    cut: int
    reason: OwnershipChangeReason
    event_id: str
    claimed_at: datetime

    @classmethod
    def of(cls, change: OwnershipChange) -> Claim:
        """The claim an :class:`OwnershipChange` announces."""
        return cls(
            change.shard,
            change.epoch,
            change.from_dc,
            change.from_epoch,
            change.to_dc,
            change.last_applied_seq or 0,
            change.reason,
            change.event_id,
            change.occurred_at,
        )

    def event(self) -> OwnershipChange:
        """The :class:`OwnershipChange` that announces this claim."""
        return OwnershipChange(
            event_id=self.event_id,
            occurred_at=self.claimed_at,
            shard=self.shard,
            from_dc=self.from_dc,
            to_dc=self.to_dc,
            from_epoch=self.from_epoch,
            epoch=self.epoch,
            reason=self.reason,
            last_applied_seq=self.cut,
        )


def seed_ownership(conn: psycopg2.extensions.connection, topology: Topology, dc: str) -> int:
    """Insert the initial owner of every shard that has no row yet; returns how many it added."""
    rows = [
        (s, owner, INITIAL_EPOCH, owner == dc)
        for s in range(topology.shard_count)
        for owner in [topology.initial_owner(s)]
    ]
    with conn, conn.cursor() as cur:
        execute_values(
            cur,
            "INSERT INTO shard_ownership (shard, owner_dc, epoch, writable) VALUES %s"
            " ON CONFLICT (shard) DO NOTHING",
            rows,
        )
        return cur.rowcount


def read_ownership(conn: psycopg2.extensions.connection) -> dict[int, ShardOwner]:
    """Every shard's owner as this database has it (read in the connection's transaction)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT shard, owner_dc, epoch, writable, lease_until > clock_timestamp()"
            " FROM shard_ownership ORDER BY shard"
        )
        return {row[0]: ShardOwner(*row) for row in cur.fetchall()}


_CLAIM_COLUMNS = "shard, epoch, from_dc, from_epoch, to_dc, cut, reason, event_id, claimed_at"


def record_claim(cur: psycopg2.extensions.cursor, claim: Claim) -> bool:
    """Add ``claim`` to ``ownership_claims`` in the cursor's transaction; False when it was
    there already (a mirror may deliver a claim twice)."""
    cur.execute(
        f"INSERT INTO ownership_claims ({_CLAIM_COLUMNS})"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (shard, epoch) DO NOTHING",
        (
            claim.shard,
            claim.epoch,
            claim.from_dc,
            claim.from_epoch,
            claim.to_dc,
            claim.cut,
            claim.reason.value,
            claim.event_id,
            claim.claimed_at,
        ),
    )
    return bool(cur.rowcount)


def read_claims(
    cur: psycopg2.extensions.cursor, shards: Iterable[int] | None = None
) -> list[Claim]:
    """The claims this DC has seen, of ``shards`` (default: all), by shard then epoch."""
    wanted = None if shards is None else sorted(set(shards))
    cur.execute(
        f"SELECT {_CLAIM_COLUMNS} FROM ownership_claims"
        " WHERE %(all)s OR shard = ANY(%(shards)s) ORDER BY shard, epoch",
        {"all": wanted is None, "shards": wanted or []},
    )
    return [
        Claim(s, e, fdc, fe, tdc, cut, OwnershipChangeReason(reason), eid, at)
        for s, e, fdc, fe, tdc, cut, reason, eid, at in cur.fetchall()
    ]
