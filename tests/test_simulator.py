"""The stand-in Coopr server: pure job planning, then real runs against the local stack."""

from __future__ import annotations

import dataclasses
import json
import random
import re
import secrets
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg2.extensions
import pytest

from pipeline.codec import decode, encode
from pipeline.db import connect, fetch_all, prepare
from pipeline.errors import ConfigError
from pipeline.events import (
    Cluster,
    ClusterAction,
    ClusterStatus,
    JobStatus,
    OperationCompleted,
    ProvisionerAction,
    RestartCheckpoint,
    TaskStatus,
)
from pipeline.shards import shard_of
from pipeline.topology import Topology, parse_topology
from simulator import (
    MAX_ATTEMPTS,
    JobPlan,
    SimulationStats,
    SimulatorConfig,
    checkpoint_view,
    choose_action,
    cluster_from_json,
    cluster_to_json,
    completion_view,
    format_cluster_id,
    id_space,
    job_id,
    new_cluster,
    node_from_json,
    node_to_json,
    plan_from_json,
    plan_job,
    plan_restart,
    plan_to_json,
    run_simulation,
    task_id,
)
from simulator.catalogue import OPERATIONS, TEMPLATES
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


# --- Pure: restarts after a takeover ----------------------------------------------------


def _jobs_in_flight(seed: int) -> Iterator[tuple[JobPlan, Cluster | None]]:
    """A create and, on the cluster it leaves, a job of every kind it allows; each with the
    cluster as its previous job left it (None for the create), as a takeover promotes it."""
    create = _create(seed)
    yield create, None
    cluster, _, nodes, _ = completion_view(create)
    rng = random.Random(seed)
    if cluster.status is ClusterStatus.INCOMPLETE:
        yield plan_job(rng, ClusterAction.CLUSTER_DELETE, cluster, nodes, 2), cluster
        return
    for action, _ in OPERATIONS:
        if action is not ClusterAction.ADD_SERVICES or TEMPLATES[cluster.template_name].addable:
            yield plan_job(rng, action, cluster, nodes, 2), cluster


def _checkpoint(plan: JobPlan, step: int, owner_dc: str = "dc1") -> RestartCheckpoint:
    """The RestartCheckpoint the owner wrote at ``step``, as a replica holds it."""
    job, tasks, nodes = checkpoint_view(plan, step)
    return RestartCheckpoint(str(uuid.uuid4()), 0, owner_dc, 1, step + 1, _NOW, job, tasks, nodes)


def _shape(plan: JobPlan) -> list[list[tuple[str, str, str | None, ProvisionerAction]]]:
    return [[(t.id, t.node_id, t.service, t.action) for t in stage] for stage in plan.stages]


@pytest.mark.parametrize("seed", range(16))
def test_a_restart_resubmits_the_stage_in_progress_and_runs_only_the_rest_of_the_job(
    seed: int,
) -> None:
    for plan, before in _jobs_in_flight(seed):
        for step, (stage, attempt) in enumerate(plan.steps):
            checkpoint = _checkpoint(plan, step)
            restart = plan_restart(checkpoint, before, 65)
            assert restart == plan_restart(checkpoint, before, 65)
            assert plan_from_json(plan_to_json(restart)) == restart
            # The same job: its tasks, on the same nodes and services, in the same stages.
            assert (restart.job_id, restart.action) == (plan.job_id, plan.action)
            assert _shape(restart) == _shape(plan)
            # The first boundary here hands out again what was in progress, one attempt on;
            # earlier stages and the stage's finished tasks are not run again.
            assert restart.steps[0] == (stage, attempt + 1)
            job, tasks, _ = checkpoint_view(restart, 0)
            assert job.current_stage == stage
            was = {t.id: t for t in checkpoint.tasks}
            for t in tasks:
                if was[t.id].status is TaskStatus.COMPLETE:
                    assert (t.status, t.attempts) == (TaskStatus.COMPLETE, was[t.id].attempts)
                else:
                    assert (t.status, t.attempts) == (TaskStatus.IN_PROGRESS, attempt + 1)
            earlier = {i for ids in job.staged_task_ids[:stage] for i in ids}
            assert {job.task_statuses[i] for i in earlier} <= {TaskStatus.COMPLETE}
            # Then every later stage once, and the job succeeds.
            assert restart.steps[1:] == tuple((k, 1) for k in range(stage + 1, len(plan.stages)))
            for later in range(len(restart.steps)):
                job, tasks, nodes = checkpoint_view(restart, later)
                event = RestartCheckpoint("e", 0, "dc2", 65, later + 1, _NOW, job, tasks, nodes)
                assert decode(encode(event)) == event
            cluster, job, nodes, deleted = completion_view(restart)
            assert job.status is JobStatus.COMPLETE
            assert set(job.task_statuses.values()) == {TaskStatus.COMPLETE}
            delete = plan.action is ClusterAction.CLUSTER_DELETE
            assert cluster.status is (ClusterStatus.TERMINATED if delete else ClusterStatus.ACTIVE)
            assert deleted == delete
            done = OperationCompleted("e", 0, "dc2", 65, 99, _NOW, cluster, job, nodes, deleted)
            assert decode(encode(done)) == done
            if before is not None:
                # The cluster and nodes the job would have left had it succeeded where it began.
                assert restart.cluster == plan.cluster and restart.nodes == plan.nodes
                continue
            # A create this DC ran in an earlier life of the job: its cluster record is kept.
            assert plan_restart(checkpoint, plan.cluster, 65).cluster == plan.cluster
            # A create's cluster is rebuilt from its nodes: all but its owner and times.
            unknown = {"owner_id", "description", "create_time", "expire_time"}
            rebuilt = dataclasses.replace(
                restart.cluster, **{f: getattr(plan.cluster, f) for f in unknown}
            )
            assert rebuilt == plan.cluster
            assert restart.cluster.tenant_id == plan.cluster.tenant_id
            learnt = all(n.ip_addresses for n in checkpoint.nodes)
            assert (restart.nodes == plan.nodes) == learnt
            assert all(n.ip_addresses for n in restart.nodes)


