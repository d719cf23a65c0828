"""Pure planning of the stand-in Coopr server's jobs: IDs, clusters, stages, outcomes.

Nothing here touches a database or the clock: every random choice comes from the
:class:`random.Random` passed in, so the same generator state gives the same plan.

Coopr's model (``design.md``, "Coopr's own model"):

- Cluster IDs are ``%08d`` numbers; each DC allocates from its own space (:func:`id_space`).
  Job ID = ``<clusterId>-<jobNum %03d>``, task ID = ``<jobId>-<taskNum %03d>`` (task numbers
  count from 1 across the whole job, in stage order).
- A job is a list of stages, each a set of tasks; a stage starts only when the previous one is
  complete. Node-level actions (CREATE, CONFIRM, BOOTSTRAP, DELETE) run one task per node;
  service actions (INSTALL, CONFIGURE, INITIALIZE, START, STOP) one task per node and service.
  START runs in dependency tiers, lowest first (ZooKeeper and HDFS before HBase), STOP in the
  reverse order, each tier its own stage, as Coopr's planner orders service dependencies.
- A task that fails is retried, up to :data:`MAX_ATTEMPTS` attempts in all; each retry round
  is handed out again. A task failing its last attempt fails the job: the cluster becomes
  INCOMPLETE (a create, or a cluster that already was) or INCONSISTENT (any other operation).

A plan's *steps* are its stage boundaries: one per (stage, retry round), each written as a
RestartCheckpoint, followed by the completion (an OperationCompleted).
"""

from __future__ import annotations

import dataclasses
import json
import random
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pipeline.errors import ConfigError
from pipeline.events import (
    Cluster,
    ClusterAction,
    ClusterStatus,
    Job,
    JobStatus,
    Node,
    ProvisionerAction,
    Task,
    TaskStatus,
    json_ready,
)
from pipeline.topology import Topology

__all__ = [
    "MAX_ATTEMPTS",
    "IdSpace",
    "JobPlan",
    "PlannedTask",
    "checkpoint_view",
    "choose_action",
    "cluster_from_json",
    "cluster_to_json",
    "completion_view",
    "format_cluster_id",
    "id_space",
    "job_id",
    "new_cluster",
    "next_job_number",
    "node_from_json",
    "node_to_json",
    "plan_from_json",
    "plan_job",
    "plan_to_json",
    "task_id",
]

#: Attempts of a task before it fails its job (the first attempt included).
MAX_ATTEMPTS = 3

_A = ProvisionerAction


@dataclass(frozen=True, slots=True)
class IdSpace:
    """The cluster numbers a DC hands out: ``start``, ``start + increment``, ..."""

    start: int
    increment: int

    def contains(self, number: int) -> bool:
        """Whether ``number`` is one of this space's IDs."""
        return number >= self.start and (number - self.start) % self.increment == 0


def id_space(topology: Topology, dc: str) -> IdSpace:
    """DC ``dc``'s ID space: data DC i (0-based, file order) of n starts at i+1, steps by n.

    Witness DCs create no clusters: :class:`ConfigError` for them and for unknown DCs.
    """
    names = [d.name for d in topology.data_dcs]
    if dc not in names:
        topology.dc(dc)  # raises for an unknown DC, naming the known ones
        raise ConfigError(f"DC {dc!r} is a witness: it runs no Coopr server", field="dc")
    return IdSpace(start=names.index(dc) + 1, increment=len(names))


def format_cluster_id(number: int) -> str:
    """Coopr's cluster ID of ``number``: zero-padded to 8 digits."""
    return f"{number:08d}"


def job_id(cluster_id: str, job_number: int) -> str:
    """Coopr's job ID: ``<clusterId>-<jobNum %03d>``."""
    return f"{cluster_id}-{job_number:03d}"


def task_id(job: str, task_number: int) -> str:
    """Coopr's task ID: ``<jobId>-<taskNum %03d>``, i.e. ``<clusterId>-<jobNum>-<taskNum>``."""
    return f"{job}-{task_number:03d}"


def next_job_number(cluster: Cluster) -> int:
    """The number of the cluster's next job (one more than its latest job's)."""
    return int(cluster.latest_job_id.rsplit("-", 1)[1]) + 1


