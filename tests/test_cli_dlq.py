"""``coopr-pipeline dlq list|show|redrive`` on the real stack, with a relay and an applier
running: a replica's applier dead-letters a garbage record and two events of one cluster
written with a schema version it does not know (a v3 of OperationCompleted), which a redrive
applies once that version is "shipped" ($COOPR_SCHEMA_DIR), exactly once, closing the gap they
left."""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, TopicPartition

from cli.app import main
from pipeline.admin import high_watermark
from pipeline.codec import Codec
from pipeline.db import connect, fetch_all
from pipeline.events import OperationCompleted
from pipeline.schemas import SCHEMA_DIR_ENV, load_schemas
from pipeline.topics import DLQ_TOPIC, mirrored, shard_topic
from producer.outbox import Published, publish
from tests.cli_helpers import json_lines, pipeline, run_cli
from tests.conftest import RunningStack
from tests.kafka_helpers import headers_of, produce_one, read_to_end
from tests.outbox_helpers import cluster_ids_of, inert_event
from tests.ownership_helpers import wait_until
from tests.workers import free_port

pytestmark = [pytest.mark.stack, pytest.mark.slow]

#: The shard whose events this module dead-letters; its owner and replica follow from it.
SHARD = 10
#: Where this module numbers its clusters: no other test writes them.
IDS_FROM = 77_000_000
GARBAGE = b"\x00garbage, not an Avro single-object record"


@dataclass(frozen=True)
class Letters:
    """What the module wrote and where its two dead letters are."""

    owner: str
    replica: str
    #: The mirrored topic of SHARD in the replica's Kafka, where the applier read them.
    topic: str
    garbage_offset: int
    v3_offset: int
    v3b_offset: int
    #: The two v3 events (one cluster, seqs n and n + 1) and the normal event after them, as
    #: the owner's outbox stamped them.
    v3: Published
    v3b: Published
    after: Published
    v3_cluster: str
    v3_job: str
    after_cluster: str
    #: The dead letters' IDs: their offsets in the replica's coopr.dlq.
    garbage_id: int
    v3_id: int
    v3b_id: int
    #: The shipped schemas plus OperationCompleted v3: the "fix".
    schema_dir: Path


def schemas_with_v3(folder: Path) -> Path:
    """A copy of the shipped schemas with an OperationCompleted v3: v2 and an optional field."""
    shipped = Path(str(files("schemas")))
    shutil.copytree(shipped, folder, ignore=shutil.ignore_patterns("__pycache__"))
    v2 = json.loads((folder / "OperationCompleted" / "v2.avsc").read_text())
    v2["fields"].append(
        {
            "name": "region",
            "type": ["null", "string"],
            "default": None,
            "doc": "Region of the Coopr server that completed the job; null when unknown.",
        }
    )
    (folder / "OperationCompleted" / "v3.avsc").write_text(json.dumps(v2, indent=2))
    return folder


def publish_v3_twice_then_v2(
    stack: RunningStack, owner: str, schema_dir: Path
) -> tuple[Published, Published, OperationCompleted, Published, OperationCompleted]:
    """Through the owner's outbox: two events of one cluster encoded with v3 (they take the
    shard's next two seqs), then a normal one of another cluster."""
    codec = Codec(load_schemas(schema_dir))

    def encode_v3(event: OperationCompleted) -> bytes:
        return codec.encode_record(event.RECORD_NAME, {**event.to_record(), "region": "eu"})

    ids = cluster_ids_of(SHARD, stack.topology.shard_count, IDS_FROM)
    first, second = inert_event(next(ids), SHARD), inert_event(next(ids), SHARD)
    conn = connect(stack.dc(owner).database)
    try:
        with mock.patch("producer.outbox.encode", encode_v3):
            with conn:
                v3 = publish(conn, first)
            with conn:
                v3b = publish(conn, first)
        with conn:
            after = publish(conn, second)
    finally:
        conn.close()
    return v3, v3b, first, after, second


