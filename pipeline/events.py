"""Typed events: the Python side of the records in ``schemas/`` (their latest versions).

Every class is a frozen, slotted dataclass whose fields carry the Avro field names;
``to_record()`` gives the dict fastavro writes and ``from_record()`` builds the event from the
dict fastavro reads. Arrays are tuples, maps are mappings, enums are :class:`enum.Enum` members
whose values are the Avro symbols, and times are timezone-aware ``datetime`` values, stored
with millisecond precision (``timestamp-millis``: finer parts are truncated on encoding).
Events are compared by value; those holding maps (jobs, nodes) are not hashable.

Shard events (:class:`OperationCompleted`, :class:`RestartCheckpoint`) carry the envelope
``event_id, shard, owner_dc, epoch, seq, occurred_at``; they are ordered by ``(epoch, seq)``
compared lexicographically. :class:`Heartbeat` and :class:`OwnershipChange` carry ``event_id``
and ``occurred_at`` and their own fields.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, ClassVar, TypeVar

__all__ = [
    "EVENT_TYPES",
    "Cluster",
    "ClusterAction",
    "ClusterStatus",
    "Echo",
    "Event",
    "Heartbeat",
    "Job",
    "JobStatus",
    "Node",
    "OperationCompleted",
    "OwnershipChange",
    "OwnershipChangeReason",
    "ProvisionerAction",
    "RestartCheckpoint",
    "ShardOwnerView",
    "ShardPromise",
    "Task",
    "TaskStatus",
    "json_ready",
]


class ClusterStatus(enum.Enum):
    """Coopr's cluster status."""

    PENDING = "PENDING"  # a job runs on the cluster
    ACTIVE = "ACTIVE"
    INCOMPLETE = "INCOMPLETE"  # its create did not finish
    INCONSISTENT = "INCONSISTENT"  # an operation on the active cluster failed
    TERMINATED = "TERMINATED"


class ClusterAction(enum.Enum):
    """The kind of a cluster job."""

    SOLVE_LAYOUT = "SOLVE_LAYOUT"
    CLUSTER_CREATE = "CLUSTER_CREATE"
    CLUSTER_DELETE = "CLUSTER_DELETE"
    CLUSTER_CONFIGURE = "CLUSTER_CONFIGURE"
    CLUSTER_CONFIGURE_WITH_RESTART = "CLUSTER_CONFIGURE_WITH_RESTART"
    STOP_SERVICES = "STOP_SERVICES"
    START_SERVICES = "START_SERVICES"
    RESTART_SERVICES = "RESTART_SERVICES"
    ADD_SERVICES = "ADD_SERVICES"


class JobStatus(enum.Enum):
    """Status of a cluster job."""

    NOT_SUBMITTED = "NOT_SUBMITTED"
    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"
    PAUSED = "PAUSED"


class TaskStatus(enum.Enum):
    """Status of a cluster task."""

    NOT_SUBMITTED = "NOT_SUBMITTED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"
    DROPPED = "DROPPED"


class ProvisionerAction(enum.Enum):
    """What a task asks a provisioner to do."""

    CREATE = "CREATE"
    CONFIRM = "CONFIRM"
    BOOTSTRAP = "BOOTSTRAP"
    INSTALL = "INSTALL"
    REMOVE = "REMOVE"
    INITIALIZE = "INITIALIZE"
    CONFIGURE = "CONFIGURE"
    START = "START"
    STOP = "STOP"
    DELETE = "DELETE"


class OwnershipChangeReason(enum.Enum):
    """Why the owner of a shard changed."""

    FAILOVER = "FAILOVER"
    PLANNED_HANDOVER = "PLANNED_HANDOVER"
    FAILBACK = "FAILBACK"
    MANUAL = "MANUAL"


_T = TypeVar("_T")


