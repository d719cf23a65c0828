"""Load for the benchmarks: writers publishing events at a fixed rate, as Coopr servers would,
and a bulk load of an outbox for throughput runs.

Each writer thread has its own connection and commits ``per_transaction`` events at a time;
after each commit it notes the commit time (s since the epoch) under each event's cluster ID,
which is unique per event, so a benchmark can follow every event downstream.
"""

from __future__ import annotations

import dataclasses
import io
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from bench.codec import sample_operation_completed
from pipeline.codec import encode
from pipeline.db import connect
from pipeline.events import OperationCompleted
from producer.outbox import OUTBOX_CHANNEL, publish

__all__ = ["event_for", "load_outbox", "outbox_payload", "publish_at_rate"]


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


#: Rows per COPY while loading an outbox: a million events at once would be gigabytes of text.
_COPY_ROWS = 10_000


def _cluster_id(run: str, shard: int, seq: int) -> str:
    return f"{run}{shard:02d}{seq:09d}"


def outbox_payload(
    shard: int, owner_dc: str, epoch: int = 1, seq: int = 1, *, cluster_id: str | None = None
) -> bytes:
    """The encoded event :func:`load_outbox` writes at ``(epoch, seq)``; without
    ``cluster_id``, of a made-up cluster whose ID is as long as the loaded ones' (same size)."""
    cluster_id = cluster_id or _cluster_id("0000", shard, seq)
    return encode(event_for(cluster_id, shard, owner_dc=owner_dc, epoch=epoch, seq=seq))


def load_outbox(
    dsn: str,
    dc: str,
    shards: list[int],
    count: int,
    *,
    progress: Callable[[int], None] = lambda _: None,
) -> None:
    """COPY ``count`` distinct events (a cluster each, ``outbox_payload``) into DC ``dc``'s
    outbox, round-robin over ``shards``, each with the next seq of its shard, as
    :func:`producer.outbox.publish` would write them (and notifying the relay); one
    transaction. ``progress`` hears the rows loaded so far after each COPY."""
    run = uuid.uuid4().hex[:4]
    per_shard = Counter(shards[i % len(shards)] for i in range(count))
    loaded = 0
    conn = connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            for shard, n in per_shard.items():
                cur.execute(
                    "UPDATE shard_ownership SET last_seq = last_seq + %s WHERE shard = %s"
                    " RETURNING epoch, last_seq",
                    (n, shard),
                )
                epoch, last = cur.fetchone() or (0, 0)
                for first in range(last - n + 1, last + 1, _COPY_ROWS):
                    buf = io.StringIO()
                    for seq in range(first, min(first + _COPY_ROWS, last + 1)):
                        cluster_id = _cluster_id(run, shard, seq)
                        payload = outbox_payload(shard, dc, epoch, seq, cluster_id=cluster_id)
                        buf.write(
                            f"{shard}\t{epoch}\t{seq}\tOperationCompleted\t{cluster_id}"
                            f"\t\\\\x{payload.hex()}\n"
                        )
                    buf.seek(0)
                    cur.copy_from(
                        buf,
                        "outbox",
                        columns=("shard", "epoch", "seq", "event_type", "event_key", "payload"),
                    )
                    loaded += min(_COPY_ROWS, last + 1 - first)
                    progress(loaded)
            # As publish does: a running relay wakes at the commit, not at its next poll.
            cur.execute(f"NOTIFY {OUTBOX_CHANNEL}")
    finally:
        conn.close()
