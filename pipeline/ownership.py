"""Shard ownership as one DC's database records it (table ``shard_ownership``).

Seeded from the topology when the database is migrated: every shard at epoch 1, owned by its
initial owner, writable only in the owner's own database. The controller changes it later.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg2.extensions
from psycopg2.extras import execute_values

from pipeline.topology import Topology

__all__ = [
    "INITIAL_EPOCH",
    "OWNERSHIP_CHANNEL",
    "ShardOwner",
    "read_ownership",
    "seed_ownership",
]

INITIAL_EPOCH = 1
#: NOTIFY channel (payload: the shard) when a shard's owner, epoch or writability changes.
OWNERSHIP_CHANNEL = "coopr_ownership"


@dataclass(frozen=True, slots=True)
class ShardOwner:
    """Who owns ``shard`` at ``epoch``, and whether this DC may write it now."""

    shard: int
    owner_dc: str
    epoch: int
    writable: bool


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
        cur.execute("SELECT shard, owner_dc, epoch, writable FROM shard_ownership ORDER BY shard")
        return {row[0]: ShardOwner(*row) for row in cur.fetchall()}
