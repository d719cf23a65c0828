"""The replica rows a batch produces, without a database: the newest event wins, whatever the
order the events were read in; and, on the real stack's replica database, what a batch
applies, holds back or fences once claims are recorded."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest

from bench.load import event_for
from consumer.dlq import RefusedRecord
from consumer.sequencing import Position
from consumer.store import Incoming, apply_batch, rows_of
from pipeline.codec import decode_record, encode
from pipeline.db import connect, fetch_all
from pipeline.events import ClusterStatus, OperationCompleted, RestartCheckpoint, json_ready
from pipeline.topics import mirrored, shard_topic
from tests.claim_helpers import Claims
from tests.conftest import RunningStack

SHARD, SOURCE = 5, "dc1"


def incoming(event: OperationCompleted | RestartCheckpoint, offset: int) -> Incoming:
    payload = encode(event)
    name, record = decode_record(payload)
    topic = f"{SOURCE}.coopr.shard.05"
    position = Position(SHARD, SOURCE, event.epoch, event.seq)
    return Incoming(topic, 0, offset, position, name, record, payload)


def completed(cluster_id: str, seq: int, status: ClusterStatus) -> OperationCompleted:
    ev = event_for(cluster_id, SHARD, owner_dc=SOURCE, epoch=1, seq=seq)
    return dataclasses.replace(ev, cluster=dataclasses.replace(ev.cluster, status=status))


def checkpoint_of(done: OperationCompleted, seq: int) -> RestartCheckpoint:
    return RestartCheckpoint(
        event_id=f"cp-{seq}",
        shard=SHARD,
        owner_dc=SOURCE,
        epoch=1,
        seq=seq,
        occurred_at=done.occurred_at,
        job=done.job,
        tasks=(),
        nodes=done.nodes,
    )


def test_a_late_event_does_not_overwrite_the_newer_state_of_its_cluster() -> None:
    # Read order 6, 7, 8, 5: seq 5 arrived late into a gap; 5 and 8 change the same cluster.
    events = [
        incoming(completed("00000006", 6, ClusterStatus.ACTIVE), 0),
        incoming(completed("00000007", 7, ClusterStatus.ACTIVE), 1),
        incoming(completed("00000042", 8, ClusterStatus.TERMINATED), 2),
        incoming(completed("00000042", 5, ClusterStatus.PENDING), 3),
    ]
    clusters, _ = rows_of(events)
    by_id = {row[0]: row for row in clusters}
    assert len(clusters) == 3
    assert by_id["00000042"][4] == 8, "seq 8 is the newest state of cluster 00000042"
    assert by_id["00000042"][5] == "TERMINATED"


def test_a_late_checkpoint_does_not_revive_a_job_completed_in_the_same_batch() -> None:
    done = completed("00000043", 9, ClusterStatus.ACTIVE)
    events = [incoming(done, 0), incoming(checkpoint_of(done, 7), 1)]
    _, checkpoints = rows_of(events)
    assert len(checkpoints) == 1
    job_id, *_, seq, completed_flag, payload, _ = checkpoints[0]
    assert (job_id, seq, completed_flag, payload) == (done.job.id, 9, "t", None)


@pytest.mark.parametrize("microsecond", [0, 1000, 999000])
def test_the_replica_body_is_the_owners_json_form_of_the_cluster(microsecond: int) -> None:
    # The owner stores json_ready's form (simulator.json_forms); the replica renders its body
    # with orjson's own datetimes, without that copy: both must be the same text, times too.
    ev = completed("00000045", 3, ClusterStatus.ACTIVE)
    created = ev.cluster.create_time.replace(microsecond=microsecond)
    for expire in (None, created + timedelta(days=30)):
        cluster = dataclasses.replace(ev.cluster, create_time=created, expire_time=expire)
        (row,), _ = rows_of([incoming(dataclasses.replace(ev, cluster=cluster), 0)])
        owner = json.dumps(json_ready(cluster.to_record()), separators=(",", ":"))
        assert row[8] == owner


def test_a_newer_epoch_wins_over_a_higher_seq_of_an_older_epoch() -> None:
    old = completed("00000044", 30, ClusterStatus.ACTIVE)
    new = dataclasses.replace(completed("00000044", 1, ClusterStatus.INCONSISTENT), epoch=65)
    clusters, _ = rows_of([incoming(new, 0), incoming(old, 1)])
    assert [(row[3], row[4], row[5]) for row in clusters] == [(65, 1, "INCONSISTENT")]


# The store against the replica database of the real stack: claims decide what waits, what
# is the old owner's tail and what is fenced. Shards 89 and 90 are outside the topology, on
# made-up source DCs, so the other tests' shards are left alone.

REPLICA = "dc2"


def mirrored_event(dc: str, shard: int, epoch: int, seq: int, offset: int) -> Incoming:
    """Event ``(epoch, seq)`` of ``shard`` read at ``offset`` of ``dc``'s mirrored topic."""
    ev = event_for(f"{dc}-{epoch}-{seq:05d}", shard, owner_dc=dc, epoch=epoch, seq=seq)
    payload = encode(ev)
    name, record = decode_record(payload)
    topic = mirrored(dc, shard_topic(shard))
    return Incoming(topic, 0, offset, Position(shard, dc, epoch, seq), name, record, payload)