def test_a_restart_whose_stage_had_finished_starts_with_the_next_stage_or_completes() -> None:
    plan = next(p for p in map(_create, range(100)) if p.failure is None)
    for step in (len(plan.steps) - 2, len(plan.steps) - 1):
        checkpoint = _checkpoint(plan, step)
        stage = checkpoint.job.current_stage
        done = {t.id: TaskStatus.COMPLETE for t in checkpoint.tasks}
        finished = dataclasses.replace(
            checkpoint,
            job=dataclasses.replace(
                checkpoint.job, task_statuses={**checkpoint.job.task_statuses, **done}
            ),
            tasks=tuple(
                dataclasses.replace(t, status=TaskStatus.COMPLETE) for t in checkpoint.tasks
            ),
        )
        restart = plan_restart(finished, None, 65)
        assert restart.steps == tuple((k, 1) for k in range(stage + 1, len(plan.stages)))
        _, job, _, _ = completion_view(restart)
        assert job.status is JobStatus.COMPLETE and job.current_stage == len(plan.stages) - 1


def test_a_checkpoint_the_simulator_cannot_plan_from_is_refused() -> None:
    create = next(p for p in map(_create, range(100)) if p.failure is None)
    cluster, _, nodes, _ = completion_view(create)
    configure = plan_job(random.Random(1), ClusterAction.CLUSTER_CONFIGURE, cluster, nodes, 2)
    with pytest.raises(ValueError, match="no cluster"):
        plan_restart(_checkpoint(configure, 0), None, 65)
    with pytest.raises(ValueError, match="not as its last job left it"):
        plan_restart(_checkpoint(configure, 0), configure.cluster, 65)
    checkpoint = _checkpoint(create, 0)
    moved = tuple(dataclasses.replace(t, node_id="elsewhere") for t in checkpoint.tasks)
    with pytest.raises(ValueError, match="is not the planned one"):
        plan_restart(dataclasses.replace(checkpoint, tasks=moved), None, 65)
    strangers = tuple(dataclasses.replace(n, hostname="x.example") for n in checkpoint.nodes)
    with pytest.raises(ValueError, match="do not tell"):
        plan_restart(dataclasses.replace(checkpoint, nodes=strangers), None, 65)


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
        # The shard's own counter too: a relay may have pruned the published rows already.
        seqs = _query(
            topology,
            dc.name,
            "SELECT shard, epoch, max(seq) FROM (SELECT shard, epoch, seq FROM outbox"
            " UNION ALL SELECT o.shard, o.epoch, o.last_seq FROM shard_ownership o"
            " JOIN local_dc l ON o.owner_dc = l.name) t GROUP BY shard, epoch",
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
    topology: Topology,
    marks: _Marks,
    steps_before: dict[str, int],
    stats: SimulationStats,
    restarted: Mapping[str, int],
) -> list[_Row]:
    """What every run must leave behind; returns the outbox rows the run added.

    ``restarted``: the stage each job restarted in this run resumes at (its earlier ones ran
    elsewhere).
    """
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
        # A restart's steps count from 0 again, whatever an earlier life of the job left.
        fresh = job in restarted or job not in steps_before
        assert len(events) == steps_after[job] - (-1 if fresh else steps_before[job]), job
        assert len({r.dc for r in events}) == 1
        *checkpoints, last = (r.event for r in events)
        assert all(isinstance(e, RestartCheckpoint) for e in checkpoints)
        if isinstance(last, OperationCompleted) and fresh:
            reached = {e.job.current_stage for e in checkpoints if isinstance(e, RestartCheckpoint)}
            first = restarted.get(job, 0)
            assert reached == set(range(first, last.job.current_stage + 1)), job

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
    topology: Topology,
    config: SimulatorConfig,
    stop: threading.Event,
    restarted: Mapping[str, int] | None = None,
) -> tuple[SimulationStats, list[_Row]]:
    marks, steps_before = _marks(topology), _job_steps(topology)
    stats = run_simulation(topology, config, stop)
    return stats, _check_run(topology, marks, steps_before, stats, restarted or {})


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


