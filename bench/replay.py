"""Replay benchmark: ``coopr-pipeline replay`` against the applier, on the same events, same run.

``count`` real events of one shard (their seqs given by the owner's outbox) are published in
the owner DC; a relay sends them to Kafka and MirrorMaker 2 copies them to the replica's.
Then the replica's applier (a worker process, started once they are all there) applies them:
its rate counts from the first offset it stores past the start to the last, so its start-up
and group join are left out. The applier is stopped, the replica's rows of those clusters
deleted, and ``replay --from-offset`` (a subprocess, as an operator runs it) applies them
again: its rate is the events it applied over the seconds its own summary reports (reading
and applying; process start-up left out, as on the applier's side).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass

from bench.load import publish_at_rate
from bench.workers import start_worker, wait_until
from pipeline.admin import high_watermark
from pipeline.db import connect, fetch_all
from pipeline.errors import PipelineError
from pipeline.stack.processes import stop
from pipeline.stack.security import StackSecurity, client_settings
from pipeline.topics import mirrored, shard_topic
from pipeline.topology import Topology

__all__ = ["ReplayRate", "bench_replay"]

#: Events per outbox transaction, and per second, while the topic is filled.
_PER_TRANSACTION = 100
_FILL_PER_S = 1000.0


@dataclass(frozen=True, slots=True)
class ReplayRate:
    """Events per second applied by the applier and by a replay of the same events."""

    events: int
    applier_per_s: float
    replay_per_s: float


def bench_replay(topology: Topology, owner: str, *, count: int) -> ReplayRate:
    """Both rates over ``count`` events of ``owner``'s highest shard, in its first replica."""
    shard = max(topology.owned_shards(owner))
    replica = topology.replica_list(shard)[0]
    topic = mirrored(owner, shard_topic(shard))
    kafka = client_settings(
        StackSecurity.of_topology(topology), topology.dc(replica), "coopr-bench-replay"
    )
    start = high_watermark(kafka, topic)
    relay = start_worker("relay", owner, topology, "--poll-interval", "0.05")
    try:
        # A rate this machine reaches, so that every event is written (the fill is not timed).
        committed, _ = publish_at_rate(
            topology.dc(owner).database,
            [shard],
            rate=_FILL_PER_S,
            seconds=count / _FILL_PER_S,
            writers=2,
            per_transaction=_PER_TRANSACTION,
        )
        if len(committed) != count:
            raise PipelineError(f"only {len(committed)} of {count} events were published")
        wait_until(
            lambda: high_watermark(kafka, topic) >= start + count, 300, "the events mirrored"
        )
    finally:
        stop(relay)
    stop_offset = high_watermark(kafka, topic)
    applier_per_s = _applier_rate(topology, replica, topic, start, stop_offset)
    fetch_all(
        topology.dc(replica).database,
        "DELETE FROM replica_clusters WHERE cluster_id = ANY(%s)",
        (list(committed),),
    )
    fetch_all(
        topology.dc(replica).database,
        "DELETE FROM replica_checkpoints WHERE cluster_id = ANY(%s)",
        (list(committed),),
    )
    summary = _replay(topology, replica, shard, owner, start, stop_offset)
    if summary["applied"] < count:
        raise PipelineError(f"the replay applied {summary['applied']} of {count} events")
    return ReplayRate(count, applier_per_s, summary["applied"] / summary["seconds"])


def _applier_rate(topology: Topology, dc: str, topic: str, start: int, end: int) -> float:
    """Events/s of ``dc``'s applier over ``[start, end)`` of ``topic``, from its first stored
    offset past ``start`` to ``end``: the rate of the records after its first batch."""
    applier = start_worker("applier", dc, topology)
    # One connection for the whole watch: a new one per look would take CPU from the applier.
    watch = connect(topology.dc(dc).database)
    watch.autocommit = True
    try:
        first: tuple[int, float] | None = None
        deadline = time.monotonic() + 600
        with watch.cursor() as cur:
            while time.monotonic() < deadline:
                cur.execute("SELECT next_offset FROM applied_offsets WHERE topic = %s", (topic,))
                row = cur.fetchone()
                stored, now = (int(row[0]) if row else 0), time.monotonic()
                if first is None and stored > start:
                    first = (stored, now)
                if stored >= end and first is not None:
                    if stored == first[0]:
                        raise PipelineError(
                            "the applier applied every event in one batch: raise --count"
                        )
                    return (end - first[0]) / (now - first[1])
                time.sleep(0.02)
        raise PipelineError(f"{dc}'s applier did not reach offset {end} of {topic} in 600 s")
    finally:
        watch.close()
        stop(applier)


def _replay(
    topology: Topology, dc: str, shard: int, source: str, start: int, end: int
) -> dict[str, int | float]:
    argv = [sys.executable, "-m", "cli", "replay", "--dc", dc, "--shard", str(shard)]
    argv += ["--source", source, "--from-offset", str(start), "--to-offset", str(end)]
    argv += ["--yes", "--format", "json", "--topology", topology.source]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=900)
    if done.returncode != 0:
        raise PipelineError(f"replay failed: {done.stderr.strip()[-500:]}")
    summary: dict[str, int | float] = json.loads(done.stdout.splitlines()[-1])
    return summary
