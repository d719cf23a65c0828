"""The rows of the failure table in docs/ownership.md that one component makes, drilled on the
real stack (``failover_stack``: 3 DCs, two replicas per shard, a controller in each): a DC's
broker, database or MirrorMaker 2 killed alone, one link cut one way, and the active
controller of a DC killed while a standby waits. Each drill starts again what it killed.

Ownership moves from test to test here: each test reads who owns what first."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from pipeline.stack.links import cut_one_way, heal
from pipeline.stack.orchestrator import kill_dc, start_dc
from pipeline.stack.processes import KAFKA, MIRRORMAKER, POSTGRES
from tests.conftest import RunningStack
from tests.ownership_helpers import (
    TIMEOUT_S,
    Ownership,
    busiest,
    controller,
    controllers_of,
    hears_all,
    holds_for,
    ownership,
    taken_over,
    wait_until,
    writable_everywhere,
)
from tests.workers import WorkerProcess, terminate_all

pytestmark = [pytest.mark.stack, pytest.mark.slow]


@pytest.fixture
def stack(failover_stack: RunningStack) -> RunningStack:
    return failover_stack


@pytest.fixture
def controllers(stack: RunningStack) -> Iterator[dict[str, WorkerProcess]]:
    """A controller in every DC, past its start, every shard writable at its owner."""
    with controllers_of(stack) as started:
        wait_until(lambda: hears_all(started), 60, "every controller hears every other")
        wait_until(lambda: writable_everywhere(stack), 30, "every shard writable at its owner")
        yield started


def epochs(view: Ownership) -> dict[int, tuple[str, int]]:
    return {s: (owner, epoch) for s, (owner, epoch, _) in view.items()}


@pytest.mark.parametrize("component", [KAFKA, MIRRORMAKER, POSTGRES])
def test_a_dc_losing_one_component_loses_its_shards_and_is_demoted_when_it_is_back(
    stack: RunningStack, controllers: dict[str, WorkerProcess], component: str
) -> None:
    """Broker: the controller can send no heartbeat and hear none. MirrorMaker: it hears
    nobody and says so (fenced). Database: the controller exits (a restart takes over). Each
    time the majority suspects the DC and takes its shards, and the DC, whose leases ended
    first, is demoted once the component is back."""
    before = ownership(stack, "dc1")
    victim, moved = busiest(before, controllers)
    survivors = [dc for dc in controllers if dc != victim]
    killed_at = time.monotonic()
    kill_dc(stack.run_dir, victim, only=component)
    try:
        wait_until(
            lambda: taken_over(stack, survivors, moved, victim),
            TIMEOUT_S + 15,
            f"the shards of {victim} taken over after its {component} died",
        )
        took = time.monotonic() - killed_at
        if component != POSTGRES:
            # No two writers: its own database refuses every write of the moved shards.
            mine = ownership(stack, victim)
            assert not any(mine[s][2] for s in moved), mine
        if component == MIRRORMAKER:
            assert (controllers[victim].health() or {}).get("fenced") is True
        if component == POSTGRES:
            assert controllers[victim].proc.wait(30) != 0
            assert "the database of" in controllers[victim].output()
    finally:
        start_dc(stack.run_dir, victim)
    if controllers[victim].proc.poll() is not None:
        controllers[victim] = controller(stack, victim)
    after = ownership(stack, survivors[0])
    wait_until(
        lambda: all(ownership(stack, victim)[s] == (*after[s][:2], False) for s in moved),
        60,
        f"{victim} demoted",
    )
    wait_until(lambda: hears_all(controllers), 90, "all hear all again")
    print(f"{component} of {victim} killed: {len(moved)} shards taken over in {took:.1f} s")
    for worker, status in terminate_all(controllers.values()):
        assert status == 0, worker.output()[-2000:]


def test_one_link_cut_one_way_is_suspected_by_one_dc_and_moves_nothing(
    stack: RunningStack, controllers: dict[str, WorkerProcess]
) -> None:
    before = ownership(stack, "dc1")
    source, owned = busiest(before, controllers)
    target, third = (dc for dc in controllers if dc != source)
    cut_one_way(stack.topology, source, target)
    try:
        wait_until(
            lambda: source in (controllers[target].health() or {}).get("suspected", []),
            TIMEOUT_S + 5,
            f"{target} suspects {source}",
        )

        # One DC is no majority: for another timeout nothing moves and the owner writes on.
        def unmoved() -> None:
            assert source not in (controllers[third].health() or {}).get("suspected", [])
            assert not (controllers[source].health() or {}).get("fenced")
            assert epochs(ownership(stack, target)) == epochs(before)
            assert all(ownership(stack, source)[s][2] for s in owned)

        holds_for(unmoved, TIMEOUT_S + 2)
    finally:
        heal(stack.topology, source)
    wait_until(lambda: hears_all(controllers), 90, "all hear all again")
    for worker, status in terminate_all(controllers.values()):
        assert status == 0, worker.output()[-2000:]


def test_a_standby_controller_takes_over_and_nothing_moves(
    stack: RunningStack, controllers: dict[str, WorkerProcess]
) -> None:
    before = ownership(stack, "dc1")
    dc, owned = busiest(before, controllers)
    standby = controller(stack, dc)
    try:
        wait_until(lambda: (standby.health() or {}).get("active") is False, 30, "the standby up")
        killed_at = time.monotonic()
        controllers[dc].kill()
        took = wait_until(
            lambda: (standby.health() or {}).get("active") is True, 30, "the standby active"
        )
        # Heard again before anyone suspects it: nothing moves, and its leases run again.
        wait_until(
            lambda: all(ownership(stack, dc)[s][2] for s in owned), TIMEOUT_S, "leases renewed"
        )
        renewed = time.monotonic() - killed_at

        def unmoved() -> None:
            for other in (d for d in controllers if d != dc):
                assert dc not in (controllers[other].health() or {}).get("suspected", [])
            assert epochs(ownership(stack, dc)) == epochs(before)

        holds_for(unmoved, TIMEOUT_S + 2)
        print(f"standby active {took:.1f} s after the kill, leases running at {renewed:.1f} s")
    finally:
        controllers[dc] = standby
    for worker, status in terminate_all(controllers.values()):
        assert status == 0, worker.output()[-2000:]
