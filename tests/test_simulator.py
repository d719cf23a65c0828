"""The stand-in Coopr server: pure job planning, then real runs against the local stack."""

from __future__ import annotations

import random
import re
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg2.extensions
import pytest

from pipeline.codec import decode, encode
from pipeline.db import connect, fetch_all, prepare
from pipeline.errors import ConfigError
from pipeline.events import (
    ClusterAction,
    ClusterStatus,
    JobStatus,
    OperationCompleted,
    ProvisionerAction,
    RestartCheckpoint,
    TaskStatus,
)
from pipeline.topology import Topology, parse_topology
from simulator import (
    MAX_ATTEMPTS,
    JobPlan,
    SimulationStats,
    SimulatorConfig,
    checkpoint_view,
    choose_action,
    cluster_from_json,
    completion_view,
    format_cluster_id,
    id_space,
    job_id,
    new_cluster,
    node_from_json,
    plan_from_json,
    plan_job,
    plan_to_json,
    run_simulation,
    task_id,
)
from tests.conftest import RunningStack

_A = ProvisionerAction
_NOW = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
_CREATE_ORDER = [
    _A.CREATE,
    _A.CONFIRM,
    _A.BOOTSTRAP,
    _A.INSTALL,
    _A.CONFIGURE,
    _A.INITIALIZE,
    _A.START,
]


def _topology(witness: bool = False) -> Topology:
    dcs: list[dict[str, Any]] = [
        {"name": f"dc{i}", "kafka": f"127.0.0.1:{9090 + i}", "database": f"postgresql://h/{i}"}
        for i in (1, 2, 3)
    ]
    if witness:
        dcs.append({**dcs[0], "name": "w", "witness": True})
    return parse_topology({"shard_count": 16, "replicas": 1, "dc": dcs})


def _create(seed: int, cluster_id: str = "00000001") -> JobPlan:
    rng = random.Random(seed)
    cluster, nodes = new_cluster(rng, cluster_id, _NOW)
    return plan_job(rng, ClusterAction.CLUSTER_CREATE, cluster, nodes, 1)


def _stage_actions(plan: JobPlan) -> list[ProvisionerAction]:
    """Each stage's action, consecutive repeats (START tiers) collapsed."""
    out: list[ProvisionerAction] = []
    for stage in plan.stages:
        if not out or out[-1] is not stage[0].action:
            out.append(stage[0].action)
    return out


# --- Pure planning -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_a_create_runs_coopr_stages_in_order_with_one_task_per_node_or_service(seed: int) -> None:
    plan = _create(seed)
    assert _stage_actions(plan) == _CREATE_ORDER
    assert 1 <= len(plan.nodes) <= 10
    for stage in plan.stages:
        assert len({t.action for t in stage}) == 1
        if stage[0].action in (_A.CREATE, _A.CONFIRM, _A.BOOTSTRAP):
            assert sorted(t.node_id for t in stage) == sorted(n.id for n in plan.nodes)
            assert all(t.service is None for t in stage)
        else:
            pairs = [(t.node_id, t.service) for t in stage]
            assert len(set(pairs)) == len(pairs)
            services = {n.id: n.services for n in plan.nodes}
            assert all(s in services[node] for node, s in pairs)


def test_id_formats_follow_coopr() -> None:
    assert format_cluster_id(42) == "00000042"
    assert job_id("00000042", 7) == "00000042-007"
    assert task_id("00000042-007", 12) == "00000042-007-012"
    plan = _create(3, "00000042")
    assert plan.job_id == "00000042-001"
    ids = [t.id for stage in plan.stages for t in stage]
    assert all(re.fullmatch(r"00000042-001-\d{3}", i) for i in ids)
    assert [int(i.rsplit("-", 1)[1]) for i in ids] == list(range(1, len(ids) + 1))


def test_id_spaces_of_three_dcs_never_overlap_and_cover_every_number() -> None:
    topology = _topology(witness=True)
    spaces = [id_space(topology, dc) for dc in ("dc1", "dc2", "dc3")]
    assert [(s.start, s.increment) for s in spaces] == [(1, 3), (2, 3), (3, 3)]
    owners = [[s.contains(n) for s in spaces].count(True) for n in range(1, 3001)]
    assert owners == [1] * 3000
    assert not any(s.contains(0) for s in spaces)
    with pytest.raises(ConfigError, match="witness"):
        id_space(topology, "w")
    with pytest.raises(ConfigError, match="unknown DC"):
        id_space(topology, "dc9")


