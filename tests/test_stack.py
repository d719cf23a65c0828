"""The local stack against the real Kafka, MirrorMaker 2 and PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME

from pipeline.admin import list_topics
from pipeline.db import connect
from pipeline.stack import local_topology_toml, status, up
from pipeline.topics import PROBE_TOPIC, mirrored, shard_topic
from tests.conftest import RunningStack
from tests.kafka_helpers import consume_until, produce_one

pytestmark = pytest.mark.stack

CLI = [sys.executable, "-m", "cli"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "--log-json", *args], capture_output=True, text=True, timeout=300)


def test_record_reaches_the_replica_dc_unchanged(
    stack: RunningStack, unique_name: Callable[[str], str]
) -> None:
    # On coopr.probe, mirrored like the shard topics: a shard topic carries real events only,
    # which the appliers read.
    topology = stack.topology
    owner, replica = topology.initial_owner(0), topology.replica_list(0)[0]
    key = f"cluster-{uuid.uuid4()}".encode()
    value = uuid.uuid4().bytes * 4
    headers = [("event-type", b"OperationCompleted"), ("trace", uuid.uuid4().bytes)]
    timestamp_ms = int(time.time() * 1000) - 1234  # distinct from any time MM2 could assign

    produce_one(
        stack.kafka(owner),
        PROBE_TOPIC,
        key=key,
        value=value,
        headers=headers,
        timestamp_ms=timestamp_ms,
    )
    copy = consume_until(
        stack.kafka(replica),
        mirrored(owner, PROBE_TOPIC),
        unique_name("mirror"),
        lambda m: m.key() == key,
        timeout_s=30,
    )

    assert copy is not None, f"the record did not reach {replica} within 30 s"
    assert copy.value() == value
    assert copy.headers() == headers
    assert copy.timestamp() == (TIMESTAMP_CREATE_TIME, timestamp_ms)


def test_no_topic_is_mirrored_twice_and_dead_letters_stay_local(stack: RunningStack) -> None:
    copy_of_copy = re.compile(r"[a-z0-9-]+\.[a-z0-9-]+\.coopr\.")
    for dc in stack.topology.dcs:
        topics = list_topics(stack.kafka(dc.name))
        assert not [t for t in topics if copy_of_copy.match(t)], f"{dc.name} holds a copy of a copy"
        assert not [t for t in topics if t.endswith(".coopr.dlq")], (
            f"{dc.name} holds another DC's dead letters"
        )
        # Every shard this DC shares with another arrives as that DC's copy, and no other does.
        mirrored_shards = {t for t in topics if re.fullmatch(r"dc\d\.coopr\.shard\.\d+", t)}
        expected = {
            mirrored(other, shard_topic(s))
            for other, shards in stack.topology.replicated_by(dc.name).items()
            for s in shards
        }
        assert mirrored_shards == expected


def test_every_database_is_migrated_and_bound_to_its_dc(stack: RunningStack) -> None:
    for dc in stack.topology.data_dcs:
        conn = connect(dc.database)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT name FROM local_dc")
                assert cur.fetchall() == [(dc.name,)]
        finally:
            conn.close()


def test_status_json_gives_every_dc_for_scripts(stack: RunningStack) -> None:
    result = run_cli("stack", "status", "--format", "json", "--run-dir", str(stack.run_dir))

    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["topology"] == str(stack.topology_file.resolve())
    assert [(d["name"], d["kafka"], d["database"]) for d in body["dcs"]] == [
        (dc.name, dc.kafka, dc.database) for dc in stack.topology.dcs
    ]
    assert {p["name"] for p in body["processes"]} == {
        *(f"kafka-{dc.name}" for dc in stack.topology.dcs),
        *(f"postgres-{dc.name}" for dc in stack.topology.dcs),
        *(f"mirrormaker-{dc.name}" for dc in stack.topology.dcs),
        "toxiproxy",
    }
    assert all(p["health"] == "healthy" and p["pid"] for p in body["processes"])
    names = [dc.name for dc in stack.topology.dcs]
    assert {(link["source"], link["target"], link["state"]) for link in body["links"]} == {
        (a, b, "ok") for a in names for b in names if a != b
    }


def test_port_in_use_is_named_and_nothing_starts(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        topology = tmp_path / "topology.toml"
        # dc1's database port is the taken one; every other port is one of the OS's free ones.
        text = local_topology_toml(2, base_port=39000).replace(
            "127.0.0.1:39005", f"127.0.0.1:{port}"
        )
        topology.write_text(text)

        result = run_cli(
            "stack", "up", "--topology", str(topology), "--run-dir", str(tmp_path / "run")
        )

    assert result.returncode == 1
    assert f"port {port}" in result.stderr
    assert "Traceback" not in result.stderr
    assert status(tmp_path / "run") == []


def test_bad_topology_names_the_file_and_field(tmp_path: Path) -> None:
    topology = tmp_path / "bad.toml"
    topology.write_text(local_topology_toml(3).replace("replicas = 1", "replicas = 7"))

    result = run_cli("stack", "up", "--topology", str(topology), "--run-dir", str(tmp_path / "run"))

    assert result.returncode == 1
    assert str(topology) in result.stderr and "'replicas'" in result.stderr
    assert "Traceback" not in result.stderr


def test_up_twice_then_down_then_up_again(
    stack: RunningStack, unique_name: Callable[[str], str]
) -> None:
    if "COOPR_TEST_RUN_DIR" in os.environ:
        pytest.skip("restarting a stack this session did not start could disturb its owner")
    before = {r.name: r.pid for r in status(stack.run_dir)}
    up(stack.run_dir, stack.topology_file)
    assert {r.name: r.pid for r in status(stack.run_dir)} == before, (
        "a second `up` restarted something"
    )

    owner = stack.topology.initial_owner(1)
    key = f"survives-{uuid.uuid4()}".encode()
    produce_one(stack.kafka(owner), PROBE_TOPIC, key=key, value=b"v")

    result = run_cli("stack", "down", "--run-dir", str(stack.run_dir))
    assert result.returncode == 0, result.stderr
    assert all(r.health == "stopped" for r in status(stack.run_dir))

    up(stack.run_dir, stack.topology_file)
    assert all(r.healthy for r in status(stack.run_dir))
    # Data survives a plain `down`: the record is still in the owner's topic.
    found = consume_until(
        stack.kafka(owner),
        PROBE_TOPIC,
        unique_name("after-restart"),
        lambda m: m.key() == key,
        timeout_s=20,
    )
    assert found is not None
