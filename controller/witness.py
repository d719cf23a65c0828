"""A witness's ownership state (``docs/ownership.md``, "State per DC"): a witness has a broker
and a controller, no database and no shards. It keeps in memory what a data DC keeps in its
database, and its promises survive a restart in its own heartbeats: each heartbeat carries
every promise, and a new controller recovers them from the latest one in its local
``coopr.heartbeat`` before it sends anything.

A promise counts once a heartbeat carrying it is in Kafka (``acks=all``): one made in memory
and lost in a crash before any heartbeat carried it was never announced, so nobody relied on
it. One witness controller runs per witness DC (no lock to stand by on).
"""

from __future__ import annotations

from collections.abc import Iterable

from controller.ledger import Request
from controller.protocol import Promise
from pipeline.ownership import INITIAL_EPOCH, Claim, ShardOwner
from pipeline.topology import Topology

__all__ = ["WitnessStore"]


class WitnessStore:
    """An :class:`~controller.ledger.OwnershipStore` in memory, for witness ``dc``."""

    def __init__(self, dc: str, topology: Topology):
        self.dc = dc
        self._owners = {
            s: ShardOwner(s, topology.initial_owner(s), INITIAL_EPOCH, False, False)
            for s in range(topology.shard_count)
        }
        self._promises: dict[int, Promise] = {}
        self._claims: dict[int, Claim] = {}

    def recover(self, promises: Iterable[tuple[int, Promise]]) -> None:
        """Take back the promises of this witness's latest heartbeat."""
        for shard, promise in promises:
            self.promise(shard, promise.epoch, promise.heard_owner)

    def try_lock(self) -> bool:
        return True

    def ownership(self) -> dict[int, ShardOwner]:
        return dict(self._owners)

    def promises(self) -> dict[int, Promise]:
        return dict(self._promises)

    def claims(self) -> dict[int, Claim]:
        return dict(self._claims)

    def end_static_leases(self) -> int:
        return 0  # a witness owns nothing

    def exclusions(self) -> set[str]:
        return set()  # nobody asks a witness for a manual failover: it has no database

    def end_exclusion(self, dc: str) -> None:
        return None

    def open_requests(self) -> list[Request]:
        return []

    def promise(self, shard: int, epoch: int, heard_owner: bool) -> bool:
        held = self._promises.get(shard)
        if held is not None and held.epoch >= epoch:
            return False
        self._promises[shard] = Promise(epoch, heard_owner)
        return True

    def see_claim(self, claim: Claim) -> bool:
        held = self._claims.get(claim.shard)
        if held is not None and held.epoch >= claim.epoch:
            return False
        self._claims[claim.shard] = claim
        owner = self._owners[claim.shard]
        if owner.epoch < claim.epoch:
            self._owners[claim.shard] = ShardOwner(
                claim.shard, claim.to_dc, claim.epoch, False, False
            )
        return True
