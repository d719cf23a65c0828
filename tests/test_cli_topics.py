"""``coopr-pipeline topics list|show|tail`` and ``lag`` on the real stack with traffic.

One scene for the module: dc2's stand-in server runs jobs (RestartCheckpoints and
OperationCompleted) while every DC's relay publishes and dc3's applier applies dc2's shards.
Then, in one shard of dc2 (SHARD, replica dc3): an OperationCompleted written with schema v1
through the owner's outbox, and a garbage record produced straight to the shard topic (dc3's
applier dead-letters it). A throw-away topic of dc1 holds one record of every shipped schema
version. The commands' JSON is checked against the outboxes, the broker and Postgres.
"""

from __future__ import annotations

import io
import json
import random
import select
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from fastavro import schemaless_writer

from bench.codec import sample_heartbeat
from pipeline.admin import TopicSpec, ensure_topics
from pipeline.codec import MAGIC, decode_record
from pipeline.db import connect, fetch_all
from pipeline.events import OperationCompleted, OwnershipChange, OwnershipChangeReason
from pipeline.schemas import SchemaVersion, catalog
from pipeline.topics import mirrored, shard_topic
from producer.outbox import publish
from tests.cli_helpers import json_lines, pipeline, run_cli
from tests.conftest import RunningStack
from tests.kafka_helpers import produce_one
from tests.outbox_helpers import cluster_ids_of, inert_event
from tests.ownership_helpers import wait_until
from tests.workers import WorkerProcess, free_port

pytestmark = [pytest.mark.stack, pytest.mark.slow]

OWNER, REPLICA = "dc2", "dc3"
#: Shards of OWNER left to others: test_cli_dlq writes shard 10.
TAKEN = {10}
#: Where this module numbers its inert clusters: no other test writes them.
IDS_FROM = 76_000_000
GARBAGE = b"\x00not an Avro single-object record"


@dataclass
class Scene:
    stack: RunningStack
    workers: dict[str, WorkerProcess]
    shard: int
    #: The owner's local topic of ``shard`` and its copy in REPLICA's Kafka.
    topic: str
    copy: str
    garbage_offset: int
    #: The cluster of the event written with OperationCompleted v1 (inert events share IDs).
    v1_cluster: str
    #: dc1's topic of one record per shipped schema version (with the record written), in
    #: this order.
    versions_topic: str
    versions: list[tuple[SchemaVersion, dict[str, Any]]]
    ids: Iterator[str]


def watermarks(stack: RunningStack, dc: str, topic: str) -> tuple[int, int]:
    consumer = Consumer(stack.kafka(dc).consumer(f"t-{uuid.uuid4().hex[:8]}"))
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        return int(low), int(high)
    finally:
        consumer.close()


def applied(stack: RunningStack, dc: str) -> dict[str, int]:
    rows = fetch_all(stack.dc(dc).database, "SELECT topic, next_offset FROM applied_offsets", ())
    return {topic: int(offset) for topic, offset in rows}


def caught_up(stack: RunningStack, topics: list[str]) -> bool:
    done = applied(stack, REPLICA)
    spans = {t: watermarks(stack, REPLICA, t) for t in topics}
    # An applier stores no offset for a topic it has read nothing of.
    return all(done.get(t, low) == high for t, (low, high) in spans.items())


def unpublished(stack: RunningStack) -> int:
    """OWNER's outbox rows its relay has yet to publish (of the epochs it owns shards at)."""
    query = """
        SELECT count(*) FROM outbox x
        JOIN shard_ownership o ON o.shard = x.shard AND o.epoch = x.epoch
        JOIN local_dc l ON o.owner_dc = l.name
        WHERE x.published_at IS NULL"""
    return int(fetch_all(stack.dc(OWNER).database, query, ())[0][0])


def encoded_as(version: SchemaVersion, record: dict[str, Any]) -> bytes:
    """``record`` as a producer still on ``version`` writes it (its fields only)."""
    names = {f["name"] for f in version.raw["fields"]}
    buf = io.BytesIO()
    buf.write(MAGIC + version.fingerprint)
    schemaless_writer(buf, version.schema, {k: v for k, v in record.items() if k in names})
    return buf.getvalue()


