"""The applier against the real stack, on topics of a made-up source DC so that the shards
the other tests replicate are left alone."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka import Producer

from bench.load import event_for
from consumer.applier import Applier, ApplierConfig
from pipeline.admin import TopicSpec, ensure_topics, high_watermark
from pipeline.codec import encode
from pipeline.db import connect, fetch_all
from pipeline.events import RestartCheckpoint
from pipeline.topics import DLQ_TOPIC, mirrored, shard_topic
from tests.conftest import RunningStack
from tests.kafka_helpers import read_to_end

pytestmark = pytest.mark.stack

REPLICA = "dc2"


@dataclasses.dataclass
class FakeSource:
    """A mirrored shard topic of a source DC that does not exist, in the replica's cluster."""

    dc: str
    shard: int
    topic: str


@pytest.fixture
def fake_source(stack: RunningStack) -> Callable[[int], FakeSource]:
    def make(shard: int) -> FakeSource:
        dc = f"x{uuid.uuid4().hex[:6]}"
        topic = mirrored(dc, shard_topic(shard))
        ensure_topics(stack.kafka(REPLICA), [TopicSpec(topic)])
        conn = connect(stack.dc(REPLICA).database)
        with conn, conn.cursor() as cur:  # a rerun on a reused stack starts clean
            cur.execute("DELETE FROM replication_state WHERE shard = %s", (shard,))
            cur.execute("DELETE FROM replication_gaps WHERE shard = %s", (shard,))
        conn.close()
        return FakeSource(dc, shard, topic)

    return make


@pytest.fixture
def run_applier(stack: RunningStack) -> Iterator[Callable[[FakeSource], threading.Event]]:
    running: list[tuple[threading.Event, threading.Thread]] = []

    def start(source: FakeSource) -> threading.Event:
        config = ApplierConfig(
            dc=REPLICA,
            database=stack.dc(REPLICA).database,
            kafka=stack.kafka(REPLICA),
            topics=(source.topic,),
            group=f"test-{uuid.uuid4().hex[:8]}",
        )
        stop = threading.Event()
        thread = threading.Thread(target=Applier(config, stop).run, daemon=True)
        thread.start()
        running.append((stop, thread))
        return stop

    yield start
    for stop, thread in running:
        stop.set()
        thread.join(30)


def event(source: FakeSource, seq: int, epoch: int = 1, n: int | None = None) -> bytes:
    # Unique per source, so a rerun on a reused stack does not meet its own earlier rows.
    cluster = f"{source.dc}-{n if n is not None else seq:05d}"
    ev = event_for(cluster, source.shard)
    return encode(dataclasses.replace(ev, owner_dc=source.dc, epoch=epoch, seq=seq))


def produce(stack: RunningStack, topic: str, values: list[bytes]) -> None:
    producer = Producer(stack.kafka(REPLICA).producer())
    for value in values:
        producer.produce(topic, value=value, key=b"k", partition=0)
    assert producer.flush(15) == 0


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def query(stack: RunningStack, sql: str, *args: object) -> list[tuple]:
    return fetch_all(stack.dc(REPLICA).database, sql, args)