def _insert_running(
    topology: Topology, dc: str, plan: JobPlan, step: int, cluster: Cluster, nodes: Any
) -> None:
    """``plan``'s job RUNNING at ``step`` in ``dc``, on ``cluster`` as it is there."""
    job, tasks, _ = checkpoint_view(plan, step)
    shard = shard_of(plan.cluster.id, topology.shard_count)
    conn = connect(topology.dc(dc).database)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "INSERT INTO coopr_clusters (id, shard, status, latest_job_id, body, nodes)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (
                    cluster.id,
                    shard,
                    cluster.status.value,
                    cluster.latest_job_id,
                    json.dumps(cluster_to_json(cluster)),
                    json.dumps([node_to_json(n) for n in nodes]),
                ),
            )
            cur.execute(
                "INSERT INTO coopr_jobs"
                " (id, cluster_id, shard, action, status, step, body, tasks, plan)"
                " VALUES (%s, %s, %s, %s, 'RUNNING', %s, %s, %s, %s)",
                (
                    job.id,
                    job.cluster_id,
                    shard,
                    job.action.value,
                    step,
                    json.dumps(job.to_record()),
                    json.dumps([t.to_record() for t in tasks]),
                    json.dumps(plan_to_json(plan)),
                ),
            )
    finally:
        conn.close()


def _stop_when(
    topology: Topology, dc: str, sql: str, args: tuple[object, ...], stop: threading.Event
) -> threading.Thread:
    """A thread that sets ``stop`` once ``sql`` is true in ``dc``'s database (or after 60 s)."""

    def watch() -> None:
        deadline = time.monotonic() + 60
        while not stop.wait(0.2) and time.monotonic() < deadline:
            if _query(topology, dc, sql, args)[0][0]:
                break
        stop.set()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.stack
