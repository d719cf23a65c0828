"""Routing: which DC owns a cluster's shard, and where to send a write for it.

The answer comes from the local database's ``shard_ownership`` table, which the controller
keeps current in every DC. It is cached; the router LISTENs on ``coopr_ownership`` and reloads
the table as soon as a change is committed (checked, without blocking, on every lookup), and
:meth:`ShardRouter.invalidate` forces a reload after a write was refused as not-owner.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg2.extensions

from pipeline.db import connect
from pipeline.ownership import OWNERSHIP_CHANNEL, ShardOwner, read_ownership
from pipeline.shards import shard_of
from pipeline.topology import DataCenter, Topology

__all__ = ["Route", "ShardRouter"]


@dataclass(frozen=True, slots=True)
class Route:
    """Where a write for a cluster goes: its shard, the owner DC (with its endpoints), epoch."""

    cluster_id: str
    shard: int
    owner: DataCenter
    epoch: int
    local: bool


class ShardRouter:
    """Routes cluster IDs to their shard's owner DC, as DC ``local_dc`` sees ownership.

    Not thread-safe: give each thread its own router (each holds one database connection).
    """

    def __init__(self, topology: Topology, local_dc: str):
        self._topology = topology
        self._local = topology.dc(local_dc)
        self._conn: psycopg2.extensions.connection = connect(self._local.database)
        self._conn.autocommit = True
        with self._conn.cursor() as cur:
            cur.execute(f"LISTEN {OWNERSHIP_CHANNEL}")
        self._owners: dict[int, ShardOwner] = read_ownership(self._conn)

    def route(self, cluster_id: str) -> Route:
        """The owner of ``cluster_id``'s shard, as of the latest committed ownership."""
        self._conn.poll()
        if self._conn.notifies:
            self._conn.notifies.clear()
            self.invalidate()
        shard = shard_of(cluster_id, self._topology.shard_count)
        owner = self._owners[shard]
        return Route(
            cluster_id=cluster_id,
            shard=shard,
            owner=self._topology.dc(owner.owner_dc),
            epoch=owner.epoch,
            local=owner.owner_dc == self._local.name,
        )

    def invalidate(self) -> None:
        """Reload ownership from the database now."""
        self._owners = read_ownership(self._conn)

    def close(self) -> None:
        self._conn.close()
