"""Per-shard ordering checks: which events to apply, which are fenced, where seqs jumped.

Pure logic over the shard's replication state, so it is unit-tested without a database.
``(epoch, seq)`` is compared lexicographically; seq restarts at 1 in every epoch and grows
by one per event. For each event, in the order it was read:

- epoch older than the shard's current epoch: applied if a claim recorded a **cut** for that
  epoch (the last seq of it the new owner applied, ``docs/ownership.md``) and the seq is at
  most the cut, the old owner's **tail** that this replica may see after the new owner's first
  events; otherwise **fenced** (counted, never applied);
- same epoch, seq inside a gap still open in that epoch: a **late** event, applied (the
  upsert's ``(epoch, seq)`` guard keeps any newer row) and the gap narrowed;
- same epoch, any other seq not above the last applied: **duplicate** (already applied);
- same epoch, seq above last + 1: a **gap** is recorded and kept open, then the event is
  applied;
- newer epoch (or a shard seen for the first time): a gap if seq is not 1, then applied;
  gaps of the older epoch can no longer be filled (its events are fenced now).
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
    """The last position applied in a shard, and the seq ranges of its epoch still missing:
    ``(after, before)``, both exclusive."""

    source_dc: str
    epoch: int
    last_seq: int
    open_gaps: tuple[tuple[int, int], ...] = ()


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
    late: list[int] = field(default_factory=list)
    #: Events of an older epoch at or below its cut: applied.
    tail: list[int] = field(default_factory=list)
    fenced: list[int] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    states: dict[int, ShardState] = field(default_factory=dict)


def _narrow(gaps: tuple[tuple[int, int], ...], seq: int) -> tuple[tuple[int, int], ...] | None:
    """``gaps`` without ``seq``, or ``None`` when no open gap holds it."""
    for i, (after, before) in enumerate(gaps):
        if after < seq < before:
            parts = tuple(p for p in ((after, seq), (seq, before)) if p[1] - p[0] > 1)
            return gaps[:i] + parts + gaps[i + 1 :]
    return None


def check_sequence(
    states: Mapping[int, ShardState],
    events: Iterable[Position],
    cuts: Mapping[tuple[int, int], int] | None = None,
) -> SequenceCheck:
    """Classify ``events`` (in read order) against ``states``; ``result.states`` is the new
    state of every shard the batch touched. ``cuts`` maps (shard, epoch) to the last seq of
    that epoch a claim took over."""
    result = SequenceCheck(states=dict(states))
    for i, ev in enumerate(events):
        state = result.states.get(ev.shard)
        if state is not None and ev.epoch < state.epoch:
            cut = (cuts or {}).get((ev.shard, ev.epoch))
            if cut is not None and ev.seq <= cut:
                result.tail.append(i)
                result.apply.append(i)
            else:
                result.fenced.append(i)
            continue
        if state is not None and ev.epoch == state.epoch:
            if ev.seq <= state.last_seq:
                narrowed = _narrow(state.open_gaps, ev.seq)
                if narrowed is None:
                    result.duplicates.append(i)
                else:
                    result.late.append(i)
                    result.apply.append(i)
                    result.states[ev.shard] = ShardState(
                        state.source_dc, state.epoch, state.last_seq, narrowed
                    )
                continue
            expected, open_gaps = state.last_seq + 1, state.open_gaps
        else:
            expected, open_gaps = 1, ()
        if ev.seq != expected:
            result.gaps.append(Gap(ev.shard, ev.source_dc, ev.epoch, expected - 1, ev.seq))
            open_gaps = (*open_gaps, (expected - 1, ev.seq))
        result.apply.append(i)
        result.states[ev.shard] = ShardState(ev.source_dc, ev.epoch, ev.seq, open_gaps)
    return result
