"""Hypothesis strategies for every event dataclass: any value the schemas allow.

Strings are any Unicode text that has a UTF-8 form; integers span the whole Avro ``int`` or
``long`` range; times are timezone-aware with millisecond precision (what
``timestamp-millis`` stores), in UTC or a fixed offset.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import TypeVar

from hypothesis import strategies as st

from pipeline.events import (
    Cluster,
    ClusterAction,
    ClusterStatus,
    Echo,
    Event,
    Heartbeat,
    Job,
    JobStatus,
    Node,
    OperationCompleted,
    OwnershipChange,
    OwnershipChangeReason,
    ProvisionerAction,
    RestartCheckpoint,
    ShardOwnerView,
    ShardPromise,
    Task,
    TaskStatus,
)

__all__ = [
    "clusters",
    "events",
    "heartbeats",
    "int32s",
    "int64s",
    "jobs",
    "nodes",
    "operation_completed",
    "ownership_changes",
    "restart_checkpoints",
    "tasks",
    "texts",
    "times",
]

texts = st.text(st.characters(codec="utf-8"), max_size=12)
int32s = st.integers(-(2**31), 2**31 - 1)
int64s = st.integers(-(2**63), 2**63 - 1)
times = st.builds(
    lambda dt, tz: dt.replace(microsecond=dt.microsecond // 1000 * 1000, tzinfo=UTC).astimezone(tz),
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1)),
    st.sampled_from(
        [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-7, minutes=-30))]
    ),
)


T = TypeVar("T")


def _tuples(elements: st.SearchStrategy[T], max_size: int = 4) -> st.SearchStrategy[tuple[T, ...]]:
    return st.lists(elements, max_size=max_size).map(tuple)


nodes = st.builds(
    Node,
    id=texts,
    cluster_id=texts,
    services=_tuples(texts),
    hostname=st.none() | texts,
    ip_addresses=st.dictionaries(texts, texts, max_size=3),
    hardware_type=texts,
    image_type=texts,
)

clusters = st.builds(
    Cluster,
    id=texts,
    name=texts,
    description=texts,
    tenant_id=texts,
    owner_id=texts,
    create_time=times,
    expire_time=st.none() | times,
    template_name=texts,
    provider=texts,
    node_ids=_tuples(texts),
    services=_tuples(texts),
    latest_job_id=texts,
    status=st.sampled_from(ClusterStatus),
    config=texts,
)

jobs = st.builds(
    Job,
    id=texts,
    cluster_id=texts,
    action=st.sampled_from(ClusterAction),
    staged_task_ids=_tuples(_tuples(texts), max_size=3),
    current_stage=int32s,
    task_statuses=st.dictionaries(texts, st.sampled_from(TaskStatus), max_size=4),
    status=st.sampled_from(JobStatus),
    status_message=st.none() | texts,
)

tasks = st.builds(
    Task,
    id=texts,
    job_id=texts,
    cluster_id=texts,
    node_id=texts,
    service=st.none() | texts,
    action=st.sampled_from(ProvisionerAction),
    attempts=int32s,
    status=st.sampled_from(TaskStatus),
)

_envelope = {
    "event_id": texts,
    "shard": int32s,
    "owner_dc": texts,
    "epoch": int64s,
    "seq": int64s,
    "occurred_at": times,
}

operation_completed = st.builds(
    OperationCompleted,
    cluster=clusters,
    job=jobs,
    nodes=_tuples(nodes, max_size=3),
    cluster_deleted=st.booleans(),
    server_id=st.none() | texts,
    **_envelope,
)

restart_checkpoints = st.builds(
    RestartCheckpoint,
    job=jobs,
    tasks=_tuples(tasks, max_size=3),
    nodes=_tuples(nodes, max_size=3),
    **_envelope,
)

heartbeats = st.builds(
    Heartbeat,
    event_id=texts,
    occurred_at=times,
    dc=texts,
    controller_id=texts,
    alive_dcs=_tuples(texts),
    number=int64s,
    echoes=_tuples(st.builds(Echo, dc=texts, controller_id=texts, number=int64s, age_ms=int64s)),
    promises=_tuples(
        st.builds(ShardPromise, shard=int32s, epoch=int64s, heard_owner=st.booleans())
    ),
    owners=_tuples(
        st.builds(
            ShardOwnerView, shard=int32s, owner_dc=texts, epoch=int64s, writable=st.booleans()
        )
    ),
    fenced=st.booleans(),
)

ownership_changes = st.builds(
    OwnershipChange,
    event_id=texts,
    occurred_at=times,
    shard=int32s,
    from_dc=texts,
    to_dc=texts,
    from_epoch=int64s,
    epoch=int64s,
    reason=st.sampled_from(OwnershipChangeReason),
    last_applied_seq=st.none() | int64s,
)

events: st.SearchStrategy[Event] = st.one_of(
    operation_completed, restart_checkpoints, heartbeats, ownership_changes
)
