"""Two data DCs and a witness (``witness_stack``): the witness has a broker and a controller,
no database and no shards, and makes a majority of three with either data DC. A data DC
killed loses its shards to the other automatically; the witness's promises survive a restart
of its controller."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from controller.report import latest_heartbeats
from pipeline.stack.orchestrator import kill_dc, start_dc
from tests.conftest import RunningStack
from tests.ownership_helpers import (
    TIMEOUT_S,
    busiest,
    controller,
    controllers_of,
    hears_all,
    ownership,
    wait_until,
    writable_everywhere,
)
from tests.workers import WorkerProcess

pytestmark = [pytest.mark.stack, pytest.mark.slow]


@pytest.fixture
def controllers(witness_stack: RunningStack) -> Iterator[dict[str, WorkerProcess]]:
    with controllers_of(witness_stack) as started:
        yield started


def test_a_data_dc_killed_fails_over_to_the_other_with_the_witness_as_majority(
    witness_stack: RunningStack, controllers: dict[str, WorkerProcess]
) -> None:
    stack = witness_stack
    data = [dc.name for dc in stack.topology.data_dcs]
    witness = next(dc.name for dc in stack.topology.dcs if dc.witness)

    wait_until(lambda: hears_all(controllers), 60, "every controller hears every other")
    wait_until(lambda: writable_everywhere(stack), 60, "every shard writable at its owner")
    controllers[witness].wait_health("active", True, 30)
    assert (controllers[witness].health() or {}).get("owned") == []

    # Earlier tests on this stack may have moved shards: the DC owning the most is killed.
    lost, theirs = busiest(ownership(stack, data[0]), data)
    survivor = next(dc for dc in data if dc != lost)
    controllers[lost].kill()
    kill_dc(stack.run_dir, lost)
    killed_at = time.monotonic()
    try:
        wait_until(
            lambda: all(ownership(stack, survivor)[s][::2] == (survivor, True) for s in theirs),
            TIMEOUT_S + 15,
            f"{survivor} takes the shards of {lost}",
        )
        print(
            f"{len(theirs)} shards taken over {time.monotonic() - killed_at:.1f} s after the kill"
        )
        # The survivor hears the witness: a majority, not fenced; every shard writable.
        assert all(ok for _, _, ok in ownership(stack, survivor).values())
        heard = (controllers[witness].health() or {}).get("heard")
        assert heard == [survivor], heard
        # The witness restarts: its promises come back from its own latest heartbeat.
        epochs = {s: ownership(stack, survivor)[s][1] for s in theirs}
        controllers[witness].terminate()
        controllers[witness] = controller(stack, witness)
        controllers[witness].wait_health("active", True, 30)
        time.sleep(2)
        latest = latest_heartbeats(stack.kafka(witness), stack.topology, witness)[witness]
        kept = {p.shard: p.epoch for p in latest.promises}
        assert {s: kept.get(s) for s in theirs} == epochs
    finally:
        start_dc(stack.run_dir, lost)
    controllers[lost] = controller(stack, lost)
    after = ownership(stack, survivor)
    wait_until(
        lambda: all(ownership(stack, lost)[s] == (survivor, after[s][1], False) for s in theirs),
        60,
        f"{lost} demoted",
    )
    for worker in controllers.values():
        assert worker.terminate() == 0, worker.output()[-2000:]
