"""The ownership protocol's decisions (docs/ownership.md), without I/O: epochs, leases,
suspicion, the claimant, when a claimant becomes the owner, and that an old owner's lease is
always over by then."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.protocol import (
    EPOCH_STRIDE,
    PeerView,
    Promise,
    claim_epoch,
    claimant,
    lease_end,
    majority,
    next_epoch,
    owner_ready_at,
    round_of,
    suspected_by_majority,
)
from pipeline.ownership import INITIAL_EPOCH
from pipeline.topology import Topology, parse_topology

T, L = 10.0, 5.0


def topology(dcs: int, replicas: int = 2) -> Topology:
    return parse_topology(
        {
            "shard_count": 6,
            "replicas": replicas,
            "dc": [
                {
                    "name": f"dc{i + 1}",
                    "kafka": f"127.0.0.1:{19090 + 10 * i}",
                    "database": f"postgresql://postgres@127.0.0.1:{19095 + 10 * i}/coopr",
                }
                for i in range(dcs)
            ],
        }
    )


def test_majorities() -> None:
    assert [majority(n) for n in range(1, 8)] == [1, 2, 2, 3, 3, 4, 4]


def test_claim_epochs_never_tie_and_never_equal_the_initial_epoch() -> None:
    epochs = [claim_epoch(r, i) for r, i in itertools.product(range(1, 20), range(EPOCH_STRIDE))]
    assert len(set(epochs)) == len(epochs)
    assert INITIAL_EPOCH not in epochs and min(epochs) > INITIAL_EPOCH
    assert round_of(INITIAL_EPOCH) == 0 and round_of(claim_epoch(7, 3)) == 7
    with pytest.raises(ValueError):
        claim_epoch(0, 1)
    with pytest.raises(ValueError):
        claim_epoch(1, EPOCH_STRIDE)


def test_a_new_claim_outranks_every_epoch_seen_whoever_made_it() -> None:
    seen = [INITIAL_EPOCH, claim_epoch(3, 5), claim_epoch(2, 63)]
    for index in (0, 5, 63):
        epoch = next_epoch(seen, index)
        assert epoch > max(seen) and epoch % EPOCH_STRIDE == index
    assert next_epoch([], 2) == claim_epoch(1, 2)


def echoing(dc: str, owner: str, number: int, promise: int | None = None) -> PeerView:
    promises = {0: Promise(promise, True)} if promise is not None else {}
    return PeerView(dc, arrived_at=0.0, echoes={owner: number}, promises=promises)


def test_a_lease_rests_on_the_freshest_echoes_of_a_majority() -> None:
    sent = {1: 100.0, 2: 101.0, 3: 102.0}
    three = {"b": echoing("b", "a", 1), "c": echoing("c", "a", 3)}
    # Three DCs: the owner and one peer are a majority; the freshest echo counts.
    assert lease_end(0, 64, "a", three, sent, 3, L) == 107.0
    five = {**three, "d": echoing("d", "a", 2), "e": echoing("e", "a", 1)}
    # Five DCs: the owner and two peers: the second freshest.
    assert lease_end(0, 64, "a", five, sent, 5, L) == 106.0


def test_no_lease_without_a_majority_or_from_echoes_this_instance_never_sent() -> None:
    sent = {5: 10.0}
    assert lease_end(0, 64, "a", {"b": echoing("b", "a", 99)}, sent, 3, L) is None
    assert lease_end(0, 64, "a", {}, sent, 3, L) is None
    assert lease_end(0, 64, "a", {"b": echoing("b", "a", 5)}, sent, 5, L) is None


def test_a_peer_that_promised_a_higher_epoch_supports_the_lease_no_more() -> None:
    sent = {1: 0.0}
    assert lease_end(0, 64, "a", {"b": echoing("b", "a", 1, promise=64)}, sent, 3, L) == L
    assert lease_end(0, 64, "a", {"b": echoing("b", "a", 1, promise=129)}, sent, 3, L) is None


def view(dc: str, at: float, hears: set[str], fenced: bool = False) -> PeerView:
    return PeerView(dc, arrived_at=at, hears=frozenset(hears), fenced=fenced)


def test_a_dc_is_failed_over_only_when_a_majority_suspects_it() -> None:
    now = 100.0
    # dc1 is silent for dc2 (me), but dc3 still hears it: one of three suspects it.
    peers = {"dc1": view("dc1", 80.0, {"dc1"}), "dc3": view("dc3", 99.0, {"dc1", "dc2", "dc3"})}
    assert not suspected_by_majority("dc1", "dc2", peers, now, T, 3)
    peers["dc3"] = view("dc3", 99.0, {"dc2", "dc3"})
    assert suspected_by_majority("dc1", "dc2", peers, now, T, 3)
    # A stale view of dc3 does not count: it may have heard dc1 since.
    peers["dc3"] = view("dc3", 85.0, {"dc2", "dc3"})
    assert not suspected_by_majority("dc1", "dc2", peers, now, T, 5)


def test_a_dc_that_says_it_is_fenced_is_suspected_by_everyone_who_hears_it() -> None:
    peers = {
        "dc1": view("dc1", 99.5, {"dc1"}, fenced=True),
        "dc3": view("dc3", 99.0, {"dc1", "dc2", "dc3"}),
    }
    assert suspected_by_majority("dc1", "dc2", peers, 100.0, T, 3)


def test_the_claimant_is_the_first_replica_not_suspected() -> None:
    topo = topology(4, replicas=2)
    shard = 0  # owned by dc1, replicas dc2 then dc3
    assert topo.replica_list(shard) == ("dc2", "dc3")
    assert claimant(topo, shard, "dc1", {"dc1"}) == "dc2"
    assert claimant(topo, shard, "dc1", {"dc1", "dc2"}) == "dc3"
    assert claimant(topo, shard, "dc1", {"dc1", "dc2", "dc3"}) is None


def test_after_a_failover_the_initial_owner_comes_last_and_the_owner_never_claims() -> None:
    topo = topology(4, replicas=2)
    shard = 0  # owned by dc2 after a failover from dc1
    assert claimant(topo, shard, "dc2", {"dc2"}) == "dc3"
    assert claimant(topo, shard, "dc2", {"dc2", "dc3"}) == "dc1"
    assert claimant(topo, shard, "dc2", set()) == "dc3"


def test_the_claimant_waits_the_lease_out_only_for_promisers_that_heard_the_old_owner() -> None:
    epoch = claim_epoch(1, 1)
    fresh = Promise(epoch, heard_owner=True)
    stale = Promise(epoch, heard_owner=False)
    assert owner_ready_at(epoch, "dc1", {"dc2": (1.0, fresh)}, 3, L) is None
    assert owner_ready_at(epoch, "dc1", {"dc2": (1.0, stale), "dc3": (2.0, stale)}, 3, L) == 2.0
    assert owner_ready_at(epoch, "dc1", {"dc2": (1.0, fresh), "dc3": (2.0, fresh)}, 3, L) == 7.0
    # Any majority will do: the one that is ready first.
    promises = {"dc2": (1.0, stale), "dc3": (2.0, fresh), "dc4": (3.0, stale), "dc5": (4.0, stale)}
    assert owner_ready_at(epoch, "dc1", promises, 5, L) == 4.0
    # The old owner promised: its own lease is over, nobody's echo can carry it.
    assert owner_ready_at(epoch, "dc1", {"dc2": (1.0, fresh), "dc1": (2.0, fresh)}, 3, L) == 2.0
    # Promises of another epoch do not count.
    other = Promise(claim_epoch(1, 2), heard_owner=False)
    assert owner_ready_at(epoch, "dc1", {"dc2": (1.0, stale), "dc3": (2.0, other)}, 3, L) is None


delays = st.floats(min_value=0.0, max_value=30.0, allow_nan=False)


@settings(max_examples=500, deadline=None)
@given(
    to_w=st.lists(delays, min_size=30, max_size=30),
    to_p=st.lists(delays, min_size=30, max_size=30),
    w_promises_at=st.floats(min_value=0.0, max_value=40.0),
    p_claims_at=st.floats(min_value=0.0, max_value=40.0),
    promise_travels=delays,
    clock_offsets=st.tuples(*[st.floats(min_value=-1e6, max_value=1e6)] * 2),
)
def test_the_old_owners_lease_is_over_when_the_claimant_becomes_the_owner(
    to_w: list[float],
    to_p: list[float],
    w_promises_at: float,
    p_claims_at: float,
    promise_travels: float,
    clock_offsets: tuple[float, float],
) -> None:
    """Three DCs: X owns, P claims, W is the third. X sends a heartbeat every second; each
    reaches W and P after any delay (a slow or cut link). W and P echo, in every heartbeat they
    send, the latest heartbeat of X they received. Echoes sent before a DC promised support
    X's lease; after, they carry the promise and do not. Whatever the delays and wherever the
    clocks stand, X's lease (real time) ends no later than P is ready to write."""
    x_off, p_off = clock_offsets
    sent_real = [float(j) for j in range(30)]

    def last_echo(delay: list[float], promised_at: float) -> int | None:
        """The newest heartbeat of X received before the DC promised."""
        got = [j for j in range(30) if sent_real[j] + delay[j] <= promised_at]
        return max(got, key=lambda j: sent_real[j] + delay[j]) if got else None

    def heard_x(delay: list[float], promised_at: float) -> bool:
        arrivals = [
            sent_real[j] + delay[j] for j in range(30) if sent_real[j] + delay[j] <= promised_at
        ]
        return bool(arrivals) and promised_at - max(arrivals) <= T

    # X's lease, from the echoes W and P sent before promising (X's own clock).
    epoch_x, epoch_p = claim_epoch(1, 0), claim_epoch(2, 1)
    sent_at = {j: sent_real[j] + x_off for j in range(30)}
    peers = {}
    for dc, delay, promised_at in (("W", to_w, w_promises_at), ("P", to_p, p_claims_at)):
        number = last_echo(delay, promised_at)
        if number is not None:
            peers[dc] = PeerView(
                dc, 0.0, echoes={"X": number}, promises={0: Promise(epoch_x, True)}
            )
    end = lease_end(0, epoch_x, "X", peers, sent_at, 3, L)
    lease_over_real = -float("inf") if end is None else end - x_off

    # P's readiness (P's own clock), with W's promise arriving after it travelled.
    promises = {
        "P": (p_claims_at + p_off, Promise(epoch_p, heard_x(to_p, p_claims_at))),
        "W": (
            w_promises_at + promise_travels + p_off,
            Promise(epoch_p, heard_x(to_w, w_promises_at)),
        ),
    }
    ready = owner_ready_at(epoch_p, "X", promises, 3, L)
    assert ready is not None
    # A microsecond for the float rounding of clock offsets up to 1e6 s.
    assert lease_over_real <= ready - p_off + 1e-6