def _slot_builder(cls: type[_T]) -> Callable[..., _T]:
    """A constructor of the frozen, slotted dataclass ``cls`` taking every field by keyword,
    for decoding. It sets the slots directly: the ``__init__`` of a frozen dataclass calls
    ``object.__setattr__`` for each field, which made building the classes of a 1.2 KB event
    cost a third of fastavro's decode of it. Generated the way :mod:`dataclasses` generates
    ``__init__``, one statement per field; no ``__post_init__`` or default is involved (the
    classes built this way have none that decoding needs)."""
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    scope: dict[str, Any] = {"new": object.__new__, "cls": cls}
    scope |= {f"set_{name}": getattr(cls, name).__set__ for name in names}
    sets = "".join(f"    set_{name}(obj, {name})\n" for name in names)
    exec(f"def build(*, {', '.join(names)}):\n    obj = new(cls)\n{sets}    return obj\n", scope)
    build: Callable[..., _T] = scope["build"]
    return build


# Calling an Enum class to look a member up costs about a microsecond, as much as building a
# small dataclass; decoding looks members up in plain dicts instead (a job carries one task
# status per task).
_CLUSTER_STATUS: Mapping[str, ClusterStatus] = {m.value: m for m in ClusterStatus}
_CLUSTER_ACTION: Mapping[str, ClusterAction] = {m.value: m for m in ClusterAction}
_JOB_STATUS: Mapping[str, JobStatus] = {m.value: m for m in JobStatus}
_TASK_STATUS: Mapping[str, TaskStatus] = {m.value: m for m in TaskStatus}
_PROVISIONER_ACTION: Mapping[str, ProvisionerAction] = {m.value: m for m in ProvisionerAction}


@dataclass(frozen=True, slots=True)
class Cluster:
    """A cluster's state; ``config`` is a JSON object as text, ``expire_time`` None for never."""

    id: str
    name: str
    description: str
    tenant_id: str
    owner_id: str
    create_time: datetime
    expire_time: datetime | None
    template_name: str
    provider: str
    node_ids: tuple[str, ...]
    services: tuple[str, ...]
    latest_job_id: str
    status: ClusterStatus
    config: str

    def to_record(self) -> dict[str, Any]:
        """The Avro record (a dict fastavro writes)."""
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "tenant_id": self.tenant_id,
            "owner_id": self.owner_id,
            "create_time": self.create_time,
            "expire_time": self.expire_time,
            "template_name": self.template_name,
            "provider": self.provider,
            "node_ids": list(self.node_ids),
            "services": list(self.services),
            "latest_job_id": self.latest_job_id,
            "status": self.status.value,
            "config": self.config,
        }

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> Cluster:
        """Build from an Avro record as fastavro reads it."""
        return _build_cluster(
            id=r["id"],
            name=r["name"],
            description=r["description"],
            tenant_id=r["tenant_id"],
            owner_id=r["owner_id"],
            create_time=r["create_time"],
            expire_time=r["expire_time"],
            template_name=r["template_name"],
            provider=r["provider"],
            node_ids=tuple(r["node_ids"]),
            services=tuple(r["services"]),
            latest_job_id=r["latest_job_id"],
            status=_CLUSTER_STATUS[r["status"]],
            config=r["config"],
        )


_build_cluster = _slot_builder(Cluster)


@dataclass(frozen=True, slots=True)
class Job:
    """A cluster job: stages of task IDs, the stage running now (0-based), task statuses."""

    id: str
    cluster_id: str
    action: ClusterAction
    staged_task_ids: tuple[tuple[str, ...], ...]
    current_stage: int
    task_statuses: Mapping[str, TaskStatus]
    status: JobStatus
    status_message: str | None = None

    def to_record(self) -> dict[str, Any]:
        """The Avro record (a dict fastavro writes)."""
        return {
            "id": self.id,
            "cluster_id": self.cluster_id,
            "action": self.action.value,
            "staged_task_ids": [list(stage) for stage in self.staged_task_ids],
            "current_stage": self.current_stage,
            "task_statuses": {k: v.value for k, v in self.task_statuses.items()},
            "status": self.status.value,
            "status_message": self.status_message,
        }

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> Job:
        """Build from an Avro record as fastavro reads it."""
        return _build_job(
            id=r["id"],
            cluster_id=r["cluster_id"],
            action=_CLUSTER_ACTION[r["action"]],
            staged_task_ids=tuple(map(tuple, r["staged_task_ids"])),
            current_stage=r["current_stage"],
            task_statuses={k: _TASK_STATUS[v] for k, v in r["task_statuses"].items()},
            status=_JOB_STATUS[r["status"]],
            status_message=r["status_message"],
        )