@pytest.fixture
def replica(stack: RunningStack) -> Iterator[Callable[[int], Claims]]:
    """Factory: a clean replica state for a shard, with a :class:`Claims` of it; the claims
    and dead letters it leaves are removed at the end."""
    made: list[Claims] = []
    dsn = stack.dc(REPLICA).database

    def make(shard: int) -> Claims:
        for table in ("replication_state", "replication_gaps"):
            fetch_all(dsn, f"DELETE FROM {table} WHERE shard = %s", (shard,))
        made.append(Claims(dsn, shard))
        return made[-1]

    yield make
    for claims in made:
        claims.forget()
        topics = [f"%.{shard_topic(s)}" for s in claims.shards]
        fetch_all(dsn, "DELETE FROM dead_letters WHERE source_topic LIKE ANY(%s)", (topics,))


def state_of(dsn: str, shard: int) -> tuple[Any, ...]:
    rows = fetch_all(
        dsn,
        "SELECT source_dc, epoch, last_seq, gaps, fenced FROM replication_state WHERE shard = %s",
        (shard,),
    )
    return rows[0]


def offsets_of(dsn: str, *topics: str) -> dict[str, int]:
    rows = fetch_all(
        dsn,
        "SELECT topic, next_offset FROM applied_offsets WHERE topic = ANY(%s)",
        (list(topics),),
    )
    return dict(rows)


@pytest.mark.stack
def test_an_unclaimed_epoch_waits_without_storing_its_partition_past_it(
    stack: RunningStack, replica: Callable[[int], Claims]
) -> None:
    shard, old, new = 89, f"o{uuid.uuid4().hex[:6]}", f"n{uuid.uuid4().hex[:6]}"
    claims = replica(shard)
    dsn = stack.dc(REPLICA).database
    old_topic, new_topic = mirrored(old, shard_topic(shard)), mirrored(new, shard_topic(shard))
    conn = connect(dsn)
    try:
        first = [mirrored_event(old, shard, 1, s, s - 1) for s in (1, 2, 3)]
        apply_batch(conn, first, {(old_topic, 0): 3})

        # The new owner's first events (offsets 0, 1), a record refused at offset 2 of its
        # topic, and the old owner's seq 4, before this DC has seen the claim.
        batch = [mirrored_event(new, shard, 65, s, s - 1) for s in (1, 2)]
        batch.append(mirrored_event(old, shard, 1, 4, 3))
        refused = RefusedRecord(new_topic, 0, 2, None, b"\x00", "not Avro", "MissingMarkerError")
        offsets = {(new_topic, 0): 3, (old_topic, 0): 4}
        result = apply_batch(conn, batch, offsets, [refused])
        assert [ev.position.seq for ev in result.applied] == [4]
        assert list(result.waiting) == [(new_topic, 0)]
        assert result.waiting[new_topic, 0].offset == 0
        assert result.refused == [], "read again with its partition, dead-lettered then"
        assert offsets_of(dsn, old_topic, new_topic) == {old_topic: 4, new_topic: 0}
        assert state_of(dsn, shard) == (old, 1, 4, 0, 0)
        letters = "SELECT count(*) FROM dead_letters WHERE source_topic = %s"
        assert fetch_all(dsn, letters, (new_topic,)) == [(0,)]

        claims.record(shard, 65, old, 1, new, 4)
        result = apply_batch(conn, batch[:2], {(new_topic, 0): 3}, [refused])
        assert [ev.position.seq for ev in result.applied] == [1, 2] and not result.waiting
        assert offsets_of(dsn, new_topic) == {new_topic: 3}
        assert state_of(dsn, shard) == (new, 65, 2, 0, 0), "no gap for epoch 1, source follows"
        assert fetch_all(dsn, letters, (new_topic,)) == [(1,)]
    finally:
        conn.close()