# --- The catalogue -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Service:
    """A service: where it runs, its start tier, whether it has INITIALIZE and a daemon."""

    placement: str  # "all", "master" (node 0), "workers" (the others), "quorum" (first 1 or 3)
    tier: int
    initializes: bool
    daemon: bool


_SERVICES: Mapping[str, _Service] = {
    "base": _Service("all", 0, False, False),
    "hosts": _Service("all", 0, False, False),
    "zookeeper-server": _Service("quorum", 0, True, True),
    "mysql-server": _Service("master", 0, True, True),
    "cassandra": _Service("all", 0, True, True),
    "mongodb-server": _Service("all", 0, True, True),
    "hadoop-hdfs-namenode": _Service("master", 1, True, True),
    "hadoop-hdfs-datanode": _Service("workers", 2, False, True),
    "hadoop-yarn-resourcemanager": _Service("master", 2, False, True),
    "hadoop-yarn-nodemanager": _Service("workers", 3, False, True),
    "apache-httpd": _Service("workers", 1, False, True),
    "php": _Service("workers", 0, False, False),
    "memcached": _Service("workers", 1, False, True),
    "haproxy": _Service("master", 2, False, True),
    "hbase-master": _Service("master", 3, True, True),
    "hbase-regionserver": _Service("workers", 4, False, True),
    "hive-metastore": _Service("master", 4, True, True),
    "spark-history-server": _Service("master", 4, False, True),
}


@dataclass(frozen=True, slots=True)
class _Template:
    """A cluster template: its services and the groups of services ADD_SERVICES can add."""

    services: tuple[str, ...]
    addable: tuple[tuple[str, ...], ...]


_HADOOP = ("base", "hosts", "hadoop-hdfs-namenode", "hadoop-hdfs-datanode")
_YARN = ("hadoop-yarn-resourcemanager", "hadoop-yarn-nodemanager")
_HBASE = ("zookeeper-server", "hbase-master", "hbase-regionserver")
_TEMPLATES: Mapping[str, _Template] = {
    "hadoop-distributed": _Template(
        (*_HADOOP, *_YARN),
        (
            ("zookeeper-server",),
            _HBASE,
            ("hive-metastore", "mysql-server"),
            ("spark-history-server",),
        ),
    ),
    "hadoop-hbase-distributed": _Template(
        (*_HADOOP, *_YARN, *_HBASE), (("hive-metastore", "mysql-server"),)
    ),
    "lamp-multi": _Template(
        ("base", "hosts", "mysql-server", "apache-httpd", "php", "haproxy"), (("memcached",),)
    ),
    "cassandra-ring": _Template(("base", "hosts", "cassandra"), ()),
    "mongodb-replica-set": _Template(("base", "hosts", "mongodb-server"), ()),
}
_PROVIDERS = ("aws", "google", "openstack", "rackspace", "joyent", "digitalocean")
_HARDWARE = ("small", "medium", "large", "xlarge")
_IMAGES = ("centos6", "centos7", "ubuntu12", "ubuntu14", "rhel6")
_TENANTS: Mapping[str, tuple[str, ...]] = {
    "acme": ("admin", "wile", "roadrunner"),
    "globex": ("admin", "hank", "mindy"),
    "initech": ("admin", "peter", "milton", "samir"),
    "hooli": ("admin", "gavin", "richard"),
    "umbrella": ("admin", "alice"),
}
_PURPOSES = ("analytics", "etl", "reporting", "search", "web", "staging", "dev", "qa", "ml")

# (action, weight) of the jobs on a live cluster; creates are chosen separately.
_OPERATIONS: tuple[tuple[ClusterAction, int], ...] = (
    (ClusterAction.CLUSTER_CONFIGURE, 25),
    (ClusterAction.CLUSTER_CONFIGURE_WITH_RESTART, 15),
    (ClusterAction.ADD_SERVICES, 15),
    (ClusterAction.RESTART_SERVICES, 20),
    (ClusterAction.STOP_SERVICES, 4),
    (ClusterAction.START_SERVICES, 6),
    (ClusterAction.CLUSTER_DELETE, 15),
)
# Probability that a job ends FAILED, by action (creates touch providers and fail most).
_FAILURE_P: Mapping[ClusterAction, float] = {ClusterAction.CLUSTER_CREATE: 0.06}
_DEFAULT_FAILURE_P = 0.04
_RETRY_P = 0.04  # probability that a task needs a second attempt
_THIRD_ATTEMPT_P = 0.2  # of those, probability that it needs a third

