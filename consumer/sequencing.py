"""Per-shard ordering checks: which events to apply, which are fenced, where seqs jumped.

Pure logic over the shard's replication state, so it is unit-tested without a database.
``(epoch, seq)`` is compared lexicographically; seq restarts at 1 in every epoch and grows
by one per event. For each event, in the order it was read:

- epoch older than the shard's current epoch: **fenced** (counted, never applied);
- same epoch, seq not above the last applied: **duplicate** (a replay; already applied);
- same epoch, seq above last + 1: a **gap** is recorded, then the event is applied;
- newer epoch (or a shard seen for the first time): a gap if seq is not 1, then applied.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["Gap", "Position", "SequenceCheck", "ShardState", "check_sequence"]


@dataclass(frozen=True, slots=True)
class Position:
    """Where an event sits in its shard: ``(epoch, seq)`` from DC ``source_dc``."""

    shard: int
    source_dc: str
    epoch: int
    seq: int


@dataclass(frozen=True, slots=True)
class ShardState:
    """The last position applied in a shard."""

    source_dc: str
    epoch: int
    last_seq: int


@dataclass(frozen=True, slots=True)
class Gap:
    """Seqs strictly between ``after_seq`` and ``before_seq`` never arrived."""

    shard: int
    source_dc: str
    epoch: int
    after_seq: int
    before_seq: int


@dataclass(slots=True)
class SequenceCheck:
    """The outcome for a batch: indexes of events to apply, and what was wrong."""

    apply: list[int] = field(default_factory=list)
    fenced: list[int] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    states: dict[int, ShardState] = field(default_factory=dict)


def check_sequence(states: Mapping[int, ShardState], events: Iterable[Position]) -> SequenceCheck:
    """Classify ``events`` (in read order) against ``states``; ``result.states`` is the new
    state of every shard the batch touched."""
    result = SequenceCheck(states=dict(states))
    for i, ev in enumerate(events):
        state = result.states.get(ev.shard)
        if state is not None and ev.epoch < state.epoch:
            result.fenced.append(i)
            continue
        if state is not None and ev.epoch == state.epoch:
            if ev.seq <= state.last_seq:
                result.duplicates.append(i)
                continue
            expected = state.last_seq + 1
        else:
            expected = 1
        if ev.seq != expected:
            result.gaps.append(Gap(ev.shard, ev.source_dc, ev.epoch, expected - 1, ev.seq))
        result.apply.append(i)
        result.states[ev.shard] = ShardState(ev.source_dc, ev.epoch, ev.seq)
    return result
