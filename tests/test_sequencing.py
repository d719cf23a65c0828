"""Per-shard ordering: fenced, duplicate, gap and apply decisions."""

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
        {3: ShardState("dc1", 1, 40)}, [pos(1, epoch=2, dc="dc2"), pos(3, epoch=3)]
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
