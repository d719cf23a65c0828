"""Two data DCs and no witness (``pair_stack``): no majority can form without both, so losing
one stops writes everywhere and moves nothing by itself; the operator's `ownership failover
--yes` moves the lost DC's shards to the other, which then writes alone; when the lost DC
comes back it is demoted and both count in the majority again."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from bench.load import event_for
from pipeline.db import connect
from pipeline.stack.orchestrator import kill_dc, start_dc
from producer.outbox import publish
from tests.conftest import RunningStack
from tests.outbox_helpers import cluster_ids_of
from tests.ownership_helpers import (
    TIMEOUT_S,
    controller,
    controllers_of,
    hears_all,
    ownership,
    wait_until,
    writable_everywhere,
)
from tests.workers import WorkerProcess, terminate_all

pytestmark = [pytest.mark.stack, pytest.mark.slow]


def cli(stack: RunningStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args, "--topology", str(stack.topology_file)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def controllers(pair_stack: RunningStack) -> Iterator[dict[str, WorkerProcess]]:
    with controllers_of(pair_stack) as started:
        yield started


def test_two_dcs_fail_over_only_by_the_operators_decision(
    pair_stack: RunningStack, controllers: dict[str, WorkerProcess]
) -> None:
    stack = pair_stack

    wait_until(lambda: hears_all(controllers), 60, "both controllers hear each other")
    wait_until(lambda: writable_everywhere(stack), 60, "every shard writable at its owner")
    view = ownership(stack, "dc1")
    counts = {dc: sum(1 for o, _, _ in view.values() if o == dc) for dc in controllers}
    lost = max(sorted(counts), key=lambda dc: counts[dc])
    survivor = next(dc for dc in controllers if dc != lost)
    theirs = sorted(s for s, (o, _, _) in view.items() if o == lost)
    assert theirs, view

    controllers[lost].kill()
    kill_dc(stack.run_dir, lost)
    try:
        # No majority without the lost DC: nothing moves, and the survivor fences itself.
        controllers[survivor].wait_health("fenced", True, TIMEOUT_S + 5)
        time.sleep(3)
        after = ownership(stack, survivor)
        assert all(after[s][0] == lost for s in theirs), "moved without the operator"
        assert not any(ok for _, _, ok in after.values()), "a fenced DC kept a lease"

        refused = cli(stack, "ownership", "failover", "--from", lost)
        assert refused.returncode == 2 and "--yes" in refused.stderr
        done = cli(stack, "ownership", "failover", "--from", lost, "--yes", "--timeout", "60")
        assert done.returncode == 0, done.stderr
        print(done.stdout.strip().splitlines()[-1])
        final = ownership(stack, survivor)
        assert all(final[s][::2] == (survivor, True) for s in final), final
        # The survivor writes alone, a moved shard included.
        conn = connect(stack.dc(survivor).database)
        try:
            shard = theirs[0]
            publish(conn, event_for(next(cluster_ids_of(shard, stack.topology.shard_count)), shard))
            conn.commit()
        finally:
            conn.close()
    finally:
        start_dc(stack.run_dir, lost)
    controllers[lost] = controller(stack, lost)
    wait_until(
        lambda: all(ownership(stack, lost)[s][::2] == (survivor, False) for s in theirs),
        60,
        f"{lost} demoted",
    )
    # Heard again, the lost DC is back in the majority and supports the survivor's leases.
    wait_until(
        lambda: (controllers[survivor].health() or {}).get("fenced") is False,
        30,
        "the survivor no longer fenced",
    )
    time.sleep(2 * TIMEOUT_S / 2)
    assert all(ok for _, _, ok in ownership(stack, survivor).values())
    for worker, status in terminate_all(controllers.values()):
        assert status == 0, worker.output()[-2000:]
