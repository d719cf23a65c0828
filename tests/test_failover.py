"""A failover under load on the real stack (``failover_stack``: 3 DCs, two replicas per
shard): controllers, relays, appliers and stand-in servers in every DC; the DC owning the
most shards is killed. Its shards are owned at a new epoch (the claimant's own) by their first
live replica within the failure timeout plus a few seconds, as ``ownership show`` reports; the
jobs it had in flight are restarted there and complete, and every surviving replica of a moved
shard ends equal, row by row, to its new owner. When the DC comes back it is demoted, and its
orphans are exactly its outbox rows beyond the cuts.

Ownership moves from test to test on this stack: the test reads who owns what first."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pipeline.db import fetch_all
from pipeline.ownership import INITIAL_EPOCH
from pipeline.stack.orchestrator import kill_dc, start_dc
from simulator.ids import format_cluster_id
from tests.conftest import RunningStack
from tests.outbox_helpers import INERT_IDS_FROM
from tests.ownership_helpers import (
    TIMEOUT_S,
    busiest,
    ownership,
    taken_over,
    wait_until,
    writable_everywhere,
)
from tests.workers import WorkerProcess, terminate_all

pytestmark = [pytest.mark.stack, pytest.mark.slow]


def rows(dsn: str, sql: str, *args: object) -> list[tuple[Any, ...]]:
    return fetch_all(dsn, sql, args)


def controller_args(dc: str) -> tuple[str, ...]:
    return (
        *("worker", "controller", "--dc", dc),
        *("--interval", "0.5", "--failure-timeout", str(TIMEOUT_S)),
    )


@pytest.fixture
def workers() -> Iterator[dict[str, list[WorkerProcess]]]:
    started: dict[str, list[WorkerProcess]] = {}
    yield started
    for procs in started.values():
        for w in procs:
            if w.proc.poll() is None and w.terminate(60) != 0:
                w.kill()


def test_a_dc_killed_under_load_fails_over_restarts_its_jobs_and_replicas_converge(  # noqa: C901 - one drill in order
    failover_stack: RunningStack, workers: dict[str, list[WorkerProcess]]
) -> None:
    stack = failover_stack
    dcs = [dc.name for dc in stack.topology.data_dcs]

    def start(dc: str, *args: str) -> WorkerProcess:
        workers.setdefault(dc, []).append(WorkerProcess(stack.topology_file, *args))
        return workers[dc][-1]

    for dc in dcs:
        start(dc, *controller_args(dc))
    for dc in dcs:
        start(dc, "worker", "relay", "--dc", dc, "--poll-interval", "0.2")
    appliers = [start(dc, "worker", "applier", "--dc", dc) for dc in dcs]

    wait_until(lambda: writable_everywhere(stack), 60, "every shard writable at its owner")
    wait_until(
        lambda: all((a.health() or {}).get("assigned", 0) > 0 for a in appliers),
        90,
        "every applier has its partitions",
    )
    simulators = {
        dc: start(dc, "simulate", "--dc", dc, "--rate", "15", "--duration", "600", "--seed", str(i))
        for i, dc in enumerate(dcs)
    }
    time.sleep(8)

    before = ownership(stack, dcs[0])
    victim, moved = busiest(before, dcs)
    survivors = [dc for dc in dcs if dc != victim]
    in_flight = {
        job
        for (job,) in rows(
            stack.dc(survivors[0]).database,
            "SELECT job_id FROM replica_checkpoints WHERE NOT completed AND shard = ANY(%s)",
            moved,
        )
    }

    killed_at = time.monotonic()
    for w in workers.pop(victim):
        w.kill()
    kill_dc(stack.run_dir, victim)
    try:
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
            if before[s][0] == stack.topology.initial_owner(s):
                assert owner == live[0], f"shard {s}: {owner} took it, not {live[0]}"
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

        # Every job in flight in the moved shards is restarted at the new owner and ends.
        requested = {
            job: (dc, resumed)
            for dc in survivors
            for job, resumed in rows(
                stack.dc(dc).database,
                "SELECT r.job_id, r.resumed_at IS NOT NULL FROM restart_requests r"
                " JOIN shard_ownership o ON o.shard = r.shard AND o.epoch = r.epoch"
                " WHERE r.shard = ANY(%s)",
                moved,
            )
        }
        # In flight: a checkpoint the new owner had applied and no completion after it.
        in_flight = {
            job
            for s in moved
            for (job,) in rows(
                stack.dc(after[s][0]).database,
                "SELECT job_id FROM replica_checkpoints WHERE NOT completed AND shard = %s",
                s,
            )
        }
        assert in_flight == set(requested), f"restarts: {in_flight ^ set(requested)}"

        def unfinished_restarts() -> list[tuple[Any, ...]]:
            return [
                (dc, *row)
                for dc in survivors
                for row in rows(
                    stack.dc(dc).database,
                    "SELECT r.job_id, r.cluster_id, r.resumed_at IS NOT NULL, j.status"
                    " FROM restart_requests r"
                    " JOIN shard_ownership o ON o.shard = r.shard AND o.epoch = r.epoch"
                    " LEFT JOIN coopr_jobs j ON j.id = r.job_id WHERE r.shard = ANY(%s)"
                    " AND ((r.resumed_at IS NULL AND r.refused IS NULL)"
                    " OR j.status = 'RUNNING')",
                    moved,
                )
            ]

        def stuck() -> str:
            jobs = unfinished_restarts()
            said = [
                line
                for dc in survivors
                for line in simulators[dc].output().splitlines()
                if any(job in line for _, job, *_ in jobs)
            ]
            return f"the restarted jobs complete at their new owners: {jobs}\n" + "\n".join(
                said[-40:]
            )

        wait_until(lambda: not unfinished_restarts(), 90, stuck)
        # The stand-in server cannot plan every checkpoint (a known gap, docs/ownership.md):
        # those it refuses stay pending with the reason, never silently.
        refused = [
            (job, why)
            for dc in survivors
            for job, why in rows(
                stack.dc(dc).database,
                "SELECT r.job_id, r.refused FROM restart_requests r"
                " JOIN shard_ownership o ON o.shard = r.shard AND o.epoch = r.epoch"
                " WHERE r.shard = ANY(%s) AND r.refused IS NOT NULL",
                moved,
            )
        ]

        # Load stops; replication settles; every survivor replica equals the new owner.
        for sim, status in terminate_all((simulators[dc] for dc in survivors), 120):
            assert status == 0, sim.output()[-2000:]

        def converged() -> list[str]:
            diffs = []
            for s in moved:
                owner = after[s][0]
                # The stand-in servers' clusters, not those of earlier tests' inert events.
                live = {
                    r[0]: r[1:]
                    for r in rows(
                        stack.dc(owner).database,
                        "SELECT id, status, latest_job_id, body, nodes FROM coopr_clusters"
                        " WHERE shard = %s AND status <> 'PENDING' AND id < %s",
                        s,
                        format_cluster_id(INERT_IDS_FROM),
                    )
                }
                for replica in (dc for dc in survivors if dc != owner):
                    copies = {
                        r[0]: r[1:]
                        for r in rows(
                            stack.dc(replica).database,
                            "SELECT cluster_id, status, latest_job_id, body, nodes"
                            " FROM replica_clusters WHERE shard = %s",
                            s,
                        )
                    }
                    diffs += [
                        f"{replica}: shard {s} cluster {c}"
                        for c, row in live.items()
                        if copies.get(c) != row
                    ]
            return diffs

        deadline = time.monotonic() + 90
        while (diffs := converged()) and time.monotonic() < deadline:
            time.sleep(1)
        assert not diffs, f"replicas differ from their new owner: {diffs[:5]}"
        print(
            f"{len(moved)} shards of {victim} taken over {took:.1f} s after the kill;"
            f" {len(requested) - len(refused)} jobs restarted and completed,"
            f" {len(refused)} refused by the stand-in server: {refused}"
        )
    finally:
        start_dc(stack.run_dir, victim)

    # The victim comes back: demoted; its orphans are its rows beyond the cuts.
    workers[victim] = [WorkerProcess(stack.topology_file, *controller_args(victim))]
    wait_until(
        lambda: all(
            ownership(stack, victim)[s] == (after[s][0], after[s][1], False) for s in moved
        ),
        60,
        f"{victim} demoted",
    )
    cuts = {
        s: cut
        for s, cut in rows(
            stack.dc(survivors[0]).database,
            "SELECT shard, cut FROM ownership_claims c WHERE shard = ANY(%s)"
            " AND epoch = (SELECT max(epoch) FROM ownership_claims k WHERE k.shard = c.shard)",
            moved,
        )
    }
    beyond = {
        (s, e, q)
        for s, e, q in rows(
            stack.dc(victim).database,
            "SELECT shard, epoch, seq FROM outbox WHERE shard = ANY(%s)",
            moved,
        )
        if e == before[s][1] and q > cuts[s]
    }
    listed = subprocess.run(
        [
            *(sys.executable, "-m", "cli", "ownership", "orphans", "--dc", victim),
            *("--format", "json", "--topology", str(stack.topology_file)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    # Orphans of earlier failovers on this stack are listed too: compare this one's epoch.
    orphans = {
        (o["shard"], o["epoch"], o["seq"])
        for o in map(json.loads, listed.stdout.splitlines())
        if o["shard"] in moved and o["epoch"] == before[o["shard"]][1]
    }
    assert orphans == beyond
    print(f"{len(orphans)} orphans listed")
    running = [w for procs in workers.values() for w in procs if w.proc.poll() is None]
    for w, status in terminate_all(running):
        assert status == 0, w.output()[-2000:]