def outbox_events(stack: RunningStack, shard: int) -> list[tuple[str, str, int]]:
    """(event_id, type, seq) of OWNER's outbox rows of ``shard``, in seq order."""
    rows = fetch_all(
        stack.dc(OWNER).database,
        "SELECT payload FROM outbox WHERE shard = %s ORDER BY epoch, seq",
        (shard,),
    )
    out = []
    for (payload,) in rows:
        name, record = decode_record(bytes(payload))
        out.append((record["event_id"], name, record["seq"]))
    return out


def publish_inert(stack: RunningStack, shard: int, ids: Iterator[str], count: int) -> list[str]:
    """Publish ``count`` inert events of ``shard`` through OWNER's outbox; their clusters."""
    conn = connect(stack.dc(OWNER).database)
    try:
        out = []
        for _ in range(count):
            with conn:
                cluster_id = next(ids)
                publish(conn, inert_event(cluster_id, shard))
                out.append(cluster_id)
        return out
    finally:
        conn.close()


def publish_v1(stack: RunningStack, shard: int, ids: Iterator[str]) -> str:
    """Publish an inert event encoded with OperationCompleted v1 through OWNER's outbox (as a
    server still on v1 does); its cluster."""
    v1 = catalog().versions("OperationCompleted")[0]

    def encode_v1(event: OperationCompleted) -> bytes:
        return encoded_as(v1, event.to_record())

    cluster_id = next(ids)
    conn = connect(stack.dc(OWNER).database)
    try:
        with mock.patch("producer.outbox.encode", encode_v1), conn:
            publish(conn, inert_event(cluster_id, shard))
    finally:
        conn.close()
    return cluster_id


def every_version(
    stack: RunningStack, shard: int
) -> tuple[str, list[tuple[SchemaVersion, dict[str, Any]]]]:
    """A new dc1 topic with one record of each shipped version; the shard events are copies
    of OWNER's outbox events (as its server wrote them) re-encoded with each version."""
    samples: dict[str, dict[str, Any]] = {
        "Heartbeat": sample_heartbeat().to_record(),
        "OwnershipChange": OwnershipChange(
            event_id=str(uuid.uuid4()),
            occurred_at=sample_heartbeat().occurred_at,
            shard=shard,
            from_dc=OWNER,
            to_dc=REPLICA,
            from_epoch=1,
            epoch=2,
            reason=OwnershipChangeReason.MANUAL,
            last_applied_seq=7,
        ).to_record(),
    }
    latest = "SELECT DISTINCT ON (event_type) payload FROM outbox ORDER BY event_type, id DESC"
    for (payload,) in fetch_all(stack.dc(OWNER).database, latest, ()):
        name, record = decode_record(bytes(payload))
        samples[name] = record
    topic = f"test.cli.versions.{uuid.uuid4().hex[:8]}"
    ensure_topics(stack.kafka("dc1"), [TopicSpec(topic)])
    versions = [(v, samples[v.record]) for v in catalog()]
    for version, sample in versions:
        value = encoded_as(version, sample)
        produce_one(stack.kafka("dc1"), topic, key=version.label.encode(), value=value)
    return topic, versions


@pytest.fixture(scope="module")
def scene(stack: RunningStack) -> Iterator[Scene]:
    dcs = [dc.name for dc in stack.topology.data_dcs]
    with pipeline(stack, relays=dcs, appliers=[REPLICA]) as workers:
        run_cli(
            stack.topology_file,
            *("simulate", "--dc", OWNER, "--rate", "40", "--duration", "2", "--seed", "10"),
            timeout_s=60,
        )
        copies = [
            mirrored(OWNER, shard_topic(s))
            for s in stack.topology.owned_shards(OWNER)
            if s not in TAKEN
        ]
        wait_until(lambda: unpublished(stack) == 0, 30, "every outbox row published")
        wait_until(lambda: caught_up(stack, copies), 60, f"{REPLICA} applied {copies}")
        counts = {
            s: len(outbox_events(stack, s))
            for s in stack.topology.owned_shards(OWNER)
            if s not in TAKEN
        }
        shard = max(counts, key=lambda s: counts[s])
        topic, copy = shard_topic(shard), mirrored(OWNER, shard_topic(shard))
        # A run of its own: a reused stack holds the clusters of earlier runs.
        run_ids_from = IDS_FROM + random.randrange(900) * 1000
        ids = cluster_ids_of(shard, stack.topology.shard_count, run_ids_from)
        garbage_offset = watermarks(stack, OWNER, topic)[1]
        produce_one(stack.kafka(OWNER), topic, key=b"garbage", value=GARBAGE)
        v1_cluster = publish_v1(stack, shard, ids)
        versions_topic, versions = every_version(stack, shard)
        end = garbage_offset + 2
        wait_until(lambda: watermarks(stack, REPLICA, copy)[1] == end, 30, "mirrored")
        wait_until(lambda: caught_up(stack, [copy]), 30, f"{REPLICA} applied {copy}")
        yield Scene(
            stack,
            workers,
            shard,
            topic,
            copy,
            garbage_offset,
            v1_cluster,
            versions_topic,
            versions,
            ids,
        )


