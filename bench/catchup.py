"""Catch-up benchmark: how long a DC's applier takes to apply a backlog after an outage, and
whether it holds the backlog in memory.

DC ``dc``'s applier is not running while the DCs whose shards it replicates write ``events``
events in all (COPY into their outboxes, split by their shards' count; relay workers publish
them and MirrorMaker 2 copies them into ``dc``'s mirrored topics). Once every copy is there
the relays stop, so that they take no CPU from the applier, and ``dc``'s applier starts as
a worker process, as in production: the figure is the time from its start until its lag is
zero (``applied_offsets`` at every mirrored topic's high watermark), and the events per
second over that time. Meanwhile the resident memory of the stack's processes and the
applier's is sampled every second; the applier's own peak is its ``VmHWM``. The baseline is
the stack's memory before the applier started: their ratio stays near 1 when the applier
streams the backlog instead of holding it.

The backlog is what the mirrored topics hold beyond ``applied_offsets``: with events left
unapplied before the run, it is more than ``events``, and the rate counts all of it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import psycopg2.extensions
from confluent_kafka.admin import AdminClient

from bench.load import load_outbox
from bench.procfs import status_kb
from bench.stack import resident_memory_mb
from bench.workers import start_worker, wait_mirrored, wait_outbox_empty
from consumer.applier import replicated_topics
from pipeline.admin import end_offsets
from pipeline.db import connect
from pipeline.errors import PipelineError
from pipeline.stack.processes import is_running, recorded_workers, stop
from pipeline.stack.security import StackSecurity, client_settings
from pipeline.topology import Topology

__all__ = ["Catchup", "bench_catchup"]

#: Seconds between two looks at the applier's lag, and between two memory samples.
_LAG_EVERY_S = 0.1
_MEMORY_EVERY_S = 1.0
_PROGRESS_EVERY_S = 5.0


@dataclass(frozen=True, slots=True)
class Catchup:
    """A catch-up of ``backlog`` events (``written`` of them by this run) in ``seconds`` (s),
    memory in MiB."""

    dc: str
    written: int
    backlog: int
    seconds: float
    applier_peak_mb: float
    stack_before_mb: float
    stack_peak_mb: float

    @property
    def events_per_s(self) -> float:
        return self.backlog / self.seconds


def _split(total: int, shares: Mapping[str, int]) -> dict[str, int]:
    """``total`` split over ``shares`` in proportion, every unit given out."""
    whole = sum(shares.values())
    split = {name: total * share // whole for name, share in shares.items()}
    first = next(iter(split))
    split[first] += total - sum(split.values())
    return split


def _timeout_s(events: int) -> float:
    """A bound for one phase over ``events``: two minutes plus 2 ms per event (500 events/s,
    a tenth of what the slowest part does on a 2-core machine)."""
    return 120.0 + events / 500.0


def _lag(cur: psycopg2.extensions.cursor, ends: Mapping[str, int]) -> int:
    """Records of the mirrored topics beyond what the applier stored as applied."""
    cur.execute("SELECT topic, next_offset FROM applied_offsets WHERE partition = 0")
    applied = dict(cur.fetchall())
    return sum(max(0, end - int(applied.get(topic, 0))) for topic, end in ends.items())


def _throttled(progress: Callable[[str], None]) -> Callable[[str], None]:
    """``progress``, passing on at most one line per ``_PROGRESS_EVERY_S``."""
    last = -math.inf

    def say(line: str) -> None:
        nonlocal last
        if time.monotonic() - last >= _PROGRESS_EVERY_S:
            last = time.monotonic()
            progress(line)

    return say


def _publish(
    topology: Topology,
    dc: str,
    sources: Mapping[str, list[int]],
    events: int,
    progress: Callable[[str], None],
) -> None:
    """Write ``events`` into the sources' outboxes, publish them with relay workers and wait
    until MirrorMaker 2 has copied them into ``dc``; the relays are stopped after."""
    counts = _split(events, {source: len(shards) for source, shards in sources.items()})
    say = _throttled(progress)
    for source, shards in sources.items():

        def loaded(n: int, source: str = source) -> None:
            say(f"catchup: {n:,} of {counts[source]:,} events in {source}'s outbox")

        load_outbox(topology.dc(source).database, source, shards, counts[source], progress=loaded)
    relays = [start_worker("relay", source, topology) for source in sources]
    try:
        for source, shards in sources.items():
            progress(f"catchup: {source}'s relay publishing {counts[source]:,} events")
            wait_outbox_empty(topology.dc(source).database, _timeout_s(counts[source]))
            progress(f"catchup: MirrorMaker 2 copying {source}'s shards into {dc}")
            wait_mirrored(topology, source, shards, replica=dc, timeout_s=_timeout_s(events))
    finally:
        for relay in relays:
            stop(relay)


def bench_catchup(
    topology: Topology,
    run_dir: Path,
    dc: str = "dc1",
    *,
    events: int = 1_000_000,
    progress: Callable[[str], None] = lambda _: None,
) -> Catchup:
    """Write ``events`` for ``dc`` to replicate while its applier is stopped, then time its
    catch-up. No applier of ``dc`` may be running (this one would share the work)."""
    # Each source writes the shards it owns that dc replicates: a flow also carries shards
    # dc owns itself (for after a failover), which the source's relay would never publish.
    sources = {
        source: owned
        for source, shared in topology.replicated_by(dc).items()
        if (owned := [s for s in shared if topology.initial_owner(s) == source])
    }
    if not sources:
        raise PipelineError(f"{dc} replicates no shard of another DC")
    running = [
        r.name for r in recorded_workers(run_dir, dc) if "applier" in r.name and is_running(r)
    ]
    if running:
        raise PipelineError(f"an applier of {dc} is running ({', '.join(running)}): stop it")
    site = topology.dc(dc)
    _publish(topology, dc, sources, events, progress)

    kafka = client_settings(StackSecurity.of_topology(topology), site, "coopr-bench-catchup")
    topics = replicated_topics(topology, dc)
    ends = end_offsets(AdminClient(kafka.admin()), topics, kafka.request_timeout_ms / 1000.0)
    if missing := sorted(set(topics) - set(ends)):
        raise PipelineError(f"no high watermark of {', '.join(missing)} in {dc}")
    before_mb, _ = resident_memory_mb(run_dir)
    # One connection for the whole watch: a new one per look would take CPU from the applier.
    watch = connect(site.database)
    watch.autocommit = True
    try:
        with watch.cursor() as cur:
            backlog = _lag(cur, ends)
            progress(f"catchup: {dc}'s applier starting on a backlog of {backlog:,} events")
            applier = start_worker("applier", dc, topology)
            start = time.monotonic()
            peak_mb = before_mb
            sampled = start
            say = _throttled(progress)
            try:
                while (left := _lag(cur, ends)) > 0:
                    now = time.monotonic()
                    if now - start > _timeout_s(backlog):
                        raise PipelineError(
                            f"{dc}'s applier still had {left:,} events to apply after"
                            f" {_timeout_s(backlog):.0f} s"
                        )
                    if now - sampled >= _MEMORY_EVERY_S:
                        stack_mb, _ = resident_memory_mb(run_dir)
                        peak_mb = max(peak_mb, stack_mb + status_kb(applier.pid, "VmRSS") / 1024)
                        sampled = now
                    say(f"catchup: {backlog - left:,} of {backlog:,} events applied")
                    time.sleep(_LAG_EVERY_S)
                seconds = time.monotonic() - start
                applier_peak_mb = status_kb(applier.pid, "VmHWM") / 1024
                stack_mb, _ = resident_memory_mb(run_dir)
                peak_mb = max(peak_mb, stack_mb + status_kb(applier.pid, "VmRSS") / 1024)
            finally:
                stop(applier)
    finally:
        watch.close()
    return Catchup(dc, events, backlog, seconds, applier_peak_mb, before_mb, peak_mb)
