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

A job whose shard another DC took over is resumed from its last RestartCheckpoint
(:func:`plan_restart`): its plan starts at that stage, whose unfinished tasks are handed out
again, and runs the rest of the job as the checkpoint's job record lists it.
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
    RestartCheckpoint,
    TaskStatus,
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

__all__ = [
    "MAX_ATTEMPTS",
    "JobPlan",
    "PlannedTask",
    "Resumption",
    "choose_action",
    "new_cluster",
    "plan_job",
    "plan_restart",
]

#: Attempts of a task before it fails its job (the first attempt included).
MAX_ATTEMPTS = 3

_A = ProvisionerAction
_DOMAIN = "coopr.example"  # node hostnames are <cluster name>-<1000 + i>.<tenant>.<provider>.<this>


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
class Resumption:
    """Where a job taken over from another DC resumes: its first step here is ``(stage,
    round)``; the steps before it ran in the DC that lost the shard. ``epoch`` is the takeover's
    epoch of the shard (``restart_requests.epoch``), which keeps the job's event IDs here apart
    from those of its earlier life."""

    stage: int
    round: int
    epoch: int


@dataclass(frozen=True, slots=True)
class JobPlan:
    """A whole job, decided in advance.

    ``cluster`` is the cluster while the job runs (PENDING, its latest job this one, with the
    services the job will leave it with), ``nodes`` the nodes with their final addresses,
    ``final_status`` the cluster's status when the job ends, ``failure`` the job's status
    message when it fails (None when it succeeds), ``resumption`` where a restarted job
    resumes (None: the job runs from its first stage).
    """

    job_id: str
    action: ClusterAction
    cluster: Cluster
    nodes: tuple[Node, ...]
    stages: tuple[tuple[PlannedTask, ...], ...]
    final_status: ClusterStatus
    failure: str | None
    resumption: Resumption | None = None

    @property
    def steps(self) -> tuple[tuple[int, int], ...]:
        """The stage boundaries this DC writes, ``(stage, round)`` with round 1 the first
        hand-out.

        A failing job's steps stop with the stage whose task fails; a resumed job's start at
        its resumption (none are left when it resumes past its last stage).
        """
        first = (
            (0, 1) if self.resumption is None else (self.resumption.stage, self.resumption.round)
        )
        out: list[tuple[int, int]] = []
        for k, stage in enumerate(self.stages):
            out.extend((k, r) for r in range(1, max(t.attempts for t in stage) + 1))
            if any(t.fails for t in stage):
                break
        return tuple(step for step in out if step >= first)

    @property
    def last_stage(self) -> int:
        """The stage the job ends in: that of its last step, else (a resumed job with no step
        left) its last stage."""
        return self.steps[-1][0] if self.steps else len(self.stages) - 1

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


def _addresses(rng: random.Random) -> dict[str, str]:
    """A node's addresses as its provider hands them out (learnt at CONFIRM)."""
    return {"access_v4": _ip(rng, 54), "bind_v4": _ip(rng, 10)}


def _create_config(dns_suffix: str, size: int) -> str:
    """A new cluster's configuration (JSON text): revision 1."""
    settings = {"dns_suffix": dns_suffix, "revision": 1, "replication": min(3, size)}
    return json.dumps(settings, sort_keys=True)


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
    suffix = f"{tenant}.{provider}.{_DOMAIN}"
    nodes = tuple(
        Node(
            id=_uuid(rng),
            cluster_id=cluster_id,
            services=services,
            hostname=f"{name}-{1000 + i}.{suffix}",
            ip_addresses=_addresses(rng),
            hardware_type=hardware,
            image_type=image,
        )
        for i, services in enumerate(_node_services(size, template.services))
    )
    expire = None if rng.random() < 0.4 else now + timedelta(days=rng.randint(1, 30))
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
        config=_create_config(suffix, size),
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
    if action is ClusterAction.ADD_SERVICES:
        group = rng.choice(_addable(cluster))
        services = [s for s in group if s not in cluster.services]
        nodes = [
            dataclasses.replace(
                n, services=(*n.services, *(s for s in services if i in placement(s, len(nodes))))
            )
            for i, n in enumerate(nodes)
        ]
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
    running = _running(cluster, action, jid, services)
    failure = None
    if fail_at is None:
        final = _succeeded(action)
    else:
        incomplete = action is ClusterAction.CLUSTER_CREATE or (
            cluster.status is ClusterStatus.INCOMPLETE
        )
        final = ClusterStatus.INCOMPLETE if incomplete else ClusterStatus.INCONSISTENT
        task = stages[fail_at[0]][fail_at[1]]
        failure = _failure_message(task, running, {n.id: n for n in nodes})
    return JobPlan(jid, action, running, tuple(nodes), tuple(stages), final, failure)


