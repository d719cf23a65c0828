"""What the ownership tests share: controllers as subprocesses, ownership as one DC's database
has it, and a bounded wait."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

from pipeline.db import fetch_all
from tests.conftest import RunningStack
from tests.workers import WorkerProcess

#: The failure timeout the tests' controllers run with, in seconds (default 10).
TIMEOUT_S = 6.0

#: Per shard: owner, epoch, and whether it accepts writes (writable under a running lease).
Ownership = dict[int, tuple[str, int, bool]]


def controller(stack: RunningStack, dc: str) -> WorkerProcess:
    """``worker controller`` of ``dc``: heartbeats every 0.5 s, :data:`TIMEOUT_S`."""
    return WorkerProcess(
        stack.topology_file,
        *("worker", "controller", "--dc", dc, "--interval", "0.5"),
        *("--failure-timeout", str(TIMEOUT_S)),
        env=stack.worker_env("controller", dc),
    )


@contextmanager
def controllers_of(stack: RunningStack) -> Iterator[dict[str, WorkerProcess]]:
    """A controller in every DC of ``stack``; those still running at the end are killed."""
    started = {dc.name: controller(stack, dc.name) for dc in stack.topology.dcs}
    try:
        yield started
    finally:
        for worker in started.values():
            if worker.proc.poll() is None:
                worker.kill()


def ownership(stack: RunningStack, dc: str) -> Ownership:
    """Every shard as ``dc``'s database has it."""
    rows = fetch_all(
        stack.dc(dc).database,
        "SELECT shard, owner_dc, epoch, writable AND lease_until > clock_timestamp()"
        " FROM shard_ownership",
    )
    return {s: (owner, epoch, ok) for s, owner, epoch, ok in rows}


def busiest(view: Ownership, dcs: Iterable[str]) -> tuple[str, list[int]]:
    """The DC of ``dcs`` owning the most shards in ``view`` (the first by name on a tie), and
    those shards: the victim a drill picks, so that a failure moves as much as it can."""
    counts = {dc: sum(1 for o, _, _ in view.values() if o == dc) for dc in sorted(dcs)}
    victim = max(counts, key=lambda dc: counts[dc])
    return victim, sorted(s for s, (o, _, _) in view.items() if o == victim)


def writable_everywhere(stack: RunningStack) -> bool:
    """Every shard accepts writes at its owner, as the owner sees it."""
    data = [dc.name for dc in stack.topology.data_dcs]
    views = {dc: ownership(stack, dc) for dc in data}
    return all(
        views[owner][s] == (owner, epoch, True) for s, (owner, epoch, _) in views[data[0]].items()
    )


def taken_over(
    stack: RunningStack, survivors: Sequence[str], moved: Sequence[int], victim: str
) -> bool:
    """Every shard of ``moved`` is writable at a new owner other than ``victim``, and every
    survivor agrees on that owner and epoch."""
    views = {dc: ownership(stack, dc) for dc in survivors}
    for s in moved:
        owner, epoch, _ = views[survivors[0]][s]
        if owner == victim or views[owner][s] != (owner, epoch, True):
            return False
        if any(views[dc][s][:2] != (owner, epoch) for dc in survivors):
            return False
    return True


def hears_all(controllers: dict[str, WorkerProcess]) -> bool:
    """Every controller is past its start and hears every other DC."""
    for dc, worker in controllers.items():
        health = worker.health() or {}
        if health.get("starting", True):
            return False  # a controller that just started counts every DC as heard
        if sorted(health.get("heard", [])) != sorted(d for d in controllers if d != dc):
            return False
    return True


def wait_until(check: Callable[[], bool], timeout_s: float, what: str | Callable[[], str]) -> float:
    """Poll ``check`` every 0.2 s until it holds; seconds taken. Fails after ``timeout_s``
    saying ``what`` (called then, when a callable: the state that kept ``check`` false)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start >= timeout_s:
            raise AssertionError(f"not within {timeout_s} s: {what() if callable(what) else what}")
        time.sleep(0.2)
    return time.monotonic() - start


def holds_for(check: Callable[[], None], seconds: float) -> None:
    """Run ``check`` (which asserts) every 0.5 s for ``seconds``: a state that must last."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        check()
        time.sleep(0.5)
