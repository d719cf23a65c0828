"""The outbox and the relay against the real stack: nothing lost, order kept, one active relay,
only shards this DC owns under a lease published."""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import psycopg2.extensions
import pytest
from prometheus_client import REGISTRY

from bench.load import event_for
from pipeline.admin import high_watermark
from pipeline.codec import decode
from pipeline.db import connect, fetch_all
from pipeline.errors import (
    EventTooLargeError,
    InvalidEventError,
    NotOwnerError,
    ShardNotWritableError,
)
from pipeline.events import OperationCompleted, RestartCheckpoint
from pipeline.stack import up
from pipeline.stack.processes import StackState, stop
from pipeline.stack.toxiproxy import Toxiproxy
from pipeline.topics import SHARD_MAX_MESSAGE_BYTES, shard_topic
from producer.outbox import Published, publish
from producer.relay import _FETCH, Relay, RelayConfig
from tests.conftest import RunningStack
from tests.kafka_helpers import delete_topic, read_to_end, set_topic_config
from tests.outbox_helpers import EventWriter, cluster_ids_of, publish_events, shard_backlog
from tests.workers import WorkerProcess, free_port

pytestmark = pytest.mark.stack

DC = "dc1"


class RelayProcess(WorkerProcess):
    """`coopr-pipeline worker relay` in a subprocess, with its health endpoint."""

    def __init__(self, stack: RunningStack, dc: str = DC, topology_file: Path | None = None):
        super().__init__(
            topology_file or stack.topology_file,
            "worker",
            "relay",
            "--dc",
            dc,
            "--poll-interval",
            "0.2",
        )

    def wait_role(self, role: str, timeout_s: float) -> None:
        self.wait_health("role", role, timeout_s)


@pytest.fixture
def relays(stack: RunningStack) -> Iterator[list[RelayProcess]]:
    started: list[RelayProcess] = []
    yield started
    for r in started:
        if r.proc.poll() is None:
            r.kill()


def owned_shards(stack: RunningStack, dc: str, count: int) -> list[int]:
    return list(stack.topology.owned_shards(dc)[:count])


def backlog(dsn: str) -> int:
    conn = connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            return int(cast("tuple[Any, ...]", cur.fetchone())[0])
    finally:
        conn.close()