def _running(cluster: Cluster, action: ClusterAction, jid: str, services: Sequence[str]) -> Cluster:
    """``cluster`` (as its last job left it) while job ``jid`` runs: PENDING, with the
    ``services`` the job adds, and the next configuration revision for a configure."""
    config = cluster.config
    if action in (ClusterAction.CLUSTER_CONFIGURE, ClusterAction.CLUSTER_CONFIGURE_WITH_RESTART):
        settings = json.loads(config)
        settings["revision"] = settings.get("revision", 0) + 1
        config = json.dumps(settings, sort_keys=True)
    return dataclasses.replace(
        cluster,
        services=tuple(dict.fromkeys((*cluster.services, *services))),
        latest_job_id=jid,
        status=ClusterStatus.PENDING,
        config=config,
    )


def _succeeded(action: ClusterAction) -> ClusterStatus:
    """The cluster's status after a job of ``action`` that succeeds."""
    return (
        ClusterStatus.TERMINATED if action is ClusterAction.CLUSTER_DELETE else ClusterStatus.ACTIVE
    )


def plan_restart(checkpoint: RestartCheckpoint, cluster: Cluster | None, epoch: int) -> JobPlan:
    """The plan that resumes ``checkpoint``'s job in the DC that took its shard over at
    ``epoch``, from the checkpoint's current stage on.

    ``cluster`` is the cluster as the taking-over DC holds it: as of its last completed job
    (the takeover promotes the replica's row, which only OperationCompleted events write).
    A create has none (None), unless the DC ran the create itself before it lost the shard:
    then it holds the running create's cluster, which is kept.

    The plan's first step hands the current stage's unfinished tasks out again, at one
    attempt more than the stage's highest (the simulator hands a stage out in rounds, all at
    one attempt number); the stage's finished tasks and the earlier stages are not run again.
    If none is unfinished, the plan starts with the next stage. Every task succeeds from
    there, at its first attempt for later stages, so the cluster ends ACTIVE (TERMINATED for
    a delete). Nothing is random but the addresses below, drawn from a generator seeded with
    the job ID: the same checkpoint gives the same plan.

    A checkpoint carries the job record (every stage's task IDs), the current stage's tasks
    and the nodes, but not the cluster record nor the later stages' tasks. So, derived as
    :func:`plan_job` would:

    - the later stages' tasks (node, service, action): from the stages :func:`plan_job` plans
      for the job's action on the checkpoint's nodes, matched to the job's task IDs;
    - ADD_SERVICES: the services added, the template's addable group the nodes' new services
      come from; a configure: the next configuration revision of ``cluster``;
    - a create's cluster when ``cluster`` is None: name, tenant and provider from the node
      hostnames, the template from the nodes' services, the configuration as
      :func:`new_cluster` writes it; the owner, unknown, becomes the tenant's ``admin``, the
      create time is the checkpoint's time and the cluster never expires;
    - a create resumed before its nodes' addresses were learnt (CONFIRM): new addresses, as
      a CONFIRM run again in this DC would learn them.

    Raises :class:`ValueError` when the checkpoint does not fit that derivation (stages or
    tasks not as :func:`plan_job` would plan them, no ``cluster`` for a job other than a
    create, a ``cluster`` not as described above): such a job cannot be resumed by this
    simulator.
    """
    job = checkpoint.job
    if not 0 <= job.current_stage < len(job.staged_task_ids):
        raise ValueError(
            f"job {job.id}: current stage {job.current_stage} is not one of its stages"
        )
    rng = random.Random(job.id)
    nodes = tuple(
        n if n.ip_addresses else dataclasses.replace(n, ip_addresses=_addresses(rng))
        for n in checkpoint.nodes
    )
    if cluster is None:
        if job.action is not ClusterAction.CLUSTER_CREATE:
            raise ValueError(f"job {job.id}: no cluster {job.cluster_id} to {job.action.value}")
        cluster = _created_cluster(job.cluster_id, nodes, checkpoint.occurred_at)
    elif cluster.id != job.cluster_id or (
        # A create's cluster has no earlier job: what the DC holds is the running create,
        # left by an earlier life of the job there, whose record is then the one to keep.
        (cluster.latest_job_id == job.id) != (job.action is ClusterAction.CLUSTER_CREATE)
    ):
        raise ValueError(f"job {job.id}: cluster {cluster.id} is not as its last job left it")
    services: Sequence[str] = cluster.services
    if job.action is ClusterAction.ADD_SERVICES:
        services = _added_services(job.id, cluster, nodes)
    specs = [s for s in _stages(job.action, nodes, services, cluster.status) if s]
    again = max((t.attempts for t in checkpoint.tasks), default=0) + 1
    stages = _resumed_stages(checkpoint, specs, again)
    unfinished = any(t.status is not TaskStatus.COMPLETE for t in checkpoint.tasks)
    k0 = job.current_stage
    resumption = Resumption(k0, again, epoch) if unfinished else Resumption(k0 + 1, 1, epoch)
    return JobPlan(
        job.id,
        job.action,
        _running(cluster, job.action, job.id, services),
        nodes,
        stages,
        _succeeded(job.action),
        None,
        resumption,
    )


