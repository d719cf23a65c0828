"""Writing realistic events into a DC's outbox, as a Coopr server would, for tests."""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections.abc import Iterator

from bench.load import event_for
from pipeline.db import connect, fetch_all
from pipeline.events import ClusterStatus, OperationCompleted
from pipeline.shards import shard_of
from producer.outbox import Published, publish


def cluster_ids_of(shard: int, shard_count: int, start: int = 0) -> Iterator[str]:
    """Endless cluster IDs (``%08d``, from number ``start``) whose shard is ``shard``."""
    ids = (f"{n:08d}" for n in itertools.count(start))
    return (c for c in ids if shard_of(c, shard_count) == shard)


#: Where tests number the clusters of :func:`inert_event` on stacks that stand-in servers
#: share: far above the servers' IDs. Tests write such events straight into an outbox, with
#: no live row at the writer (no server writes them), so replica comparisons leave them out.
INERT_IDS_FROM = 80_000_000


def inert_event(cluster_id: str, shard: int) -> OperationCompleted:
    """An event that deletes ``cluster_id``; numbered from :data:`INERT_IDS_FROM`, no server
    ever picks its cluster for a job, even once a takeover has promoted it into the live
    tables."""
    event = event_for(cluster_id, shard)
    deleted = dataclasses.replace(event.cluster, status=ClusterStatus.TERMINATED)
    return dataclasses.replace(event, cluster=deleted, cluster_deleted=True)


def shard_backlog(dsn: str, shard: int) -> int:
    """Rows of ``shard`` in the outbox at ``dsn`` that the relay has not marked published."""
    rows = fetch_all(
        dsn, "SELECT count(*) FROM outbox WHERE published_at IS NULL AND shard = %s", (shard,)
    )
    return int(rows[0][0])


def publish_events(
    dsn: str, shard: int, shard_count: int, count: int, *, inert_from: int | None = None
) -> list[Published]:
    """Publish ``count`` events for ``shard``, one transaction each; with ``inert_from``,
    :func:`inert_event` of clusters numbered from there."""
    conn = connect(dsn)
    out = []
    ids = cluster_ids_of(shard, shard_count, inert_from or 0)
    try:
        for cluster_id in itertools.islice(ids, count):
            event = event_for(cluster_id, shard) if inert_from is None else None
            with conn:
                out.append(publish(conn, event or inert_event(cluster_id, shard)))
    finally:
        conn.close()
    return out


class EventWriter(threading.Thread):
    """Publishes events round-robin over ``shards`` at about ``rate`` per second until stopped."""

    def __init__(self, dsn: str, shards: list[int], shard_count: int, rate: float):
        super().__init__(daemon=True)
        self.dsn, self.shards, self.shard_count, self.rate = dsn, shards, shard_count, rate
        self.published: list[Published] = []
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        conn = connect(self.dsn)
        ids = {s: cluster_ids_of(s, self.shard_count, start=10_000_000) for s in self.shards}
        start = time.monotonic()
        try:
            for i in itertools.count():
                if self.halt.is_set() or time.monotonic() - start > 300:
                    return
                shard = self.shards[i % len(self.shards)]
                with conn:
                    self.published.append(publish(conn, event_for(next(ids[shard]), shard)))
                time.sleep(max(0.0, start + (i + 1) / self.rate - time.monotonic()))
        except BaseException as e:  # surfaced by the test after join()
            self.error = e
        finally:
            conn.close()

    def finish(self) -> list[Published]:
        self.halt.set()
        self.join(30)
        if self.error is not None:
            raise self.error
        return self.published
