"""``coopr-pipeline demo``: the whole pipeline on the local stack, for a while, then a report.

In every data DC it starts a relay, an applier and a stand-in Coopr server (``simulate``) as
separate processes (logs in ``<run-dir>/logs/demo-*.log``), lets them run for ``duration_s``,
stops them with SIGTERM, and reports per DC what was published and applied and the
replication delay: a replica row's (cluster or checkpoint) ``applied_at`` minus its event's
``occurred_at``.
"""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pipeline.db import connect
from pipeline.logging import get_logger
from pipeline.stack.processes import ProcessRecord, forget_worker, record_worker, spawn, stop
from pipeline.stats import percentile
from pipeline.topology import Topology

__all__ = ["DemoRow", "run_demo"]

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class DemoRow:
    """One DC's share of the run: events it published, rows it applied, delays in ms."""

    dc: str
    published: int
    applied: int
    p50_ms: float
    p99_ms: float


def _workers(
    topology: Topology, topology_file: Path, run_dir: Path, rate: float, duration_s: float
) -> list[ProcessRecord]:
    """Start every DC's workers, each recorded with its DC so that ``stack kill-dc`` kills it."""
    cli = [sys.executable, "-m", "cli", "--log-json"]
    started = []
    for i, dc in enumerate(topology.data_dcs):
        for name, args in (
            ("relay", ["worker", "relay", "--dc", dc.name]),
            ("applier", ["worker", "applier", "--dc", dc.name]),
            (
                "simulate",
                [
                    "simulate",
                    "--dc",
                    dc.name,
                    "--rate",
                    str(rate),
                    "--duration",
                    str(duration_s),
                    "--seed",
                    str(i),
                ],
            ),
        ):
            argv = [*cli, *args, "--topology", str(topology_file)]
            worker = f"demo-{name}-{dc.name}"
            record = spawn(worker, argv, log=run_dir / "logs" / f"{worker}.log", ports=())
            record_worker(run_dir, dc.name, record)
            started.append(record)
    return started


def run_demo(
    topology: Topology,
    topology_file: Path,
    run_dir: Path,
    *,
    duration_s: float = 30.0,
    rate: float = 20.0,
) -> list[DemoRow]:
    """Run every worker for ``duration_s`` seconds at ``rate`` events/s per DC; report."""
    since = datetime.now(UTC)
    workers = _workers(topology, topology_file, run_dir, rate, duration_s)
    try:
        deadline = time.monotonic() + duration_s
        while time.monotonic() < deadline:
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
            log.info("demo running", seconds_left=round(max(0.0, deadline - time.monotonic())))
        # Let the last events travel: relay, MirrorMaker 2, applier.
        time.sleep(5.0)
    finally:
        for record in workers:
            stop(record, sig=signal.SIGTERM, timeout_s=60)
            forget_worker(run_dir, record.name)
    return [_report(dc.name, dc.database, since) for dc in topology.data_dcs]


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