_build_job = _slot_builder(Job)


@dataclass(frozen=True, slots=True)
class Task:
    """A task of a job's current stage; ``service`` is None for actions on the node itself."""

    id: str
    job_id: str
    cluster_id: str
    node_id: str
    service: str | None
    action: ProvisionerAction
    attempts: int
    status: TaskStatus

    def to_record(self) -> dict[str, Any]:
        """The Avro record (a dict fastavro writes)."""
        return {
            "id": self.id,
            "job_id": self.job_id,
            "cluster_id": self.cluster_id,
            "node_id": self.node_id,
            "service": self.service,
            "action": self.action.value,
            "attempts": self.attempts,
            "status": self.status.value,
        }

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> Task:
        """Build from an Avro record as fastavro reads it."""
        return _build_task(
            id=r["id"],
            job_id=r["job_id"],
            cluster_id=r["cluster_id"],
            node_id=r["node_id"],
            service=r["service"],
            action=_PROVISIONER_ACTION[r["action"]],
            attempts=r["attempts"],
            status=_TASK_STATUS[r["status"]],
        )


_build_task = _slot_builder(Task)


@dataclass(frozen=True, slots=True)
class Node:
    """A machine of a cluster; ``ip_addresses`` maps a role (``access_v4``) to an address."""

    id: str
    cluster_id: str
    services: tuple[str, ...]
    hostname: str | None
    ip_addresses: Mapping[str, str]
    hardware_type: str
    image_type: str

    def to_record(self) -> dict[str, Any]:
        """The Avro record (a dict fastavro writes)."""
        return {
            "id": self.id,
            "cluster_id": self.cluster_id,
            "services": list(self.services),
            "hostname": self.hostname,
            "ip_addresses": dict(self.ip_addresses),
            "hardware_type": self.hardware_type,
            "image_type": self.image_type,
        }

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> Node:
        """Build from an Avro record as fastavro reads it."""
        return _build_node(
            id=r["id"],
            cluster_id=r["cluster_id"],
            services=tuple(r["services"]),
            hostname=r["hostname"],
            ip_addresses=dict(r["ip_addresses"]),
            hardware_type=r["hardware_type"],
            image_type=r["image_type"],
        )


_build_node = _slot_builder(Node)


@dataclass(frozen=True, slots=True)
class OperationCompleted:
    """A finished operation: the cluster after it, its job, the cluster's nodes.

    ``cluster_deleted`` is True when the cluster is gone; ``server_id`` names the Coopr server
    that completed the job (None in events written with version 1 of the schema).
    """

    RECORD_NAME: ClassVar[str] = "OperationCompleted"

    event_id: str
    shard: int
    owner_dc: str
    epoch: int
    seq: int
    occurred_at: datetime
    cluster: Cluster
    job: Job
    nodes: tuple[Node, ...]
    cluster_deleted: bool
    server_id: str | None = None

    def to_record(self) -> dict[str, Any]:
        """The Avro record (a dict fastavro writes)."""
        return {
            "event_id": self.event_id,
            "shard": self.shard,
            "owner_dc": self.owner_dc,
            "epoch": self.epoch,
            "seq": self.seq,
            "occurred_at": self.occurred_at,
            "cluster": self.cluster.to_record(),
            "job": self.job.to_record(),
            "nodes": [n.to_record() for n in self.nodes],
            "cluster_deleted": self.cluster_deleted,
            "server_id": self.server_id,
        }

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> OperationCompleted:
        """Build from an Avro record as fastavro reads it."""
        return _build_operation_completed(
            event_id=r["event_id"],
            shard=r["shard"],
            owner_dc=r["owner_dc"],
            epoch=r["epoch"],
            seq=r["seq"],
            occurred_at=r["occurred_at"],
            cluster=Cluster.from_record(r["cluster"]),
            job=Job.from_record(r["job"]),
            nodes=tuple(map(Node.from_record, r["nodes"])),
            cluster_deleted=r["cluster_deleted"],
            server_id=r["server_id"],
        )