def as_json(value: Any) -> Any:
    """``value`` as the commands print it (datetimes in ISO 8601)."""
    return json.loads(json.dumps(value, default=lambda v: v.isoformat()))


def show(scene: Scene, *args: str) -> list[dict[str, Any]]:
    done = run_cli(scene.stack.topology_file, "topics", "show", *args, "--format", "json")
    return json_lines(done.stdout)


def test_topics_list_gives_the_brokers_offsets_and_the_replicas_applied_offsets(
    scene: Scene,
) -> None:
    stack = scene.stack
    rows = json_lines(run_cli(stack.topology_file, "topics", "list", "--format", "json").stdout)
    stored = {dc.name: applied(stack, dc.name) for dc in stack.topology.data_dcs}
    expected_shards = range(stack.topology.shard_count)
    for dc in stack.topology.data_dcs:
        expected = {shard_topic(s) for s in stack.topology.shards_of(dc.name)} | {
            mirrored(source, shard_topic(s))
            for source, shards in stack.topology.replicated_by(dc.name).items()
            for s in shards
        }
        # Other tests' made-up sources leave copies of shards past shard_count: listed too.
        listed = {r["topic"] for r in rows if r["dc"] == dc.name and r["shard"] in expected_shards}
        assert listed == expected
    rows = [r for r in rows if r["shard"] in expected_shards]
    for r in rows:
        assert (r["start"], r["end"]) == watermarks(stack, r["dc"], r["topic"]), r
        assert r["owner_dc"] == stack.topology.initial_owner(r["shard"]) and r["epoch"] == 1
        if r["source_dc"] == r["dc"]:
            assert r["applied"] is None and r["lag_records"] is None
            continue
        mine = stored[r["dc"]].get(r["topic"])
        assert r["applied"] == (r["start"] if mine is None else mine), r
        assert r["applied_stored"] == (mine is not None)
        assert r["lag_records"] == r["end"] - r["applied"]
    [row] = [r for r in rows if r["dc"] == REPLICA and r["topic"] == scene.copy]
    assert row["source_dc"] == OWNER and row["shard"] == scene.shard
    assert row["lag_records"] == 0 and row["lag_s"] == 0
    assert row["end"] == scene.garbage_offset + 2


def test_topics_show_decodes_what_the_owner_wrote_and_shows_garbage_as_undecodable(
    scene: Scene,
) -> None:
    records = show(scene, "--dc", OWNER, "--shard", str(scene.shard))
    bad = [r for r in records if r["undecodable"] is not None]
    good = [r for r in records if r["undecodable"] is None]
    assert [r["offset"] for r in records] == list(range(len(records)))
    # One garbage record per run of this module (a reused stack keeps earlier ones).
    assert scene.garbage_offset in [r["offset"] for r in bad]
    for r in bad:
        assert (r["key"], r["type"], r["event"]) == ("garbage", None, None)
        assert r["undecodable"]["bytes"] == len(GARBAGE)
        assert r["undecodable"]["error"] == "MissingMarkerError"
        assert r["undecodable"]["reason"]
    assert [(r["event"]["event_id"], r["type"], r["event"]["seq"]) for r in good] == (
        outbox_events(scene.stack, scene.shard)
    )
    assert {r["type"] for r in good} == {"RestartCheckpoint", "OperationCompleted"}
    for r in good:
        cluster = r["event"].get("cluster") or {"id": r["event"]["job"]["cluster_id"]}
        assert r["key"] == cluster["id"] and r["topic"] == scene.topic and r["partition"] == 0
        assert r["headers"] == {
            "event-type": r["type"],
            "epoch": str(r["event"]["epoch"]),
            "seq": str(r["event"]["seq"]),
        }
    [v1] = [r for r in good if r["key"] == scene.v1_cluster]
    assert v1["event"]["server_id"] is None  # v2's field, at its default
    # The mirrored copy in the replica's Kafka: the same records, summarised in a table.
    table = run_cli(
        scene.stack.topology_file,
        *("topics", "show", "--dc", REPLICA, "--shard", str(scene.shard), "--source", OWNER),
    ).stdout
    assert table.count("UNDECODABLE") == len(bad) and f"({len(GARBAGE)} bytes)" in table
    assert table.count("OperationCompleted") == sum(r["type"] == "OperationCompleted" for r in good)


