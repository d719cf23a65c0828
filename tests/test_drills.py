"""Failure drills on the real stack: links cut and slowed, a DC killed and started again.

Every drill restores what it broke in ``finally``, so the session's stack stays healthy for
the tests after it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable

import pytest

from bench.mirror import bench_mirror
from pipeline.admin import list_topics
from pipeline.db import fetch_all
from pipeline.mirrormaker import flow_topics
from pipeline.stack import status
from pipeline.stack.links import heal, link_status, slow
from pipeline.stack.orchestrator import dc_topics
from pipeline.stack.processes import is_running, record_worker, spawn
from pipeline.topics import PROBE_TOPIC, mirrored
from tests.conftest import RunningStack
from tests.kafka_helpers import consume_until, produce_one

pytestmark = pytest.mark.stack

CLI = [sys.executable, "-m", "cli"]
#: How long a healed link may take to carry data again (s): toxiproxy's timeout toxic drops
#: what it holds, so a client waits for its request timeout (30 s) before it reconnects.
HEAL_S = 90.0


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "--log-json", *args], capture_output=True, text=True, timeout=600)


def arrives(
    stack: RunningStack, source: str, target: str, key: bytes, name: str, timeout_s: float
) -> bool:
    """Whether the probe record ``key`` produced in ``source`` is mirrored into ``target``."""
    found = consume_until(
        stack.kafka(target),
        mirrored(source, PROBE_TOPIC),
        name,
        lambda m: m.key() == key,
        timeout_s=timeout_s,
    )
    return found is not None


def test_status_lists_every_link_and_its_state(stack: RunningStack) -> None:
    dc = stack.topology.dcs[0].name
    try:
        slow(stack.topology, dc, 7)
        states = {r.link.name: r.state for r in link_status(stack.topology)}
        table = run_cli("stack", "status", "--run-dir", str(stack.run_dir))
    finally:
        heal(stack.topology, dc)

    names = [d.name for d in stack.topology.dcs]
    assert set(states) == {f"{a}->{b}" for a in names for b in names if a != b}
    assert {n for n, s in states.items() if s == "slow 7 ms"} == {
        n for n in states if dc in n.split("->")
    }
    assert {s for n, s in states.items() if dc not in n.split("->")} == {"ok"}
    assert table.returncode == 0, table.stderr
    assert f"{dc}->{names[1]}" in table.stdout and "slow 7 ms" in table.stdout
    assert all(r.state == "ok" for r in link_status(stack.topology))


def test_a_partitioned_dc_mirrors_nothing_until_healed(
    stack: RunningStack, unique_name: Callable[[str], str]
) -> None:
    source, target = (dc.name for dc in stack.topology.dcs[:2])
    key = uuid.uuid4().bytes
    try:
        result = run_cli("stack", "partition", source, "--run-dir", str(stack.run_dir))
        assert result.returncode == 0, result.stderr
        # The DC itself keeps working: only its links are cut.
        produce_one(stack.kafka(source), PROBE_TOPIC, key=key, value=b"cut off")
        assert not arrives(stack, source, target, key, unique_name("cut"), timeout_s=8), (
            f"a record crossed {source}->{target} while it was cut"
        )
    finally:
        result = run_cli("stack", "heal", source, "--run-dir", str(stack.run_dir))
    assert result.returncode == 0, result.stderr
    assert arrives(stack, source, target, key, unique_name("healed"), timeout_s=HEAL_S), (
        f"the record did not reach {target} within {HEAL_S:g} s of the heal"
    )


@pytest.mark.slow
def test_slow_adds_its_latency_to_the_mirror(stack: RunningStack) -> None:
    source, target = (dc.name for dc in stack.topology.dcs[:2])
    latency_ms = 400

    def mirror_p50_ms() -> float:
        runs = bench_mirror(
            stack.topology, count=20, rate=20.0, source=source, target=target, drain_s=10
        )
        through = next(r for r in runs if r.path.startswith("mirrored"))
        assert through.received == through.sent, through
        return through.p50_ms

    before = mirror_p50_ms()
    try:
        result = run_cli(
            "stack",
            "slow",
            source,
            "--latency-ms",
            str(latency_ms),
            "--run-dir",
            str(stack.run_dir),
        )
        assert result.returncode == 0, result.stderr
        slowed = mirror_p50_ms()
    finally:
        heal(stack.topology, source)

    assert before < latency_ms, f"mirror p50 {before:.0f} ms even before the delay"
    assert slowed >= latency_ms, f"mirror p50 {slowed:.0f} ms with {latency_ms} ms on the link"


@pytest.mark.slow
def test_kill_dc_then_start_dc_ends_healthy_with_the_dc_data_intact(
    stack: RunningStack, unique_name: Callable[[str], str]
) -> None:
    if "COOPR_TEST_RUN_DIR" in os.environ:
        pytest.skip("killing a DC of a stack this session did not start could disturb its owner")
    topology = stack.topology
    victim = topology.data_dcs[-1]
    other = topology.data_dcs[0].name
    key = f"survives-{uuid.uuid4()}".encode()
    # On coopr.probe: shard topics carry real events only, which the appliers read.
    produce_one(stack.kafka(victim.name), PROBE_TOPIC, key=key, value=b"v")
    # A worker of the DC, recorded as the demo records its own.
    worker = spawn(
        f"demo-sleeper-{victim.name}",
        [sys.executable, "-c", "import time; time.sleep(300)", "demo-sleeper"],
        log=stack.run_dir / "logs" / f"demo-sleeper-{victim.name}.log",
        ports=(),
    )
    record_worker(stack.run_dir, victim.name, worker)
    try:
        killed = run_cli("stack", "kill-dc", victim.name, "--run-dir", str(stack.run_dir))
        assert killed.returncode == 0, killed.stderr
        assert not is_running(worker)
        health = {r.name: r.health for r in status(stack.run_dir)}
        for role in ("kafka", "postgres", "mirrormaker"):
            assert health[f"{role}-{victim.name}"] == "stopped", health
        assert health[f"kafka-{other}"] == "healthy", health
    finally:
        started = run_cli("stack", "start-dc", victim.name, "--run-dir", str(stack.run_dir))
    assert started.returncode == 0, started.stderr

    assert all(r.healthy for r in status(stack.run_dir))
    topics = list_topics(stack.kafka(victim.name))
    assert {t.name for t in dc_topics(topology, victim)} <= topics
    assert {mirrored(other, t) for t in flow_topics(topology, other, victim.name)} <= topics
    assert fetch_all(victim.database, "SELECT name FROM local_dc", ()) == [(victim.name,)]
    found = consume_until(
        stack.kafka(victim.name),
        PROBE_TOPIC,
        unique_name("after-kill"),
        lambda m: m.key() == key,
        timeout_s=20,
    )
    assert found is not None, "the DC lost a record it had acknowledged"
    # Mirroring resumes both ways.
    for source, target in ((victim.name, other), (other, victim.name)):
        probe = uuid.uuid4().bytes
        produce_one(stack.kafka(source), PROBE_TOPIC, key=probe, value=b"after")
        assert arrives(stack, source, target, probe, unique_name("resumed"), timeout_s=HEAL_S), (
            f"{source}->{target} did not resume within {HEAL_S:g} s"
        )
