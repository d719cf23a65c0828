"""What Coopr would record at each step of a planned job: the RestartCheckpoint at a stage
boundary and the OperationCompleted at its end, derived from the plan alone."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from pipeline.events import (
    Cluster,
    ClusterAction,
    Job,
    JobStatus,
    Node,
    ProvisionerAction,
    Task,
    TaskStatus,
)
from simulator.planning import JobPlan

__all__ = ["checkpoint_view", "completion_view"]

_A = ProvisionerAction


def _nodes_at(plan: JobPlan, stage: int, done: bool) -> tuple[Node, ...]:
    """The nodes as Coopr knows them at ``stage``: a create learns addresses from CONFIRM."""
    confirm = next(
        (k for k, s in enumerate(plan.stages) if s[0].action is _A.CONFIRM),
        None,
    )
    if plan.action is not ClusterAction.CLUSTER_CREATE or confirm is None:
        return plan.nodes
    if stage > confirm or (stage == confirm and done):
        return plan.nodes
    return tuple(dataclasses.replace(n, ip_addresses={}) for n in plan.nodes)


def _job(
    plan: JobPlan,
    stage: int,
    statuses: Mapping[str, TaskStatus],
    status: JobStatus,
    message: str | None = None,
) -> Job:
    return Job(
        id=plan.job_id,
        cluster_id=plan.cluster.id,
        action=plan.action,
        staged_task_ids=tuple(tuple(t.id for t in s) for s in plan.stages),
        current_stage=stage,
        task_statuses=statuses,
        status=status,
        status_message=message,
    )


def checkpoint_view(plan: JobPlan, step: int) -> tuple[Job, tuple[Task, ...], tuple[Node, ...]]:
    """The RestartCheckpoint contents at ``plan.steps[step]``: job, stage tasks, nodes.

    Tasks handed out in the step's round are IN_PROGRESS at that attempt; the stage's tasks
    that finished in earlier rounds are COMPLETE; earlier stages COMPLETE, later ones
    NOT_SUBMITTED.
    """
    k, r = plan.steps[step]
    statuses: dict[str, TaskStatus] = {}
    for j, stage in enumerate(plan.stages):
        for t in stage:
            if j < k or (j == k and t.attempts < r):
                statuses[t.id] = TaskStatus.COMPLETE
            elif j == k:
                statuses[t.id] = TaskStatus.IN_PROGRESS
            else:
                statuses[t.id] = TaskStatus.NOT_SUBMITTED
    tasks = tuple(
        Task(
            id=t.id,
            job_id=plan.job_id,
            cluster_id=plan.cluster.id,
            node_id=t.node_id,
            service=t.service,
            action=t.action,
            attempts=min(t.attempts, r),
            status=statuses[t.id],
        )
        for t in plan.stages[k]
    )
    return _job(plan, k, statuses, JobStatus.RUNNING), tasks, _nodes_at(plan, k, done=False)


def completion_view(plan: JobPlan) -> tuple[Cluster, Job, tuple[Node, ...], bool]:
    """The OperationCompleted contents: cluster after the job, job, nodes, cluster deleted.

    A failed job's failing task is FAILED and the stages it never reached DROPPED. A deleted
    cluster has no nodes left.
    """
    last = plan.last_stage
    statuses: dict[str, TaskStatus] = {}
    for j, stage in enumerate(plan.stages):
        for t in stage:
            if t.fails:
                statuses[t.id] = TaskStatus.FAILED
            elif j <= last:
                statuses[t.id] = TaskStatus.COMPLETE
            else:
                statuses[t.id] = TaskStatus.DROPPED
    status = JobStatus.COMPLETE if plan.failure is None else JobStatus.FAILED
    job = _job(plan, last, statuses, status, plan.failure)
    cluster = dataclasses.replace(plan.cluster, status=plan.final_status)
    nodes = () if plan.deletes else _nodes_at(plan, last, done=plan.failure is None)
    return cluster, job, nodes, plan.deletes
