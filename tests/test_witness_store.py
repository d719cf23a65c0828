"""A witness's ownership state in memory: promises only grow, claims only move forward."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from controller.protocol import Promise
from controller.witness import WitnessStore
from pipeline.events import OwnershipChangeReason
from pipeline.ownership import Claim
from pipeline.topology import parse_topology

TOPOLOGY = parse_topology(
    {
        "shard_count": 4,
        "replicas": 1,
        "dc": [
            {"name": "dc1", "kafka": "127.0.0.1:9001", "database": "postgresql:///a"},
            {"name": "dc2", "kafka": "127.0.0.1:9002", "database": "postgresql:///b"},
            {"name": "dc3", "kafka": "127.0.0.1:9003", "witness": True},
        ],
    }
)


def claim(shard: int, epoch: int, to_dc: str) -> Claim:
    return Claim(
        shard,
        epoch,
        "dc1",
        1,
        to_dc,
        0,
        OwnershipChangeReason.FAILOVER,
        str(uuid.uuid4()),
        datetime.now(UTC),
    )


def test_a_witness_needs_no_database_and_owns_nothing() -> None:
    assert TOPOLOGY.dc("dc3").witness and TOPOLOGY.dc("dc3").database == ""
    store = WitnessStore("dc3", TOPOLOGY)
    assert {o.owner_dc for o in store.ownership().values()} == {"dc1", "dc2"}
    assert not any(o.writable or o.leased for o in store.ownership().values())


def test_promises_only_grow_and_come_back_from_a_heartbeat() -> None:
    store = WitnessStore("dc3", TOPOLOGY)
    assert store.promise(0, 65, True)
    assert not store.promise(0, 65, False) and not store.promise(0, 64, True)
    again = WitnessStore("dc3", TOPOLOGY)
    again.recover(store.promises().items())
    assert again.promises() == {0: Promise(65, True)}


def test_a_higher_claim_moves_the_owner_and_a_lower_one_changes_nothing() -> None:
    store = WitnessStore("dc3", TOPOLOGY)
    assert store.see_claim(claim(0, 65, "dc2"))
    assert not store.see_claim(claim(0, 65, "dc2"))
    assert not store.see_claim(claim(0, 64, "dc1"))
    owner = store.ownership()[0]
    assert (owner.owner_dc, owner.epoch) == ("dc2", 65)
    assert store.claims()[0].epoch == 65
