"""Never two writers (``docs/ownership.md``, "Why two DCs never both accept writes"), on the
real stack (``failover_stack``): while every DC tries to write every shard of one owner as
fast as it can, that owner's controller is paused (SIGSTOP), or its heartbeats stop reaching
the others while it still hears them (its outgoing links cut). Its shards move; then it
resumes, or the links heal, and it is demoted. And two claims at once: the owner dead, its
claimant fences itself in the middle of its claim and the third DC claims the same shards;
nobody writes them until the heal, then the higher claim wins.

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
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import psycopg2
import pytest

from controller.protocol import claimant
from pipeline.db import connect, fetch_all
from pipeline.errors import PipelineError
from pipeline.stack.links import cut_one_way, heal, slow_one_way
from pipeline.stack.orchestrator import kill_dc, start_dc
from producer.outbox import publish
from tests.conftest import RunningStack
from tests.outbox_helpers import INERT_IDS_FROM, cluster_ids_of, inert_event
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
def controllers(failover_stack: RunningStack) -> Iterator[dict[str, WorkerProcess]]:
    with controllers_of(failover_stack) as started:
        yield started


def keep_writing(stack: RunningStack, dc: str, shards: list[int], stop: threading.Event) -> None:
    """Write every shard of ``shards`` in ``dc``'s own database, over and over, until
    ``stop``; refusals (not owner, not writable) are the point, not errors."""
    conn = connect(stack.dc(dc).database)
    # Inert clusters, a range of their own per DC.
    start = INERT_IDS_FROM + 1_000_000 * [d.name for d in stack.topology.dcs].index(dc)
    ids = {s: cluster_ids_of(s, stack.topology.shard_count, start) for s in shards}
    try:
        deadline = time.monotonic() + 300
        while not stop.is_set() and time.monotonic() < deadline:
            for s in shards:
                try:
                    publish(conn, inert_event(next(ids[s]), s))
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


@dataclasses.dataclass(frozen=True)
class Scene:
    """Where a drill starts: the database time (``since``), ownership, and the victim, the DC
    owning the most shards, with its shards (``moved``)."""

    since: str
    before: Ownership
    victim: str
    moved: list[int]


def set_scene(stack: RunningStack, controllers: dict[str, WorkerProcess]) -> Scene:
    wait_until(lambda: hears_all(controllers), 60, "every controller hears every other")
    wait_until(lambda: writable_everywhere(stack), 30, "every shard writable at its owner")
    ((since,),) = fetch_all(stack.dc("dc1").database, "SELECT clock_timestamp()::text")
    before = ownership(stack, "dc1")
    return Scene(since, before, *busiest(before, controllers))


@contextmanager
def writing(stack: RunningStack, dcs: Iterable[str], shards: list[int]) -> Iterator[None]:
    """Every DC of ``dcs`` writes every shard of ``shards`` (:func:`keep_writing`) until the
    block ends."""
    stop = threading.Event()
    writers = [
        threading.Thread(target=keep_writing, args=(stack, dc, shards, stop), daemon=True)
        for dc in dcs
    ]
    for w in writers:
        w.start()
    try:
        yield
    finally:
        stop.set()
        for w in writers:
            w.join(30)


def wait_demoted(stack: RunningStack, scene: Scene, after: Ownership) -> None:
    def demoted() -> bool:
        mine = ownership(stack, scene.victim)
        return all(mine[s][::2] == (after[s][0], False) for s in scene.moved)

    wait_until(demoted, 90, f"{scene.victim} demoted")


@pytest.mark.parametrize("disruption", ["controller paused", "heartbeats cut one way"])
def test_never_two_writers_when_an_owner_stalls_or_cannot_be_heard(
    failover_stack: RunningStack, controllers: dict[str, WorkerProcess], disruption: str
) -> None:
    stack = failover_stack
    scene = set_scene(stack, controllers)
    victim, moved = scene.victim, scene.moved
    survivors = [dc for dc in controllers if dc != victim]
    with writing(stack, controllers, moved):
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
        wait_demoted(stack, scene, ownership(stack, survivors[0]))

    assert interleaved(stack, moved, scene.since) == []
    assert applied_beyond_cuts(stack, survivors, moved, victim, scene.before) == []
    for worker, status in terminate_all(controllers.values()):
        assert status == 0, worker.output()[-2000:]


#: How much the link Q->P is slowed, each way, for P to wait for Q's promise. MirrorMaker
#: fetches from Q one request at a time, so Q's heartbeats reach P in batches one round trip
#: (twice this) apart: that must stay well below the failure timeout, or P stops hearing Q
#: between two batches, fences itself before it claims, and Q claims P's shards in its place.
#: (2.5 s each way left 0.9 s of the 6 s timeout, which a loaded machine took.)
LINK_DELAY_MS = int(TIMEOUT_S * 1000 / 4)


def test_never_two_writers_when_a_claimant_is_cut_off_mid_claim_and_another_claims(
    failover_stack: RunningStack, controllers: dict[str, WorkerProcess]
) -> None:
    """The owner is killed; its shards' claimant P hears the third DC Q late (the link Q->P
    slowed by :data:`LINK_DELAY_MS`), so Q's promise takes that long to reach it. As soon as P
    has claimed, Q->P is cut: P hears nobody and fences itself; Q hears that and claims the
    same shards at a higher epoch, a second claim while the first is in progress. Neither can
    collect a majority (the owner is dead, P cannot hear Q's claim): nobody accepts a write of
    those shards until the heal. Then the higher claim wins, and the old owner, back, is
    demoted."""
    stack = failover_stack
    scene = set_scene(stack, controllers)
    victim, moved = scene.victim, scene.moved
    firsts = {s: claimant(stack.topology, s, victim, [victim]) for s in moved}
    p = max(sorted({dc for dc in firsts.values() if dc}), key=list(firsts.values()).count)
    (q,) = (dc for dc in controllers if dc not in (victim, p))
    of_p = [s for s in moved if firsts[s] == p]

    def claims(
        seen_by: str, to_dc: str, above: dict[int, int], since: datetime | None = None
    ) -> dict[int, int]:
        """Per shard of ``above``, the highest claim for ``to_dc`` (made after ``since``) in
        ``seen_by``'s database, if it is above ``above[shard]``. A claimant commits its claim
        before publishing it, so its own table shows it before any other DC can promise it."""
        rows = fetch_all(
            stack.dc(seen_by).database,
            "SELECT shard, max(epoch) FROM ownership_claims WHERE to_dc = %s AND shard = ANY(%s)"
            " AND claimed_at > COALESCE(%s, '-infinity'::timestamptz) GROUP BY shard",
            (to_dc, list(above), since),
        )
        return {s: epoch for s, epoch in rows if epoch > above[s]}

    def controller_state(dc: str) -> dict[str, object]:
        """What a failed wait reports: whom ``dc`` hears, and its claims."""
        health = controllers[dc].health() or {}
        return {k: health.get(k) for k in ("heard", "last_heard_s", "fenced", "claiming")}

    def nobody_writes(p_claims: dict[int, int]) -> None:
        for dc in (p, q):
            mine = ownership(stack, dc)
            assert not any(mine[s][2] for s in moved), f"{dc} writes: {mine}"
        # Were Q's claim to reach P, P would promise it: Q would have its majority.
        assert claims(p, q, p_claims) == {}, f"{p} heard {q}'s claims"

    victim_epochs = {s: scene.before[s][1] for s in of_p}

    with writing(stack, (p, q), moved):
        slow_one_way(stack.topology, q, p, LINK_DELAY_MS)
        try:
            controllers[victim].kill()
            kill_dc(stack.run_dir, victim)
            try:
                wait_until(
                    lambda: bool(claims(p, p, victim_epochs)),
                    TIMEOUT_S + 15,
                    lambda: f"{p} claims shards of {victim}; {p}: {controller_state(p)}",
                )
                # Q claims only once P, cut off, fences itself. A claim of Q's from before the
                # cut means P had fenced itself already (T without hearing Q): another drill.
                cut_at = datetime.now(UTC)
                cut_one_way(stack.topology, q, p)
                p_claims = claims(p, p, victim_epochs)
                wait_until(
                    lambda: bool(claims(q, q, p_claims, since=cut_at)),
                    TIMEOUT_S + 15,
                    lambda: (
                        f"{q} claims what {p} claimed, higher, after the cut; {q}:"
                        f" {controller_state(q)}, {p}: {controller_state(p)}"
                    ),
                )
                holds_for(lambda: nobody_writes(p_claims), 3)
            finally:
                heal(stack.topology, q)
            wait_until(
                lambda: taken_over(stack, [p, q], moved, victim),
                90,
                f"the shards of {victim} taken over after the heal",
            )
        finally:
            start_dc(stack.run_dir, victim)
        controllers[victim] = controller(stack, victim)
        after = ownership(stack, p)
        wait_demoted(stack, scene, after)

    # The higher claim won wherever two were made.
    highest = dict(
        fetch_all(
            stack.dc(p).database,
            "SELECT shard, max(epoch) FROM ownership_claims WHERE shard = ANY(%s) GROUP BY shard",
            (moved,),
        )
    )
    assert {s: after[s][1] for s in moved} == highest
    assert interleaved(stack, moved, scene.since) == []
    wait_until(lambda: hears_all(controllers), 90, "all hear all again")
    for worker, status in terminate_all(controllers.values()):
        assert status == 0, worker.output()[-2000:]
