"""Pure planning of the stand-in Coopr server's jobs: clusters, stages, attempts, outcomes.

Nothing here touches a database or the clock: every random choice comes from the
:class:`random.Random` passed in, so the same generator state gives the same plan.

Coopr's model (``design.md``, "Coopr's own model"):

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

from pipeline.errors import ConfigError
from pipeline.events import (
    Cluster,
    ClusterAction,
    ClusterStatus,
    Node,
    ProvisionerAction,
)
from simulator.catalogue import (
    DEFAULT_FAILURE_P,
    FAILURE_P,
    FAILURE_REASONS,
    HARDWARE,
    IMAGES,
    OPERATIONS,
    PROVIDERS,
    PURPOSES,
    RETRY_P,
    SERVICES,
    TEMPLATES,
    TENANTS,
    THIRD_ATTEMPT_P,
    placement,
)
from simulator.ids import job_id, task_id

__all__ = ["MAX_ATTEMPTS", "JobPlan", "PlannedTask", "choose_action", "new_cluster", "plan_job"]

#: Attempts of a task before it fails its job (the first attempt included).
MAX_ATTEMPTS = 3

_A = ProvisionerAction


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


def _node_services(nodes: int, services: Sequence[str]) -> list[tuple[str, ...]]:
    per_node: list[list[str]] = [[] for _ in range(nodes)]
    for s in services:
        for i in placement(s, nodes):
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
    template_name = rng.choice(sorted(TEMPLATES))
    template = TEMPLATES[template_name]
    tenant = rng.choice(sorted(TENANTS))
    owner = rng.choice(TENANTS[tenant])
    provider = rng.choice(PROVIDERS)
    size = rng.randint(1, 10)
    hardware, image = rng.choice(HARDWARE), rng.choice(IMAGES)
    name = f"{rng.choice(PURPOSES)}-{int(cluster_id)}"
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
    template = TEMPLATES.get(cluster.template_name)
    if template is None:
        return []
    return [g for g in template.addable if not set(g) <= set(cluster.services)]


def choose_action(rng: random.Random, cluster: Cluster) -> ClusterAction:
    """The next job on a live cluster: only a delete for an INCOMPLETE one."""
    if cluster.status is ClusterStatus.INCOMPLETE:
        return ClusterAction.CLUSTER_DELETE
    choices = [
        (a, w) for a, w in OPERATIONS if a is not ClusterAction.ADD_SERVICES or _addable(cluster)
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
    daemons = [s for s in services if SERVICES[s].daemon]
    tiers = sorted({SERVICES[s].tier for s in daemons}, reverse=action is _A.STOP)
    return [
        _service_stage(nodes, action, [s for s in daemons if SERVICES[s].tier == t]) for t in tiers
    ]


def _stages(
    action: ClusterAction, nodes: Sequence[Node], services: Sequence[str], was: ClusterStatus
) -> list[list[tuple[str, str | None, ProvisionerAction]]]:
    """Each stage's (node ID, service, provisioner action), before empty stages are dropped."""

    def per_node(a: ProvisionerAction) -> list[tuple[str, str | None, ProvisionerAction]]:
        return [(n.id, None, a) for n in nodes]

    initializing = [s for s in services if SERVICES[s].initializes]
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
                n, services=(*n.services, *(s for s in services if i in placement(s, len(nodes))))
            )
            for i, n in enumerate(nodes)
        ]
    elif action in (ClusterAction.CLUSTER_CONFIGURE, ClusterAction.CLUSTER_CONFIGURE_WITH_RESTART):
        settings = json.loads(config)
        settings["revision"] = settings.get("revision", 0) + 1
        config = json.dumps(settings, sort_keys=True)
    specs = [s for s in _stages(action, nodes, services, cluster.status) if s]
    fail_at: tuple[int, int] | None = None
    if rng.random() < FAILURE_P.get(action, DEFAULT_FAILURE_P):
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
            elif rng.random() < RETRY_P:
                attempts = 3 if rng.random() < THIRD_ATTEMPT_P else 2
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
    reason = FAILURE_REASONS[task.action].format(
        provider=cluster.provider,
        hardware=node.hardware_type,
        host=node.hostname,
        service=task.service,
    )
    return f"task {task.id} failed after {task.attempts} attempts: {reason}"
