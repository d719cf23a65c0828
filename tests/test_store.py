"""The replica rows a batch produces, without a database: the newest event wins, whatever the
order the events were read in."""

from __future__ import annotations

import dataclasses

from bench.load import event_for
from consumer.sequencing import Position
from consumer.store import Incoming, rows_of
from pipeline.codec import decode_record, encode
from pipeline.events import ClusterStatus, OperationCompleted, RestartCheckpoint

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
    assert (job_id, seq, completed_flag, payload) == (done.job.id, 9, "t", "")


def test_a_newer_epoch_wins_over_a_higher_seq_of_an_older_epoch() -> None:
    old = completed("00000044", 30, ClusterStatus.ACTIVE)
    new = dataclasses.replace(completed("00000044", 1, ClusterStatus.INCONSISTENT), epoch=65)
    clusters, _ = rows_of([incoming(new, 0), incoming(old, 1)])
    assert [(row[3], row[4], row[5]) for row in clusters] == [(65, 1, "INCONSISTENT")]
