"""Load for the benchmarks: writers publishing events at a fixed rate, as Coopr servers would.

Each writer thread has its own connection and commits ``per_transaction`` events at a time;
after each commit it notes the commit time (s since the epoch) under each event's cluster ID,
which is unique per event, so a benchmark can follow every event downstream.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from bench.codec import sample_operation_completed
from pipeline.db import connect
from pipeline.events import OperationCompleted
from producer.outbox import publish

__all__ = ["event_for", "publish_at_rate"]


def event_for(cluster_id: str, shard: int, **fields: Any) -> OperationCompleted:
    """A realistic OperationCompleted (2 nodes, ~1.2 KB encoded) of cluster ``cluster_id``,
    its job ``<cluster_id>-001``, in ``shard``; ``fields`` override envelope fields."""
    sample = sample_operation_completed(node_count=2)
    return dataclasses.replace(
        sample,
        shard=shard,
        cluster=dataclasses.replace(sample.cluster, id=cluster_id),
        job=dataclasses.replace(sample.job, cluster_id=cluster_id, id=f"{cluster_id}-001"),
        **fields,
    )


def publish_at_rate(
    dsn: str,
    shards: list[int],
    *,
    rate: float,
    seconds: float,
    writers: int = 8,
    per_transaction: int = 1,
    start_in_s: float = 0.0,
) -> tuple[dict[str, float], float]:
    """Publish at ``rate`` events/s for ``seconds``; returns (commit time by cluster ID, the
    rate achieved). Writers that fall behind stop when the time is up, so a rate this machine
    cannot reach shows as a lower achieved rate, not as a longer run."""
    run = uuid.uuid4().hex[:6]
    total = int(rate * seconds)
    committed: dict[str, float] = {}
    lock = threading.Lock()
    start = time.monotonic() + start_in_s

    def write(index: int) -> None:
        conn = connect(dsn)
        try:
            for first in range(index * per_transaction, total, writers * per_transaction):
                pause = start + first / rate - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                elif time.monotonic() > start + seconds:
                    return  # behind schedule when time is up: the rate was not reachable
                keys = []
                with conn:
                    for i in range(first, min(first + per_transaction, total)):
                        cluster_id = f"r{run}{i:08d}"
                        keys.append(cluster_id)
                        event = event_for(
                            cluster_id, shards[i % len(shards)], occurred_at=datetime.now(UTC)
                        )
                        publish(conn, event)
                now = time.time()
                with lock:
                    committed.update((k, now) for k in keys)
        finally:
            conn.close()

    threads = [threading.Thread(target=write, args=(w,), daemon=True) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(start_in_s + seconds * 10 + 60)
    return committed, len(committed) / max(1e-9, time.monotonic() - start)
