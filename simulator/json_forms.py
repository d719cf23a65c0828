"""Clusters, nodes and job plans as the JSON the ``coopr_*`` tables store, and back.

Times are ISO-8601 text, the form the replicas store too; a plan's JSON rebuilds it exactly,
so a simulator resumes another's RUNNING jobs (``coopr_jobs.plan``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pipeline.events import (
    Cluster,
    ClusterAction,
    ClusterStatus,
    Node,
    ProvisionerAction,
    json_ready,
)
from simulator.planning import JobPlan, PlannedTask, Resumption

__all__ = [
    "cluster_from_json",
    "cluster_to_json",
    "node_from_json",
    "node_to_json",
    "plan_from_json",
    "plan_to_json",
]


def cluster_to_json(cluster: Cluster) -> dict[str, Any]:
    """The Cluster record as JSON: times as ISO-8601 text (the replicas' form too)."""
    return json_ready(cluster.to_record())


def cluster_from_json(data: Mapping[str, Any]) -> Cluster:
    """Inverse of :func:`cluster_to_json`."""
    expire = data["expire_time"]
    return Cluster.from_record(
        {
            **data,
            "create_time": datetime.fromisoformat(data["create_time"]),
            "expire_time": datetime.fromisoformat(expire) if expire else None,
        }
    )


def node_to_json(node: Node) -> dict[str, Any]:
    """The Node record as JSON."""
    return node.to_record()


def node_from_json(data: Mapping[str, Any]) -> Node:
    """Inverse of :func:`node_to_json`."""
    return Node.from_record(data)


def plan_to_json(plan: JobPlan) -> dict[str, Any]:
    """The whole plan as JSON, enough for :func:`plan_from_json` to rebuild it exactly."""
    r = plan.resumption
    return {
        "job_id": plan.job_id,
        "action": plan.action.value,
        "cluster": cluster_to_json(plan.cluster),
        "nodes": [node_to_json(n) for n in plan.nodes],
        "stages": [
            [
                {
                    "id": t.id,
                    "node_id": t.node_id,
                    "service": t.service,
                    "action": t.action.value,
                    "attempts": t.attempts,
                    "fails": t.fails,
                }
                for t in stage
            ]
            for stage in plan.stages
        ],
        "final_status": plan.final_status.value,
        "failure": plan.failure,
        "resumption": None if r is None else {"stage": r.stage, "round": r.round, "epoch": r.epoch},
    }


def plan_from_json(data: Mapping[str, Any]) -> JobPlan:
    """Inverse of :func:`plan_to_json`; a plan stored before resumptions existed has none."""
    r = data.get("resumption")
    return JobPlan(
        job_id=data["job_id"],
        action=ClusterAction(data["action"]),
        cluster=cluster_from_json(data["cluster"]),
        nodes=tuple(node_from_json(n) for n in data["nodes"]),
        stages=tuple(
            tuple(
                PlannedTask(
                    id=t["id"],
                    node_id=t["node_id"],
                    service=t["service"],
                    action=ProvisionerAction(t["action"]),
                    attempts=t["attempts"],
                    fails=t["fails"],
                )
                for t in stage
            )
            for stage in data["stages"]
        ),
        final_status=ClusterStatus(data["final_status"]),
        failure=data["failure"],
        resumption=None if r is None else Resumption(r["stage"], r["round"], r["epoch"]),
    )