def test_topics_show_decodes_every_shipped_schema_version(scene: Scene) -> None:
    records = show(scene, "--dc", "dc1", "--topic", scene.versions_topic)
    assert [(r["key"], r["type"]) for r in records] == [
        (v.label, v.record) for v, _ in scene.versions
    ]
    assert {v.label for v, _ in scene.versions} >= {
        *("OperationCompleted v1", "OperationCompleted v2", "RestartCheckpoint v1"),
        *("Heartbeat v1", "Heartbeat v2", "OwnershipChange v1"),
    }
    for r, (version, written) in zip(records, scene.versions, strict=True):
        # Resolved to the latest version: the writer's fields as written, the others at
        # their defaults.
        latest = catalog().latest(version.record).raw["fields"]
        expected = {f["name"]: as_json(written[f["name"]]) for f in version.raw["fields"]} | {
            f["name"]: f["default"]
            for f in latest
            if f["name"] not in {g["name"] for g in version.raw["fields"]}
        }
        assert r["event"] == expected, version.label


def test_topics_show_filters_start_at_an_offset_a_time_or_the_last_k(scene: Scene) -> None:
    args = ("--dc", REPLICA, "--shard", str(scene.shard), "--source", OWNER)
    everything = show(scene, *args)
    n = len(everything)
    cluster = next(r for r in everything[n // 2 :] if r["event"])["event"]["job"]["cluster_id"]
    kind = "RestartCheckpoint"
    stamp = everything[n // 3]["timestamp_ms"]
    from_time = next(i for i, r in enumerate(everything) if r["timestamp_ms"] >= stamp)
    with ThreadPoolExecutor(4) as pool:
        runs = [
            pool.submit(show, scene, *args, "--offset", str(n // 4), "--count", "3"),
            pool.submit(show, scene, *args, "--last", "4"),
            pool.submit(show, scene, *args, "--from-time", str(stamp), "--type", kind),
            pool.submit(show, scene, *args, "--cluster", str(cluster)),
        ]
        at_offset, last, timed, of_cluster = (r.result() for r in runs)
    assert at_offset == everything[n // 4 : n // 4 + 3]
    assert last == everything[-4:]
    assert timed == [
        r for r in everything[from_time:] if r["type"] in (kind, None)
    ]  # undecodable records are never filtered out
    assert of_cluster == [
        r
        for r in everything
        if r["event"] is None
        or (r["event"].get("cluster") or {}).get("id") == cluster
        or (r["event"].get("job") or {}).get("cluster_id") == cluster
    ]
    assert any(r["event"] is not None for r in of_cluster)


def test_topics_tail_follows_new_records(scene: Scene) -> None:
    stack = scene.stack
    tail = subprocess.Popen(
        [
            *(sys.executable, "-m", "cli", "topics", "tail", "--dc", REPLICA),
            *("--shard", str(scene.shard), "--source", OWNER, "--format", "json", "--count", "3"),
            *("--topology", str(stack.topology_file)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert tail.stderr is not None
        ready, _, _ = select.select([tail.stderr], [], [], 30)
        assert ready, "topics tail did not start within 30 s"
        assert "following" in tail.stderr.readline()  # it has found the end: write now
        written = publish_inert(stack, scene.shard, scene.ids, 3)
        out, err = tail.communicate(timeout=60)
    finally:
        tail.kill()
    assert tail.returncode == 0 and "Traceback" not in err, err
    assert [r["event"]["cluster"]["id"] for r in json_lines(out)] == written


def lag_of(scene: Scene, *options: str, expect: int) -> tuple[dict[str, Any], str]:
    done = run_cli(
        scene.stack.topology_file,
        *("lag", "--dc", REPLICA, "--shard", str(scene.shard), "--format", "json", *options),
        expect=expect,
    )
    [row] = json_lines(done.stdout)
    return row, done.stderr


def test_lag_counts_what_a_stopped_applier_missed_and_is_zero_once_it_resumes(
    scene: Scene,
) -> None:
    stack = scene.stack
    scene.workers[f"applier-{REPLICA}"].terminate(30)
    before = watermarks(stack, REPLICA, scene.copy)[1]
    assert applied(stack, REPLICA)[scene.copy] == before
    publish_inert(stack, scene.shard, scene.ids, 7)
    wait_until(lambda: watermarks(stack, REPLICA, scene.copy)[1] == before + 7, 30, "mirrored")
    row, err = lag_of(scene, "--max-lag-s", "0", expect=1)
    assert (row["source_dc"], row["topic"], row["end"]) == (OWNER, scene.copy, before + 7)
    assert (row["applied"], row["records"], row["backlog"]) == (before, 7, 0)
    assert row["seconds"] > 0 and row["applied_stored"]
    assert f"{REPLICA} is" in err and f"behind {OWNER} on shard {scene.shard}" in err

    applier = WorkerProcess(stack.topology_file, "worker", "applier", "--dc", REPLICA)
    scene.workers[f"applier-{REPLICA}"] = applier
    wait_until(lambda: caught_up(stack, [scene.copy]), 60, "the applier caught up")
    row, err = lag_of(scene, "--max-lag-s", "30", expect=0)
    assert (row["applied"], row["records"], row["seconds"]) == (before + 7, 0, 0)
    assert err == ""


def test_operator_errors_are_one_line_naming_what_is_valid(scene: Scene, tmp_path: Path) -> None:
    stack = scene.stack
    # Retention deleted dc1's first two version records.
    admin = AdminClient(stack.kafka("dc1").admin())
    for future in admin.delete_records([TopicPartition(scene.versions_topic, 0, 2)]).values():
        future.result(timeout=15)
    closed = free_port()
    unreachable = tmp_path / "topology.toml"
    unreachable.write_text(
        stack.topology_file.read_text().replace(stack.dc("dc1").kafka, f"127.0.0.1:{closed}")
    )
    last = len(scene.versions) - 1
    show = ("topics", "show", "--dc")
    cases: list[tuple[Path, tuple[str, ...], list[str]]] = [
        (stack.topology_file, (*show, "dc9", "--shard", "1"), ["unknown DC 'dc9'", "dc1, dc2"]),
        (stack.topology_file, (*show, OWNER, "--shard", "99"), ["no shard 99", "0 to 15"]),
        (
            stack.topology_file,
            (*show, OWNER, "--topic", "nope"),
            ["no topic nope in dc2's Kafka", shard_topic(scene.shard), f"{REPLICA}.coopr.shard."],
        ),
        (
            stack.topology_file,
            (*show, "dc1", "--topic", scene.versions_topic, "--offset", "1"),
            [f"offset 1 is outside {scene.versions_topic}", f"offsets 2 to {last}"],
        ),
        (
            stack.topology_file,
            (*show, "dc1", "--topic", scene.versions_topic, "--from-time", "2001-01-01"),
            ["no longer holds records from before", "the earliest is offset 2"],
        ),
        (
            unreachable,
            ("topics", "list", "--dc", "dc1", "--timeout", "2"),
            [f"dc1's Kafka at 127.0.0.1:{closed} did not answer within 2 s"],
        ),
        (
            unreachable,
            (*show, "dc1", "--shard", "0", "--timeout", "2"),
            [f"dc1's Kafka at 127.0.0.1:{closed} did not answer within 2 s"],
        ),
    ]
    with ThreadPoolExecutor(4) as pool:
        runs = [pool.submit(run_cli, f, *args, expect=None, timeout_s=60) for f, args, _ in cases]
        results = [r.result() for r in runs]
    for (_, args, words), done in zip(cases, results, strict=True):
        message = done.stderr.strip()
        assert done.returncode != 0 and done.stdout == "", (args, done.stdout)
        assert len(message.splitlines()) == 1, (args, message)
        for word in words:
            assert word in message, (args, message)
