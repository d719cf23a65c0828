"""The controller: failure detection, claims, leases and takeover of shard ownership
(``docs/ownership.md``)."""

from controller.protocol import (
    PeerView,
    Promise,
    claim_epoch,
    claimant,
    lease_end,
    majority,
    next_epoch,
    owner_ready_at,
    suspected_by_majority,
)

__all__ = [
    "PeerView",
    "Promise",
    "claim_epoch",
    "claimant",
    "lease_end",
    "majority",
    "next_epoch",
    "owner_ready_at",
    "suspected_by_majority",
]
