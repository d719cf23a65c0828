"""The applier against the real stack, on topics of a made-up source DC so that the shards
the other tests replicate are left alone."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2.extensions
import pytest
from confluent_kafka import Message, Producer
from prometheus_client import REGISTRY

from bench.load import event_for
from consumer.applier import Applier, ApplierConfig
from consumer.sequencing import Position
from consumer.store import Incoming, apply_batch
from pipeline.admin import TopicSpec, ensure_topics, high_watermark
from pipeline.codec import decode_record, encode
from pipeline.db import connect, fetch_all
from pipeline.events import RestartCheckpoint
from pipeline.shutdown import run_in_thread
from pipeline.stack.toxiproxy import Proxy, Toxiproxy
from pipeline.topics import DLQ_TOPIC, mirrored, shard_topic
from tests.claim_helpers import Claims
from tests.conftest import RunningStack
from tests.kafka_helpers import headers_of, read_to_end
from tests.workers import free_port

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


RunApplier = Callable[..., Applier]


@pytest.fixture
def run_applier(stack: RunningStack) -> Iterator[RunApplier]:
    """Factory: an applier of ``sources`` in a thread (``database``: another DSN of the
    replica's database, e.g. through a proxy); stopped at the end of the test."""
    running: list[tuple[threading.Event, threading.Thread]] = []

    def start(*sources: FakeSource, database: str | None = None) -> Applier:
        config = ApplierConfig(
            dc=REPLICA,
            database=database or stack.dc(REPLICA).database,
            kafka=stack.kafka(REPLICA),
            topics=tuple(source.topic for source in sources),
            group=f"test-{uuid.uuid4().hex[:8]}",
        )
        applier = Applier(config, threading.Event())
        running.append((applier.stop, run_in_thread(applier)))
        return applier

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


def query(stack: RunningStack, sql: str, *args: object) -> list[tuple[Any, ...]]:
    return fetch_all(stack.dc(REPLICA).database, sql, args)


def test_bad_records_go_to_the_dead_letter_topic_and_the_rest_is_applied(
    stack: RunningStack, fake_source: Callable[[int], FakeSource], run_applier: RunApplier
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
        if headers_of(m)["source-topic"] == source.topic.encode()
    ]
    assert len(letters) == 55
    by_offset = {int(headers_of(m)["source-offset"]): m for m in letters}
    for offset, value in enumerate(values):
        if value in good:
            assert offset not in by_offset
            continue
        headers = headers_of(by_offset[offset])
        assert by_offset[offset].value() == value
        expected = "MissingMarkerError" if value in garbage else "UnknownFingerprintError"
        assert headers["dlq-error"].decode() == expected
        assert headers["dlq-reason"]
        assert headers["source-partition"] == b"0" and headers["source-dc"] == REPLICA.encode()
    assert query(stack, "SELECT last_seq, gaps FROM replication_state WHERE shard = 98") == [
        (10, 0)
    ]


def test_gap_and_fencing_are_recorded_and_a_replay_changes_nothing(
    stack: RunningStack, fake_source: Callable[[int], FakeSource], run_applier: RunApplier
) -> None:
    source = fake_source(97)
    checkpoint = event_for("99700001", 97)
    claims = Claims(stack.dc(REPLICA).database, 97)
    # Epoch 2 took the shard over after seq 4 of epoch 1 (the source's own later claim).
    claims.record(97, 2, source.dc, 1, source.dc, 4)
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
    first = run_applier(source)
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
    first.stop.set()
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
    claims.forget()


def test_events_of_a_new_epoch_wait_for_its_claim_then_apply_and_the_orphan_is_fenced(
    stack: RunningStack, fake_source: Callable[[int], FakeSource], run_applier: RunApplier
) -> None:
    old, new = fake_source(92), fake_source(92)
    claims = Claims(stack.dc(REPLICA).database, 92)
    try:
        produce(stack, old.topic, [event(old, s) for s in range(1, 6)])
        applier = run_applier(old, new)
        state_sql = "SELECT source_dc, epoch, last_seq, gaps, fenced FROM replication_state"
        state_sql += " WHERE shard = 92"
        wait_for(lambda: query(stack, state_sql) == [(old.dc, 1, 5, 0, 0)], 30, "epoch 1 applied")

        produce(stack, new.topic, [event(new, s, epoch=65) for s in range(1, 4)])
        produce(stack, old.topic, [event(old, 6)])  # the other partition goes on meanwhile
        wait_for(lambda: query(stack, state_sql) == [(old.dc, 1, 6, 0, 0)], 30, "seq 6 applied")
        offset_sql = "SELECT next_offset FROM applied_offsets WHERE topic = %s"
        for _ in range(10):  # 2 s of re-reads: the stored offset never passes the event
            assert query(stack, offset_sql, new.topic) in ([], [(0,)])
            assert query(stack, state_sql) == [(old.dc, 1, 6, 0, 0)]
            time.sleep(0.2)
        healthy, details = applier.health()
        assert healthy, "waiting for a claim is no failure"
        assert list(details["waiting_for_claims"]) == [f"{new.topic}[0]"]
        waiting = REGISTRY.get_sample_value("coopr_applier_waiting_partitions", {"dc": REPLICA})
        assert waiting == 1

        claims.record(92, 65, old.dc, 1, new.dc, 6)
        wait_for(lambda: query(stack, state_sql) == [(new.dc, 65, 3, 0, 0)], 30, "epoch 65")
        assert query(stack, offset_sql, new.topic) == [(3,)]
        rows_sql = "SELECT epoch, seq FROM replica_clusters WHERE source_dc = %s ORDER BY seq"
        assert query(stack, rows_sql, new.dc) == [(65, 1), (65, 2), (65, 3)]
        wait_for(lambda: applier.health()[1]["waiting_for_claims"] == {}, 10, "no wait left")

        produce(stack, old.topic, [event(old, 7)])  # beyond the cut: the old owner's orphan
        wait_for(lambda: query(stack, state_sql) == [(new.dc, 65, 3, 0, 1)], 30, "fenced")
        assert query(stack, rows_sql, old.dc) == [(1, s) for s in range(1, 7)]
    finally:
        claims.forget()


def dead_letters_of(stack: RunningStack, topic: str, start: int) -> list[Message]:
    return [
        m
        for m in read_to_end(stack.kafka(REPLICA), DLQ_TOPIC, start, 30)
        if headers_of(m)["source-topic"] == topic.encode()
    ]


def through(link: Proxy, stack: RunningStack) -> str:
    """The replica's DSN through ``link``."""
    port = stack.dc(REPLICA).database_port
    return stack.dc(REPLICA).database.replace(f":{port}/", f":{link.port}/", 1)


def test_an_event_the_database_refuses_is_dead_lettered_and_the_rest_applied(
    stack: RunningStack, fake_source: Callable[[int], FakeSource], run_applier: RunApplier
) -> None:
    source = fake_source(96)
    dlq_start = high_watermark(stack.kafka(REPLICA), DLQ_TOPIC)
    # Valid Avro, but PostgreSQL stores no U+0000 in text or jsonb.
    sample = event_for(f"{source.dc}-00005", source.shard)
    refused = dataclasses.replace(
        sample,
        cluster=dataclasses.replace(sample.cluster, description="a NUL \x00 inside"),
        owner_dc=source.dc,
        epoch=1,
        seq=5,
    )
    values = [event(source, s) for s in range(1, 5)]
    values += [encode(refused)] + [event(source, s) for s in range(6, 11)]
    produce(stack, source.topic, values)
    run_applier(source)

    state_sql = "SELECT last_seq, gaps FROM replication_state WHERE shard = %s"
    wait_for(lambda: query(stack, state_sql, source.shard) == [(10, 1)], 30, "the rest applied")
    count_sql = "SELECT count(*) FROM replica_clusters WHERE source_dc = %s"
    assert query(stack, count_sql, source.dc) == [(9,)]
    wait_for(lambda: len(dead_letters_of(stack, source.topic, dlq_start)) == 1, 30, "a letter")
    [letter] = dead_letters_of(stack, source.topic, dlq_start)
    headers = headers_of(letter)
    assert headers["source-offset"] == b"4"
    assert letter.value() == values[4]
    assert headers["dlq-error"] == b"UntranslatableCharacter (22P05)"
    assert b"database refused" in headers["dlq-reason"]


@pytest.mark.slow
def test_a_refused_record_becomes_one_dead_letter_however_often_its_batch_is_retried(
    stack: RunningStack,
    fake_source: Callable[[int], FakeSource],
    run_applier: RunApplier,
    toxiproxy: Toxiproxy,
) -> None:
    source = fake_source(95)
    db = stack.dc(REPLICA)
    link = toxiproxy.proxy(f"applier-db-{source.dc}", free_port(), f"127.0.0.1:{db.database_port}")
    dlq_start = high_watermark(stack.kafka(REPLICA), DLQ_TOPIC)
    applier = run_applier(source, database=through(link, stack))
    wait_for(lambda: applier.health()[1]["assigned"] == 1, 30, "the applier is assigned")
    try:
        link.refuse()  # the database goes down after the assignment
        garbage = [b"\x00" + os.urandom(30) for _ in range(3)]
        produce(stack, source.topic, garbage + [event(source, s) for s in range(1, 6)])
        wait_for(lambda: applier.last_error is not None, 30, "the batch fails")
        time.sleep(10)  # retries with backoff: 0.1, 0.2, ... 5 s
    finally:
        link.accept()
    state_sql = "SELECT last_seq FROM replication_state WHERE shard = %s"
    wait_for(lambda: query(stack, state_sql, source.shard) == [(5,)], 60, "applied once up")
    wait_for(lambda: len(dead_letters_of(stack, source.topic, dlq_start)) >= 3, 30, "letters")
    time.sleep(2)
    offsets = sorted(
        int(headers_of(m)["source-offset"]) for m in dead_letters_of(stack, source.topic, dlq_start)
    )
    assert offsets == [0, 1, 2], f"one dead letter per refused record, not {offsets}"
    link.remove()


@pytest.mark.slow
def test_partitions_wait_for_their_stored_offsets_while_the_database_is_down(
    stack: RunningStack,
    fake_source: Callable[[int], FakeSource],
    run_applier: RunApplier,
    toxiproxy: Toxiproxy,
) -> None:
    source = fake_source(94)
    produce(stack, source.topic, [event(source, s) for s in range(1, 21)])
    first = run_applier(source)
    state_sql = "SELECT last_seq FROM replication_state WHERE shard = %s"
    wait_for(lambda: query(stack, state_sql, source.shard) == [(20,)], 30, "20 applied")
    first.stop.set()
    produce(stack, source.topic, [event(source, s) for s in range(21, 31)])

    db = stack.dc(REPLICA)
    link = toxiproxy.proxy(f"applier-db-{source.dc}", free_port(), f"127.0.0.1:{db.database_port}")
    link.refuse()
    try:
        second = run_applier(source, database=through(link, stack))
        wait_for(
            lambda: second.health()[1]["awaiting_offsets"] == [f"{source.topic}[0]"],
            30,
            "the partition waits for its stored offset",
        )
        duplicates = REGISTRY.get_sample_value("coopr_applier_duplicates_total", {"dc": REPLICA})
        time.sleep(2)
    finally:
        link.accept()
    wait_for(lambda: query(stack, state_sql, source.shard) == [(30,)], 30, "the rest applied")
    after = REGISTRY.get_sample_value("coopr_applier_duplicates_total", {"dc": REPLICA})
    assert after == duplicates, "the applier replayed from the beginning instead of offset 20"
    wait_for(lambda: second.health()[0], 10, "healthy again")
    link.remove()


def test_two_appliers_racing_on_a_new_shard_never_put_an_older_seq_back(
    stack: RunningStack, fake_source: Callable[[int], FakeSource]
) -> None:
    source = fake_source(93)
    dsn = stack.dc(REPLICA).database
    events = [incoming(source, s) for s in range(1, 11)]
    holder = connect(dsn)
    conns = [connect(dsn), connect(dsn)]
    errors: list[BaseException] = []

    def apply(
        conn: psycopg2.extensions.connection,
        batch: list[Incoming],
        offsets: dict[tuple[str, int], int],
    ) -> None:
        try:
            apply_batch(conn, batch, offsets)
        except BaseException as e:  # surfaced by the test
            errors.append(e)

    def waiting(conn: psycopg2.extensions.connection) -> bool:
        rows = fetch_all(
            dsn,
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
            (conn.get_backend_pid(),),
        )
        return rows == [("Lock",)]

    try:
        # The newer batch waits before its commit (it stores an offset, the table is locked)
        # with its rows written; the older one reads the shard's state, then waits for those
        # rows. So the older batch commits last, as in a rebalance that overlaps.
        with holder.cursor() as cur:
            cur.execute("LOCK TABLE applied_offsets IN EXCLUSIVE MODE")
        newer = threading.Thread(target=apply, args=(conns[0], events, {(source.topic, 0): 10}))
        newer.start()
        wait_for(lambda: waiting(conns[0]), 10, "the newer batch waits")
        older = threading.Thread(target=apply, args=(conns[1], events[:5], {}))
        older.start()
        wait_for(lambda: waiting(conns[1]), 10, "the older batch waits")
        holder.rollback()
        newer.join(30)
        older.join(30)
    finally:
        for conn in (holder, *conns):
            conn.close()
    assert not errors
    state_sql = "SELECT last_seq FROM replication_state WHERE shard = %s"
    assert query(stack, state_sql, source.shard) == [(10,)]


def incoming(source: FakeSource, seq: int) -> Incoming:
    payload = event(source, seq)
    name, record = decode_record(payload)
    position = Position(source.shard, source.dc, 1, seq)
    return Incoming(source.topic, 0, seq - 1, position, name, record, payload)