def wait_drained(dsn: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while (left := backlog(dsn)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == 0, f"{left} outbox rows still unpublished after {timeout_s} s"


def assert_complete_and_ordered(
    stack: RunningStack, dc: str, starts: dict[int, int], written: Sequence[Published]
) -> int:
    """Every written event is in its shard topic, in seq order, no gap; returns duplicates."""
    duplicates = 0
    for shard, start in starts.items():
        expected = [(p.epoch, p.seq) for p in written if p.shard == shard]
        records = read_to_end(stack.kafka(dc), shard_topic(shard), start, timeout_s=60)
        seen: list[tuple[int, int]] = []
        for msg in records:
            event = cast("OperationCompleted | RestartCheckpoint", decode(cast(bytes, msg.value())))
            pos = (event.epoch, event.seq)
            if seen and pos <= seen[-1]:
                duplicates += 1
                assert pos in seen, f"shard {shard}: {pos} went back to an unseen position"
                continue
            if seen:
                assert pos == (seen[-1][0], seen[-1][1] + 1), (
                    f"shard {shard}: gap {seen[-1]} -> {pos}"
                )
            seen.append(pos)
        missing = set(expected) - set(seen)
        assert not missing, (
            f"shard {shard}: {len(missing)} of {len(expected)} written never published"
        )
    return duplicates


def test_publish_refuses_a_shard_owned_elsewhere_naming_the_owner(stack: RunningStack) -> None:
    foreign = next(s for s in range(16) if stack.topology.initial_owner(s) != DC)
    owner = stack.topology.initial_owner(foreign)
    conn = connect(stack.dc(DC).database)
    try:
        with pytest.raises(NotOwnerError, match=f"owned by {owner}") as caught:
            publish(conn, event_for(next(cluster_ids_of(foreign, 16)), foreign))
        assert caught.value.owner_dc == owner
        conn.rollback()
        own = owned_shards(stack, DC, 1)[0]
        with conn.cursor() as cur:
            cur.execute("UPDATE shard_ownership SET writable = false WHERE shard = %s", (own,))
        with pytest.raises(ShardNotWritableError, match="read-only"):
            publish(conn, event_for(next(cluster_ids_of(own, 16)), own))
    finally:
        conn.rollback()
        conn.close()


def test_publish_refuses_a_shard_whose_lease_has_ended_and_takes_no_seq(
    stack: RunningStack,
) -> None:
    own = owned_shards(stack, DC, 1)[0]
    conn = connect(stack.dc(DC).database)
    try:
        before = last_seq(conn, own)
        # Rolled back below: the shard keeps its endless lease for the other tests.
        with conn.cursor() as cur:
            cur.execute(
                "UPDATE shard_ownership SET lease_until = clock_timestamp() - interval '1 ms'"
                " WHERE shard = %s",
                (own,),
            )
        with pytest.raises(ShardNotWritableError, match="lease has ended") as caught:
            publish(conn, event_for(next(cluster_ids_of(own, 16)), own))
        assert caught.value.owner_dc == DC
        assert last_seq(conn, own) == before
    finally:
        conn.rollback()
        conn.close()


def last_seq(conn: psycopg2.extensions.connection, shard: int) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT last_seq FROM shard_ownership WHERE shard = %s", (shard,))
        return int(cast("tuple[Any, ...]", cur.fetchone())[0])


@pytest.mark.parametrize(
    ("spoil", "error"),
    [
        # A schema-invalid event: encoding fails.
        (
            lambda ev: dataclasses.replace(ev, cluster=dataclasses.replace(ev.cluster, name=None)),
            InvalidEventError,
        ),
        # An event over the size a shard topic takes (a 1.1 MB cluster config).
        (
            lambda ev: dataclasses.replace(
                ev,
                cluster=dataclasses.replace(ev.cluster, config='{"x": "' + "y" * 1_100_000 + '"}'),
            ),
            EventTooLargeError,
        ),
    ],
    ids=["invalid", "too-large"],
)
def test_a_refused_event_takes_no_seq_even_when_the_caller_commits(
    stack: RunningStack,
    spoil: Callable[[OperationCompleted], OperationCompleted],
    error: type[Exception],
) -> None:
    shard = owned_shards(stack, DC, 1)[0]
    ids = cluster_ids_of(shard, 16, start=30_000_000)
    conn = connect(stack.dc(DC).database)
    try:
        before = last_seq(conn, shard)
        with pytest.raises(error):
            publish(conn, spoil(event_for(next(ids), shard)))
        conn.commit()  # the caller's other changes go in; the refused event must leave no trace
        assert last_seq(conn, shard) == before
        with conn:
            published = publish(conn, event_for(next(ids), shard))
        assert published.seq == before + 1, "a seq was burned: replicas would see a gap forever"
    finally:
        conn.close()


def test_concurrent_writers_get_gapless_seqs(stack: RunningStack) -> None:
    shard = owned_shards(stack, DC, 1)[0]
    results: list[int] = []
    lock = threading.Lock()

    def writer() -> None:
        for p in publish_events(stack.dc(DC).database, shard, 16, 25):
            with lock:
                results.append(p.seq)

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    results.sort()
    assert results == list(range(results[0], results[0] + 200))


def test_relay_killed_three_times_loses_nothing(
    stack: RunningStack, relays: list[RelayProcess]
) -> None:
    dsn = stack.dc(DC).database
    shards = owned_shards(stack, DC, 3)
    relays.append(RelayProcess(stack))
    relays[-1].wait_role("active", 30)
    wait_drained(dsn, 60)  # what earlier tests wrote goes out first
    starts = {s: high_watermark(stack.kafka(DC), shard_topic(s)) for s in shards}
    writer = EventWriter(dsn, shards, stack.topology.shard_count, rate=150)
    writer.start()
    for _ in range(3):
        time.sleep(2.5)
        relays[-1].kill()
        relays.append(RelayProcess(stack))
        relays[-1].wait_role("active", 30)
    time.sleep(1.0)
    written = writer.finish()
    wait_drained(dsn, 60)

    duplicates = assert_complete_and_ordered(stack, DC, starts, written)
    assert len(written) > 300
    print(f"{len(written)} events, {duplicates} duplicates after 3 SIGKILLs")
    assert relays[-1].terminate() == 0


def test_broker_down_for_20_s_loses_nothing(
    stack: RunningStack, relays: list[RelayProcess]
) -> None:
    dsn = stack.dc(DC).database
    shards = owned_shards(stack, DC, 2)
    relays.append(RelayProcess(stack))
    relays[-1].wait_role("active", 30)
    wait_drained(dsn, 60)
    starts = {s: high_watermark(stack.kafka(DC), shard_topic(s)) for s in shards}
    writer = EventWriter(dsn, shards, stack.topology.shard_count, rate=50)
    writer.start()
    time.sleep(2)
    state = StackState.load(stack.run_dir)
    assert state is not None
    stop(state.processes[f"kafka-{DC}"])
    time.sleep(20)
    assert backlog(dsn) > 0, "events written while the broker was down cannot be published yet"
    up(stack.run_dir, stack.topology_file)
    time.sleep(2)
    written = writer.finish()
    wait_drained(dsn, 90)

    assert_complete_and_ordered(stack, DC, starts, written)
    assert relays[-1].terminate() == 0


def test_one_relay_active_and_the_standby_takes_over(
    stack: RunningStack, relays: list[RelayProcess]
) -> None:
    first = RelayProcess(stack)
    relays.append(first)
    first.wait_role("active", 30)
    second = RelayProcess(stack)
    relays.append(second)
    second.wait_role("standby", 30)
    for _ in range(10):
        roles = sorted(h["role"] for r in relays if (h := r.health()))
        assert roles == ["active", "standby"]
        time.sleep(0.2)

    first.kill()
    second.wait_role("active", 15)
    shard = owned_shards(stack, DC, 1)[0]
    start = high_watermark(stack.kafka(DC), shard_topic(shard))
    written = publish_events(stack.dc(DC).database, shard, 16, 20)
    wait_drained(stack.dc(DC).database, 30)
    assert_complete_and_ordered(stack, DC, {shard: start}, written)


def test_sigterm_exits_zero_and_relay_reports_unreachable_database(
    stack: RunningStack, tmp_path: Path
) -> None:
    bad = tmp_path / "topology.toml"
    bad.write_text(stack.topology_file.read_text().replace(str(stack.dc(DC).database_port), "1", 1))
    relay = WorkerProcess(bad, "worker", "relay", "--dc", DC)
    relay.wait_health("role", "standby", 15)
    assert cast("dict[str, Any]", relay.health())["last_error"].startswith(
        "database at 127.0.0.1 is unreachable"
    )
    assert relay.terminate() == 0
    assert "unreachable" in relay.output() and "Traceback" not in relay.output()


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Seconds until ``predicate()`` held; fails after ``timeout_s``."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout_s, f"not within {timeout_s} s: {what}"
        time.sleep(0.2)
    return time.monotonic() - start


def start_active(stack: RunningStack, relays: list[RelayProcess]) -> RelayProcess:
    """An active relay of DC, once it published what earlier tests wrote."""
    relay = RelayProcess(stack)
    relays.append(relay)
    relay.wait_role("active", 30)
    wait_drained(stack.dc(DC).database, 60)
    return relay


@pytest.mark.slow
def test_a_record_kafka_refuses_blocks_only_its_shard_until_it_is_fixed(
    stack: RunningStack, relays: list[RelayProcess]
) -> None:
    dsn, kafka = stack.dc(DC).database, stack.kafka(DC)
    victim, *others = owned_shards(stack, DC, 6)[-3:]
    relay = start_active(stack, relays)
    starts = {s: high_watermark(kafka, shard_topic(s)) for s in (victim, *others)}
    # The topic now takes records of at most 1,000 bytes: every event of the shard is refused
    # by the broker, a fatal error for an idempotent producer that keeps order.
    set_topic_config(kafka, shard_topic(victim), "max.message.bytes", "1000")
    try:
        written = [p for s in (victim, *others) for p in publish_events(dsn, s, 16, 20)]
        wait_until(
            lambda: all(shard_backlog(dsn, s) == 0 for s in others), 30, "the other shards flow"
        )
        health = relay.health()
        assert health is not None
        assert "too large" in health["blocked_shards"][str(victim)].lower()
        assert shard_backlog(dsn, victim) == 20, "nothing of the refused shard is marked"
        assert relay.metric(f'coopr_relay_blocked_shards{{dc="{DC}"}}') == 1.0
        assert (relay.metric(f'coopr_relay_producer_restarts_total{{dc="{DC}"}}') or 0) >= 1
    finally:
        set_topic_config(
            kafka, shard_topic(victim), "max.message.bytes", str(SHARD_MAX_MESSAGE_BYTES)
        )
    took = wait_until(lambda: shard_backlog(dsn, victim) == 0, 60, "the fixed shard drains")
    relay.wait_health("blocked_shards", {}, 10)
    assert_complete_and_ordered(stack, DC, starts, written)
    print(f"the refused shard drained {took:.1f} s after its topic was fixed")
    assert relay.terminate() == 0


@pytest.mark.slow
def test_a_deleted_shard_topic_holds_back_only_its_shard(
    stack: RunningStack, relays: list[RelayProcess]
) -> None:
    dsn, kafka = stack.dc(DC).database, stack.kafka(DC)
    victim, *others = owned_shards(stack, DC, 6)[-3:]
    relay = start_active(stack, relays)
    starts = {s: high_watermark(kafka, shard_topic(s)) for s in others}
    delete_topic(kafka, shard_topic(victim))
    try:
        written = [p for s in (victim, *others) for p in publish_events(dsn, s, 16, 20)]
        wait_until(
            lambda: all(shard_backlog(dsn, s) == 0 for s in others), 30, "the other shards flow"
        )
        assert_complete_and_ordered(stack, DC, starts, written)

        def named() -> bool:
            health = relay.health() or {}
            return str(victim) in {**health["stuck_shards"], **health["blocked_shards"]}

        wait_until(named, 30, f"/healthz names shard {victim}")
        assert shard_backlog(dsn, victim) == 20
    finally:
        up(stack.run_dir, stack.topology_file)  # creates the missing topic again
    wait_until(lambda: shard_backlog(dsn, victim) == 0, 120, "the shard drains into its new topic")
    assert_complete_and_ordered(stack, DC, {victim: 0}, written)
    assert relay.terminate() == 0


def test_the_relays_notification_list_stays_bounded_under_sustained_load(
    stack: RunningStack, relays: list[RelayProcess]
) -> None:
    dsn = stack.dc(DC).database
    # One row per batch: the relay stays busy while the writers commit faster than that.
    config = RelayConfig(
        dc=DC, database=dsn, kafka=stack.kafka(DC), batch_size=1, poll_interval_s=0.2
    )
    stop = threading.Event()
    relay = Relay(config, stop)
    thread = threading.Thread(target=relay.run, daemon=True)
    thread.start()
    writers: list[EventWriter] = []
    try:
        wait_until(lambda: relay.active, 30, "the relay is active")
        wait_drained(dsn, 60)
        shards = owned_shards(stack, DC, 3)
        writers = [EventWriter(dsn, shards, 16, rate=300) for _ in range(3)]
        for w in writers:
            w.start()
        sizes, backlogs = [], []
        for _ in range(40):
            time.sleep(0.15)
            conn = relay._conn
            if conn is not None:
                sizes.append(len(conn.notifies))
            backlogs.append(backlog(dsn))
        written = sum(len(w.finish()) for w in writers)
    finally:
        for w in writers:
            w.halt.set()
        stop.set()
        thread.join(60)
    assert written > 1000 and max(backlogs) > 100, "the relay was never kept busy"
    assert max(sizes) <= 64, f"notifications pile up: {max(sizes)} held"
    relays.append(RelayProcess(stack))
    wait_drained(dsn, 90)


@pytest.mark.slow
def test_a_standby_takes_over_within_30_s_when_the_active_relays_database_link_hangs(
    stack: RunningStack, relays: list[RelayProcess], toxiproxy: Toxiproxy, tmp_path: Path
) -> None:
    db = stack.dc(DC)
    link = toxiproxy.proxy(
        f"relay-db-{uuid.uuid4().hex[:6]}", free_port(), f"127.0.0.1:{db.database_port}"
    )
    through_link = tmp_path / "topology.toml"
    through_link.write_text(
        stack.topology_file.read_text().replace(
            f"127.0.0.1:{db.database_port}/", f"127.0.0.1:{link.port}/", 1
        )
    )
    first = RelayProcess(stack, topology_file=through_link)
    relays.append(first)
    first.wait_role("active", 30)
    second = RelayProcess(stack)
    relays.append(second)
    second.wait_role("standby", 30)
    try:
        link.cut()  # the active relay's database connection hangs: no error, no data
        took = wait_until(
            lambda: (second.health() or {}).get("role") == "active", 30, "the standby is active"
        )
        shard = owned_shards(stack, DC, 1)[0]
        start = high_watermark(stack.kafka(DC), shard_topic(shard))
        written = publish_events(db.database, shard, 16, 20)
        wait_drained(db.database, 30)
        assert_complete_and_ordered(stack, DC, {shard: start}, written)
        assert (first.health() or {}).get("role") == "standby"
    finally:
        link.heal()
        link.remove()
    print(f"the standby took over {took:.1f} s after the link was cut")


def test_a_round_takes_at_most_its_byte_limit_but_always_one_row(
    stack: RunningStack, relays: list[RelayProcess]
) -> None:
    dsn = stack.dc(DC).database
    start_active(stack, relays).terminate()
    shard = owned_shards(stack, DC, 1)[0]
    written = publish_events(dsn, shard, 16, 10)  # about 1,160 bytes each
    others = [s for s in range(stack.topology.shard_count) if s != shard]

    def fetch(limit: int) -> list[tuple[Any, ...]]:
        args = {
            "dc": DC,
            "probe": [],
            "skip": others,
            "rows": 5000,
            "bytes": limit,
            "after_shards": [],
            "after_ids": [],
        }
        return fetch_all(dsn, _FETCH, args)

    try:
        three = fetch(3000)
        assert sorted(r[3] for r in three) == [p.seq for p in written[:3]]
        assert len(fetch(10)) == 1, "a row larger than the limit still goes, alone"
        assert len(fetch(10**9)) == 10
    finally:
        relays.append(RelayProcess(stack))
        wait_drained(dsn, 60)


def set_ownership(
    conn: psycopg2.extensions.connection, shard: int, assignment: str, *args: object
) -> None:
    """``UPDATE shard_ownership SET <assignment>`` for ``shard``, in ``conn``'s transaction."""
    with conn.cursor() as cur:
        cur.execute(f"UPDATE shard_ownership SET {assignment} WHERE shard = %s", (*args, shard))


def test_a_shard_whose_lease_ended_waits_for_its_renewal_then_flows_in_order(
    stack: RunningStack, relays: list[RelayProcess]
) -> None:
    dsn = stack.dc(DC).database
    shard, other = owned_shards(stack, DC, 2)
    relay = start_active(stack, relays)
    start = high_watermark(stack.kafka(DC), shard_topic(shard))
    conn = connect(dsn)
    try:
        # Written under the lease, which ends in the same transaction: the relay never sees
        # these rows while the lease runs.
        with conn:
            ids = itertools.islice(cluster_ids_of(shard, 16), 5)
            written = [publish(conn, event_for(c, shard)) for c in ids]
            set_ownership(conn, shard, "lease_until = clock_timestamp() - interval '1 ms'")
        relay.wait_health("unleased_shards", [shard], 10)
        assert relay.metric(f'coopr_relay_unleased_shards{{dc="{DC}"}}') == 1.0
        publish_events(dsn, other, 16, 3)  # rounds go on for the other shards
        wait_until(lambda: shard_backlog(dsn, other) == 0, 30, "the other shard flows")
        assert shard_backlog(dsn, shard) == 5
        assert high_watermark(stack.kafka(DC), shard_topic(shard)) == start

        with conn:  # the controller renews the lease
            set_ownership(conn, shard, "lease_until = 'infinity'")
        written += publish_events(dsn, shard, 16, 5)
        wait_until(lambda: shard_backlog(dsn, shard) == 0, 30, "the renewed shard drains")
        assert_complete_and_ordered(stack, DC, {shard: start}, written)
        relay.wait_health("unleased_shards", [], 10)
    finally:
        conn.rollback()
        with conn:
            set_ownership(conn, shard, "lease_until = 'infinity'")
        conn.close()
    assert relay.terminate() == 0


def test_rows_of_an_epoch_this_dc_no_longer_owns_are_never_published_nor_pruned(
    stack: RunningStack, relays: list[RelayProcess]
) -> None:
    dsn = stack.dc(DC).database
    shard, witness = owned_shards(stack, DC, 2)
    start_active(stack, relays).terminate()
    start = high_watermark(stack.kafka(DC), shard_topic(shard))
    conn = connect(dsn)
    before = last_seq(conn, shard)
    conn.rollback()
    # Prunes every 0.2 s whatever was published before now: an unpublished row that went
    # would be gone from the outbox within the test.
    config = RelayConfig(
        dc=DC,
        database=dsn,
        kafka=stack.kafka(DC),
        poll_interval_s=0.2,
        retention_s=0.0,
        prune_interval_s=0.2,
    )
    stop = threading.Event()
    relay = Relay(config, stop)
    thread = threading.Thread(target=relay.run, daemon=True)
    orphans_sql = (
        "SELECT seq, published_at FROM outbox WHERE shard = %s AND epoch = 1 AND seq > %s"
        " ORDER BY seq"
    )
    try:
        # This DC wrote three rows at epoch 1, then saw dc2 take the shard over at epoch 66
        # before its relay published them: orphans.
        with conn:
            for cluster_id in itertools.islice(cluster_ids_of(shard, 16), 3):
                publish(conn, event_for(cluster_id, shard))
            set_ownership(conn, shard, "owner_dc = 'dc2', epoch = 66, writable = false")
        thread.start()
        stages = {
            "taken over by dc2": ("owner_dc = 'dc2', epoch = 66, writable = false", ()),
            "failed back here": ("owner_dc = %s, epoch = 129, writable = true", (DC,)),
        }
        for stage, (assignment, args) in stages.items():
            with conn:
                set_ownership(conn, shard, assignment, *args)
            publish_events(dsn, witness, 16, 2)  # rounds and prunes do run meanwhile
            wait_until(lambda: shard_backlog(dsn, witness) == 0, 30, f"{stage}: others flow")
            time.sleep(1.0)
            orphans = fetch_all(dsn, orphans_sql, (shard, before))
            assert orphans == [(before + i, None) for i in (1, 2, 3)], f"{stage}: orphans kept"
            assert high_watermark(stack.kafka(DC), shard_topic(shard)) == start
            wait_until(
                lambda: relay.health()[1]["disowned_shards"] == [shard], 10, f"{stage}: named"
            )
            assert relay.health()[0], "disowned rows are no failure of the relay"
        assert REGISTRY.get_sample_value("coopr_relay_disowned_shards", {"dc": DC}) == 1.0
    finally:
        stop.set()
        thread.join(60)
        conn.rollback()
        with conn:  # what every other test assumes: the initial owner at epoch 1, no orphans
            with conn.cursor() as cur:
                cur.execute(
                    "DELETE FROM outbox WHERE shard = %s AND epoch = 1 AND seq > %s",
                    (shard, before),
                )
            set_ownership(
                conn,
                shard,
                "owner_dc = %s, epoch = 1, writable = true, last_seq = %s,"
                " lease_until = 'infinity'",
                DC,
                before,
            )
        conn.close()
