"""Per-shard ordering: fenced, waiting, duplicate, gap and apply decisions."""

from __future__ import annotations

from consumer.sequencing import Gap, Position, ShardState, check_sequence


def pos(seq: int, epoch: int = 1, shard: int = 3, dc: str = "dc1") -> Position:
    return Position(shard, dc, epoch, seq)


def test_in_order_events_are_all_applied() -> None:
    result = check_sequence({}, [pos(1), pos(2), pos(3)])
    assert result.apply == [0, 1, 2]
    assert not (result.gaps or result.fenced or result.duplicates)
    assert result.states[3] == ShardState("dc1", 1, 3, ())


def test_replayed_events_are_duplicates() -> None:
    result = check_sequence({3: ShardState("dc1", 1, 5)}, [pos(4), pos(5), pos(6)])
    assert result.duplicates == [0, 1]
    assert result.apply == [2]


def test_a_missing_seq_is_a_gap_and_the_event_still_applies() -> None:
    result = check_sequence({3: ShardState("dc1", 1, 5)}, [pos(6), pos(9)])
    assert result.apply == [0, 1]
    assert result.gaps == [Gap(3, "dc1", 1, 6, 9)]
    assert result.states[3].open_gaps == ((6, 9),)


def test_a_late_event_fills_its_gap_and_is_applied_once() -> None:
    state = ShardState("dc1", 1, 9, ((6, 9),))
    result = check_sequence({3: state}, [pos(8), pos(7), pos(8), pos(10)])
    assert result.late == [0, 1]
    assert result.apply == [0, 1, 3]
    assert result.duplicates == [2]
    assert result.states[3] == ShardState("dc1", 1, 10, ())


def test_a_late_event_in_the_middle_splits_the_gap() -> None:
    result = check_sequence({3: ShardState("dc1", 1, 20, ((10, 15),))}, [pos(12)])
    assert result.late == [0]
    assert result.states[3].open_gaps == ((10, 12), (12, 15))


def test_an_older_epoch_is_fenced() -> None:
    result = check_sequence(
        {3: ShardState("dc2", 2, 4)}, [pos(7, epoch=1), pos(5, epoch=2, dc="dc2")]
    )
    assert result.fenced == [0]
    assert result.apply == [1]


def test_a_new_epoch_starts_at_seq_one() -> None:
    result = check_sequence(
        {3: ShardState("dc1", 1, 40)},
        [pos(1, epoch=2, dc="dc2"), pos(3, epoch=3)],
        claimed={(3, 2), (3, 3)},
    )
    assert result.apply == [0, 1]
    assert result.gaps == [Gap(3, "dc1", 3, 0, 3)]
    assert result.states[3] == ShardState("dc1", 3, 3, ((0, 3),))


def test_gaps_of_an_older_epoch_cannot_be_filled() -> None:
    state = ShardState("dc2", 2, 4, ())
    result = check_sequence({3: state}, [pos(3, epoch=1)])
    assert result.fenced == [0] and not result.late


def test_shards_are_independent() -> None:
    result = check_sequence({}, [pos(1, shard=1), pos(1, shard=2), pos(2, shard=1)])
    assert result.apply == [0, 1, 2] and not result.gaps


def test_the_old_owners_tail_up_to_the_cut_is_applied_after_the_new_epoch() -> None:
    # The new owner (epoch 65) claimed with cut 7: it had applied epoch 1 up to seq 7. This
    # replica saw its first events before the old owner's seqs 6 and 7.
    state = {3: ShardState("dc2", 65, 2)}
    result = check_sequence(
        state, [pos(6), pos(7), pos(8), pos(3, epoch=65, dc="dc2")], cuts={(3, 1): 7}
    )
    assert result.tail == [0, 1] and result.apply == [0, 1, 3]
    assert result.fenced == [2], "beyond the cut: the old owner's orphan"
    assert result.states[3] == ShardState("dc2", 65, 3, ())


def test_without_a_cut_every_event_of_an_older_epoch_is_fenced() -> None:
    result = check_sequence({3: ShardState("dc2", 65, 2)}, [pos(1), pos(7)], cuts={(4, 1): 9})
    assert result.fenced == [0, 1] and not result.apply