@pytest.mark.stack
def test_the_old_owners_tail_applies_up_to_the_cut_after_the_new_owners_events(
    stack: RunningStack, replica: Callable[[int], Claims]
) -> None:
    # Two replicas per shard: this one reads the new owner's first events before the tail
    # the new owner applied (seqs 4 and 5 of epoch 1) and the old owner's orphan (seq 6).
    shard, old, new = 90, f"o{uuid.uuid4().hex[:6]}", f"n{uuid.uuid4().hex[:6]}"
    claims = replica(shard)
    dsn = stack.dc(REPLICA).database
    conn = connect(dsn)
    try:
        apply_batch(conn, [mirrored_event(old, shard, 1, s, s - 1) for s in (1, 2, 3)], {})
        claims.record(shard, 65, old, 1, new, 5)
        apply_batch(conn, [mirrored_event(new, shard, 65, s, s - 1) for s in (1, 2)], {})
        tail = [mirrored_event(old, shard, 1, s, s - 1) for s in (4, 5, 6)]
        result = apply_batch(conn, tail, {})
        assert [ev.position.seq for ev in result.applied] == [4, 5]
        assert [ev.position.seq for ev in result.fenced] == [6]
        assert state_of(dsn, shard) == (new, 65, 2, 0, 1)
        rows = fetch_all(
            dsn,
            "SELECT source_dc, epoch, seq FROM replica_clusters WHERE shard = %s"
            " AND source_dc IN (%s, %s) ORDER BY epoch, seq",
            (shard, old, new),
        )
        assert rows == [(old, 1, s) for s in range(1, 6)] + [(new, 65, 1), (new, 65, 2)]
    finally:
        conn.close()


@pytest.mark.stack
def test_text_that_copy_would_read_as_escapes_is_stored_as_the_owner_wrote_it(
    stack: RunningStack, replica: Callable[[int], Claims]
) -> None:
    # Rows reach the staging tables through COPY's text format, where a backslash, a tab or
    # a line break in a value would otherwise change what is stored.
    shard, source = 88, f"s{uuid.uuid4().hex[:6]}"
    replica(shard)
    dsn = stack.dc(REPLICA).database
    tricky = 'tab\there, lines\nand\r\nback\\slash \\N \\x00 "quoted"'
    base = event_for(f"{source}-tricky", shard, owner_dc=source, epoch=1, seq=1)
    done = dataclasses.replace(
        base,
        cluster=dataclasses.replace(base.cluster, description=tricky, status=ClusterStatus.ACTIVE),
    )
    checkpoint = dataclasses.replace(
        checkpoint_of(done, 2), shard=shard, owner_dc=source, job=done.job
    )
    topic = mirrored(source, shard_topic(shard))
    events = []
    both: list[OperationCompleted | RestartCheckpoint] = [done, checkpoint]
    for offset, event in enumerate(both):
        payload = encode(event)
        name, record = decode_record(payload)
        position = Position(shard, source, 1, event.seq)
        events.append(Incoming(topic, 0, offset, position, name, record, payload))
    conn = connect(dsn)
    try:
        result = apply_batch(conn, events, {})
        assert len(result.applied) == 2
        rows = fetch_all(
            dsn,
            "SELECT c.body->>'description', k.completed, k.payload FROM replica_clusters c"
            " JOIN replica_checkpoints k USING (cluster_id) WHERE c.cluster_id = %s",
            (done.cluster.id,),
        )
        assert [(d, c, bytes(p)) for d, c, p in rows] == [(tricky, False, events[1].payload)]
    finally:
        fetch_all(dsn, "DELETE FROM replica_clusters WHERE source_dc = %s", (source,))
        fetch_all(dsn, "DELETE FROM replica_checkpoints WHERE source_dc = %s", (source,))
        conn.close()