def test_same_seed_same_plan_and_different_seeds_different_plans() -> None:
    assert _create(11) == _create(11)
    plans = [_create(seed) for seed in range(20)]
    assert len({repr(p) for p in plans}) == 20
    # Beyond node UUIDs, the seed changes the shape: sizes, templates, outcomes.
    assert len({(len(p.nodes), p.cluster.template_name) for p in plans}) > 5


@pytest.mark.parametrize("seed", range(60))
def test_every_step_of_every_job_kind_encodes_and_tells_a_consistent_story(seed: int) -> None:
    rng = random.Random(seed)
    plan = _create(seed)
    cluster, _, nodes, _ = completion_view(plan)
    plans = [plan]
    if cluster.status is ClusterStatus.ACTIVE:
        action = choose_action(rng, cluster)
        plans.append(plan_job(rng, action, cluster, nodes, 2))
    for p in plans:
        assert plan_from_json(plan_to_json(p)) == p
        for step, (stage, attempt) in enumerate(p.steps):
            job, tasks, step_nodes = checkpoint_view(p, step)
            assert job.current_stage == stage and job.status is JobStatus.RUNNING
            assert [t.id for t in tasks] == list(job.staged_task_ids[stage])
            assert all(1 <= t.attempts <= attempt for t in tasks)
            assert any(t.status is TaskStatus.IN_PROGRESS for t in tasks)
            event = RestartCheckpoint("e", 0, "dc1", 1, step + 1, _NOW, job, tasks, step_nodes)
            assert decode(encode(event)) == event
        end_cluster, job, end_nodes, deleted = completion_view(p)
        assert end_cluster.latest_job_id == p.job_id
        if p.failure is None:
            assert job.status is JobStatus.COMPLETE
            assert set(job.task_statuses.values()) == {TaskStatus.COMPLETE}
        else:
            assert job.status is JobStatus.FAILED and job.status_message == p.failure
            assert list(job.task_statuses.values()).count(TaskStatus.FAILED) == 1
            assert end_cluster.status in (ClusterStatus.INCOMPLETE, ClusterStatus.INCONSISTENT)
        assert deleted == (end_cluster.status is ClusterStatus.TERMINATED)
        done = OperationCompleted("e", 0, "dc1", 1, 9, _NOW, end_cluster, job, end_nodes, deleted)
        assert decode(encode(done)) == done


def test_outcomes_vary_over_many_seeds() -> None:
    plans = [_create(seed) for seed in range(300)]
    statuses = {completion_view(p)[0].status for p in plans}
    assert statuses == {ClusterStatus.ACTIVE, ClusterStatus.INCOMPLETE}
    attempts = {t.attempts for p in plans for s in p.stages for t in s}
    assert attempts == set(range(1, MAX_ATTEMPTS + 1))
    active = [completion_view(p) for p in plans if p.failure is None]
    rng = random.Random(5)
    kinds = {choose_action(rng, c) for c, _, _, _ in active}
    assert ClusterAction.CLUSTER_DELETE in kinds and ClusterAction.ADD_SERVICES in kinds


def test_a_create_learns_node_addresses_at_confirm_and_a_delete_leaves_no_nodes() -> None:
    plan = next(p for p in map(_create, range(100)) if p.failure is None)
    confirm = _stage_actions(plan).index(_A.CONFIRM)
    steps = plan.steps
    for step, (stage, _) in enumerate(steps):
        _, _, nodes = checkpoint_view(plan, step)
        assert all(bool(n.ip_addresses) == (stage > confirm) for n in nodes)
    cluster, _, nodes, _ = completion_view(plan)
    rng = random.Random(1)
    delete = plan_job(rng, ClusterAction.CLUSTER_DELETE, cluster, nodes, 2)
    assert _stage_actions(delete)[-1] is _A.DELETE
    if delete.failure is None:
        gone, _, left, deleted = completion_view(delete)
        assert gone.status is ClusterStatus.TERMINATED and deleted and left == ()


def test_an_incomplete_cluster_can_only_be_deleted() -> None:
    plan = next(p for p in map(_create, range(300)) if p.failure is not None)
    cluster, _, _, _ = completion_view(plan)
    assert cluster.status is ClusterStatus.INCOMPLETE
    rng = random.Random(0)
    assert {choose_action(rng, cluster) for _ in range(20)} == {ClusterAction.CLUSTER_DELETE}


@pytest.mark.parametrize(("rate", "duration"), [(0, 1), (-1, 1), (float("nan"), 1), (1, -1)])
def test_config_rejects_nonsense(rate: float, duration: float) -> None:
    with pytest.raises(ConfigError):
        SimulatorConfig(dc="dc1", rate=rate, duration_s=duration, seed=1)


