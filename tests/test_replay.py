"""`coopr-pipeline replay` on the real stack, beside a running applier (docs/replay.md)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from pipeline.codec import decode_record
from pipeline.db import fetch_all
from pipeline.topics import mirrored, shard_topic
from producer.outbox import event_key
from tests.cli_helpers import json_lines, pipeline, run_cli
from tests.conftest import RunningStack
from tests.kafka_helpers import read_to_end
from tests.outbox_helpers import EventWriter, publish_events
from tests.ownership_helpers import wait_until
from tests.workers import WorkerProcess

pytestmark = pytest.mark.stack

#: Clusters only this module writes (inert events: deletions, no live row at the owner).
_IDS_FROM = 72_000_000
_CLUSTER_COLUMNS = "cluster_id, shard, source_dc, epoch, seq, status, deleted, latest_job_id, body"
_CHECKPOINT_COLUMNS = "job_id, cluster_id, shard, source_dc, epoch, seq, completed, payload"


@dataclasses.dataclass(frozen=True)
class Scene:
    """The shard a replay works on: its owner, the replica, the replica's copy of its topic,
    and this module's events in it: cluster ID -> offset in the copy."""

    stack: RunningStack
    owner: str
    replica: str
    shard: int
    topic: str
    offsets: dict[str, int]
    workers: dict[str, WorkerProcess]

    def replay(self, *args: str, expect: int = 0) -> dict[str, Any]:
        done = run_cli(
            self.stack.topology_file,
            "replay",
            "--dc",
            self.replica,
            "--shard",
            str(self.shard),
            "--format",
            "json",
            *args,
            expect=expect,
        )
        if expect != 0:
            return {"error": done.stderr.strip()}
        [summary] = json_lines(done.stdout)
        return summary

    def error(self, *args: str, topology_file: Path | None = None) -> str:
        done = run_cli(topology_file or self.stack.topology_file, "replay", *args, expect=None)
        assert done.returncode != 0, (args, done.stdout, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        return done.stderr

    @property
    def dsn(self) -> str:
        return self.stack.dc(self.replica).database

    def stored(self) -> int:
        rows = fetch_all(
            self.dsn,
            "SELECT next_offset FROM applied_offsets WHERE topic = %s AND partition = 0",
            (self.topic,),
        )
        return int(rows[0][0]) if rows else 0

    def end(self) -> int:
        admin = AdminClient(self.stack.kafka(self.replica).admin())
        from pipeline.admin import end_offsets

        return end_offsets(admin, [self.topic], 10)[self.topic]

    def rows(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """The replica's rows of the shard, without when they were applied."""
        clusters = fetch_all(
            self.dsn,
            f"SELECT {_CLUSTER_COLUMNS} FROM replica_clusters WHERE shard = %s ORDER BY 1",
            (self.shard,),
        )
        checkpoints = fetch_all(
            self.dsn,
            f"SELECT {_CHECKPOINT_COLUMNS} FROM replica_checkpoints WHERE shard = %s ORDER BY 1",
            (self.shard,),
        )
        return clusters, checkpoints

    def cluster(self, cluster_id: str) -> tuple[Any, ...] | None:
        rows = fetch_all(
            self.dsn,
            f"SELECT {_CLUSTER_COLUMNS} FROM replica_clusters WHERE cluster_id = %s",
            (cluster_id,),
        )
        return rows[0] if rows else None

    def delete(self, cluster_ids: list[str]) -> None:
        for table in ("replica_clusters", "replica_checkpoints"):
            fetch_all(self.dsn, f"DELETE FROM {table} WHERE cluster_id = ANY(%s)", (cluster_ids,))

    def backlog(self) -> int:
        """The owner's events of the shard not in Kafka yet."""
        rows = fetch_all(
            self.stack.dc(self.owner).database,
            "SELECT count(*) FROM outbox WHERE shard = %s AND published_at IS NULL",
            (self.shard,),
        )
        return int(rows[0][0])

    def caught_up(self) -> bool:
        return self.stored() >= self.end()


@pytest.fixture(scope="module")
def scene(stack: RunningStack) -> Iterator[Scene]:
    topology = stack.topology
    owner = topology.data_dcs[0].name
    shard = max(topology.owned_shards(owner))
    replica = topology.replica_list(shard)[0]
    topic = mirrored(owner, shard_topic(shard))
    with pipeline(stack, [owner], [replica]) as workers:
        first = Scene(stack, owner, replica, shard, topic, {}, workers)
        # Whatever earlier tests left in the owner's outbox goes first.
        wait_until(lambda: first.backlog() == 0 and first.caught_up(), 60, "the replica catches up")
        start = first.end()
        published = publish_events(
            stack.dc(owner).database, shard, topology.shard_count, 40, inert_from=_IDS_FROM
        )
        wait_until(lambda: first.end() >= start + 40 and first.caught_up(), 60, "events applied")
        seqs = {p.seq: event_key(p.event) for p in published}
        offsets = {}
        for msg in read_to_end(stack.kafka(replica), topic, start, 30):
            _, record = decode_record(msg.value() or b"")
            if record["seq"] in seqs:
                offsets[seqs[record["seq"]]] = msg.offset() or 0
        assert len(offsets) == 40
        yield dataclasses.replace(first, offsets=offsets)


def _nth(scene: Scene, i: int) -> tuple[str, int]:
    cluster_id = sorted(scene.offsets, key=scene.offsets.__getitem__)[i]
    return cluster_id, scene.offsets[cluster_id]


def test_replay_from_an_offset_restores_exactly_the_rows_of_its_range_while_the_applier_runs(
    scene: Scene,
) -> None:
    _, start = _nth(scene, 20)
    lost = [_nth(scene, i)[0] for i in (5, 25, 30)]
    before = {c: scene.cluster(c) for c in lost}
    scene.delete(lost)
    stored_before = scene.stored()
    writer = EventWriter(
        scene.stack.dc(scene.owner).database, [scene.shard], scene.stack.topology.shard_count, 20
    )
    writer.start()
    try:
        summary = scene.replay("--from-offset", str(start), "--yes")
    finally:
        written = writer.finish()
    [span] = summary["topics"]
    assert span["topic"] == scene.topic and span["from"] == start
    assert span["to"] >= stored_before
    assert summary["read"] == span["to"] - start
    # Two clusters of the range come back (a cluster row and a checkpoint row each); the one
    # before the range stays missing; every other event of the range was there already.
    assert summary["applied"] == 2, summary
    assert summary["unchanged"] == summary["read"] - 2
    assert summary["fenced"] == summary["refused"] == summary["ahead"] == 0
    assert scene.cluster(lost[0]) is None
    assert [scene.cluster(c) for c in lost[1:]] == [before[c] for c in lost[1:]]
    # The applier went on meanwhile, from where it was, and applied the writer's events.
    assert scene.stored() >= stored_before
    wait_until(scene.caught_up, 60, "the applier applies the writer's events")
    assert all(scene.cluster(event_key(p.event)) is not None for p in written)

    again = scene.replay("--from-offset", str(start), "--to-offset", str(span["to"]), "--yes")
    assert again["read"] == summary["read"]
    assert again["applied"] == 0 and again["unchanged"] == again["read"]


def test_a_dry_run_reports_what_a_replay_would_write_and_changes_nothing(scene: Scene) -> None:
    lost = [_nth(scene, i)[0] for i in (31, 32, 33)]
    _, start = _nth(scene, 30)
    scene.delete(lost)
    dump = scene.rows()
    dry = scene.replay("--from-offset", str(start), "--dry-run")
    assert dry["dry_run"] is True and dry["applied"] == 3
    assert scene.rows() == dump
    real = scene.replay(
        "--from-offset", str(start), "--to-offset", str(dry["topics"][0]["to"]), "--yes"
    )
    assert (real["read"], real["applied"]) == (dry["read"], 3)
    assert all(scene.cluster(c) is not None for c in lost)


def test_a_repair_replay_mends_a_row_damaged_by_hand_which_a_plain_replay_leaves(
    scene: Scene,
) -> None:
    cluster_id, offset = _nth(scene, 35)
    good = scene.cluster(cluster_id)
    assert good is not None
    fetch_all(
        scene.dsn,
        "UPDATE replica_clusters SET status = 'ACTIVE', body = body || '{\"damaged\": true}'"
        " WHERE cluster_id = %s",
        (cluster_id,),
    )
    window = ("--from-offset", str(offset), "--to-offset", str(offset + 1))
    plain = scene.replay(*window, "--yes")
    assert (plain["read"], plain["applied"], plain["unchanged"]) == (1, 0, 1)
    assert scene.cluster(cluster_id) != good
    repaired = scene.replay(*window, "--repair", "--yes")
    assert (repaired["mode"], repaired["applied"]) == ("repair", 1)
    assert scene.cluster(cluster_id) == good
    assert scene.replay(*window, "--repair", "--yes")["applied"] == 0


def test_from_time_starts_at_the_first_record_stamped_at_or_after_it(scene: Scene) -> None:
    _, offset = _nth(scene, 10)
    [msg] = read_to_end(scene.stack.kafka(scene.replica), scene.topic, offset, 10)[:1]
    stamp_ms = msg.timestamp()[1]
    stop = str(scene.stored())
    by_offset = scene.replay("--from-offset", str(offset), "--to-offset", stop, "--dry-run")
    iso = datetime.fromtimestamp(stamp_ms / 1000, UTC).isoformat(timespec="milliseconds")
    for when in (iso, str(stamp_ms)):
        by_time = scene.replay("--from-time", when, "--to-offset", stop, "--dry-run")
        # Records stamped in the same millisecond before it are read too.
        assert by_time["topics"][0]["from"] <= offset
        assert by_time["read"] >= by_offset["read"]


def test_a_rebuild_reproduces_the_replicas_rows_from_the_topic_and_drops_the_rest(
    scene: Scene,
) -> None:
    wait_until(lambda: scene.backlog() == 0 and scene.caught_up(), 60, "the replica catches up")
    # Earlier tests left a row deleted outside their ranges: a whole replay brings it back,
    # and the rows are then what the applier makes of the topic.
    scene.replay("--from-offset", "0", "--yes")
    dump = scene.rows()
    assert len(dump[0]) >= 40
    fetch_all(scene.dsn, "DELETE FROM replica_clusters WHERE shard = %s", (scene.shard,))
    fetch_all(scene.dsn, "DELETE FROM replica_checkpoints WHERE shard = %s", (scene.shard,))
    fetch_all(
        scene.dsn,
        f"INSERT INTO replica_clusters ({_CLUSTER_COLUMNS}, nodes, occurred_at)"
        " VALUES ('stray', %s, %s, 1, 1, 'ACTIVE', false, 'stray-001', '{}', '[]', now())",
        (scene.shard, scene.owner),
    )
    summary = scene.replay("--rebuild", "--yes")
    assert summary["mode"] == "rebuild"
    assert [t["from"] for t in summary["topics"]] == [0] * len(summary["topics"])
    assert scene.topic in [t["topic"] for t in summary["topics"]]
    assert summary["removed"] == 1
    assert scene.rows() == dump


def test_mistakes_are_one_line_errors_naming_what_is_wrong(scene: Scene, tmp_path: Path) -> None:
    base = ["--dc", scene.replica, "--shard", str(scene.shard)]
    end = scene.end()
    assert "add --yes" in scene.error(*base, "--from-offset", "0")
    assert "give one" in scene.error(*base, "--from-offset", "0", "--yes", "--dry-run")
    assert "dc1, dc2, dc3" in scene.error(
        "--dc", "nowhere", "--shard", str(scene.shard), "--from-offset", "0", "--yes"
    )
    assert "shards 0 to 15" in scene.error(
        "--dc", scene.replica, "--shard", "99", "--from-offset", "0", "--yes"
    )
    assert f"offsets 0 to {end - 1}" in scene.error(*base, "--from-offset", str(end + 5), "--yes")
    owned = ["--dc", scene.owner, "--shard", str(scene.shard)]
    assert f"{scene.owner} owns shard" in scene.error(*owned, "--rebuild", "--yes")
    # A database that does not answer: the topology with the replica's database on a dead port.
    broken = tmp_path / "topology.toml"
    port = scene.stack.dc(scene.replica).database.rsplit(":", 1)[1].split("/")[0]
    broken.write_text(scene.stack.topology_file.read_text().replace(f":{port}/", ":9/"))
    message = scene.error(
        *base, "--from-offset", "0", "--yes", "--timeout", "2", topology_file=broken
    )
    assert f"{scene.replica}'s database did not answer" in message


def test_records_deleted_by_retention_refuse_a_rebuild_and_an_earlier_time(scene: Scene) -> None:
    """Last in the module: it stops the applier and deletes the first record of the copy."""
    scene.workers[f"applier-{scene.replica}"].terminate(30)
    stored = scene.stored()
    publish_events(
        scene.stack.dc(scene.owner).database,
        scene.shard,
        scene.stack.topology.shard_count,
        1,
        inert_from=_IDS_FROM,
    )
    wait_until(lambda: scene.end() > stored, 30, "the event is mirrored")
    admin = AdminClient(scene.stack.kafka(scene.replica).admin())
    for future in admin.delete_records([TopicPartition(scene.topic, 0, 1)]).values():
        future.result(timeout=15)
    base = ["--dc", scene.replica, "--shard", str(scene.shard)]
    assert "retention deleted offsets 0 to 0" in scene.error(*base, "--rebuild", "--yes")
    assert "the earliest is offset 1" in scene.error(*base, "--from-time", "1", "--dry-run")
    assert "holds offsets 1 to" in scene.error(*base, "--from-offset", "0", "--dry-run")
    past = scene.error(*base, "--from-offset", "1", "--to-offset", str(scene.end()), "--dry-run")
    assert f"its next offset is {stored}" in past