_build_operation_completed = _slot_builder(OperationCompleted)


@dataclass(frozen=True, slots=True)
class RestartCheckpoint:
    """What another DC needs to restart a job: the job, its current stage's tasks, the nodes."""

    RECORD_NAME: ClassVar[str] = "RestartCheckpoint"

    event_id: str
    shard: int
    owner_dc: str
    epoch: int
    seq: int
    occurred_at: datetime
    job: Job
    tasks: tuple[Task, ...]
    nodes: tuple[Node, ...]

    def to_record(self) -> dict[str, Any]:
        """The Avro record (a dict fastavro writes)."""
        return {
            "event_id": self.event_id,
            "shard": self.shard,
            "owner_dc": self.owner_dc,
            "epoch": self.epoch,
            "seq": self.seq,
            "occurred_at": self.occurred_at,
            "job": self.job.to_record(),
            "tasks": [t.to_record() for t in self.tasks],
            "nodes": [n.to_record() for n in self.nodes],
        }

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> RestartCheckpoint:
        """Build from an Avro record as fastavro reads it."""
        return _build_restart_checkpoint(
            event_id=r["event_id"],
            shard=r["shard"],
            owner_dc=r["owner_dc"],
            epoch=r["epoch"],
            seq=r["seq"],
            occurred_at=r["occurred_at"],
            job=Job.from_record(r["job"]),
            tasks=tuple(map(Task.from_record, r["tasks"])),
            nodes=tuple(map(Node.from_record, r["nodes"])),
        )


_build_restart_checkpoint = _slot_builder(RestartCheckpoint)


@dataclass(frozen=True, slots=True)
class Echo:
    """The latest heartbeat of DC ``dc`` (instance ``controller_id``, ``number``) that the
    sender received, ``age_ms`` before it sent its own."""

    dc: str
    controller_id: str
    number: int
    age_ms: int

    def to_record(self) -> dict[str, Any]:
        """The Avro record (a dict fastavro writes)."""
        return {
            "dc": self.dc,
            "controller_id": self.controller_id,
            "number": self.number,
            "age_ms": self.age_ms,
        }

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> Echo:
        """Build from an Avro record as fastavro reads it."""
        return cls(r["dc"], r["controller_id"], r["number"], r["age_ms"])


@dataclass(frozen=True, slots=True)
class ShardPromise:
    """The highest epoch the sender promised for ``shard``; ``heard_owner``: it had heard the
    shard's owner within the failure timeout when it promised."""

    shard: int
    epoch: int
    heard_owner: bool

    def to_record(self) -> dict[str, Any]:
        """The Avro record (a dict fastavro writes)."""
        return {"shard": self.shard, "epoch": self.epoch, "heard_owner": self.heard_owner}

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> ShardPromise:
        """Build from an Avro record as fastavro reads it."""
        return cls(r["shard"], r["epoch"], r["heard_owner"])


