"""``coopr-pipeline demo``: the whole pipeline on the local stack, for a while, then a report,
then a failover drill.

In every data DC it starts a controller, a relay, an applier and a stand-in Coopr server
(``simulate``), in a witness DC a controller, as separate processes (logs in
``<run-dir>/logs/demo-*.log``), lets them run for ``duration_s``, and reports per DC what was
published and applied and the replication delay: a replica row's (cluster or checkpoint)
``applied_at`` minus its event's ``occurred_at``. Then the drill
(:func:`bench.failover.drill`): the DC owning the most shards is killed under the same load,
the others take its shards over, it is started again and demoted; the report says what
moved, how long writes to the moved shards were refused, what restarted and what was
orphaned. Every worker is stopped with SIGTERM at the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.failover import FailoverRun, StackWorkers, wait_ready
from bench.failover import drill as run_drill
from cli.render import table
from pipeline.db import connect
from pipeline.logging import get_logger
from pipeline.stats import percentile
from pipeline.topology import Topology

__all__ = ["DemoRow", "drill_report", "run_demo"]

log = get_logger(__name__)

#: Seconds the drill waits for the restarted jobs to complete before it counts them.
_RESTARTS_WAIT_S = 20.0


@dataclass(frozen=True, slots=True)
class DemoRow:
    """One DC's share of the run: events it published, rows it applied, delays in ms."""

    dc: str
    published: int
    applied: int
    p50_ms: float
    p99_ms: float


def run_demo(
    topology: Topology,
    run_dir: Path,
    *,
    duration_s: float = 30.0,
    rate: float = 20.0,
    failure_timeout_s: float = 6.0,
    drill: bool = True,
) -> tuple[list[DemoRow], FailoverRun | None]:
    """Run every worker for ``duration_s`` s at ``rate`` events/s per DC and report; then,
    with ``drill``, the failover drill with controllers' failure timeout ``failure_timeout_s``
    (s), which adds about T + 10 s plus the killed DC's start (``stack start-dc``). Every DC
    of the stack runs at the end; the workers are stopped."""
    since = datetime.now(UTC)
    workers = StackWorkers(topology, run_dir.resolve(), run_dir / "logs", "demo", failure_timeout_s)
    failover = None
    try:
        for i, dc in enumerate(topology.dcs):
            workers.start_dc_workers(dc.name, rate=rate, seed=i)
        deadline = time.monotonic() + duration_s
        while time.monotonic() < deadline:
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
            log.info("demo running", seconds_left=round(max(0.0, deadline - time.monotonic())))
        if not drill:
            for dc in topology.data_dcs:
                workers.stop(dc.name, ("simulate",))
        # Let the last events travel: relay, MirrorMaker 2, applier.
        time.sleep(5.0)
        rows = [_report(dc.name, dc.database, since) for dc in topology.data_dcs]
        if drill:
            wait_ready(workers, load_s=0, timeout_s=60)
            log.info("drill: killing the DC that owns the most shards")
            failover = run_drill(
                workers,
                rate=rate,
                seed=len(topology.data_dcs),
                restarts_timeout_s=_RESTARTS_WAIT_S,
            )
    finally:
        workers.stop_all()
    return rows, failover


def _report(dc: str, dsn: str, since: datetime) -> DemoRow:
    """What ``dc`` published and applied since ``since``, with its replication delays."""
    conn = connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM outbox WHERE created_at >= %s", (since,))
            published = int((cur.fetchone() or (0,))[0])
            cur.execute(
                "SELECT extract(epoch FROM applied_at - occurred_at) * 1000"
                " FROM replica_clusters WHERE applied_at >= %s"
                " UNION ALL"
                " SELECT extract(epoch FROM applied_at - occurred_at) * 1000"
                " FROM replica_checkpoints WHERE applied_at >= %s",
                (since, since),
            )
            delays_ms = [float(d) for (d,) in cur.fetchall()]
    finally:
        conn.close()
    return DemoRow(
        dc, published, len(delays_ms), percentile(delays_ms, 0.5), percentile(delays_ms, 0.99)
    )


def drill_report(run: FailoverRun, failure_timeout_s: float) -> list[str]:
    """The drill in lines: what moved, how long writes to it were refused, what restarted,
    what was orphaned."""
    return [
        f"drill: {run.victim} killed under load (failure timeout {failure_timeout_s:g} s);"
        f" its {len(run.moved)} shards moved:",
        table(
            ["SHARD", "OLD OWNER", "OLD EPOCH", "NEW OWNER", "NEW EPOCH"],
            [[s, old, e0, new, e1] for s, (old, new, e0, e1) in sorted(run.moved.items())],
        ),
        f"writes to the moved shards refused from the kill to the first write accepted by"
        f" the new owner: {run.first_write_s:.1f} s (every moved shard: {run.all_writes_s:.1f} s)",
        f"jobs in flight restarted at the new owners: {run.restarts} requested,"
        f" {run.resumed} resumed, {run.completed} completed",
        f"orphaned: {run.orphans} events {run.victim} committed beyond the cuts (in flight at"
        f" the kill, about {run.victim_rate:.1f} events/s x {run.delay_ms:.0f} ms mirror delay"
        f" = {run.expected_loss:.0f}); list them: coopr-pipeline ownership orphans --dc"
        f" {run.victim}",
        f"{run.victim} is running again, demoted for those shards",
    ]
