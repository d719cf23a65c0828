"""Controllers on the real stack (``failover_stack``: 3 DCs, two replicas per shard): every DC
hears every other through MirrorMaker 2; a DC cut off by its links is suspected by the others,
fences itself and loses its shards, and after the heal it is demoted and catches up; a planned
move under load loses nothing; a DC drained for maintenance (``move --all-from``) hands
every shard over, and failback is a move back; a manual failover is refused while a majority
hears the DC. A DC killed: ``tests/test_failover.py``.

Ownership moves from test to test here: each test reads who owns what first."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from controller.protocol import claimant
from pipeline.db import fetch_all
from pipeline.errors import ShardNotWritableError
from pipeline.stack.links import heal, partition
from producer.outbox import event_key
from tests.conftest import RunningStack
from tests.outbox_helpers import INERT_IDS_FROM, publish_events
from tests.ownership_helpers import (
    TIMEOUT_S,
    busiest,
    controllers_of,
    hears_all,
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
    with controllers_of(stack) as started:
        yield started


def test_a_dc_cut_off_fences_itself_loses_its_shards_and_catches_up_after_the_heal(
    stack: RunningStack, controllers: dict[str, WorkerProcess]
) -> None:
    wait_until(lambda: hears_all(controllers), 60, "every controller hears every other")
    wait_until(lambda: writable_everywhere(stack), 30, "every shard writable at its owner")
    assert all(not (w.health() or {})["fenced"] for w in controllers.values())
    before = ownership(stack, "dc1")
    victim, moved = busiest(before, controllers)
    survivors = [dc for dc in controllers if dc != victim]
    assert moved, before
    # The victim's applier is to catch up after the heal; the survivors' relays publish.
    others = [WorkerProcess(stack.topology_file, "worker", "applier", "--dc", victim)]
    others += [WorkerProcess(stack.topology_file, "worker", "relay", "--dc", d) for d in survivors]

    def refused_at_victim() -> bool:
        mine = ownership(stack, victim)
        return not any(mine[s][2] for s in moved)

    try:
        partition(stack.topology, victim)
        try:
            took = wait_until(
                lambda: all(
                    victim in (controllers[dc].health() or {}).get("suspected", [])
                    for dc in survivors
                ),
                TIMEOUT_S + 5,
                f"{survivors} suspect {victim}",
            )
            wait_until(
                lambda: (controllers[victim].health() or {}).get("fenced") is True,
                TIMEOUT_S + 5,
                f"{victim} fences itself",
            )
            # The gauge follows at the next heartbeat (0.5 s).
            wait_until(
                lambda: (
                    controllers[victim].metric(f'coopr_controller_fenced{{dc="{victim}"}}') == 1.0
                ),
                2,
                "the fenced gauge",
            )
            assert not any((controllers[dc].health() or {})["fenced"] for dc in survivors)
            wait_until(refused_at_victim, TIMEOUT_S, f"{victim} accepts no write")
            with pytest.raises(ShardNotWritableError):
                publish_events(
                    stack.dc(victim).database,
                    moved[0],
                    stack.topology.shard_count,
                    1,
                    inert_from=INERT_IDS_FROM + 10_000_000,
                )
            # The majority takes the shards; the victim, cut off, never accepts a write again.
            wait_until(
                lambda: taken_over(stack, survivors, moved, victim),
                TIMEOUT_S + 15,
                f"the shards of {victim} taken over",
            )
            assert refused_at_victim()
        finally:
            heal(stack.topology, victim)
        after = ownership(stack, survivors[0])

        def demoted() -> bool:
            mine = ownership(stack, victim)
            return all(mine[s] == (after[s][0], after[s][1], False) for s in moved)

        wait_until(demoted, 60, f"{victim} demoted after the heal")
        wait_until(lambda: hears_all(controllers), 90, "all hear all again after the heal")
        # Catching up: what the new owners write now reaches the victim's replica.
        written = [
            publish_events(
                stack.dc(after[s][0]).database,
                s,
                stack.topology.shard_count,
                1,
                inert_from=INERT_IDS_FROM + 10_000_000,
            )[0]
            for s in moved
        ]

        def caught_up() -> bool:
            replica = {
                (c, e, q)
                for c, e, q in fetch_all(
                    stack.dc(victim).database,
                    "SELECT cluster_id, epoch, seq FROM replica_clusters WHERE shard = ANY(%s)",
                    (moved,),
                )
            }
            return all((event_key(w.event), w.epoch, w.seq) in replica for w in written)

        wait_until(caught_up, 90, f"{victim} applies what the new owners wrote")
    finally:
        for w, status in terminate_all(others, 60):
            if status != 0:
                w.kill()
    print(
        f"{victim} suspected {took:.1f} s after the cut (failure timeout {TIMEOUT_S:g} s);"
        f" {len(moved)} shards moved; demoted and caught up after the heal"
    )
    for worker, status in terminate_all(controllers.values()):
        assert status == 0, worker.output()[-2000:]


def test_a_planned_move_under_load_loses_nothing_and_every_replica_follows_the_cut(
    stack: RunningStack, controllers: dict[str, WorkerProcess]
) -> None:
    wait_until(lambda: hears_all(controllers), 60, "every controller hears every other")
    wait_until(lambda: writable_everywhere(stack), 30, "every shard writable at its owner")
    dcs = sorted(controllers)
    others: list[WorkerProcess] = []
    try:
        for dc in dcs:
            others.append(WorkerProcess(stack.topology_file, "worker", "relay", "--dc", dc))
            others.append(WorkerProcess(stack.topology_file, "worker", "applier", "--dc", dc))
        simulators = [
            WorkerProcess(
                stack.topology_file, "simulate", "--dc", dc, "--rate", "20", "--duration", "12"
            )
            for dc in dcs
        ]
        others += simulators
        time.sleep(4)
        view = ownership(stack, dcs[0])
        shard = min(view)
        source, from_epoch, _ = view[shard]
        target = next(d for d in stack.topology.dc_set(shard) if d != source)
        third = next(d for d in dcs if d not in (source, target))
        moved = subprocess.run(
            [
                *(sys.executable, "-m", "cli", "ownership", "move"),
                *("--shard", str(shard), "--to", target, "--topology", str(stack.topology_file)),
            ],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert moved.returncode == 0, moved.stderr
        print(moved.stdout.strip().splitlines()[-1])
        for sim in simulators:
            assert sim.proc.wait(120) == 0, sim.output()[-2000:]
        new_epoch = ownership(stack, target)[shard][1]
        ((cut, reason),) = fetch_all(
            stack.dc(target).database,
            "SELECT cut, reason FROM ownership_claims WHERE shard = %s AND epoch = %s",
            (shard, new_epoch),
        )
        assert reason == "PLANNED_HANDOVER"
        # Zero events lost: the cut is the last event the old owner ever wrote at its epoch.
        ((last,),) = fetch_all(
            stack.dc(source).database,
            "SELECT COALESCE(max(seq), 0) FROM outbox WHERE shard = %s AND epoch = %s",
            (shard, from_epoch),
        )
        assert cut == last

        def followed() -> bool:
            ((owner_last,),) = fetch_all(
                stack.dc(target).database,
                "SELECT last_seq FROM shard_ownership WHERE shard = %s",
                (shard,),
            )
            state = fetch_all(
                stack.dc(third).database,
                "SELECT epoch, last_seq FROM replication_state WHERE shard = %s",
                (shard,),
            )
            # The replication state moves to the new epoch with its first event.
            return state == [(new_epoch, owner_last) if owner_last else (from_epoch, cut)]

        wait_until(followed, 60, f"{third} applies {target}'s events of shard {shard}")
        # Contiguous across the epoch change: no gap and nothing fenced at the other replica.
        gaps = fetch_all(
            stack.dc(third).database,
            "SELECT epoch, after_seq, before_seq FROM replication_gaps"
            " WHERE shard = %s AND epoch IN (%s, %s)",
            (shard, from_epoch, new_epoch),
        )
        assert gaps == []
        live = dict(
            fetch_all(
                stack.dc(target).database,
                "SELECT id, body FROM coopr_clusters WHERE shard = %s AND status <> 'PENDING'",
                (shard,),
            )
        )
        copies = dict(
            fetch_all(
                stack.dc(third).database,
                "SELECT cluster_id, body FROM replica_clusters WHERE shard = %s",
                (shard,),
            )
        )
        assert {c: copies.get(c) for c in live} == live
    finally:
        # SIGTERM: an applier killed would hold its group's partitions for a session timeout
        # from the next test's applier.
        for w, status in terminate_all(others, 60):
            if status != 0:
                w.kill()
    for worker, status in terminate_all(controllers.values()):
        assert status == 0, worker.output()[-2000:]


def test_a_dc_drained_for_maintenance_hands_every_shard_over_and_gets_one_back(
    stack: RunningStack, controllers: dict[str, WorkerProcess]
) -> None:
    wait_until(lambda: hears_all(controllers), 60, "every controller hears every other")
    wait_until(lambda: writable_everywhere(stack), 30, "every shard writable at its owner")
    before = ownership(stack, "dc1")
    drained, owned = busiest(before, controllers)

    def move(*args: str) -> str:
        done = subprocess.run(
            [
                *(sys.executable, "-m", "cli", "ownership", "move", *args),
                *("--topology", str(stack.topology_file)),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    said = move("--all-from", drained)
    assert f"moved {len(owned)} shards" in said
    after = ownership(stack, drained)
    for s in owned:
        owner, epoch, _ = after[s]
        assert owner == claimant(stack.topology, s, drained, ()) and epoch > before[s][1]
    assert not any(o == drained for o, _, _ in after.values())
    wait_until(lambda: writable_everywhere(stack), 10, "every DC knows the new owners")
    # Failback is a planned move back.
    said = move("--shard", str(owned[0]), "--to", drained)
    back = ownership(stack, drained)[owned[0]]
    assert back[0] == drained and back[2] and back[1] > after[owned[0]][1], said
    for worker, status in terminate_all(controllers.values()):
        assert status == 0, worker.output()[-2000:]


def test_a_manual_failover_is_refused_while_a_majority_hears_the_dc(
    stack: RunningStack, controllers: dict[str, WorkerProcess]
) -> None:
    wait_until(lambda: hears_all(controllers), 60, "every controller hears every other")
    before = {dc: ownership(stack, dc) for dc in controllers}
    owning = sorted({owner for owner, _, _ in before["dc1"].values()})[0]
    refused = subprocess.run(
        [
            *(sys.executable, "-m", "cli", "ownership", "failover", "--from", owning, "--yes"),
            *("--topology", str(stack.topology_file), "--timeout", "20"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1, refused.stdout
    assert f"refused: {owning} is still heard by" in refused.stderr
    assert {dc: ownership(stack, dc) for dc in controllers}.keys() == before.keys()
    assert all(
        {s: v[:2] for s, v in ownership(stack, dc).items()} == {s: v[:2] for s, v in b.items()}
        for dc, b in before.items()
    )
    for worker, status in terminate_all(controllers.values()):
        assert status == 0, worker.output()[-2000:]
