"""Relay and applier workers as separate processes, as production runs them, for a benchmark,
and waiting for what they do.

Their logs (warnings and errors only) go to ``coopr-bench-<worker>-<dc>.log`` in the system's
temporary folder, so a benchmark that fails leaves the workers' side of the story behind.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.admin import high_watermark
from pipeline.db import connect
from pipeline.errors import PipelineError
from pipeline.kafka_config import KafkaSettings
from pipeline.stack.processes import ProcessRecord, spawn
from pipeline.stack.security import StackSecurity, client_settings
from pipeline.topics import mirrored, shard_topic
from pipeline.topology import Topology

__all__ = ["start_worker", "wait_mirrored", "wait_outbox_empty", "wait_until"]


def start_worker(kind: str, dc: str, topology: Topology, *options: str) -> ProcessRecord:
    """Start ``coopr-pipeline worker <kind> --dc <dc>`` on ``topology``'s file, with ``options``
    (and its credentials on a secured stack).

    Stop it with :func:`pipeline.stack.processes.stop`.
    """
    name = f"bench-{kind}-{dc}"
    argv = [sys.executable, "-m", "cli", "--log-level", "warning", "worker", kind, "--dc", dc]
    argv += ["--topology", topology.source, *options]
    security = StackSecurity.of_topology(topology)
    env = None if security is None else security.worker_environ(kind, dc)
    log = Path(tempfile.gettempdir()) / f"coopr-{name}.log"
    return spawn(name, argv, log=log, ports=(), env=env)


def wait_until(
    check: Callable[[], bool], timeout_s: float, what: str, *, interval_s: float = 0.2
) -> float:
    """Poll ``check`` every ``interval_s`` s until true; seconds taken. Raises after
    ``timeout_s`` s."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_s:
            raise PipelineError(f"not within {timeout_s:g} s: {what}")
        time.sleep(interval_s)
    return time.monotonic() - start


def wait_outbox_empty(dsn: str, timeout_s: float) -> None:
    """Wait until every row of the outbox at ``dsn`` is published; raises after ``timeout_s``.
    Looks every 20 ms: a throughput run ends when the outbox is empty, so the look's period
    is the figure's resolution."""
    # One connection for the whole wait: a new one per look would take CPU from the relay.
    conn = connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:

            def empty() -> bool:
                cur.execute("SELECT NOT EXISTS (SELECT 1 FROM outbox WHERE published_at IS NULL)")
                return bool((cur.fetchone() or (False,))[0])

            wait_until(empty, timeout_s, "the outbox drained", interval_s=0.02)
    finally:
        conn.close()


def wait_mirrored(
    topology: Topology,
    source: str,
    shards: list[int],
    *,
    replica: str | None = None,
    timeout_s: float = 180.0,
) -> None:
    """Wait until MirrorMaker 2 has copied ``source``'s ``shards`` to ``replica`` (default:
    each shard's first replica) up to their current end, so that its work for one phase does
    not take CPU from the next."""
    security = StackSecurity.of_topology(topology)
    owner = client_settings(security, topology.dc(source), "coopr-bench")
    start = time.monotonic()
    for shard in shards:
        target = topology.dc(replica or topology.replica_list(shard)[0])
        copy = client_settings(security, target, "coopr-bench")
        end = high_watermark(owner, shard_topic(shard))
        topic = mirrored(source, shard_topic(shard))

        def copied(copy: KafkaSettings = copy, topic: str = topic, end: int = end) -> bool:
            return high_watermark(copy, topic) >= end

        left = max(0.0, timeout_s - (time.monotonic() - start))
        wait_until(copied, left, f"MirrorMaker 2 copying {topic} into {target.name}")