@pytest.mark.timeout(180)
def test_jobs_taken_over_are_resumed_once_from_their_checkpoints_and_complete(
    topology: Topology,
) -> None:
    """dc2 took shards over from dc1 (faked: the takeover's rows, in shards dc2 owns)."""
    lost, taker = "dc1", "dc2"
    owned = _owned(topology)
    epoch_of = dict(_query(topology, taker, "SELECT shard, epoch FROM shard_ownership"))
    space = id_space(topology, lost)
    # dc1's cluster numbers far beyond what its simulator hands out, new on every run.
    first = 90_000_000 + space.start + space.increment * secrets.randbelow(10**6)
    numbers = range(first, first + space.increment * 3000, space.increment)
    ids = [format_cluster_id(n) for n in numbers]
    taken = (i for i in ids if shard_of(i, topology.shard_count) in owned[taker])
    not_taken = next(i for i in ids if shard_of(i, topology.shard_count) not in owned[taker])

    # A create caught in a retry round: some tasks of its stage finished, others in progress.
    create_id = next(taken)
    create, step = next(
        (p, step)
        for seed in range(1000)
        for p in [_create(seed, create_id)]
        if p.failure is None
        for step, (stage, attempt) in enumerate(p.steps)
        if attempt == 2 and stage >= 2 and min(t.attempts for t in p.stages[stage]) == 1
    )
    # An ADD_SERVICES on a cluster whose create completed: the takeover promotes that cluster.
    add_id = next(taken)
    base = next(
        p
        for seed in range(1000)
        for p in [_create(seed, add_id)]
        if p.failure is None and TEMPLATES[p.cluster.template_name].addable
    )
    active, _, active_nodes, _ = completion_view(base)
    add = plan_job(random.Random(2), ClusterAction.ADD_SERVICES, active, active_nodes, 2)
    add_step = len(add.steps) // 2
    stray = _create(3, not_taken)
    requests = {
        create.job_id: (create, step),
        add.job_id: (add, add_step),
        stray.job_id: (stray, 1),
    }
    checkpoints = {job: _checkpoint(plan, s, lost) for job, (plan, s) in requests.items()}

    def dc_sql(sql: str, args: tuple[object, ...]) -> None:
        conn = connect(topology.dc(taker).database)
        try:
            with conn, conn.cursor() as cur:
                cur.execute(sql, args)
        finally:
            conn.close()

    try:
        # dc2 ran the ADD_SERVICES itself before dc1 took the shard: its row of the job is
        # stale; the takeover back promoted the cluster as the create left it.
        _insert_running(topology, taker, add, add_step - 1, active, active_nodes)
        for job, checkpoint in checkpoints.items():
            shard = shard_of(checkpoint.job.cluster_id, topology.shard_count)
            dc_sql(
                "INSERT INTO restart_requests (job_id, cluster_id, shard, epoch, checkpoint)"
                " VALUES (%s, %s, %s, %s, %s)",
                (job, checkpoint.job.cluster_id, shard, epoch_of[shard], encode(checkpoint)),
            )
        resumed_at = {create.job_id: checkpoints[create.job_id].job.current_stage}
        resumed_at[add.job_id] = checkpoints[add.job_id].job.current_stage
        jobs = list(resumed_at)
        # dc2's simulator stops once it resumed both, and the next one finishes them.
        stop = threading.Event()
        watcher = _stop_when(
            topology,
            taker,
            "SELECT count(*) = %s FROM restart_requests WHERE job_id = ANY(%s)"
            " AND resumed_at IS NOT NULL",
            (len(jobs), jobs),
            stop,
        )
        config = SimulatorConfig(dc=taker, rate=20, duration_s=90, seed=11)
        stats, rows = _simulate(topology, config, stop, resumed_at)
        watcher.join(timeout=5)
        assert stats.restarts_resumed == 2 and stats.jobs_taken_over == 0
        stop = threading.Event()
        watcher = _stop_when(
            topology,
            taker,
            "SELECT count(*) = %s FROM coopr_jobs WHERE id = ANY(%s) AND status <> 'RUNNING'",
            (len(jobs), jobs),
            stop,
        )
        stats, more = _simulate(topology, config, stop)
        watcher.join(timeout=5)
        assert stats.restarts_resumed == 0 and stats.jobs_resumed >= 2
        rows += more

        for plan in (create, add):
            checkpoint = checkpoints[plan.job_id]
            events = [r for r in rows if r.event.job.id == plan.job_id]
            # Written in dc2 at its epoch of the shard, by dc2's server, as one job's story.
            shard = shard_of(plan.cluster.id, topology.shard_count)
            assert {(r.dc, r.shard, r.epoch) for r in events} == {(taker, shard, epoch_of[shard])}
            *resumed, done = (r.event for r in events)
            assert isinstance(done, OperationCompleted)
            assert done.server_id == f"coopr-simulator-{taker}"
            assert done.job.status is JobStatus.COMPLETE
            assert done.cluster.status is ClusterStatus.ACTIVE
            assert set(done.job.task_statuses.values()) == {TaskStatus.COMPLETE}
            # The first boundary in dc2 hands out again the tasks dc1 had in progress.
            first_here = resumed[0]
            assert isinstance(first_here, RestartCheckpoint)
            stage = checkpoint.job.current_stage
            assert first_here.job.current_stage == stage
            for was, now in zip(checkpoint.tasks, first_here.tasks, strict=True):
                if was.status is TaskStatus.COMPLETE:
                    assert (now.status, now.attempts) == (was.status, was.attempts)
                else:
                    assert (now.status, now.attempts) == (TaskStatus.IN_PROGRESS, was.attempts + 1)
            # No earlier stage runs again: one checkpoint per stage from the current one on.
            assert [e.job.current_stage for e in resumed] == list(range(stage, len(plan.stages)))
            ((status,),) = _query(
                topology, taker, "SELECT status FROM coopr_jobs WHERE id = %s", (plan.job_id,)
            )
            assert status == "COMPLETE"
            if plan is add:
                assert set(done.cluster.services) > set(active.services)

        sql = "SELECT job_id, resumed_at IS NOT NULL FROM restart_requests WHERE job_id = ANY(%s)"
        marked = dict(_query(topology, taker, sql, (list(requests),)))
        # A request of a shard dc2 does not own is not dc2's to resume.
        assert marked == {create.job_id: True, add.job_id: True, stray.job_id: False}

        # Resumed once: the next simulator of dc2 leaves them alone.
        again, rows = _simulate(
            topology, dataclasses.replace(config, duration_s=1.5), threading.Event()
        )
        assert again.restarts_resumed == 0
        assert not [r for r in rows if r.event.job.id in requests]
    finally:
        clusters = [p.cluster.id for p, _ in requests.values()]
        dc_sql("DELETE FROM restart_requests WHERE job_id = ANY(%s)", (list(requests),))
        dc_sql("DELETE FROM coopr_jobs WHERE id = ANY(%s)", (list(requests),))
        dc_sql("DELETE FROM coopr_clusters WHERE id = ANY(%s)", (clusters,))