def offsets_of_key(stack: RunningStack, dc: str, topic: str, start: int, key: bytes) -> list[int]:
    return [
        m.offset() or 0 for m in read_to_end(stack.kafka(dc), topic, start, 30) if m.key() == key
    ]


def letters_for(stack: RunningStack, dc: str, start: int, topic: str) -> dict[int, int]:
    """The offsets in ``dc``'s coopr.dlq (from ``start``) of the dead letters of ``topic``,
    by the offset in ``topic`` of the record each one holds."""
    found = {}
    for msg in read_to_end(stack.kafka(dc), DLQ_TOPIC, start, 30):
        headers = headers_of(msg)
        if headers.get("source-topic") == topic.encode():
            found[int(headers["source-offset"])] = msg.offset() or 0
    return found


@pytest.fixture(scope="module")
def letters(stack: RunningStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Letters]:
    owner = stack.topology.initial_owner(SHARD)
    replica = stack.topology.replica_list(SHARD)[0]
    topic = mirrored(owner, shard_topic(SHARD))
    schema_dir = schemas_with_v3(tmp_path_factory.mktemp("dlq") / "schemas")
    kafka = stack.kafka(replica)
    with pipeline(stack, relays=[owner], appliers=[replica]):
        dlq_start = high_watermark(kafka, DLQ_TOPIC)
        source_start = high_watermark(kafka, topic)
        _, garbage_offset = produce_one(kafka, topic, key=b"garbage", value=GARBAGE)
        v3, v3b, v3_event, after, after_event = publish_v3_twice_then_v2(stack, owner, schema_dir)
        v3_key = v3_event.cluster.id.encode()
        wait_until(
            lambda: len(offsets_of_key(stack, replica, topic, source_start, v3_key)) == 2,
            60,
            f"the v3 events mirrored to {replica}",
        )
        v3_offset, v3b_offset = offsets_of_key(stack, replica, topic, source_start, v3_key)
        offsets = (garbage_offset, v3_offset, v3b_offset)
        wait_until(
            lambda: set(offsets) <= letters_for(stack, replica, dlq_start, topic).keys(),
            60,
            f"three dead letters in {replica}'s {DLQ_TOPIC}",
        )
        found = letters_for(stack, replica, dlq_start, topic)
        garbage_id, v3_id, v3b_id = (found[o] for o in offsets)
        yield Letters(
            owner,
            replica,
            topic,
            garbage_offset,
            v3_offset,
            v3b_offset,
            v3,
            v3b,
            after,
            v3_event.cluster.id,
            v3_event.job.id,
            after_event.cluster.id,
            garbage_id,
            v3_id,
            v3b_id,
            schema_dir,
        )


def rows(stack: RunningStack, dc: str, sql: str, *args: object) -> list[tuple[Any, ...]]:
    return fetch_all(stack.dc(dc).database, sql, args)


def dump(stack: RunningStack, w: Letters) -> dict[str, list[tuple[Any, ...]]]:
    """What a redrive may change in the replica, for SHARD: compared before and after."""
    queries = {
        "replica_clusters": "SELECT * FROM replica_clusters WHERE shard = %s ORDER BY 1",
        "replica_checkpoints": "SELECT * FROM replica_checkpoints WHERE shard = %s ORDER BY 1",
        "replication_state": "SELECT * FROM replication_state WHERE shard = %s",
        "replication_gaps": "SELECT * FROM replication_gaps WHERE shard = %s ORDER BY id",
        "dead_letter_redrives": "SELECT * FROM dead_letter_redrives WHERE shard = %s ORDER BY 3",
    }
    out = {name: rows(stack, w.replica, sql, SHARD) for name, sql in queries.items()}
    out["applied_offsets"] = rows(
        stack, w.replica, "SELECT * FROM applied_offsets WHERE topic = %s", w.topic
    )
    return out