# --- The real stack ----------------------------------------------------------------------

_Marks = dict[str, tuple[int, dict[tuple[int, int], int]]]
_Event = OperationCompleted | RestartCheckpoint


@dataclass(frozen=True)
class _Row:
    dc: str
    shard: int
    epoch: int
    seq: int
    event: _Event

    @property
    def cluster_id(self) -> str:
        if isinstance(self.event, OperationCompleted):
            return self.event.cluster.id
        return self.event.job.cluster_id


@pytest.fixture
def topology(stack: RunningStack) -> Topology:
    # A reused stack may predate the coopr_* tables; migrating is idempotent.
    for dc in stack.topology.data_dcs:
        prepare(stack.topology, dc.name)
    return stack.topology


def _query(topology: Topology, dc: str, sql: str, args: tuple[object, ...] = ()) -> list[Any]:
    return fetch_all(topology.dc(dc).database, sql, args)


def _marks(topology: Topology) -> _Marks:
    """Per DC: the outbox's last row ID and the last seq of each (shard, epoch)."""
    marks = {}
    for dc in topology.data_dcs:
        (last_id,) = _query(topology, dc.name, "SELECT coalesce(max(id), 0) FROM outbox")[0]
        seqs = _query(
            topology, dc.name, "SELECT shard, epoch, max(seq) FROM outbox GROUP BY shard, epoch"
        )
        marks[dc.name] = (last_id, {(s, e): q for s, e, q in seqs})
    return marks


def _job_steps(topology: Topology) -> dict[str, int]:
    """The last step applied of every job, over every DC."""
    return {
        job: step
        for dc in topology.data_dcs
        for job, step in _query(topology, dc.name, "SELECT id, step FROM coopr_jobs")
    }


def _new_rows(topology: Topology, marks: _Marks) -> list[_Row]:
    """The outbox rows added since ``marks``, decoded; each must decode to its event type."""
    rows = []
    for dc in topology.data_dcs:
        for shard, epoch, seq, event_type, payload in _query(
            topology,
            dc.name,
            "SELECT shard, epoch, seq, event_type, payload FROM outbox WHERE id > %s ORDER BY id",
            (marks[dc.name][0],),
        ):
            event = decode(bytes(payload))
            assert type(event).__name__ == event_type
            assert isinstance(event, OperationCompleted | RestartCheckpoint)
            stamp = (event.shard, event.owner_dc, event.epoch, event.seq)
            assert stamp == (shard, dc.name, epoch, seq)
            rows.append(_Row(dc.name, shard, epoch, seq, event))
    return rows


def _owned(topology: Topology) -> dict[str, set[int]]:
    """The shards each DC's own database says it owns."""
    sql = "SELECT o.shard FROM shard_ownership o JOIN local_dc l ON o.owner_dc = l.name"
    return {dc.name: {s for (s,) in _query(topology, dc.name, sql)} for dc in topology.data_dcs}


def _check_run(  # noqa: C901 - every invariant a run must keep, checked in one place
    topology: Topology, marks: _Marks, steps_before: dict[str, int], stats: SimulationStats
) -> list[_Row]:
    """What every run must leave behind; returns the outbox rows the run added."""
    rows = _new_rows(topology, marks)
    assert len(rows) == stats.events_published > 0
    per_dc: dict[str, int] = defaultdict(int)
    for r in rows:
        per_dc[r.dc] += 1
    assert {dc: n for dc, n in stats.writes_by_dc.items() if n} == per_dc

    # Per (shard, epoch), seqs continue the outbox's without a gap or a repeat.
    seqs: dict[tuple[str, int, int], list[int]] = defaultdict(list)
    for r in rows:
        seqs[(r.dc, r.shard, r.epoch)].append(r.seq)
    for (name, shard, epoch), got in seqs.items():
        first = marks[name][1].get((shard, epoch), 0) + 1
        assert sorted(got) == list(range(first, first + len(got))), (name, shard, epoch)

    # Every write landed in the DC that owns its shard, and its cluster row only there.
    owned = _owned(topology)
    assert all(r.shard in owned[r.dc] for r in rows)
    touched = sorted({r.cluster_id for r in rows})
    for dc in topology.data_dcs:
        found = _query(
            topology, dc.name, "SELECT shard FROM coopr_clusters WHERE id = ANY(%s)", (touched,)
        )
        assert all(shard in owned[dc.name] for (shard,) in found)

    # Each job: one event per step it applied in this run, in order, in one DC; a job that
    # ended has a checkpoint for each stage it reached, then its OperationCompleted.
    per_job: dict[str, list[_Row]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: (r.dc, r.shard, r.epoch, r.seq)):
        per_job[r.event.job.id].append(r)
    steps_after = _job_steps(topology)
    for job, events in per_job.items():
        assert len(events) == steps_after[job] - steps_before.get(job, -1), job
        assert len({r.dc for r in events}) == 1
        *checkpoints, last = (r.event for r in events)
        assert all(isinstance(e, RestartCheckpoint) for e in checkpoints)
        if isinstance(last, OperationCompleted) and job not in steps_before:
            reached = {e.job.current_stage for e in checkpoints if isinstance(e, RestartCheckpoint)}
            assert reached == set(range(last.job.current_stage + 1)), job

    # The owner's coopr_clusters row is the cluster as its last event left it.
    last_of: dict[str, _Row] = {}
    for r in sorted(rows, key=lambda r: (r.epoch, r.seq)):
        last_of[r.cluster_id] = r
    for cluster_id, r in last_of.items():
        ((status, latest, body, nodes),) = _query(
            topology,
            r.dc,
            "SELECT status, latest_job_id, body, nodes FROM coopr_clusters WHERE id = %s",
            (cluster_id,),
        )
        if isinstance(r.event, OperationCompleted):
            assert cluster_from_json(body) == r.event.cluster
            assert tuple(node_from_json(n) for n in nodes) == r.event.nodes
            assert status == r.event.cluster.status.value
        else:
            assert (status, latest) == ("PENDING", r.event.job.id)
    return rows


