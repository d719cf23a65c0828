"""Controllers on the real stack: every DC hears every other through MirrorMaker 2; a DC cut
off by its links is suspected by the others and fences itself; after the heal all hear all
again."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from pipeline.stack.links import heal, partition
from tests.conftest import RunningStack
from tests.workers import WorkerProcess

pytestmark = [pytest.mark.stack, pytest.mark.slow]

TIMEOUT_S = 4.0


@pytest.fixture
def controllers(stack: RunningStack) -> Iterator[dict[str, WorkerProcess]]:
    started = {
        dc.name: WorkerProcess(
            stack.topology_file,
            "worker",
            "controller",
            "--dc",
            dc.name,
            "--interval",
            "0.5",
            "--failure-timeout",
            str(TIMEOUT_S),
        )
        for dc in stack.topology.dcs
    }
    yield started
    for worker in started.values():
        if worker.proc.poll() is None:
            worker.kill()


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> float:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout_s, f"not within {timeout_s} s: {what}"
        time.sleep(0.2)
    return time.monotonic() - start


def hears_all(controllers: dict[str, WorkerProcess]) -> bool:
    for dc, worker in controllers.items():
        health = worker.health() or {}
        if sorted(health.get("heard", [])) != sorted(d for d in controllers if d != dc):
            return False
    return True


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