def _resumed_stages(
    checkpoint: RestartCheckpoint,
    specs: Sequence[Sequence[tuple[str, str | None, ProvisionerAction]]],
    again: int,
) -> tuple[tuple[PlannedTask, ...], ...]:
    """The stages of ``specs`` with the job's task IDs; the current stage's unfinished tasks
    take ``again`` attempts, its finished ones keep theirs, the other stages' take one."""
    job = checkpoint.job
    if [len(s) for s in specs] != [len(ids) for ids in job.staged_task_ids]:
        raise ValueError(f"job {job.id}: its stages are not those of a {job.action.value}")
    current = {t.id: t for t in checkpoint.tasks}
    stages: list[tuple[PlannedTask, ...]] = []
    for k, (spec, ids) in enumerate(zip(specs, job.staged_task_ids, strict=True)):
        stage = []
        for (node_id, service, action), tid in zip(spec, ids, strict=True):
            attempts = 1
            if k == job.current_stage:
                task = current.get(tid)
                if task is None or (task.node_id, task.service, task.action) != (
                    node_id,
                    service,
                    action,
                ):
                    raise ValueError(f"job {job.id}: task {tid} is not the planned one")
                attempts = task.attempts if task.status is TaskStatus.COMPLETE else again
            stage.append(PlannedTask(tid, node_id, service, action, attempts, fails=False))
        stages.append(tuple(stage))
    return tuple(stages)


def _created_cluster(cluster_id: str, nodes: Sequence[Node], created: datetime) -> Cluster:
    """The cluster a create made, as far as its nodes tell (see :func:`plan_restart`)."""
    host = nodes[0].hostname if nodes else None
    head, _, suffix = (host or "").partition(".")
    tenant, _, rest = suffix.partition(".")
    provider = rest.partition(".")[0]
    placed = {s for n in nodes for s in n.services}
    # Every template service runs on some node (placement() is never empty).
    template = next((name for name, t in TEMPLATES.items() if set(t.services) == placed), None)
    if template is None or tenant not in TENANTS or f"{provider}.{_DOMAIN}" != rest:
        raise ValueError(f"cluster {cluster_id}: its nodes do not tell which cluster it is")
    owner = "admin"
    return Cluster(
        id=cluster_id,
        name=head.rpartition("-")[0],
        description=f"{template} for {tenant}/{owner}",
        tenant_id=tenant,
        owner_id=owner,
        create_time=created.replace(microsecond=created.microsecond // 1000 * 1000),
        expire_time=None,
        template_name=template,
        provider=provider,
        node_ids=tuple(n.id for n in nodes),
        services=TEMPLATES[template].services,
        latest_job_id="",
        status=ClusterStatus.PENDING,
        config=_create_config(suffix, len(nodes)),
    )


def _added_services(jid: str, cluster: Cluster, nodes: Sequence[Node]) -> list[str]:
    """The services an ADD_SERVICES adds to ``cluster``, in its group's order."""
    placed = {s for n in nodes for s in n.services} - set(cluster.services)
    for group in _addable(cluster):
        services = [s for s in group if s not in cluster.services]
        if set(services) == placed:
            return services
    raise ValueError(f"job {jid}: {sorted(placed)} is no group of services to add")


def _failure_message(task: PlannedTask, cluster: Cluster, nodes: Mapping[str, Node]) -> str:
    node = nodes[task.node_id]
    reason = FAILURE_REASONS[task.action].format(
        provider=cluster.provider,
        hardware=node.hardware_type,
        host=node.hostname,
        service=task.service,
    )
    return f"task {task.id} failed after {task.attempts} attempts: {reason}"
