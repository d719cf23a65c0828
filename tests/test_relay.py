"""The outbox and the relay against the real stack: nothing lost, order kept, one active relay."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from bench.load import event_for
from pipeline.admin import high_watermark
from pipeline.codec import decode
from pipeline.db import connect
from pipeline.errors import NotOwnerError, ShardNotWritableError
from pipeline.stack import up
from pipeline.stack.processes import StackState, stop
from pipeline.topics import shard_topic
from producer.outbox import publish
from tests.conftest import RunningStack
from tests.kafka_helpers import read_to_end
from tests.outbox_helpers import EventWriter, cluster_ids_of, publish_events
from tests.workers import WorkerProcess

pytestmark = pytest.mark.stack

DC = "dc1"


class RelayProcess(WorkerProcess):
    """`coopr-pipeline worker relay` in a subprocess, with its health endpoint."""

    def __init__(self, stack: RunningStack, dc: str = DC):
        super().__init__(
            stack.topology_file, "worker", "relay", "--dc", dc, "--poll-interval", "0.2"
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
    return [s for s in range(stack.topology.shard_count) if stack.topology.initial_owner(s) == dc][
        :count
    ]


def backlog(dsn: str) -> int:
    conn = connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def wait_drained(dsn: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while (left := backlog(dsn)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == 0, f"{left} outbox rows still unpublished after {timeout_s} s"


def assert_complete_and_ordered(
    stack: RunningStack, dc: str, starts: dict[int, int], written
) -> int:
    """Every written event is in its shard topic, in seq order, no gap; returns duplicates."""
    duplicates = 0
    for shard, start in starts.items():
        expected = [(p.epoch, p.seq) for p in written if p.shard == shard]
        records = read_to_end(stack.kafka(dc), shard_topic(shard), start, timeout_s=60)
        seen: list[tuple[int, int]] = []
        for msg in records:
            event = decode(msg.value())
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
    stack: RunningStack, tmp_path
) -> None:
    bad = tmp_path / "topology.toml"
    bad.write_text(stack.topology_file.read_text().replace(str(stack.dc(DC).database_port), "1", 1))
    relay = WorkerProcess(bad, "worker", "relay", "--dc", DC)
    relay.wait_health("role", "standby", 15)
    assert relay.health()["last_error"].startswith("database at 127.0.0.1 is unreachable")
    assert relay.terminate() == 0
    assert "unreachable" in relay.output() and "Traceback" not in relay.output()
