"""Controllers on the real stack (``failover_stack``: 3 DCs, two replicas per shard): every DC
hears every other through MirrorMaker 2; a DC cut off by its links is suspected by the others
and fences itself; a DC killed loses its shards to their first live replica, at a new epoch,
within the failure timeout plus a few seconds; when it comes back it is demoted.

Ownership moves from test to test here: each test reads who owns what first."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from pipeline.db import fetch_all
from pipeline.ownership import INITIAL_EPOCH
from pipeline.stack.links import heal, partition
from pipeline.stack.orchestrator import kill_dc, start_dc
from tests.conftest import RunningStack
from tests.ownership_helpers import (
    TIMEOUT_S,
    controller,
    controllers_of,
    hears_all,
    ownership,
    taken_over,
    wait_until,
    writable_everywhere,
)
from tests.workers import WorkerProcess

pytestmark = [pytest.mark.stack, pytest.mark.slow]


@pytest.fixture
def stack(failover_stack: RunningStack) -> RunningStack:
    return failover_stack


@pytest.fixture
def controllers(stack: RunningStack) -> Iterator[dict[str, WorkerProcess]]:
    with controllers_of(stack) as started:
        yield started


def test_a_dc_cut_off_is_suspected_by_the_others_and_fences_itself(
    stack: RunningStack, controllers: dict[str, WorkerProcess]
) -> None:
    wait_until(lambda: hears_all(controllers), 60, "every controller hears every other")
    assert all(not (w.health() or {})["fenced"] for w in controllers.values())

    partition(stack.topology, "dc3")
    try:
        took = wait_until(
            lambda: all(
                "dc3" in (controllers[dc].health() or {}).get("suspected", [])
                for dc in ("dc1", "dc2")
            ),
            TIMEOUT_S + 5,
            "dc1 and dc2 suspect dc3",
        )
        wait_until(
            lambda: (controllers["dc3"].health() or {}).get("fenced") is True,
            TIMEOUT_S + 5,
            "dc3 fences itself",
        )
        # The gauge follows at the next heartbeat (0.5 s).
        wait_until(
            lambda: controllers["dc3"].metric('coopr_controller_fenced{dc="dc3"}') == 1.0,
            2,
            "the fenced gauge",
        )
        assert not (controllers["dc1"].health() or {})["fenced"], "dc1 and dc2 are a majority"
    finally:
        heal(stack.topology, "dc3")
    wait_until(lambda: hears_all(controllers), 90, "all hear all again after the heal")
    print(f"dc3 suspected {took:.1f} s after the cut (failure timeout {TIMEOUT_S:g} s)")
    for worker in controllers.values():
        assert worker.terminate() == 0, worker.output()[-2000:]


def test_a_killed_dc_loses_its_shards_to_their_first_live_replica_and_is_demoted_on_return(
    stack: RunningStack, controllers: dict[str, WorkerProcess]
) -> None:
    wait_until(lambda: hears_all(controllers), 60, "every controller hears every other")
    wait_until(lambda: writable_everywhere(stack), 30, "every shard writable at its owner")
    before = ownership(stack, "dc1")
    counts = {dc: sum(1 for o, _, _ in before.values() if o == dc) for dc in controllers}
    victim = max(sorted(counts), key=lambda dc: counts[dc])
    moved = sorted(s for s, (owner, _, _) in before.items() if owner == victim)
    assert moved, before

    killed_at = time.monotonic()
    controllers[victim].kill()
    kill_dc(stack.run_dir, victim)
    try:
        survivors = [dc for dc in controllers if dc != victim]

        wait_until(
            lambda: taken_over(stack, survivors, moved, victim),
            TIMEOUT_S + 15,
            f"the shards of {victim} taken over",
        )
        took = time.monotonic() - killed_at
        after = ownership(stack, survivors[0])
        for s in moved:
            owner, epoch, _ = after[s]
            live = [dc for dc in stack.topology.replica_list(s) if dc != victim]
            expected = live[0] if before[s][0] == stack.topology.initial_owner(s) else None
            if expected is not None:
                assert owner == expected, f"shard {s}: {owner} took it, not {expected}"
            assert epoch > before[s][1] and epoch != INITIAL_EPOCH
            # The epoch is the claimant's own: 64 * round + its index in the topology.
            assert epoch % 64 == [d.name for d in stack.topology.dcs].index(owner)
        shown = subprocess.run(
            [
                *(sys.executable, "-m", "cli", "ownership", "show", "--dc", survivors[0]),
                *("--format", "json", "--topology", str(stack.topology_file)),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        report = json.loads(shown.stdout)
        assert report["as_seen_by"] == survivors[0]
        for row in (r for r in report["shards"] if r["shard"] in moved):
            assert (row["owner_dc"], row["epoch"]) == after[row["shard"]][:2]
            assert (row["claim_reason"], row["cut_epoch"]) == ("FAILOVER", before[row["shard"]][1])
        assert {d["dc"]: d["suspected_by"] for d in report["dcs"]}[victim] == survivors
        print(
            f"{len(moved)} shards of {victim} taken over {took:.1f} s after the kill"
            f" (failure timeout {TIMEOUT_S:g} s)"
        )
    finally:
        start_dc(stack.run_dir, victim)
    controllers[victim] = controller(stack, victim)

    def demoted() -> bool:
        mine = ownership(stack, victim)
        return all(mine[s] == (after[s][0], after[s][1], False) for s in moved)

    wait_until(demoted, 60, f"{victim} demoted for the shards it lost")
    wait_until(lambda: hears_all(controllers), 60, "all hear all again")
    for worker in controllers.values():
        assert worker.terminate() == 0, worker.output()[-2000:]


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
        for w in others:
            if w.proc.poll() is None and w.terminate(60) != 0:
                w.kill()
    for worker in controllers.values():
        assert worker.terminate() == 0, worker.output()[-2000:]


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
    for worker in controllers.values():
        assert worker.terminate() == 0, worker.output()[-2000:]