@dataclass(frozen=True, slots=True)
class ShardOwnerView:
    """A shard's owner and epoch as the sender applies them, and whether it may write it."""

    shard: int
    owner_dc: str
    epoch: int
    writable: bool

    def to_record(self) -> dict[str, Any]:
        """The Avro record (a dict fastavro writes)."""
        return {
            "shard": self.shard,
            "owner_dc": self.owner_dc,
            "epoch": self.epoch,
            "writable": self.writable,
        }

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> ShardOwnerView:
        """Build from an Avro record as fastavro reads it."""
        return cls(r["shard"], r["owner_dc"], r["epoch"], r["writable"])


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A controller's proof of life; ``alive_dcs`` are the DCs it sees alive, itself included.

    The protocol's fields (``docs/ownership.md``): ``number`` (increasing per controller
    instance), the ``echoes`` of others' heartbeats, the ``promises`` per shard, the
    ``owners`` it applies, and ``fenced`` when it hears fewer than a majority."""

    RECORD_NAME: ClassVar[str] = "Heartbeat"

    event_id: str
    occurred_at: datetime
    dc: str
    controller_id: str
    alive_dcs: tuple[str, ...]
    number: int = 0
    echoes: tuple[Echo, ...] = ()
    promises: tuple[ShardPromise, ...] = ()
    owners: tuple[ShardOwnerView, ...] = ()
    fenced: bool = False

    def to_record(self) -> dict[str, Any]:
        """The Avro record (a dict fastavro writes)."""
        return {
            "event_id": self.event_id,
            "occurred_at": self.occurred_at,
            "dc": self.dc,
            "controller_id": self.controller_id,
            "alive_dcs": list(self.alive_dcs),
            "number": self.number,
            "echoes": [e.to_record() for e in self.echoes],
            "promises": [p.to_record() for p in self.promises],
            "owners": [o.to_record() for o in self.owners],
            "fenced": self.fenced,
        }

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> Heartbeat:
        """Build from an Avro record as fastavro reads it (a v1 record gets the defaults)."""
        return cls(
            event_id=r["event_id"],
            occurred_at=r["occurred_at"],
            dc=r["dc"],
            controller_id=r["controller_id"],
            alive_dcs=tuple(r["alive_dcs"]),
            number=r["number"],
            echoes=tuple(Echo.from_record(e) for e in r["echoes"]),
            promises=tuple(ShardPromise.from_record(p) for p in r["promises"]),
            owners=tuple(ShardOwnerView.from_record(o) for o in r["owners"]),
            fenced=r["fenced"],
        )


@dataclass(frozen=True, slots=True)
class OwnershipChange:
    """A claim of ``shard`` by ``to_dc`` with the new ``epoch``.

    ``last_applied_seq`` is the seq of the last event of ``from_epoch`` that the new owner
    applied (None when none); the old owner's later events are orphans.
    """

    RECORD_NAME: ClassVar[str] = "OwnershipChange"

    event_id: str
    occurred_at: datetime
    shard: int
    from_dc: str
    to_dc: str
    from_epoch: int
    epoch: int
    reason: OwnershipChangeReason
    last_applied_seq: int | None = None

    def to_record(self) -> dict[str, Any]:
        """The Avro record (a dict fastavro writes)."""
        return {
            "event_id": self.event_id,
            "occurred_at": self.occurred_at,
            "shard": self.shard,
            "from_dc": self.from_dc,
            "to_dc": self.to_dc,
            "from_epoch": self.from_epoch,
            "epoch": self.epoch,
            "reason": self.reason.value,
            "last_applied_seq": self.last_applied_seq,
        }

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> OwnershipChange:
        """Build from an Avro record as fastavro reads it."""
        return cls(
            event_id=r["event_id"],
            occurred_at=r["occurred_at"],
            shard=r["shard"],
            from_dc=r["from_dc"],
            to_dc=r["to_dc"],
            from_epoch=r["from_epoch"],
            epoch=r["epoch"],
            reason=OwnershipChangeReason(r["reason"]),
            last_applied_seq=r["last_applied_seq"],
        )


#: Any event the codec encodes and decodes.
Event = OperationCompleted | RestartCheckpoint | Heartbeat | OwnershipChange

#: The event class of each record name.
EVENT_TYPES: Mapping[str, type[Event]] = {
    cls.RECORD_NAME: cls
    for cls in (OperationCompleted, RestartCheckpoint, Heartbeat, OwnershipChange)
}


def json_ready(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record (as ``to_record`` or the codec's ``decode_record`` give it) with its times as
    ISO-8601 text, ready for ``json.dumps``: the form of cluster state stored in jsonb columns,
    on the owner and on replicas alike, so that both compare equal."""
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in record.items()}
