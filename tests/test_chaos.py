"""Never two writers (``docs/ownership.md``, "Why two DCs never both accept writes"), on the
real stack (``failover_stack``): while every DC tries to write every shard of one owner as
fast as it can, that owner's controller is paused (SIGSTOP), or its heartbeats stop reaching
the others while it still hears them (its outgoing links cut). Its shards move; then it
resumes, or the links heal, and it is demoted.

Checked from the writes themselves: the outbox row of every accepted write carries its epoch
and the database time it was accepted (``created_at``, all databases on this one host's
clock). Ordered by that time, a shard's writes never go back to an older epoch: no two DCs
accepted writes for a shard at the same time. And the loser's writes beyond the cut are
never applied at any replica."""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from collections.abc import Iterator

import psycopg2
import pytest

from bench.load import event_for
from pipeline.db import connect, fetch_all
from pipeline.errors import PipelineError
from pipeline.events import ClusterStatus
from pipeline.stack.links import cut_one_way, heal
from producer.outbox import publish
from tests.conftest import RunningStack
from tests.outbox_helpers import cluster_ids_of
from tests.ownership_helpers import (
    TIMEOUT_S,
    Ownership,
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
def controllers(failover_stack: RunningStack) -> Iterator[dict[str, WorkerProcess]]:
    with controllers_of(failover_stack) as started:
        yield started


def keep_writing(stack: RunningStack, dc: str, shards: list[int], stop: threading.Event) -> None:
    """Write every shard of ``shards`` in ``dc``'s own database, over and over, until
    ``stop``; refusals (not owner, not writable) are the point, not errors."""
    conn = connect(stack.dc(dc).database)
    # Far above the IDs the stand-in servers hand out, and deleted: no server ever picks
    # these clusters for a job when a takeover promotes them into its live tables.
    start = 80_000_000 + 1_000_000 * [d.name for d in stack.topology.dcs].index(dc)
    ids = {s: cluster_ids_of(s, stack.topology.shard_count, start) for s in shards}
    try:
        deadline = time.monotonic() + 300
        while not stop.is_set() and time.monotonic() < deadline:
            for s in shards:
                event = event_for(next(ids[s]), s)
                deleted = dataclasses.replace(event.cluster, status=ClusterStatus.TERMINATED)
                try:
                    publish(conn, dataclasses.replace(event, cluster=deleted, cluster_deleted=True))
                    conn.commit()
                except (PipelineError, psycopg2.Error):
                    conn.rollback()
            stop.wait(0.01)
    finally:
        conn.close()


def interleaved(stack: RunningStack, shards: list[int], since: str) -> list[str]:
    """Writes accepted after a write of a newer epoch of the same shard, in any DC."""
    writes = sorted(
        (created, shard, epoch, dc.name)
        for dc in stack.topology.data_dcs
        for shard, epoch, created in fetch_all(
            dc.database,
            "SELECT shard, epoch, created_at FROM outbox"
            " WHERE shard = ANY(%s) AND created_at >= %s",
            (shards, since),
        )
    )
    newest: dict[int, tuple[int, str]] = {}
    found = []
    for created, shard, epoch, dc in writes:
        held = newest.get(shard)
        if held is not None and epoch < held[0]:
            found.append(f"shard {shard}: {dc} wrote epoch {epoch} at {created} after {held}")
        if held is None or epoch > held[0]:
            newest[shard] = (epoch, dc)
    return found


def disrupt(
    stack: RunningStack,
    controllers: dict[str, WorkerProcess],
    disruption: str,
    victim: str,
    *,
    on: bool,
) -> None:
    """Start (``on``) or end the disruption of ``victim``."""
    if disruption == "controller paused":
        controllers[victim].proc.send_signal(signal.SIGSTOP if on else signal.SIGCONT)
    elif on:
        for other in controllers:
            if other != victim:
                cut_one_way(stack.topology, victim, other)
    else:
        heal(stack.topology, victim)


def applied_beyond_cuts(
    stack: RunningStack,
    survivors: list[str],
    moved: list[int],
    victim: str,
    before: Ownership,
) -> list[tuple[str, int, int]]:
    """The loser's events beyond the cuts that some survivor applied (there must be none)."""
    cuts = dict(
        fetch_all(
            stack.dc(survivors[0]).database,
            "SELECT shard, cut FROM ownership_claims c WHERE shard = ANY(%s)"
            " AND epoch = (SELECT max(epoch) FROM ownership_claims k WHERE k.shard = c.shard)",
            (moved,),
        )
    )
    found = []
    for replica in survivors:
        rows = fetch_all(
            stack.dc(replica).database,
            "SELECT shard, epoch, seq FROM replica_clusters"
            " WHERE shard = ANY(%s) AND source_dc = %s",
            (moved, victim),
        )
        found += [(replica, s, q) for s, e, q in rows if e == before[s][1] and q > cuts[s]]
    return found


@pytest.mark.parametrize("disruption", ["controller paused", "heartbeats cut one way"])
def test_never_two_writers_when_an_owner_stalls_or_cannot_be_heard(
    failover_stack: RunningStack, controllers: dict[str, WorkerProcess], disruption: str
) -> None:
    stack = failover_stack
    wait_until(lambda: hears_all(controllers), 60, "every controller hears every other")
    wait_until(lambda: writable_everywhere(stack), 30, "every shard writable at its owner")
    ((since,),) = fetch_all(stack.dc("dc1").database, "SELECT clock_timestamp()::text")
    before = ownership(stack, "dc1")
    counts = {dc: sum(1 for o, _, _ in before.values() if o == dc) for dc in controllers}
    victim = max(sorted(counts), key=lambda dc: counts[dc])
    survivors = [dc for dc in controllers if dc != victim]
    moved = sorted(s for s, (o, _, _) in before.items() if o == victim)
    stop = threading.Event()
    writers = [
        threading.Thread(target=keep_writing, args=(stack, dc, moved, stop), daemon=True)
        for dc in controllers
    ]
    for w in writers:
        w.start()
    time.sleep(1)

    disrupt(stack, controllers, disruption, victim, on=True)
    try:
        wait_until(
            lambda: taken_over(stack, survivors, moved, victim),
            TIMEOUT_S + 20,
            f"the shards of {victim} taken over",
        )
        time.sleep(2)  # the loser keeps trying for a while after the takeover
    finally:
        disrupt(stack, controllers, disruption, victim, on=False)
    after = ownership(stack, survivors[0])

    def demoted() -> bool:
        return all(ownership(stack, victim)[s][::2] == (after[s][0], False) for s in moved)

    wait_until(demoted, 90, f"{victim} demoted")
    stop.set()
    for w in writers:
        w.join(30)

    assert interleaved(stack, moved, since) == []
    assert applied_beyond_cuts(stack, survivors, moved, victim, before) == []
    for worker in controllers.values():
        assert worker.terminate() == 0, worker.output()[-2000:]
