"""Per-shard ordering checks: which events to apply, which wait, which are fenced, where seqs
jumped.

Pure logic over the shard's replication state and the claims this DC has seen, so it is
unit-tested without a database. ``(epoch, seq)`` is compared lexicographically; seq restarts
at 1 in every epoch and grows by one per event. A claim that took a shard from an epoch
recorded a **cut** for it: the last seq of that epoch the new owner applied
(``docs/ownership.md``, "Replicas and the cut"). For each event, in the order it was read:

- its stream (its shard's topic from its source DC, read in offset order) already waits in
  this batch: it **waits** too, so a stream is never applied past a waiting event;
- its epoch has a cut and its seq is above it: **fenced** (counted, never applied), the old
  owner's orphan, whatever the shard's current epoch;
- epoch older than the shard's current epoch: applied if a cut exists for that epoch (the seq
  is at most the cut: the old owner's **tail**, which this replica may see after the new
  owner's first events); otherwise fenced;
- epoch newer than the shard's current one (or a shard seen for the first time), other than
  the initial epoch, whose claim this DC has not seen: it **waits** (not applied, read again
  later); the claim is published before the new owner writes, so it comes soon;
- same epoch, seq inside a gap still open in that epoch: a **late** event, applied (the
  upsert's ``(epoch, seq)`` guard keeps any newer row) and the gap narrowed;
- same epoch, any other seq not above the last applied: **duplicate** (already applied);
- same epoch, seq above last + 1: a **gap** is recorded and kept open, then the event is
  applied;
- newer epoch (claimed, or the initial one): a gap if seq is not 1, then applied; gaps of the
  older epoch can no longer be filled and none is recorded for the seqs of it not seen yet
  (they come as the tail, or they are orphans).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from pipeline.ownership import INITIAL_EPOCH

__all__ = [
    "Gap",
    "Position",
    "ReplayCheck",
    "SequenceCheck",
    "ShardState",
    "check_replay",
    "check_sequence",
]


@dataclass(frozen=True, slots=True)
class Position:
    """Where an event sits in its shard: ``(epoch, seq)`` from DC ``source_dc``. The events of
    one ``(shard, source_dc)`` come from one mirrored topic, in its order: a **stream**."""

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
    #: Events not applied until a claim is seen: the first one of a newer, unclaimed epoch in
    #: its stream and every later event of that stream, in read order.
    waiting: list[int] = field(default_factory=list)
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
    claimed: Collection[tuple[int, int]] = (),
) -> SequenceCheck:
    """Classify ``events`` (in read order) against ``states``; ``result.states`` is the new
    state of every shard the batch touched (waiting events change nothing).

    ``cuts`` maps (shard, epoch) to the last seq of that epoch a claim took over; ``claimed``
    holds the (shard, epoch) of every claim seen. An epoch with a cut was claimed too (a claim
    took the shard from it), so its events never wait."""
    cuts = cuts or {}
    known = {*claimed, *cuts}
    held: set[tuple[int, str]] = set()
    result = SequenceCheck(states=dict(states))
    for i, ev in enumerate(events):
        stream = (ev.shard, ev.source_dc)
        if stream in held:
            result.waiting.append(i)
            continue
        state = result.states.get(ev.shard)
        if _superseded(result, i, ev, state, cuts.get((ev.shard, ev.epoch))):
            continue
        if state is not None and ev.epoch == state.epoch:
            if ev.seq <= state.last_seq:
                _replayed(result, i, ev, state)
                continue
            expected, open_gaps = state.last_seq + 1, state.open_gaps
        elif ev.epoch != INITIAL_EPOCH and (ev.shard, ev.epoch) not in known:
            held.add(stream)
            result.waiting.append(i)
            continue
        else:
            expected, open_gaps = 1, ()
        if ev.seq != expected:
            result.gaps.append(Gap(ev.shard, ev.source_dc, ev.epoch, expected - 1, ev.seq))
            open_gaps = (*open_gaps, (expected - 1, ev.seq))
        result.apply.append(i)
        result.states[ev.shard] = ShardState(ev.source_dc, ev.epoch, ev.seq, open_gaps)
    return result


def _superseded(
    result: SequenceCheck, i: int, ev: Position, state: ShardState | None, cut: int | None
) -> bool:
    """Record event ``i`` as fenced (beyond its epoch's ``cut``, or of an older epoch without
    one) or as tail (an older epoch, up to its cut); False when neither applies."""
    if cut is not None and ev.seq > cut:
        result.fenced.append(i)
        return True
    if state is None or ev.epoch >= state.epoch:
        return False
    if cut is None:
        result.fenced.append(i)
    else:
        result.tail.append(i)
        result.apply.append(i)
    return True


def _replayed(result: SequenceCheck, i: int, ev: Position, state: ShardState) -> None:
    """Record event ``i``, of the shard's epoch and not above its last seq, as late (into an
    open gap, which narrows) or as a duplicate."""
    narrowed = _narrow(state.open_gaps, ev.seq)
    if narrowed is None:
        result.duplicates.append(i)
        return
    result.late.append(i)
    result.apply.append(i)
    result.states[ev.shard] = ShardState(state.source_dc, state.epoch, state.last_seq, narrowed)


@dataclass(slots=True)
class ReplayCheck:
    """The outcome of :func:`check_replay`: indexes of events per verdict."""

    #: Events whose rows a replay may write (under the row guard).
    candidates: list[int] = field(default_factory=list)
    fenced: list[int] = field(default_factory=list)
    #: Events of an epoch newer than the shard's: not applied by the applier yet.
    ahead: list[int] = field(default_factory=list)


def check_replay(
    state: ShardState | None,
    events: Iterable[Position],
    cuts: Mapping[tuple[int, int], int] | None = None,
) -> ReplayCheck:
    """Classify events of one shard that the applier has already passed, for a replay
    (``docs/replay.md``): the fence is the applier's (a cut below the seq, or an older epoch
    that no claim cut), the sequence is not (a replayed event is not a duplicate: the row
    guard decides). ``state`` is the shard's current state, ``None`` if never applied."""
    cuts = cuts or {}
    verdicts = SequenceCheck()
    result = ReplayCheck()
    for i, ev in enumerate(events):
        if _superseded(verdicts, i, ev, state, cuts.get((ev.shard, ev.epoch))):
            continue
        if state is None or ev.epoch > state.epoch:
            result.ahead.append(i)
        else:
            result.candidates.append(i)
    result.fenced = verdicts.fenced
    result.candidates = sorted(verdicts.tail + result.candidates)
    return result