_FAILURE_REASONS: Mapping[ProvisionerAction, str] = {
    _A.CREATE: "provider {provider} refused the request: quota exceeded for {hardware}",
    _A.CONFIRM: "{host} did not answer on SSH within 600 seconds",
    _A.BOOTSTRAP: "bootstrap of {host} failed: package mirror unreachable",
    _A.INSTALL: "installing {service} on {host} failed: package manager exited with 1",
    _A.CONFIGURE: "configuring {service} on {host} failed: template error in site config",
    _A.INITIALIZE: "initializing {service} on {host} failed: exit status 2",
    _A.START: "{service} on {host} did not start: port already in use",
    _A.STOP: "{service} on {host} did not stop within 120 seconds",
    _A.DELETE: "provider {provider} could not delete {host}: API timeout",
}


# --- Plans -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlannedTask:
    """A task as planned: ``attempts`` it will take, and whether its last attempt fails."""

    id: str
    node_id: str
    service: str | None
    action: ProvisionerAction
    attempts: int
    fails: bool


@dataclass(frozen=True, slots=True)
class JobPlan:
    """A whole job, decided in advance.

    ``cluster`` is the cluster while the job runs (PENDING, its latest job this one, with the
    services the job will leave it with), ``nodes`` the nodes with their final addresses,
    ``final_status`` the cluster's status when the job ends, ``failure`` the job's status
    message when it fails (None when it succeeds).
    """

    job_id: str
    action: ClusterAction
    cluster: Cluster
    nodes: tuple[Node, ...]
    stages: tuple[tuple[PlannedTask, ...], ...]
    final_status: ClusterStatus
    failure: str | None

    @property
    def steps(self) -> tuple[tuple[int, int], ...]:
        """The stage boundaries, ``(stage, round)`` with round 1 the first hand-out.

        A failing job's steps stop with the stage whose task fails.
        """
        out: list[tuple[int, int]] = []
        for k, stage in enumerate(self.stages):
            out.extend((k, r) for r in range(1, max(t.attempts for t in stage) + 1))
            if any(t.fails for t in stage):
                break
        return tuple(out)

    @property
    def deletes(self) -> bool:
        """Whether the job leaves the cluster deleted (a delete that succeeds)."""
        return self.final_status is ClusterStatus.TERMINATED


def _placement(service: str, n: int) -> range:
    match _SERVICES[service].placement:
        case "all":
            return range(n)
        case "master":
            return range(1)
        case "workers":
            return range(1, n) if n > 1 else range(1)
        case _:
            return range(3 if n >= 3 else 1)


def _node_services(nodes: int, services: Sequence[str]) -> list[tuple[str, ...]]:
    per_node: list[list[str]] = [[] for _ in range(nodes)]
    for s in services:
        for i in _placement(s, nodes):
            per_node[i].append(s)
    return [tuple(s) for s in per_node]


