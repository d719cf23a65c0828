"""The ownership protocol's decisions (``docs/ownership.md``), as pure functions of what one DC
knows: no I/O, no clock of its own. The controller feeds them the heartbeats and claims it
received and the times of its monotonic clock, and acts on the answers.

Times are seconds of the deciding DC's monotonic clock; no two DCs' times are ever compared.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pipeline.ownership import INITIAL_EPOCH
from pipeline.topology import Topology

__all__ = [
    "EPOCH_STRIDE",
    "PeerView",
    "Promise",
    "claim_epoch",
    "claimant",
    "heard",
    "lease_end",
    "majority",
    "next_epoch",
    "owner_ready_at",
    "round_of",
    "suspected_by_majority",
]

#: Epochs of claims are ``EPOCH_STRIDE * round + dc_index``: unique to the claiming DC.
EPOCH_STRIDE = 64


def majority(dc_count: int) -> int:
    """How many DCs, of ``dc_count`` (data DCs and witnesses), are a majority."""
    return dc_count // 2 + 1


def claim_epoch(round_: int, dc_index: int) -> int:
    """The epoch of a claim in ``round_`` (at least 1) by the DC at ``dc_index`` of the
    topology. Never equal for two DCs, never the initial epoch."""
    if round_ < 1 or not 0 <= dc_index < EPOCH_STRIDE:
        raise ValueError(f"no claim epoch for round {round_} and DC index {dc_index}")
    return EPOCH_STRIDE * round_ + dc_index


def round_of(epoch: int) -> int:
    """The round of an epoch; the initial epoch is round 0."""
    return 0 if epoch == INITIAL_EPOCH else epoch // EPOCH_STRIDE


def next_epoch(seen: Iterable[int], dc_index: int) -> int:
    """A claim epoch of ``dc_index`` in a round above every epoch in ``seen``."""
    return claim_epoch(max((round_of(e) for e in seen), default=0) + 1, dc_index)


@dataclass(frozen=True, slots=True)
class Promise:
    """A DC's promise for a shard: the highest epoch it will support, and whether it had heard
    the shard's owner within the failure timeout when it promised."""

    epoch: int
    heard_owner: bool


@dataclass(frozen=True, slots=True)
class PeerView:
    """Another DC's latest heartbeat as this DC received it.

    ``arrived_at``: when it arrived here (this DC's clock). ``echoes``: for each DC, the number
    of the latest heartbeat of that DC the peer had received. ``hears``: the DCs the peer
    heard within the failure timeout, itself included. ``fenced``: the peer hears fewer than a
    majority."""

    dc: str
    arrived_at: float
    echoes: Mapping[str, int] = field(default_factory=dict)
    hears: frozenset[str] = frozenset()
    promises: Mapping[int, Promise] = field(default_factory=dict)
    fenced: bool = False


def heard(peers: Mapping[str, PeerView], now: float, timeout_s: float) -> frozenset[str]:
    """The DCs whose latest heartbeat arrived within ``timeout_s`` before ``now``."""
    return frozenset(dc for dc, view in peers.items() if now - view.arrived_at <= timeout_s)


def suspected_by_majority(
    suspect: str,
    me: str,
    peers: Mapping[str, PeerView],
    now: float,
    timeout_s: float,
    dc_count: int,
) -> bool:
    """True when a majority of all DCs suspects ``suspect``, as far as DC ``me`` can tell.

    A DC suspects X when it has not heard X for the timeout, or when X's own latest heartbeat
    says X is fenced. ``me`` counts with its own view; another DC counts only with a view it
    sent within the timeout (an older one may have changed since)."""
    fresh = heard(peers, now, timeout_s)
    fenced = suspect in fresh and peers[suspect].fenced
    votes = 1 if fenced or suspect not in fresh else 0
    for dc in fresh - {me, suspect}:
        if fenced or suspect not in peers[dc].hears:
            votes += 1
    if fenced:
        votes += 1  # the suspect itself says it cannot hear a majority
    return votes >= majority(dc_count)


def claimant(topology: Topology, shard: int, owner: str, suspected: Iterable[str]) -> str | None:
    """The DC that claims ``shard`` from ``owner``: the first of the shard's replica list,
    then its initial owner (a DC that came back after a failover), that is neither the owner
    nor suspected (``None`` when there is none)."""
    out = {owner, *suspected}
    order = (*topology.replica_list(shard), topology.initial_owner(shard))
    return next((dc for dc in order if dc not in out), None)


def lease_end(
    shard: int,
    epoch: int,
    owner: str,
    peers: Mapping[str, PeerView],
    sent_at: Mapping[int, float],
    dc_count: int,
    lease_s: float,
) -> float | None:
    """When the owner's lease on (``shard``, ``epoch``) ends, on the owner's clock, or ``None``
    when a majority does not support it.

    A peer supports the lease while its latest heartbeat echoes a heartbeat number of the owner
    (sent at ``sent_at[number]``) and promises no epoch above ``epoch``; the support ends
    ``lease_s`` after that heartbeat was sent. The owner supports itself. The lease ends when
    fewer than a majority, the owner included, still support it."""
    supports = []
    for dc, view in peers.items():
        if dc == owner:
            continue
        number = view.echoes.get(owner)
        if number is None or number not in sent_at:
            continue  # an echo of a heartbeat this instance did not send proves nothing
        promise = view.promises.get(shard)
        if promise is not None and promise.epoch > epoch:
            continue
        supports.append(sent_at[number] + lease_s)
    needed = majority(dc_count) - 1
    if needed == 0:
        raise ValueError("a lease needs at least two DCs")
    if len(supports) < needed:
        return None
    return sorted(supports, reverse=True)[needed - 1]


def owner_ready_at(
    epoch: int,
    old_owner: str,
    promises: Mapping[str, tuple[float, Promise]],
    dc_count: int,
    lease_s: float,
) -> float | None:
    """When the claimant of ``epoch`` may act as owner, on its clock, or ``None`` while fewer
    than a majority promised it.

    ``promises``: per DC, when its promise arrived here and the promise (the claimant's own
    included). A promiser counts from the moment its promise arrived if it had not heard the
    old owner within the timeout, else ``lease_s`` later (an echo it sent just before promising
    may carry the old owner's lease that long). The owner is ready when a majority counts. If
    the old owner promised, its own lease ended then: no promiser needs the wait."""
    promised = {dc: (at, p) for dc, (at, p) in promises.items() if p.epoch == epoch}
    needed = majority(dc_count)
    if len(promised) < needed:
        return None
    released = old_owner in promised
    counts_from = sorted(
        at + (lease_s if p.heard_owner and not released else 0.0) for at, p in promised.values()
    )
    return counts_from[needed - 1]