def test_bad_records_go_to_the_dead_letter_topic_and_the_rest_is_applied(
    stack: RunningStack, fake_source, run_applier
) -> None:
    source = fake_source(98)
    dlq_start = high_watermark(stack.kafka(REPLICA), DLQ_TOPIC)
    good = [event(source, seq) for seq in range(1, 11)]
    garbage = [b"\x00" + os.urandom(20 + i) for i in range(50)]
    unknown = [b"\xc3\x01" + os.urandom(8) + good[0][10:] for _ in range(5)]
    values = garbage[:25] + good[:5] + unknown + garbage[25:] + good[5:]
    produce(stack, source.topic, values)
    run_applier(source)

    count_sql = "SELECT count(*) FROM replica_clusters WHERE source_dc = %s"
    wait_for(lambda: query(stack, count_sql, source.dc)[0][0] == 10, 30, "10 clusters applied")
    wait_for(
        lambda: high_watermark(stack.kafka(REPLICA), DLQ_TOPIC) - dlq_start >= 55,
        30,
        "55 dead letters",
    )

    letters = [
        m
        for m in read_to_end(stack.kafka(REPLICA), DLQ_TOPIC, dlq_start, 30)
        if dict(m.headers())["source-topic"] == source.topic.encode()
    ]
    assert len(letters) == 55
    by_offset = {int(dict(m.headers())["source-offset"]): m for m in letters}
    for offset, value in enumerate(values):
        if value in good:
            assert offset not in by_offset
            continue
        headers = dict(by_offset[offset].headers())
        assert by_offset[offset].value() == value
        expected = "MissingMarkerError" if value in garbage else "UnknownFingerprintError"
        assert headers["dlq-error"].decode() == expected
        assert headers["dlq-reason"]
        assert headers["source-partition"] == b"0" and headers["source-dc"] == REPLICA.encode()
    assert query(stack, "SELECT last_seq, gaps FROM replication_state WHERE shard = 98") == [
        (10, 0)
    ]


def test_gap_and_fencing_are_recorded_and_a_replay_changes_nothing(
    stack: RunningStack, fake_source, run_applier
) -> None:
    source = fake_source(97)
    checkpoint = event_for("99700001", 97)
    produce(
        stack,
        source.topic,
        [
            event(source, 1),
            event(source, 2),
            # seq 3 removed: a gap
            event(source, 4),
            event(source, 1, epoch=2, n=5),
            event(source, 5, epoch=1, n=6),  # the old owner again: fenced
            encode(
                RestartCheckpoint(
                    event_id=str(uuid.uuid4()),
                    shard=97,
                    owner_dc=source.dc,
                    epoch=2,
                    seq=2,
                    occurred_at=checkpoint.occurred_at,
                    job=dataclasses.replace(checkpoint.job, id="99700001-004"),
                    tasks=(),
                    nodes=checkpoint.nodes,
                )
            ),
        ],
    )
    stop = run_applier(source)
    state_sql = (
        "SELECT epoch, last_seq, gaps, fenced, open_gaps FROM replication_state WHERE shard = 97"
    )
    wait_for(
        lambda: query(stack, state_sql) == [(2, 2, 1, 1, [])],
        30,
        "epoch 2, seq 2, one gap, one fenced",
    )
    assert query(
        stack, "SELECT epoch, after_seq, before_seq FROM replication_gaps WHERE shard = 97"
    ) == [(1, 2, 4)]
    rows_sql = (
        "SELECT cluster_id, epoch, seq, applied_at FROM replica_clusters"
        " WHERE source_dc = %s ORDER BY 1"
    )
    rows = query(stack, rows_sql, source.dc)
    assert [(r[0][-5:], r[1], r[2]) for r in rows] == [
        ("00001", 1, 1),
        ("00002", 1, 2),
        ("00004", 1, 4),
        ("00005", 2, 1),
    ]
    assert query(
        stack, "SELECT completed FROM replica_checkpoints WHERE job_id = '99700001-004'"
    ) == [(False,)]

    # Replay the whole topic with a fresh applier: no row changes, not even its applied_at.
    stop.set()
    query(stack, "DELETE FROM applied_offsets WHERE topic = %s RETURNING 1", source.topic)
    run_applier(source)
    wait_for(
        lambda: (
            query(stack, "SELECT count(*) FROM applied_offsets WHERE topic = %s", source.topic)[0][
                0
            ]
            == 1
        ),
        30,
        "the replay stored its offset",
    )
    time.sleep(1)
    assert query(stack, rows_sql, source.dc) == rows
    assert query(stack, "SELECT epoch, last_seq, gaps FROM replication_state WHERE shard = 97") == [
        (2, 2, 1)
    ]