def _ip(rng: random.Random, first: int) -> str:
    return f"{first}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def new_cluster(
    rng: random.Random, cluster_id: str, now: datetime
) -> tuple[Cluster, tuple[Node, ...]]:
    """A cluster to create (status PENDING, no job yet) and its laid-out nodes.

    1 to 10 nodes; template, provider, hardware, image, tenant and owner drawn from ``rng``.
    ``now`` (tz-aware) is the create time, truncated to milliseconds as the events store it.
    """
    now = now.replace(microsecond=now.microsecond // 1000 * 1000)
    template_name = rng.choice(sorted(_TEMPLATES))
    template = _TEMPLATES[template_name]
    tenant = rng.choice(sorted(_TENANTS))
    owner = rng.choice(_TENANTS[tenant])
    provider = rng.choice(_PROVIDERS)
    size = rng.randint(1, 10)
    hardware, image = rng.choice(_HARDWARE), rng.choice(_IMAGES)
    name = f"{rng.choice(_PURPOSES)}-{int(cluster_id)}"
    suffix = f"{tenant}.{provider}.coopr.example"
    nodes = tuple(
        Node(
            id=_uuid(rng),
            cluster_id=cluster_id,
            services=services,
            hostname=f"{name}-{1000 + i}.{suffix}",
            ip_addresses={"access_v4": _ip(rng, 54), "bind_v4": _ip(rng, 10)},
            hardware_type=hardware,
            image_type=image,
        )
        for i, services in enumerate(_node_services(size, template.services))
    )
    expire = None if rng.random() < 0.4 else now + timedelta(days=rng.randint(1, 30))
    config = {"dns_suffix": suffix, "revision": 1, "replication": min(3, size)}
    cluster = Cluster(
        id=cluster_id,
        name=name,
        description=f"{template_name} for {tenant}/{owner}",
        tenant_id=tenant,
        owner_id=owner,
        create_time=now,
        expire_time=expire,
        template_name=template_name,
        provider=provider,
        node_ids=tuple(n.id for n in nodes),
        services=template.services,
        latest_job_id="",
        status=ClusterStatus.PENDING,
        config=json.dumps(config, sort_keys=True),
    )
    return cluster, nodes


def _addable(cluster: Cluster) -> list[tuple[str, ...]]:
    """Groups of services ADD_SERVICES could add: each lacks at least one of its services."""
    template = _TEMPLATES.get(cluster.template_name)
    if template is None:
        return []
    return [g for g in template.addable if not set(g) <= set(cluster.services)]


def choose_action(rng: random.Random, cluster: Cluster) -> ClusterAction:
    """The next job on a live cluster: only a delete for an INCOMPLETE one."""
    if cluster.status is ClusterStatus.INCOMPLETE:
        return ClusterAction.CLUSTER_DELETE
    choices = [
        (a, w) for a, w in _OPERATIONS if a is not ClusterAction.ADD_SERVICES or _addable(cluster)
    ]
    return rng.choices([a for a, _ in choices], [w for _, w in choices])[0]


def _service_stage(
    nodes: Sequence[Node], action: ProvisionerAction, services: Sequence[str]
) -> list[tuple[str, str | None, ProvisionerAction]]:
    return [(n.id, s, action) for n in nodes for s in n.services if s in services]


def _tiered(
    nodes: Sequence[Node], action: ProvisionerAction, services: Sequence[str]
) -> list[list[tuple[str, str | None, ProvisionerAction]]]:
    """START (ascending tiers) or STOP (descending) of the daemons among ``services``."""
    daemons = [s for s in services if _SERVICES[s].daemon]
    tiers = sorted({_SERVICES[s].tier for s in daemons}, reverse=action is _A.STOP)
    return [
        _service_stage(nodes, action, [s for s in daemons if _SERVICES[s].tier == t]) for t in tiers
    ]


def _stages(
    action: ClusterAction, nodes: Sequence[Node], services: Sequence[str], was: ClusterStatus
) -> list[list[tuple[str, str | None, ProvisionerAction]]]:
    """Each stage's (node ID, service, provisioner action), before empty stages are dropped."""

    def per_node(a: ProvisionerAction) -> list[tuple[str, str | None, ProvisionerAction]]:
        return [(n.id, None, a) for n in nodes]

    initializing = [s for s in services if _SERVICES[s].initializes]
    install = [
        _service_stage(nodes, _A.INSTALL, services),
        _service_stage(nodes, _A.CONFIGURE, services),
        _service_stage(nodes, _A.INITIALIZE, initializing),
        *_tiered(nodes, _A.START, services),
    ]
    every = list(dict.fromkeys(s for n in nodes for s in n.services))
    match action:
        case ClusterAction.CLUSTER_CREATE:
            return [per_node(_A.CREATE), per_node(_A.CONFIRM), per_node(_A.BOOTSTRAP), *install]
        case ClusterAction.ADD_SERVICES:
            return install
        case ClusterAction.CLUSTER_CONFIGURE:
            return [_service_stage(nodes, _A.CONFIGURE, every)]
        case ClusterAction.CLUSTER_CONFIGURE_WITH_RESTART:
            return [
                _service_stage(nodes, _A.CONFIGURE, every),
                *_tiered(nodes, _A.STOP, every),
                *_tiered(nodes, _A.START, every),
            ]
        case ClusterAction.RESTART_SERVICES:
            return [*_tiered(nodes, _A.STOP, every), *_tiered(nodes, _A.START, every)]
        case ClusterAction.STOP_SERVICES:
            return _tiered(nodes, _A.STOP, every)
        case ClusterAction.START_SERVICES:
            return _tiered(nodes, _A.START, every)
        case ClusterAction.CLUSTER_DELETE:
            # An INCOMPLETE cluster's services may never have started: nothing to stop.
            stop = _tiered(nodes, _A.STOP, every) if was is not ClusterStatus.INCOMPLETE else []
            return [*stop, per_node(_A.DELETE)]
        case _:
            raise ConfigError(f"the simulator does not run {action.value} jobs", field="action")


def plan_job(
    rng: random.Random,
    action: ClusterAction,
    cluster: Cluster,
    nodes: Sequence[Node],
    job_number: int,
) -> JobPlan:
    """Plan job ``job_number`` of ``action`` on ``cluster`` and its ``nodes``.

    For a create, ``cluster`` and ``nodes`` come from :func:`new_cluster`. The plan fixes
    which services an ADD_SERVICES adds, the configuration a configure writes, every task's
    attempts, and whether (and where) the job fails; all drawn from ``rng``.
    """
    jid = job_id(cluster.id, job_number)
    services: Sequence[str] = cluster.services
    config = cluster.config
    if action is ClusterAction.ADD_SERVICES:
        group = rng.choice(_addable(cluster))
        services = [s for s in group if s not in cluster.services]
        nodes = [
            dataclasses.replace(
                n, services=(*n.services, *(s for s in services if i in _placement(s, len(nodes))))
            )
            for i, n in enumerate(nodes)
        ]
    elif action in (ClusterAction.CLUSTER_CONFIGURE, ClusterAction.CLUSTER_CONFIGURE_WITH_RESTART):
        settings = json.loads(config)
        settings["revision"] = settings.get("revision", 0) + 1
        config = json.dumps(settings, sort_keys=True)
    specs = [s for s in _stages(action, nodes, services, cluster.status) if s]
    fail_at: tuple[int, int] | None = None
    if rng.random() < _FAILURE_P.get(action, _DEFAULT_FAILURE_P):
        k = rng.randrange(len(specs))
        fail_at = (k, rng.randrange(len(specs[k])))
    stages: list[tuple[PlannedTask, ...]] = []
    number = 0
    for k, spec in enumerate(specs):
        stage = []
        for i, (node_id, service, provisioner_action) in enumerate(spec):
            number += 1
            fails = (k, i) == fail_at
            if fails:
                attempts = MAX_ATTEMPTS
            elif rng.random() < _RETRY_P:
                attempts = 3 if rng.random() < _THIRD_ATTEMPT_P else 2
            else:
                attempts = 1
            stage.append(
                PlannedTask(
                    task_id(jid, number), node_id, service, provisioner_action, attempts, fails
                )
            )
        stages.append(tuple(stage))
    running = dataclasses.replace(
        cluster,
        services=tuple(dict.fromkeys((*cluster.services, *services))),
        latest_job_id=jid,
        status=ClusterStatus.PENDING,
        config=config,
    )
    failure = None
    if fail_at is None:
        final = (
            ClusterStatus.TERMINATED
            if action is ClusterAction.CLUSTER_DELETE
            else ClusterStatus.ACTIVE
        )
    else:
        incomplete = action is ClusterAction.CLUSTER_CREATE or (
            cluster.status is ClusterStatus.INCOMPLETE
        )
        final = ClusterStatus.INCOMPLETE if incomplete else ClusterStatus.INCONSISTENT
        task = stages[fail_at[0]][fail_at[1]]
        failure = _failure_message(task, running, {n.id: n for n in nodes})
    return JobPlan(jid, action, running, tuple(nodes), tuple(stages), final, failure)


def _failure_message(task: PlannedTask, cluster: Cluster, nodes: Mapping[str, Node]) -> str:
    node = nodes[task.node_id]
    reason = _FAILURE_REASONS[task.action].format(
        provider=cluster.provider,
        hardware=node.hardware_type,
        host=node.hostname,
        service=task.service,
    )
    return f"task {task.id} failed after {task.attempts} attempts: {reason}"


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
    last = plan.steps[-1][0]
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


# --- JSON forms (the coopr_* tables) ----------------------------------------------------


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
    }


def plan_from_json(data: Mapping[str, Any]) -> JobPlan:
    """Inverse of :func:`plan_to_json`."""
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
    )
