"""A claim in progress, and the promises a claimant collects (``docs/ownership.md``,
"Suspicion and the claim"). No I/O; times are seconds of the local monotonic clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from controller.protocol import Promise
from pipeline.events import OwnershipChangeReason
from pipeline.ownership import Claim

__all__ = ["Claiming", "Phase", "PromiseBook", "drained"]


class Phase(enum.Enum):
    #: Applying the old owner's mirrored topic as far as it goes, within a bounded wait.
    DRAINING = "draining"
    #: Claim published; waiting for a majority of promises, then for the old lease to end.
    PROMISING = "promising"


@dataclass(slots=True)
class Claiming:
    """This DC's claim of ``shard``, taken from ``from_dc`` at ``from_epoch``."""

    shard: int
    from_dc: str
    from_epoch: int
    started_at: float
    drain_until: float
    phase: Phase = Phase.DRAINING
    #: Since when the applier has been at the end of the old owner's topic (None: not there).
    at_end_since: float | None = None
    claim: Claim | None = None
    claimed_at: float = 0.0
    #: ``MANUAL``: the operator's decision, taken over L after the claim without a majority.
    reason: OwnershipChangeReason = OwnershipChangeReason.FAILOVER


def drained(claiming: Claiming, applied: int, end: int, now: float, settle_s: float) -> bool:
    """Whether the drain of ``claiming`` is over at ``now``: the applier's next offset
    ``applied`` has stayed at the topic's ``end`` for ``settle_s``, or the wait ran out."""
    if applied >= end:
        if claiming.at_end_since is None:
            claiming.at_end_since = now
    else:
        claiming.at_end_since = None
    settled = claiming.at_end_since is not None and now - claiming.at_end_since >= settle_s
    return settled or now >= claiming.drain_until


@dataclass(slots=True)
class PromiseBook:
    """Every DC's latest promise per shard, with when it first arrived here."""

    _held: dict[tuple[str, int], tuple[float, Promise]] = field(default_factory=dict)

    def note(self, dc: str, shard: int, promise: Promise, now: float) -> None:
        held = self._held.get((dc, shard))
        if held is None or held[1].epoch != promise.epoch:
            self._held[(dc, shard)] = (now, promise)

    def of(self, shard: int, epoch: int) -> dict[str, tuple[float, Promise]]:
        """Per DC, the arrival and the promise of ``epoch`` for ``shard``."""
        return {
            dc: held
            for (dc, s), held in self._held.items()
            if s == shard and held[1].epoch == epoch
        }

    def highest(self, shard: int) -> int:
        """The highest epoch any DC promised for ``shard`` (0: none)."""
        return max((p.epoch for (_, s), (_, p) in self._held.items() if s == shard), default=0)