def by_id(lines: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {line["id"]: line for line in lines if "id" in line}


def test_the_replica_recorded_a_gap_for_the_refused_event_and_moved_on(
    stack: RunningStack, letters: Letters
) -> None:
    v3, after = letters.v3, letters.after
    assert rows(
        stack,
        letters.replica,
        "SELECT epoch, seq FROM replica_clusters WHERE cluster_id = %s",
        letters.after_cluster,
    ) == [(after.epoch, after.seq)]
    assert letters.v3b.seq == v3.seq + 1 and after.seq == v3.seq + 2
    gap = [v3.seq - 1, after.seq]
    [(open_gaps,)] = rows(
        stack, letters.replica, "SELECT open_gaps FROM replication_state WHERE shard = %s", SHARD
    )
    assert gap in open_gaps
    assert rows(
        stack,
        letters.replica,
        "SELECT count(*) FROM replication_gaps WHERE shard = %s AND epoch = %s"
        " AND after_seq = %s AND before_seq = %s",
        SHARD,
        v3.epoch,
        *gap,
    ) == [(1,)]


def test_list_and_show_the_dead_letters_as_the_broker_has_them(
    stack: RunningStack, letters: Letters, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = letters
    done = run_cli(stack.topology_file, "dlq", "list", "--dc", w.replica, "--format", "json")
    listed = json_lines(done.stdout)
    found = by_id(listed)
    broker = {
        m.offset(): m
        for m in read_to_end(stack.kafka(w.replica), DLQ_TOPIC, min(w.garbage_id, w.v3_id), 30)
    }
    for letter_id, offset, error in (
        (w.garbage_id, w.garbage_offset, "MissingMarkerError"),
        (w.v3_id, w.v3_offset, "UnknownFingerprintError"),
        (w.v3b_id, w.v3b_offset, "UnknownFingerprintError"),
    ):
        line, headers = found[letter_id], headers_of(broker[letter_id])
        assert line["kind"] == "dead_letter" and line["dc"] == w.replica
        assert (line["source_topic"], line["source_partition"], line["source_offset"]) == (
            w.topic,
            0,
            offset,
        )
        assert line["error"] == error == headers["dlq-error"].decode()
        assert line["reason"] == headers["dlq-reason"].decode()
        shipped_ms = round(datetime.fromisoformat(line["timestamp"]).timestamp() * 1000)
        assert shipped_ms == broker[letter_id].timestamp()[1]
        assert 0 <= line["age_s"] < 300
        assert line["redriven"] is None
    [waiting] = [x for x in listed if x["kind"] == "unshipped"]
    [(count,)] = rows(stack, w.replica, "SELECT count(*) FROM dead_letters")
    assert waiting == {"kind": "unshipped", "dc": w.replica, "count": count}

    table = run_cli(stack.topology_file, "dlq", "list").stdout
    assert any(
        line.split()[:2] == [str(w.v3_id), w.replica] and "UnknownFingerprintError" in line
        for line in table.splitlines()
    ), table

    def show(letter_id: int) -> dict[str, Any]:
        out = run_cli(
            stack.topology_file,
            "dlq",
            "show",
            str(letter_id),
            "--dc",
            w.replica,
            "--format",
            "json",
        ).stdout
        return dict(json.loads(out))

    shown = show(w.v3_id)
    message = broker[w.v3_id]
    assert shown["headers"] == {k: v.decode() for k, v in headers_of(message).items()}
    assert shown["key"] == w.v3_cluster
    assert shown["value_bytes"] == len(message.value() or b"")
    assert shown["decoded"] is None
    assert shown["still_refused"]["error"] == "UnknownFingerprintError"

    monkeypatch.setenv(SCHEMA_DIR_ENV, str(w.schema_dir))
    decoded = show(w.v3_id)["decoded"]
    assert (decoded["record_name"], decoded["epoch"], decoded["seq"]) == (
        "OperationCompleted",
        w.v3.epoch,
        w.v3.seq,
    )
    assert decoded["record"]["region"] == "eu"
    assert decoded["record"]["cluster"]["id"] == w.v3_cluster
    text = run_cli(stack.topology_file, "dlq", "show", str(w.v3_id), "--dc", w.replica).stdout
    assert "yes: OperationCompleted of shard" in text and '"region": "eu"' in text


def redrive(
    stack: RunningStack, w: Letters, *args: str
) -> tuple[dict[int, dict[str, Any]], dict[str, Any]]:
    """``dlq redrive --dc REPLICA ARGS --format json``: its lines by letter ID, its summary."""
    out = run_cli(
        stack.topology_file, "dlq", "redrive", "--dc", w.replica, *args, "--format", "json"
    ).stdout
    lines = json_lines(out)
    [summary] = [line for line in lines if line["kind"] == "summary"]
    results = by_id(lines)
    counted = {
        o: sum(1 for r in results.values() if r["outcome"] == o) for o in summary["outcomes"]
    }
    assert counted == summary["outcomes"] and summary["letters"] == len(results)
    return results, summary


def test_redrive_applies_the_once_unknown_events_once_the_schema_ships_and_only_once(
    stack: RunningStack, letters: Letters, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = letters
    mine = (str(w.garbage_id), str(w.v3_id), str(w.v3b_id))
    before = dump(stack, w)
    [(late_before,)] = rows(
        stack, w.replica, "SELECT late FROM replication_state WHERE shard = %s", SHARD
    )

    # Without the fix: nothing applies, nothing is recorded.
    results, _ = redrive(stack, w, *mine, "--yes")
    assert results[w.v3_id]["outcome"] == results[w.v3b_id]["outcome"] == "still_refused"
    assert results[w.v3_id]["error"] == "UnknownFingerprintError"
    assert results[w.garbage_id]["outcome"] == "still_refused"
    assert dump(stack, w) == before

    # With it, a dry run says what would happen (the second event sees the first applied, in
    # the same transaction) and changes nothing. --all only here: other tests' letters in this
    # DC are theirs to redrive, and a dry run leaves them as they are.
    monkeypatch.setenv(SCHEMA_DIR_ENV, str(w.schema_dir))
    results, summary = redrive(stack, w, "--all", "--dry-run")
    assert summary["dry_run"] is True
    assert results[w.v3_id]["outcome"] == results[w.v3b_id]["outcome"] == "applied"
    assert "late, into the gap" in results[w.v3_id]["detail"]
    assert "late, into the gap" in results[w.v3b_id]["detail"]
    assert results[w.garbage_id]["outcome"] == "still_refused"
    assert dump(stack, w) == before

    # Two redrives at once: each letter is applied by exactly one of them.
    with ThreadPoolExecutor(2) as pool:
        every = pool.submit(redrive, stack, w, *mine, "--yes")
        one = pool.submit(redrive, stack, w, str(w.v3_id), "--yes")
        outcomes = sorted(f.result()[0][w.v3_id]["outcome"] for f in (every, one))
    assert outcomes == ["already_redriven", "applied"]
    assert every.result()[0][w.v3b_id]["outcome"] == "applied"
    assert every.result()[0][w.garbage_id]["outcome"] == "still_refused"

    # The cluster's row and its job's checkpoint are the second event's; the gap is closed.
    assert rows(
        stack,
        w.replica,
        "SELECT c.epoch, c.seq, c.deleted, j.epoch, j.seq, j.completed FROM replica_clusters c,"
        " replica_checkpoints j WHERE c.cluster_id = %s AND j.job_id = %s",
        w.v3_cluster,
        w.v3_job,
    ) == [(w.v3b.epoch, w.v3b.seq, True) * 2]
    [(open_gaps, late)] = rows(
        stack,
        w.replica,
        "SELECT open_gaps, late FROM replication_state WHERE shard = %s",
        SHARD,
    )
    assert not [gap for gap in open_gaps if gap[0] < w.v3.seq < gap[1]]
    assert late == late_before + 2, "each applied once, as a late event"
    recorded = rows(
        stack,
        w.replica,
        "SELECT source_offset, letter, outcome, epoch, seq, redriven_at FROM dead_letter_redrives"
        " WHERE source_topic = %s AND source_offset IN (%s, %s) ORDER BY 1",
        w.topic,
        w.v3_offset,
        w.v3b_offset,
    )
    assert [r[:5] for r in recorded] == [
        (w.v3_offset, w.v3_id, "applied", w.v3.epoch, w.v3.seq),
        (w.v3b_offset, w.v3b_id, "applied", w.v3b.epoch, w.v3b.seq),
    ]
    after_first = dump(stack, w)

    # A second redrive applies nothing; the list says when the first one did.
    done = run_cli(stack.topology_file, "dlq", "redrive", "--dc", w.replica, *mine, "--yes")
    assert "already redriven 2" in done.stdout and "still refused 1" in done.stdout
    assert dump(stack, w) == after_first
    listed = by_id(
        json_lines(
            run_cli(
                stack.topology_file, "dlq", "list", "--dc", w.replica, "--format", "json"
            ).stdout
        )
    )
    for _, letter_id, outcome, _, seq, at in recorded:
        assert listed[letter_id]["redriven"]["outcome"] == outcome
        assert listed[letter_id]["redriven"]["seq"] == seq
        assert datetime.fromisoformat(listed[letter_id]["redriven"]["at"]) == at
    assert listed[w.garbage_id]["redriven"] is None


def broken_topology(stack: RunningStack, folder: Path, dc: str, what: str, port: int) -> Path:
    """A copy of the stack's topology where ``dc``'s Kafka or database is at ``port``."""
    site = stack.dc(dc)
    old = site.kafka if what == "kafka" else site.database.split("@")[1].split("/")[0]
    text = stack.topology_file.read_text().replace(old, f"127.0.0.1:{port}")
    path = folder / f"{dc}-{what}.toml"
    path.write_text(text)
    return path


def failure(topology: Path, *args: str, status: int = 1) -> str:
    done = run_cli(topology, "dlq", *args, expect=status)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines, "an error message"
    return lines[-1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--all"], "add --yes to redrive, or --dry-run"),
        (["--all", "--dry-run", "--yes"], "--dry-run and --yes together"),
        (["--all", "7", "--yes"], "give --all or the IDs of dead letters, not both"),
        (["--yes"], "give the IDs of the dead letters to redrive, or --all"),
    ],
)
def test_redrive_misuse_is_refused_before_anything_is_asked(args: list[str], message: str) -> None:
    # In process: the checks come before the topology is even read (none exists here).
    result = CliRunner().invoke(
        main, ["dlq", "redrive", "--dc", "dc1", *args, "--topology", "/nonexistent.toml"]
    )
    assert result.exit_code == 2
    [line] = result.output.splitlines()
    assert line.startswith("error: ") and message in line


def test_errors_are_one_line_and_a_non_zero_exit(
    stack: RunningStack, letters: Letters, tmp_path: Path
) -> None:
    w, topology = letters, stack.topology_file
    assert "unknown DC 'nowhere'; the topology has dc1, dc2, dc3" in failure(
        topology, "list", "--dc", "nowhere"
    )
    consumer = Consumer(stack.kafka(w.replica).consumer("dlq-test-range"))
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(DLQ_TOPIC, 0), timeout=10)
    finally:
        consumer.close()
    assert failure(topology, "show", str(high + 5), "--dc", w.replica) == (
        f"error: no dead letter {high + 5} in {w.replica}'s {DLQ_TOPIC}: its IDs are {low} to"
        f" {high - 1}"
    )
    assert f"no dead letter {high}" in failure(
        topology, "redrive", "--dc", w.replica, str(w.v3_id), str(high), "--dry-run"
    )
    # A database that takes the connection and never says a word: the connect timeout.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        no_db = broken_topology(stack, tmp_path, w.replica, "database", silent.getsockname()[1])
        assert f"error: {w.replica}'s database did not answer" in failure(
            no_db, "show", str(w.v3_id), "--dc", w.replica, "--timeout", "2"
        )
    no_kafka = broken_topology(stack, tmp_path, w.replica, "kafka", free_port())
    done = run_cli(no_kafka, "dlq", "list", "--timeout", "3", "--format", "json", expect=1)
    answered = {line["dc"] for line in json_lines(done.stdout) if line["kind"] == "unshipped"}
    assert answered == {dc.name for dc in stack.topology.dcs} - {w.replica}
    assert f"{w.replica}'s Kafka at" in done.stderr and "did not answer within 3 s" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