def _simulate(
    topology: Topology, config: SimulatorConfig, stop: threading.Event
) -> tuple[SimulationStats, list[_Row]]:
    marks, steps_before = _marks(topology), _job_steps(topology)
    stats = run_simulation(topology, config, stop)
    return stats, _check_run(topology, marks, steps_before, stats)


@pytest.mark.stack
@pytest.mark.timeout(120)
def test_simulated_jobs_are_routed_to_owners_gapless_and_match_owner_state(
    topology: Topology,
) -> None:
    config = SimulatorConfig(dc="dc1", rate=50, duration_s=5, seed=20261125)
    stats, rows = _simulate(topology, config, threading.Event())
    # 5 s at 50/s plus the drain: well over 100 unless pacing is broken.
    assert stats.events_published >= 100
    assert stats.elapsed_s < 5 + 31
    assert stats.jobs_started > 0 and stats.jobs_abandoned == 0
    # dc1 owns a third of the shards: most of its clusters are written in dc2 and dc3.
    assert {r.dc for r in rows} == {"dc1", "dc2", "dc3"}
    space = id_space(topology, "dc1")
    assert all(space.contains(int(r.cluster_id)) for r in rows)
    assert any(isinstance(r.event, OperationCompleted) for r in rows)


@pytest.mark.stack
@pytest.mark.timeout(120)
def test_a_read_only_owner_is_retried_until_writable_without_losing_a_stage(
    topology: Topology,
) -> None:
    dsn = topology.dc("dc2").database

    def set_writable(conn: psycopg2.extensions.connection, writable: bool) -> None:
        with conn, conn.cursor() as cur:
            cur.execute(
                "UPDATE shard_ownership o SET writable = %s FROM local_dc l"
                " WHERE o.owner_dc = l.name",
                (writable,),
            )

    conn = connect(dsn)
    restore = threading.Timer(1.5, set_writable, (connect(dsn), True))
    try:
        set_writable(conn, False)
        restore.start()
        config = SimulatorConfig(dc="dc1", rate=50, duration_s=4, seed=7)
        stats, rows = _simulate(topology, config, threading.Event())
    finally:
        restore.cancel()
        restore.join(timeout=10)
        set_writable(conn, True)
        conn.close()
    assert stats.retries > 0 and stats.jobs_abandoned == 0
    assert any(r.dc == "dc2" for r in rows)


@pytest.mark.stack
@pytest.mark.timeout(120)
def test_stop_ends_a_long_run_after_the_transaction_in_flight(topology: Topology) -> None:
    # A short run leaves jobs RUNNING at a checkpoint (a create has 8 or more boundaries).
    _simulate(topology, SimulatorConfig("dc1", 50, 1, seed=3), threading.Event())
    stop = threading.Event()
    timer = threading.Timer(1.0, stop.set)
    timer.start()
    started = time.monotonic()
    try:
        stats, _ = _simulate(topology, SimulatorConfig("dc1", 50, 600, seed=4), stop)
    finally:
        timer.cancel()
    assert time.monotonic() - started < 10
    # The second run picked the first one's jobs up where they stopped (checked by _simulate).
    assert stats.jobs_resumed > 0