def test_an_unclaimed_newer_epoch_waits_with_the_rest_of_its_stream_only() -> None:
    # dc2 claimed shard 3 at epoch 65, but this replica has not seen the claim yet.
    state = {3: ShardState("dc1", 1, 5)}
    events = [pos(1, epoch=65, dc="dc2"), pos(2, epoch=65, dc="dc2"), pos(6), pos(1, shard=4)]
    result = check_sequence(state, events)
    assert result.waiting == [0, 1]
    assert result.apply == [2, 3], "the old owner's stream and other shards go on"
    assert not (result.gaps or result.fenced)
    assert result.states[3] == ShardState("dc1", 1, 6, ())


def test_nothing_of_a_stream_passes_its_waiting_event() -> None:
    # dc1 came back as the owner at epoch 129 (a failback this replica has not seen claimed).
    # dc1's later events wait even where they would be decided now (fenced, here); dc2's
    # stream of the same shard goes on.
    state = {3: ShardState("dc2", 65, 4)}
    events = [pos(1, epoch=129), pos(9, epoch=1), pos(5, epoch=65, dc="dc2")]
    result = check_sequence(state, events)
    assert result.waiting == [0, 1]
    assert result.apply == [2] and not result.fenced
    assert result.states[3] == ShardState("dc2", 65, 5, ())


def test_the_initial_epoch_never_waits() -> None:
    fresh = {3: ShardState("dc1", 0, 0)}  # the row the store creates for a new shard
    result = check_sequence(fresh, [pos(1), pos(1, epoch=65, dc="dc2", shard=3)])
    assert result.apply == [0] and result.waiting == [1]
    assert check_sequence({}, [pos(1, shard=9)]).apply == [0]


def test_a_claimed_epoch_applies_from_seq_one_without_gaps_for_the_old_epoch() -> None:
    # The replica had applied epoch 1 up to seq 5; the claim took epoch 1 up to seq 7.
    state = {3: ShardState("dc1", 1, 5)}
    result = check_sequence(
        state, [pos(1, epoch=65, dc="dc2"), pos(2, epoch=65, dc="dc2")], {(3, 1): 7}, {(3, 65)}
    )
    assert result.apply == [0, 1] and not result.waiting
    assert result.gaps == [], "seqs 6 and 7 of epoch 1 are the tail still to come, not a gap"
    assert result.states[3] == ShardState("dc2", 65, 2, ())


def test_a_replica_that_sees_the_new_owner_first_still_applies_the_tail_up_to_the_cut() -> None:
    # Two mirror paths: this replica reads dc2's first events of epoch 65 before dc1's seqs
    # 6, 7 and 8 of epoch 1. dc2 applied epoch 1 up to seq 7 before claiming.
    state = {3: ShardState("dc1", 1, 5)}
    new = [pos(1, epoch=65, dc="dc2"), pos(2, epoch=65, dc="dc2")]
    tail = [pos(6), pos(7), pos(8)]
    before_claim = check_sequence(state, new)
    assert before_claim.waiting == [0, 1] and before_claim.states == state

    after_claim = check_sequence(state, new + tail, {(3, 1): 7}, {(3, 65)})
    assert after_claim.apply == [0, 1, 2, 3]
    assert after_claim.tail == [2, 3]
    assert after_claim.fenced == [4], "seq 8 is beyond the cut: dc1's orphan"
    assert not after_claim.gaps
    assert after_claim.states[3] == ShardState("dc2", 65, 2, ()), "the state follows dc2"


def test_beyond_the_cut_is_fenced_even_before_the_new_epoch_arrives() -> None:
    # The claim is known, the new owner's events are not here yet: the old owner's events
    # up to the cut still apply in order, the rest never.
    state = {3: ShardState("dc1", 1, 5)}
    result = check_sequence(state, [pos(6), pos(7), pos(8), pos(9)], {(3, 1): 7}, {(3, 65)})
    assert result.apply == [0, 1] and result.fenced == [2, 3]
    assert not result.gaps
    assert result.states[3] == ShardState("dc1", 1, 7, ())


def test_an_epoch_a_later_claim_took_over_counts_as_claimed() -> None:
    # Claims seen: 129 took the shard from 65 at cut 3; the claim of 65 itself was missed.
    result = check_sequence(
        {3: ShardState("dc1", 1, 5)},
        [pos(1, epoch=65, dc="dc2"), pos(4, epoch=65, dc="dc2")],
        {(3, 65): 3},
        {(3, 129)},
    )
    assert result.apply == [0] and result.fenced == [1] and not result.waiting