@pytest.mark.stack
@pytest.mark.timeout(120)
def test_a_job_restarted_elsewhere_is_given_up_by_the_simulator_of_its_earlier_life(
    topology: Topology,
) -> None:
    """dc1's simulator runs a job in dc2 (which owns its shard) when dc2 restarts it."""
    owner = "dc2"
    owned = _owned(topology)[owner]
    space = id_space(topology, "dc1")
    first = 90_000_000 + space.start + space.increment * secrets.randbelow(10**6)
    cluster_id = next(
        format_cluster_id(n)
        for n in range(first, first + space.increment * 3000, space.increment)
        if shard_of(format_cluster_id(n), topology.shard_count) in owned
    )
    plan = _create(5, cluster_id)
    shard = shard_of(cluster_id, topology.shard_count)
    ((epoch,),) = _query(
        topology, owner, "SELECT epoch FROM shard_ownership WHERE shard = %s", (shard,)
    )
    dsn = topology.dc(owner).database

    def set_writable(conn: psycopg2.extensions.connection, writable: bool) -> None:
        with conn, conn.cursor() as cur:
            cur.execute(
                "UPDATE shard_ownership SET writable = %s WHERE shard = %s", (writable, shard)
            )

    def take_over(conn: psycopg2.extensions.connection) -> None:
        # What dc2's takeover commits: the job's restart request with the shard writable.
        with conn, conn.cursor() as cur:
            cur.execute(
                "INSERT INTO restart_requests (job_id, cluster_id, shard, epoch, checkpoint)"
                " VALUES (%s, %s, %s, %s, %s)",
                (plan.job_id, cluster_id, shard, epoch, encode(_checkpoint(plan, 2))),
            )
        set_writable(conn, True)

    conn = connect(dsn)
    timer = threading.Timer(1.0, take_over, (connect(dsn),))
    try:
        _insert_running(topology, owner, plan, 2, plan.cluster, plan.nodes)
        # Read-only until the takeover: dc1's simulator, which loads the job at start, keeps
        # retrying it (one job in flight at this rate) until then.
        set_writable(conn, False)
        timer.start()
        config = SimulatorConfig(dc="dc1", rate=2, duration_s=3, seed=5)
        stats, rows = _simulate(topology, config, threading.Event())
        timer.join(timeout=10)
        assert stats.jobs_resumed >= 1 and stats.jobs_taken_over == 1
        # The job stays where dc1's server left it, for dc2's restart.
        assert not [r for r in rows if r.event.job.id == plan.job_id]
        ((step, resumed),) = _query(
            topology,
            owner,
            "SELECT j.step, r.resumed_at IS NOT NULL FROM coopr_jobs j"
            " JOIN restart_requests r ON r.job_id = j.id WHERE j.id = %s",
            (plan.job_id,),
        )
        assert (step, resumed) == (2, False)
    finally:
        timer.cancel()
        timer.join(timeout=10)
        set_writable(conn, True)
        with conn, conn.cursor() as cur:
            cur.execute("DELETE FROM restart_requests WHERE job_id = %s", (plan.job_id,))
            cur.execute("DELETE FROM coopr_jobs WHERE id = %s", (plan.job_id,))
            cur.execute("DELETE FROM coopr_clusters WHERE id = %s", (cluster_id,))
        conn.close()
